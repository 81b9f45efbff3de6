/**
 * What the local cluster really holds, read from every source of truth at once, and the
 * invariants the fault suite checks after each round:
 * - no instance outside a live OAR job (agents' ListInstances);
 * - no libvirt domain, overlay mount, instance folder, host-side veth or OVS instance port
 *   that no agent lists (orphans of ours: `oc-` domains, `oc<id>` links, `oarcloud-*`
 *   external_ids);
 * - no job cgroup partition (`machine/oc-<node>-j<job>.job`) of a job that is not live;
 * - no VXLAN tunnel port of a network whose job is not live (or that the controller forgot).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { InstanceState, NetworkServiceClient, type Instance } from '@oarcloud/api';
import { bearer, callUnary } from '@oarcloud/common';
import { AGENT_ADDRESSES, agentClient, CONTROLLER_ADDRESS, localStateDir, sh } from '@oarcloud/testkit';

const STATE = localStateDir();
/** Every ovsdb of the local cluster: the host's (default socket) and each emulated node's. */
export const OVSDBS: Readonly<Record<string, string>> = {
  host: 'unix:/var/run/openvswitch/db.sock',
  ...Object.fromEntries(Object.keys(AGENT_ADDRESSES).map((n) => [n, `unix:${STATE}/nodes/${n}/ovs/db.sock`])),
};
const LIVE_STATES = new Set(['Waiting', 'Hold', 'toLaunch', 'toError', 'toAckReservation', 'Launching', 'Running', 'Suspended', 'Resuming', 'Finishing']);

/** OAR jobs that are not over yet (Finishing counts: its teardown may be under way). */
export function liveOarJobs(): Map<number, string> {
  const out = sh('oarstat', ['-J']).trim();
  const jobs = out ? (JSON.parse(out) as Record<string, { state: string }>) : {};
  return new Map(Object.entries(jobs).map(([id, j]) => [Number(id), j.state] as [number, string]).filter(([, s]) => LIVE_STATES.has(s)));
}

/** Every agent's instances, by node (an agent that does not answer throws). */
export async function agentInstances(): Promise<Map<string, Instance[]>> {
  const entries = await Promise.all(
    Object.entries(AGENT_ADDRESSES).map(async ([node, address]) => {
      const a = agentClient(address);
      try {
        return [node, (await callUnary(a.listInstances.bind(a), { jobId: 0 }, { timeoutMs: 5000 })).instances] as const;
      } finally {
        a.close();
      }
    }),
  );
  return new Map(entries);
}

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 15_000, stdio: ['ignore', 'pipe', 'pipe'] });
}

interface OvsPort {
  name: string;
  ext: Record<string, string>;
}

/** Ports of one ovsdb with their external_ids (throws when the ovsdb does not answer). */
function ovsPorts(db: string): OvsPort[] {
  const out = JSON.parse(run('ovs-vsctl', [`--db=${db}`, '--timeout=5', '--format=json', '--data=json', '--columns=name,external_ids', 'list', 'Port'])) as { data: Array<[string, ['map', Array<[string, string]>]]> };
  return out.data.map(([name, ext]) => ({ name, ext: Object.fromEntries(ext[1]) }));
}

/** Link names in the host's network namespace and in each emulated node's. */
function links(): string[] {
  const namespaces = ['', ...Object.keys(AGENT_ADDRESSES).map((n) => `oc-${n}`)];
  const names: string[] = [];
  for (const ns of namespaces) {
    let out = '';
    try {
      out = ns ? run('ip', ['netns', 'exec', ns, 'ip', '-o', 'link']) : run('ip', ['-o', 'link']);
    } catch {
      continue; // a node without its own netns
    }
    for (const line of out.split('\n')) {
      const m = /^\d+: ([^:@]+)/.exec(line);
      if (m) names.push(m[1]!);
    }
  }
  return names;
}

/** The controller's networks (admin view): id → job id. */
async function controllerNetworks(adminToken: string): Promise<Map<string, number>> {
  const c = new NetworkServiceClient(CONTROLLER_ADDRESS, credentials.createInsecure());
  try {
    const r = await callUnary(c.listNetworks.bind(c), { jobId: 0 }, { metadata: bearer(adminToken), timeoutMs: 10_000 });
    return new Map(r.networks.map((n) => [n.id, n.jobId]));
  } finally {
    c.close();
  }
}

export interface World {
  live: Map<number, string>;
  instances: Map<string, Instance[]>;
  problems: string[];
}

/**
 * Reads everything and lists every broken invariant (empty: the cluster is consistent).
 * `mustRun`: jobs whose instances must all be RUNNING, with how many they must have.
 */
export async function audit(adminToken: string, mustRun: Map<number, number> = new Map()): Promise<World> {
  const problems: string[] = [];
  const live = liveOarJobs();
  const instances = await agentInstances();
  const known = new Map<string, Instance>();
  for (const [node, list] of instances) {
    for (const i of list) {
      const id = i.spec!.id;
      known.set(id, i);
      if (!live.has(i.spec!.jobId)) problems.push(`instance ${id} on ${node} of job ${i.spec!.jobId}, which is not live`);
    }
  }
  for (const [job, count] of mustRun) {
    const mine = [...known.values()].filter((i) => i.spec!.jobId === job);
    const running = mine.filter((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING);
    if (running.length !== count || mine.length !== count) problems.push(`job ${job}: ${running.length}/${count} RUNNING (${mine.map((i) => `${i.spec!.id}=${i.state}`).join(' ')})`);
  }
  // libvirt domains of ours (one libvirtd serves every emulated node).
  for (const name of run('virsh', ['-c', 'lxc:///system', 'list', '--all', '--name']).split('\n').map((s) => s.trim())) {
    if (name.startsWith('oc-') && !known.has(name.slice(3))) problems.push(`orphan domain ${name}`);
  }
  // Overlay mounts and instance folders.
  const instancesRoot = join(STATE, 'instances');
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const mountPoint = line.split(' ')[1] ?? '';
    const m = new RegExp(`^${instancesRoot}/([^/]+)/(i-[0-9a-f]{12})(/|$)`).exec(mountPoint);
    if (m && !known.has(m[2]!)) problems.push(`orphan mount ${mountPoint}`);
  }
  for (const node of Object.keys(AGENT_ADDRESSES)) {
    const dir = join(instancesRoot, node);
    if (!existsSync(dir)) continue;
    for (const entry of readdirSync(dir)) if (/^i-[0-9a-f]{12}$/.test(entry) && !known.has(entry)) problems.push(`orphan instance folder ${node}/${entry}`);
  }
  // Job cgroup partitions of jobs that are over.
  for (const ctrl of readdirSync('/sys/fs/cgroup')) {
    const machine = join('/sys/fs/cgroup', ctrl, 'machine');
    if (!existsSync(machine)) continue;
    for (const entry of readdirSync(machine)) {
      const m = /^oc-(.+)-j(\d+)\.job$/.exec(entry);
      if (m && !live.has(Number(m[2]))) problems.push(`orphan cgroup ${ctrl}/machine/${entry}`);
    }
  }
  // Host-side veth ends of instances.
  for (const link of links()) {
    const m = /^oc([0-9a-f]{12})[0-9a-z]$/.exec(link);
    if (m && !known.has(`i-${m[1]}`)) problems.push(`orphan link ${link}`);
  }
  // OVS ports tagged ours.
  const networks = await controllerNetworks(adminToken);
  for (const [where, db] of Object.entries(OVSDBS)) {
    let ports: OvsPort[];
    try {
      ports = ovsPorts(db);
    } catch (err) {
      problems.push(`ovsdb of ${where} does not answer: ${(err as Error).message.split('\n')[0]}`);
      continue;
    }
    for (const p of ports) {
      if (p.ext['oarcloud-kind'] === 'instance' && !known.has(p.ext['oarcloud-instance'] ?? '')) problems.push(`orphan OVS port ${p.name} on ${where} (instance ${p.ext['oarcloud-instance']})`);
      if (p.ext['oarcloud-kind'] === 'tunnel') {
        const net = p.ext['oarcloud-network'] ?? '';
        const job = networks.get(net);
        if (job === undefined || !live.has(job)) problems.push(`orphan tunnel ${p.name} on ${where} (network ${net}, job ${job ?? 'unknown'})`);
      }
    }
  }
  return { live, instances, problems };
}

/** The admin token of the local cluster. */
export function adminToken(): string {
  return readFileSync(join(STATE, 'controller/admin.token'), 'utf8').trim();
}
