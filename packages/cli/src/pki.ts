/**
 * A small PKI for controller ↔ agent mutual TLS, made with the `openssl` command (Debian base
 * has it): a CA (EC P-256 key + self-signed certificate), and certificates carrying their
 * role twice — subject `OU=<role>` and a SAN URI `oarcloud:role:<role>` — and their name as
 * `CN` and a SAN DNS name (or IP address). Keys are written 0600.
 *
 * Layout of the folder: ca.key, ca.crt, ca.srl, <role>-<name>.key, <role>-<name>.crt.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import { AlreadyExistsError, FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError } from '@oarcloud/common';

export const PKI_ROLES = ['agent', 'controller', 'user'] as const;
export type PkiRole = (typeof PKI_ROLES)[number];

export interface CertInfo {
  cert: string;
  key: string;
  subject: string;
  san: string;
  notAfter: string;
  fingerprint256: string;
}

function openssl(args: string[], input?: string): string {
  try {
    return execFileSync('openssl', args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'], timeout: 30_000 });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new FailedPreconditionError('the openssl command is not installed (apt-get install openssl)', { cause: err });
    throw new InternalError(`openssl ${args[0]} failed: ${(e.stderr ?? e.message).trim().split('\n').slice(-2).join(' ')}`, { cause: err });
  }
}

function newKey(path: string): void {
  const pem = openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
  writeFileSync(path, pem, { mode: 0o600 });
  chmodSync(path, 0o600);
}

function info(certPath: string, keyPath: string): CertInfo {
  const x = new X509Certificate(readFileSync(certPath));
  return { cert: certPath, key: keyPath, subject: x.subject.replace(/\n/g, ', '), san: x.subjectAltName ?? '', notAfter: x.validTo, fingerprint256: x.fingerprint256 };
}

export function caPaths(dir: string): { key: string; cert: string } {
  return { key: join(dir, 'ca.key'), cert: join(dir, 'ca.crt') };
}

/** Creates the CA in `dir`. An existing CA is kept (AlreadyExistsError unless `ifMissing`). */
export function initCa(dir: string, opts: { days?: number; ifMissing?: boolean } = {}): CertInfo & { created: boolean } {
  const ca = caPaths(dir);
  if (existsSync(ca.key) || existsSync(ca.cert)) {
    if (!existsSync(ca.key) || !existsSync(ca.cert)) throw new FailedPreconditionError(`${dir} holds only half a CA (ca.key and ca.crt go together)`);
    if (!opts.ifMissing) throw new AlreadyExistsError(`a CA already exists in ${dir} (ca.key, ca.crt); use --if-missing to accept it`);
    return { ...info(ca.cert, ca.key), created: false };
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  newKey(ca.key);
  openssl([
    'req', '-x509', '-new', '-key', ca.key, '-sha256', '-days', String(opts.days ?? 3650),
    '-subj', '/O=oarcloud/OU=ca/CN=oarcloud CA',
    '-addext', 'basicConstraints=critical,CA:TRUE,pathlen:0',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-out', ca.cert,
  ]);
  chmodSync(ca.cert, 0o644);
  return { ...info(ca.cert, ca.key), created: true };
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/;

export interface IssueOptions {
  name: string;
  role: PkiRole;
  days?: number;
  /** Extra SAN DNS names / IP addresses. */
  dns?: string[];
  ips?: string[];
  /** Keep an existing certificate of that name and role instead of failing. */
  ifMissing?: boolean;
}

/** Issues `<role>-<name>.{key,crt}` in `dir`, signed by the CA there. */
export function issueCert(dir: string, o: IssueOptions): CertInfo & { created: boolean } {
  if (!NAME_RE.test(o.name)) throw new InvalidArgumentError(`invalid --name ${JSON.stringify(o.name)}: a host or user name (letters, digits, dots, dashes)`);
  if (!PKI_ROLES.includes(o.role)) throw new InvalidArgumentError(`invalid --role ${JSON.stringify(o.role)}: expected ${PKI_ROLES.join(', ')}`);
  for (const ip of o.ips ?? []) if (!isIP(ip)) throw new InvalidArgumentError(`invalid --ip ${JSON.stringify(ip)}`);
  for (const d of o.dns ?? []) if (!NAME_RE.test(d)) throw new InvalidArgumentError(`invalid --dns ${JSON.stringify(d)}`);
  const ca = caPaths(dir);
  if (!existsSync(ca.key) || !existsSync(ca.cert)) throw new NotFoundError(`no CA in ${dir}: run \`oarcloud admin pki init --dir ${dir}\` first`);
  const base = join(dir, `${o.role}-${o.name}`);
  const paths = { key: `${base}.key`, cert: `${base}.crt` };
  if (existsSync(paths.cert)) {
    if (!o.ifMissing) throw new AlreadyExistsError(`${paths.cert} already exists; remove it to issue a new one, or use --if-missing`);
    return { ...info(paths.cert, paths.key), created: false };
  }
  const san = [
    isIP(o.name) ? `IP:${o.name}` : `DNS:${o.name}`,
    ...(o.dns ?? []).map((d) => `DNS:${d}`),
    ...(o.ips ?? []).map((ip) => `IP:${ip}`),
    `URI:oarcloud:role:${o.role}`,
  ];
  const tmp = mkdtempSync(join(dir, '.issue-'));
  try {
    newKey(paths.key);
    const csr = join(tmp, 'req.csr');
    openssl(['req', '-new', '-key', paths.key, '-subj', `/O=oarcloud/OU=${o.role}/CN=${o.name}`, '-out', csr]);
    const ext = join(tmp, 'ext.cnf');
    writeFileSync(
      ext,
      [
        'basicConstraints=critical,CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage=serverAuth,clientAuth',
        `subjectAltName=${san.join(',')}`,
      ].join('\n') + '\n',
    );
    openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAserial', join(dir, 'ca.srl'), '-CAcreateserial', '-sha256', '-days', String(o.days ?? 825), '-extfile', ext, '-out', paths.cert]);
    chmodSync(paths.cert, 0o644);
  } catch (err) {
    rmSync(paths.key, { force: true });
    rmSync(paths.cert, { force: true });
    throw err;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const x = new X509Certificate(readFileSync(paths.cert));
  if (!x.checkIssued(new X509Certificate(readFileSync(ca.cert)))) throw new InternalError(`${paths.cert} was not issued by ${ca.cert}`);
  return { ...info(paths.cert, paths.key), created: true };
}
