/**
 * The agent's rollback and start-up sweep on the real host (libvirtd, cgroups v1, overlays,
 * veths), through a private agent started from packages/agent/dist/main.js:
 * - a create that fails at its last step (the network attachment: this agent's ovsdb socket
 *   does not exist) after libvirt started its domain, and one that libvirt itself refuses
 *   (its host veth name is taken), leave no domain, overlay, folder, record, job partition
 *   or veth;
 * - orphans tagged as ours (a domain with our metadata for this node, overlay folders named
 *   as instances, job partitions of this node) are removed when the agent starts; untagged
 *   look-alikes (a domain without our metadata, one of another node, foreign folders, mounts
 *   and cgroups) are left alone.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServiceClient, InstanceEvent, InstanceState, type InstanceSpec } from '@oarcloud/api';
import { callUnary, nullLogger, subjects, UnavailableError, InternalError } from '@oarcloud/common';
import { freePort, launchDaemon, localStateDir, needCommand, needPath, needRoot, prerequisites, tinyImage, waitFor, type BuiltImage, type DaemonProcess } from '@oarcloud/testkit';
import { HostCgroups } from '../../packages/agent/src/drivers/cgroups/index.js';
import { DirLayerStore, OverlayRootfs } from '../../packages/agent/src/drivers/images/index.js';
import { domainXml } from '../../packages/agent/src/drivers/libvirt/domain-xml.js';
import { hostIfName } from '../../packages/agent/src/network/links.js';

const URI = 'lxc:///system';
const NS = 'https://oarcloud.dev/xmlns/instance/1';
const p = prerequisites('agent recovery', [
  needRoot,
  needCommand('virsh', '-c', URI, 'version'),
  needCommand('ip', 'link', 'show'),
  needPath('packages/agent/dist/main.js'),
  needPath(join(localStateDir(), 'instances')),
]);

const node = `itr-${process.pid}`;
const jobId = 930_000 + (process.pid % 10_000);
const CONTROLLERS = ['blkio', 'cpu', 'cpuacct', 'cpuset', 'devices', 'freezer', 'memory', 'pids'];
let seq = 0;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
}
function ok(cmd: string, args: string[]): boolean {
  try {
    sh(cmd, args);
    return true;
  } catch {
    return false;
  }
}
function newId(): string {
  return `i-${(process.pid % 0xffff).toString(16).padStart(4, '0')}a${(Date.now() % 0xfff).toString(16).padStart(3, '0')}${(++seq).toString(16).padStart(4, '0')}`;
}
function domains(): string[] {
  return sh('virsh', ['-c', URI, 'list', '--all', '--name'])
    .split('\n')
    .filter((n) => n !== '');
}
function domState(name: string): string {
  try {
    return sh('virsh', ['-c', URI, 'domstate', name]).trim();
  } catch {
    return 'absent';
  }
}
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(`${dir}/`));
}
function partitionDirs(name: string): string[] {
  return CONTROLLERS.map((c) => `/sys/fs/cgroup/${c}/machine/${name}`).filter((d) => existsSync(d));
}
function lxcCgroupsOf(domain: string): string {
  return sh('bash', ['-c', `find /sys/fs/cgroup/*/machine -maxdepth 3 -type d -name 'lxc-*-${domain}.libvirt-lxc' 2>/dev/null || true`]).trim();
}

describe.skipIf(!p.ok)('agent recovery - rollback and orphan sweep on the real host', () => {
  let dir = '';
  let instancesDir = '';
  /** Roots of the look-alike domains: outside the agent's instances folder. */
  let foreignDir = '';
  let agent: DaemonProcess | undefined;
  let config: Record<string, unknown>;
  let client: AgentServiceClient;
  let image: BuiltImage;
  let layers: DirLayerStore;
  const planted = { domains: [] as string[], links: [] as string[], cgroups: [] as string[], mounts: [] as string[] };

  const call = {
    create: (s: InstanceSpec) => callUnary(client.createInstance.bind(client), { spec: s }, { timeoutMs: 60_000 }),
    list: () => callUnary(client.listInstances.bind(client), { jobId: 0 }),
    release: (job: number) => callUnary(client.releaseJob.bind(client), { jobId: job }, { timeoutMs: 120_000 }),
  };
  const start = async (): Promise<void> => {
    agent = await launchDaemon('agent', dir, config);
    client?.close();
    client = new AgentServiceClient(agent.address, credentials.createInsecure());
  };
  const spec = (over: Partial<InstanceSpec> = {}): InstanceSpec => {
    const id = over.id ?? newId();
    return {
      id,
      name: `r-${id.slice(2)}`,
      jobId,
      owner: 'alice',
      image: { name: image.name, layers: image.layers },
      vcpus: 1,
      memoryMib: 64,
      cpuset: '0',
      sshAuthorizedKeys: [],
      hostname: `r-${id.slice(2)}`,
      networks: [],
      ...over,
    };
  };
  const attachment = { networkId: 'n-0000000a11ce', vni: 4711, interface: 'eth0', mac: '02:0c:0a:11:ce:02', address: '10.250.17.2/24', gateway: '', mtu: 1400 };

  /** The agent's log lines (JSON) about instance `id`, by message. */
  const logOf = (id: string): string[] =>
    readFileSync(join(dir, 'agent.log'), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; instanceId?: string })
      .filter((l) => l.instanceId === id)
      .map((l) => l.msg);

  /** Nothing of instance `id` is left anywhere on the host. */
  const expectNothingOf = (id: string): void => {
    expect(domains()).not.toContain(`oc-${id}`);
    expect(mountsUnder(instancesDir)).toEqual([]);
    expect(existsSync(join(instancesDir, id))).toBe(false);
    expect(existsSync(join(dir, 'state', 'instances', `${id}.json`))).toBe(false);
    expect(partitionDirs(`oc-${node}-j${jobId}.job`)).toEqual([]);
    expect(lxcCgroupsOf(`oc-${id}`)).toBe('');
  };

  beforeAll(async () => {
    image = tinyImage();
    dir = mkdtempSync(join(localStateDir(), 'it-recovery-'));
    instancesDir = join(localStateDir(), 'instances', node);
    foreignDir = join(localStateDir(), 'instances', `${node}-foreign`);
    mkdirSync(instancesDir, { recursive: true });
    mkdirSync(foreignDir, { recursive: true });
    layers = new DirLayerStore({ root: join(dir, 'state', 'layers'), idmapBase: 100_000, log: nullLogger });
    await layers.importLayer(image.layers[0]!, image.layerTar);
    config = {
      nodeName: node,
      listen: `127.0.0.1:${await freePort()}`,
      metricsListen: `127.0.0.1:${await freePort()}`,
      natsUrl: 'nats://127.0.0.1:14222',
      libvirtUri: URI,
      stateDir: join(dir, 'state'),
      instancesDir,
      datapath: 'netdev',
      // No OVS behind this socket: every network attachment fails, after the domain started.
      ovsdb: `unix:${join(dir, 'no-ovsdb.sock')}`,
      reconcileMs: 1000,
      heartbeatMs: 5000,
      logLevel: 'debug',
    };
    await start();
  });

  afterAll(async () => {
    if (client) await call.release(jobId).catch(() => undefined);
    client?.close();
    await agent?.stop();
    // Safety net: what a failed test left of this node, and everything planted.
    for (const name of [...planted.domains, ...domains().filter((n) => n.startsWith('oc-'))]) {
      let md = '';
      try {
        md = sh('virsh', ['-c', URI, 'metadata', name, NS]);
      } catch {
        md = '';
      }
      if (planted.domains.includes(name) || md.includes(`<node>${node}</node>`)) ok('virsh', ['-c', URI, 'destroy', name]);
    }
    for (const m of [...mountsUnder(instancesDir), ...mountsUnder(foreignDir), ...planted.mounts].reverse()) ok('umount', ['-l', m]);
    for (const l of planted.links) ok('ip', ['link', 'del', l]);
    rmSync(instancesDir, { recursive: true, force: true });
    rmSync(foreignDir, { recursive: true, force: true });
    sh('bash', ['-c', `for d in /sys/fs/cgroup/*/machine/oc-${node}-j*.job ${planted.cgroups.join(' ')}; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \\; ; done; true`]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('agent recovery - a create failing at its network step, after its domain started, leaves nothing behind', async () => {
    const s = spec({ networks: [attachment] });
    const veth = hostIfName(s.id, 0);
    const nc = await connect({ servers: 'nats://127.0.0.1:14222', timeout: 3000 });
    const states: InstanceState[] = [];
    try {
      const sub = nc.subscribe(subjects.instance(node, s.id));
      void (async () => {
        for await (const m of sub) states.push(InstanceEvent.decode(m.data).state);
      })();
      await nc.flush();
      const err = await call.create(s).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(UnavailableError);
      expect((err as Error).message).toMatch(/ovs-vsctl|database connection failed/);
      // libvirt really started the domain (virDomainCreateXML returned) before the failure.
      const msgs = logOf(s.id);
      expect(msgs).toContain('domain created');
      expect(msgs.indexOf('instance create failed, rolling back')).toBeGreaterThan(msgs.indexOf('domain created'));
      await waitFor(() => states.length >= 3 || undefined, { timeoutMs: 5000, what: 'three instance events' });
      // Never announced RUNNING: the controller (and the OAR prologue) never saw it up.
      expect(states).toEqual([InstanceState.INSTANCE_STATE_CREATING, InstanceState.INSTANCE_STATE_FAILED, InstanceState.INSTANCE_STATE_DELETED]);
      sub.unsubscribe();
    } finally {
      await nc.close();
    }
    expectNothingOf(s.id);
    expect(ok('ip', ['link', 'show', 'dev', veth])).toBe(false);
    expect((await call.list()).instances).toEqual([]);
  });

  it('agent recovery - a domain libvirt refuses (its host veth name is taken) rolls back overlay, identity and job partition', async () => {
    const s = spec({ networks: [attachment] });
    const veth = hostIfName(s.id, 0);
    // Not the agent's: a link that happens to have the name libvirt must create.
    sh('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', `itrp${process.pid % 100_000}`]);
    planted.links.push(veth);
    const err = await call.create(s).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(InternalError);
    expect((err as Error).message).toMatch(/virDomainCreateXML/);
    console.info('libvirt refused the domain:', (err as Error).message);
    expect(logOf(s.id)).not.toContain('domain created');
    expect(logOf(s.id)).toContain('instance create failed, rolling back');
    expectNothingOf(s.id);
    // libvirt's own clean-up of the failed start deletes the link named in the domain, even
    // one it did not make: the stale name is gone, and the next attempt is not blocked by it.
    expect(ok('ip', ['link', 'show', 'dev', veth])).toBe(false);
    planted.links.splice(planted.links.indexOf(veth), 1);
    // The same instance then gets past libvirt (nothing of the failed attempt is in the way),
    // up to its network step, which fails as every network here does: rolled back again.
    await expect(call.create(s)).rejects.toBeInstanceOf(UnavailableError);
    expect(logOf(s.id)).toContain('domain created');
    expectNothingOf(s.id);
    expect(ok('ip', ['link', 'show', 'dev', veth])).toBe(false);
  });

  it('agent recovery - at start the agent removes orphans tagged as ours and leaves look-alikes alone', async () => {
    await agent!.stop();
    agent = undefined;
    const cg = await HostCgroups.create({ log: nullLogger });
    const ours = new OverlayRootfs({ instancesDir, layers, idmapBase: 100_000, log: nullLogger });
    const foreign = new OverlayRootfs({ instancesDir: foreignDir, layers, idmapBase: 100_000, log: nullLogger });
    const idmap = { start: 100_000, count: 65_536 };
    const createDomain = (xml: string): void => {
      const file = join(dir, `plant-${++seq}.xml`);
      writeFileSync(file, xml);
      sh('virsh', ['-c', URI, 'create', file]);
    };

    // Tagged as ours, unknown to the agent's records:
    // (a) a running domain with our metadata for this node, on an overlay, in a job partition;
    const orphanJob = jobId + 1;
    const a = newId();
    const aRoot = (await ours.ensure(a, image.layers)).rootDir;
    const aPartition = await cg.ensureJobPartition(node, orphanJob, '0');
    createDomain(domainXml({ instanceId: a, jobId: orphanJob, node, rootDir: aRoot, init: '/sbin/init', vcpus: 1, cpuset: '0', memoryMib: 64, partition: aPartition, idmap, interfaces: [] }));
    // (b) a mounted overlay with no domain; (c) an empty job partition of this node.
    const b = newId();
    await ours.ensure(b, image.layers);
    await cg.ensureJobPartition(node, orphanJob + 1, '0');

    // Look-alikes, not ours:
    // (d) a domain named like ours without our metadata; (e) one with our metadata for another node;
    const d = newId();
    const dXml = domainXml({ instanceId: d, jobId, node, rootDir: (await foreign.ensure(d, image.layers)).rootDir, init: '/sbin/init', vcpus: 1, cpuset: '0', memoryMib: 64, idmap, interfaces: [] });
    createDomain(dXml.replace(/ {2}<metadata>[\s\S]*<\/metadata>\n/, ''));
    const e = newId();
    createDomain(domainXml({ instanceId: e, jobId, node: `${node}-other`, rootDir: (await foreign.ensure(e, image.layers)).rootDir, init: '/sbin/init', vcpus: 1, cpuset: '0', memoryMib: 64, idmap, interfaces: [] }));
    planted.domains.push(`oc-${a}`, `oc-${d}`, `oc-${e}`);
    // (f) folders in the agent's instances folder that are not instance folders, one with a mount;
    const keep = join(instancesDir, 'keep-me');
    mkdirSync(join(keep, 'mnt'), { recursive: true });
    writeFileSync(join(keep, 'file'), 'mine\n');
    sh('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'itr-tmpfs', join(keep, 'mnt')]);
    planted.mounts.push(join(keep, 'mnt'));
    mkdirSync(join(instancesDir, 'i-NOT-AN-ID'));
    // (g) cgroups: another node's job partition, and names that are not job partitions.
    const otherNodePart = `oc-${node}-other-j${orphanJob}.job`;
    const lookAlikes = [otherNodePart, `${node}-j${orphanJob}.job`, `oc-${node}-j${orphanJob}.partition`];
    for (const n of lookAlikes) {
      for (const c of CONTROLLERS) {
        mkdirSync(`/sys/fs/cgroup/${c}/machine/${n}`);
        planted.cgroups.push(`/sys/fs/cgroup/${c}/machine/${n}`);
      }
    }
    expect(domState(`oc-${a}`)).toBe('running');
    expect(mountsUnder(instancesDir).sort()).toEqual([join(instancesDir, a, 'rootfs'), join(instancesDir, b, 'rootfs'), join(keep, 'mnt')].sort());

    await start();
    // The start-up pass ran before the agent served.
    const check = (): void => {
      expect(domState(`oc-${a}`)).toBe('absent');
      expect(lxcCgroupsOf(`oc-${a}`)).toBe('');
      for (const id of [a, b]) expect(existsSync(join(instancesDir, id))).toBe(false);
      expect(partitionDirs(`oc-${node}-j${orphanJob}.job`)).toEqual([]);
      expect(partitionDirs(`oc-${node}-j${orphanJob + 1}.job`)).toEqual([]);
      // Untouched: the look-alikes, running, mounted, present in every controller.
      expect(domState(`oc-${d}`)).toBe('running');
      expect(domState(`oc-${e}`)).toBe('running');
      expect(mountsUnder(instancesDir)).toEqual([join(keep, 'mnt')]);
      expect(readFileSync(join(keep, 'file'), 'utf8')).toBe('mine\n');
      expect(readdirSync(instancesDir).sort()).toEqual(['i-NOT-AN-ID', 'keep-me']);
      for (const n of lookAlikes) expect(partitionDirs(n)).toHaveLength(CONTROLLERS.length);
    };
    check();
    expect((await call.list()).instances).toEqual([]);
    // And the periodic passes (every second here) leave the look-alikes alone too.
    await new Promise((r) => setTimeout(r, 2500));
    check();
  });
});
