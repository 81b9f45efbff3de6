/**
 * The local cluster (infra/local) as end-to-end tests drive it: OAR commands as a user,
 * tokens, every agent's view of a job, and killing/restarting daemons by their pid files.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, type ChannelCredentials } from '@grpc/grpc-js';
import { AgentServiceClient, Role, UserServiceClient, type Instance } from '@oarcloud/api';
import { bearer, callUnary, loadTlsMaterial, mtlsChannelCredentials, tlsChannelOptions } from '@oarcloud/common';
import { grpcHealth } from './grpc.js';
import { localStateDir } from './prereq.js';
import { waitFor } from './wait.js';

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));

export const CONTROLLER_ADDRESS = '127.0.0.1:17000';
/** The image infra/local/up.sh builds and makes available on every node of the local cluster. */
export const CLUSTER_IMAGE = 'tiny:latest';
export const AGENT_ADDRESSES: Readonly<Record<string, string>> = { localhost: '127.0.0.1:17110', 'node-1': '127.0.0.1:17101', 'node-2': '127.0.0.1:17102' };

/** The local cluster's PKI (infra/local/up.sh): CA, the controller's and every agent's certificate. */
export function clusterPkiDir(): string {
  return join(localStateDir(), 'pki');
}

/** The name on the local cluster's controller certificate (`controller-<name>.crt`). */
export const CLUSTER_CONTROLLER_CERT_NAME = 'localhost';

let agentCreds: Map<string, ChannelCredentials> | undefined;

/**
 * Credentials to call an agent of the local cluster the way its controller does: under
 * mutual TLS (up.sh made a PKI and put `tls:` in every daemon's config) with the
 * controller's certificate, checking that the agent's is an agent certificate for `node`
 * (any node when not given); insecure when the cluster has no PKI.
 */
export function agentCredentials(node?: string): ChannelCredentials {
  const dir = clusterPkiDir();
  const cert = join(dir, `controller-${CLUSTER_CONTROLLER_CERT_NAME}.crt`);
  if (!existsSync(cert)) return credentials.createInsecure();
  agentCreds ??= new Map();
  const key = node ?? '';
  let c = agentCreds.get(key);
  if (!c) {
    const m = loadTlsMaterial({ ca: join(dir, 'ca.crt'), cert, key: join(dir, `controller-${CLUSTER_CONTROLLER_CERT_NAME}.key`) });
    c = node
      ? mtlsChannelCredentials(m, { role: 'agent', name: node })
      : credentials.createSsl(m.ca, m.key, m.cert, { checkServerIdentity: () => undefined });
    agentCreds.set(key, c);
  }
  return c;
}

/**
 * A client of the agent at `address`, with agentCredentials(node) and, over TLS, the server
 * name that an IP address cannot be (tlsChannelOptions).
 */
export function agentClient(address: string, node?: string): AgentServiceClient {
  const creds = agentCredentials(node);
  return new AgentServiceClient(address, creds, creds._isSecure() ? tlsChannelOptions(address) : {});
}

/** True if `address` is one of the local cluster's agents. */
function isAgentAddress(address: string): boolean {
  return Object.values(AGENT_ADDRESSES).includes(address);
}

/** Runs a command, as `user` (login shell) when given; returns stdout. */
export function sh(cmd: string, args: string[], user?: string, timeoutMs = 60_000): string {
  const full = user ? ['su', '-', user, '-c', [cmd, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')] : [cmd, ...args];
  return execFileSync(full[0]!, full.slice(1), { encoding: 'utf8', timeout: timeoutMs });
}

/** `oarsub` as `user`; returns the job id. */
export function oarsub(user: string, args: string[]): number {
  const id = Number(/OAR_JOB_ID=(\d+)/.exec(sh('oarsub', args, user))?.[1]);
  if (!(id > 0)) throw new Error('oarsub gave no job id');
  return id;
}

export interface OarJobView {
  state: string;
  assigned_network_address: string[];
  types: string[];
}

export function oarJob(id: number): OarJobView {
  return (JSON.parse(sh('oarstat', ['-fj', String(id), '-J'])) as Record<string, OarJobView>)[String(id)]!;
}

/** A token for `name` (created with the user role if unknown), issued by the local admin. */
export async function userToken(name: string): Promise<string> {
  const users = new UserServiceClient(CONTROLLER_ADDRESS, credentials.createInsecure());
  try {
    const admin = { metadata: bearer(readFileSync(join(localStateDir(), 'controller/admin.token'), 'utf8').trim()), timeoutMs: 10_000 };
    const list = await callUnary(users.listUsers.bind(users), {}, admin);
    const issued = list.users.some((u) => u.name === name)
      ? await callUnary(users.issueToken.bind(users), { name }, admin)
      : await callUnary(users.addUser.bind(users), { name, role: Role.ROLE_USER }, admin);
    return issued.token;
  } finally {
    users.close();
  }
}

/** Every agent's instances of a job (the actual state of every host). */
export async function agentInstancesOf(jobId: number): Promise<Instance[]> {
  const all = await Promise.all(
    Object.entries(AGENT_ADDRESSES).map(async ([, address]) => {
      const a = agentClient(address);
      try {
        return (await callUnary(a.listInstances.bind(a), { jobId }, { timeoutMs: 5000 })).instances;
      } finally {
        a.close();
      }
    }),
  );
  return all.flat().filter((i) => i.spec?.jobId === jobId);
}

/** True when no instance, libvirt domain or job cgroup of the job is left on any host. */
export async function jobLeftNothing(jobId: number): Promise<boolean> {
  if ((await agentInstancesOf(jobId)).length > 0) return false;
  const cgroups = sh('bash', ['-c', `ls -d /sys/fs/cgroup/*/machine/oc-*-j${jobId}.job 2>/dev/null || true`]).trim();
  return cgroups === '';
}

/** SIGKILL of a local-cluster daemon (`controller`, `agent-node-1`…) by its pid file. */
export function killDaemon(name: string): void {
  const pid = Number(readFileSync(join(localStateDir(), 'run', `${name}.pid`), 'utf8').trim());
  if (!(pid > 1)) throw new Error(`no pid for ${name}`);
  process.kill(pid, 'SIGKILL');
}

/** Brings back whatever is down (infra/local/up.sh is idempotent). */
export function clusterUp(): void {
  execFileSync('bash', [join(repoRoot, 'infra/local/up.sh')], { stdio: 'ignore', timeout: 120_000 });
}

/** Waits until the daemon at `address` answers gRPC health with SERVING. */
export async function waitServing(address: string): Promise<void> {
  const creds = isAgentAddress(address) ? agentCredentials() : undefined;
  await waitFor(async () => (await grpcHealth(address, '', 1000, creds)) === 'SERVING', { timeoutMs: 30_000, intervalMs: 200, what: `${address} serving` });
}

/**
 * `pid` itself, once checked to be in a network namespace other than this process's: tests
 * that run commands "in an instance's network" with `nsenter -t <pid> -n` must never run
 * them in the host's, where their traffic could leave the machine.
 */
export function instanceNetPid(pid: number): number {
  const ns = (p: number | 'self') => {
    try {
      return readlinkSync(`/proc/${p}/ns/net`);
    } catch {
      return undefined;
    }
  };
  const theirs = Number.isInteger(pid) && pid > 1 ? ns(pid) : undefined;
  if (!theirs || theirs === ns('self')) throw new Error(`pid ${pid} is not an instance's init in a network namespace of its own (refusing to run there)`);
  return pid;
}
