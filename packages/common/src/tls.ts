/**
 * Mutual TLS between the controller and the agents, with certificates from
 * `oarcloud admin pki`: each carries its role as a SAN URI `oarcloud:role:<role>` (and as
 * the subject OU) and its name as CN / SAN DNS.
 *   - An agent serves with its certificate, requires a client certificate signed by the CA
 *     (the TLS handshake fails without one) and, per call, the `controller` role
 *     (PERMISSION_DENIED otherwise: an agent's certificate cannot drive another agent).
 *   - The controller dials each agent with its own certificate and checks that the agent's
 *     certificate has the `agent` role and the node's name.
 * The `tls` config key is optional in both daemons: absent means insecure (development).
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { z } from 'zod';
import { InvalidArgumentError } from './errors.js';

export const TlsConfigSchema = z
  .object({
    /** The CA certificate (PEM) peers must be signed by. */
    ca: z.string().min(1),
    /** This daemon's certificate (PEM). */
    cert: z.string().min(1),
    /** Its private key (PEM), readable by the daemon only. */
    key: z.string().min(1),
  })
  .strict();

export type TlsConfig = z.infer<typeof TlsConfigSchema>;

export type PeerRole = 'agent' | 'controller' | 'user';

export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

export function loadTlsMaterial(c: TlsConfig): TlsMaterial {
  const read = (what: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (cause) {
      throw new InvalidArgumentError(`tls.${what}: cannot read ${path}`, { cause });
    }
  };
  return { ca: read('ca', c.ca), cert: read('cert', c.cert), key: read('key', c.key) };
}

/** The role and name a certificate carries (SAN URI `oarcloud:role:<r>` first, then OU). */
export function certIdentity(cert: Pick<PeerCertificate, 'subject' | 'subjectaltname'> | undefined): { role?: string; name?: string; dnsNames: string[] } {
  if (!cert) return { dnsNames: [] };
  const sans = (cert.subjectaltname ?? '').split(/,\s*/).filter(Boolean);
  const uriRole = sans.map((s) => /^URI:oarcloud:role:([a-z]+)$/.exec(s)?.[1]).find(Boolean);
  const ou = cert.subject?.OU;
  const cn = cert.subject?.CN;
  return {
    role: uriRole ?? (typeof ou === 'string' ? ou : undefined),
    name: typeof cn === 'string' ? cn : undefined,
    dnsNames: sans.filter((s) => s.startsWith('DNS:') || s.startsWith('IP Address:')).map((s) => s.replace(/^(DNS|IP Address):/, '')),
  };
}

/**
 * Server-side TLS only (the controller's user-facing listener): clients check our
 * certificate against the cluster's CA and authenticate with their bearer token inside.
 */
export function tlsServerCredentials(m: Pick<TlsMaterial, 'cert' | 'key'>): grpc.ServerCredentials {
  return grpc.ServerCredentials.createSsl(null, [{ private_key: m.key, cert_chain: m.cert }], false);
}

/**
 * Channel credentials to the controller's TLS listener (CLI, agents fetching layers): its
 * certificate must be signed by `ca` and carry the controller role, whatever host name was
 * dialled (one cluster CA issues roles; a node's or a user's certificate cannot pose as the
 * controller).
 */
export function controllerChannelCredentials(ca: Buffer): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(ca, null, null, {
    checkServerIdentity: (_host, cert) => {
      const id = certIdentity(cert);
      return id.role === 'controller' ? undefined : new Error(`peer certificate ${id.name ?? '?'} has role ${id.role ?? 'none'}, expected controller`);
    },
  });
}

/**
 * Channel options for a TLS channel to `address`: an IP literal is not a valid TLS server
 * name (Node warns, RFC 6066), so the name sent is `oarcloud` instead. Our checks look at
 * the certificate's role and name, never at the name dialled.
 */
export function tlsChannelOptions(address: string): grpc.ChannelOptions {
  const host = address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return isIP(host) ? { 'grpc.ssl_target_name_override': 'oarcloud', 'grpc.default_authority': address } : {};
}

/** Server credentials that require a client certificate signed by the CA. */
export function mtlsServerCredentials(m: TlsMaterial): grpc.ServerCredentials {
  return grpc.ServerCredentials.createSsl(m.ca, [{ private_key: m.key, cert_chain: m.cert }], true);
}

/**
 * A server interceptor that lets a call through only if the verified client certificate
 * has `role`; PERMISSION_DENIED otherwise (before the handler runs).
 */
export function requirePeerRole(role: PeerRole): grpc.ServerInterceptor {
  return (_method, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, mdNext) => {
            const got = certIdentity(call.getAuthContext().sslPeerCertificate);
            if (got.role === role) {
              mdNext(metadata);
              return;
            }
            call.sendStatus({
              code: grpc.status.PERMISSION_DENIED,
              details: got.role ? `client certificate ${got.name ?? '?'} has role ${got.role}; this service needs ${role}` : `a client certificate with role ${role} is required`,
            });
          },
        });
      },
    });
}

/**
 * Channel credentials to an agent: our certificate as the client's, and the agent's checked
 * to be signed by the CA, with role `agent` and name `node` (so a certificate stolen from
 * another node, or a controller's, is refused).
 */
export function mtlsChannelCredentials(m: TlsMaterial, expect: { role: PeerRole; name: string }): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(m.ca, m.key, m.cert, {
    checkServerIdentity: (_host, cert) => {
      const id = certIdentity(cert);
      if (id.role !== expect.role) return new Error(`peer certificate ${id.name ?? '?'} has role ${id.role ?? 'none'}, expected ${expect.role}`);
      if (id.name !== expect.name && !id.dnsNames.includes(expect.name)) return new Error(`peer certificate is for ${id.name ?? '?'}, expected ${expect.name}`);
      return undefined;
    },
  });
}
