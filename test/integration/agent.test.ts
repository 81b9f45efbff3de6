/**
 * The node agent against the real libvirtd, cgroups and overlayfs of this machine, through
 * its gRPC API, as the controller would call it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { AgentServiceClient, InstanceEvent, InstanceState, NodeHeartbeat, type InstanceSpec } from '@oarcloud/api';
import { callUnary, nullLogger, subjects } from '@oarcloud/common';
import {
  freePort,
  launchDaemon,
  localStateDir,
  needCommand,
  needPath,
  needRoot,
  prerequisites,
  tinyImage,
  waitFor,
  type BuiltImage,
  type DaemonProcess,
} from '@oarcloud/testkit';
import { DirLayerStore } from '../../packages/agent/src/drivers/images/index.js';

const p = prerequisites('agent', [
  needRoot,
  needCommand('virsh', '-c', 'lxc:///system', 'version'),
  needPath('packages/agent/dist/main.js'),
  needPath(join(localStateDir(), 'instances')),
]);

const node = `it-${process.pid}`;
const jobId = 900_000 + (process.pid % 10_000);
let dir: string;
let instancesDir: string;
let agent: DaemonProcess;
let config: Record<string, unknown>;
let client: AgentServiceClient;
let image: BuiltImage;
let pubKey: string;
let keyFile: string;
let seq = 0;

function newId(): string {
  return `i-${(Date.now() % 1e6).toString(16).padStart(6, '0')}${(++seq).toString(16).padStart(6, '0')}`;
}

function spec(over: Partial<InstanceSpec> = {}): InstanceSpec {
  const id = over.id ?? newId();
  return {
    id,
    name: `vm-${id.slice(2)}`,
    jobId,
    owner: 'alice',
    image: { name: image.name, layers: image.layers },
    vcpus: 1,
    memoryMib: 128,
    cpuset: '0',
    sshAuthorizedKeys: [pubKey],
    hostname: `vm-${id.slice(2)}`,
    networks: [],
    ...over,
  };
}

const call = {
  create: (s: InstanceSpec) => callUnary(client.createInstance.bind(client), { spec: s }, { timeoutMs: 60_000 }),
  destroy: (id: string) => callUnary(client.destroyInstance.bind(client), { id }, { timeoutMs: 60_000 }),
  get: (id: string) => callUnary(client.getInstance.bind(client), { id }),
  list: () => callUnary(client.listInstances.bind(client), { jobId: 0 }),
  stop: (id: string) => callUnary(client.stopInstance.bind(client), { id }, { timeoutMs: 60_000 }),
  start: (id: string) => callUnary(client.startInstance.bind(client), { id }, { timeoutMs: 60_000 }),
  release: () => callUnary(client.releaseJob.bind(client), { jobId }, { timeoutMs: 120_000 }),
};

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
}

/** Every host object of this test's node: domains, overlay mounts, cgroups, folders. */
function hostObjects(): { domains: string[]; mounts: string[]; cgroups: string[]; dirs: string[] } {
  const domains = sh('virsh', ['-c', 'lxc:///system', 'list', '--all', '--name'])
    .split('\n')
    .filter((n) => n.startsWith('oc-i-') && instanceIdsInRecords().concat(knownIds).some((id) => n === `oc-${id}`));
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(instancesDir));
  const cgroups: string[] = [];
  for (const ctrl of ['cpu', 'cpuset', 'memory', 'pids', 'freezer', 'devices', 'blkio', 'cpuacct']) {
    const job = `/sys/fs/cgroup/${ctrl}/machine/oc-${node}-j${jobId}.job`;
    if (existsSync(job)) cgroups.push(job);
  }
  const dirs = existsSync(instancesDir) ? readdirSync(instancesDir).filter((d) => d.startsWith('i-')) : [];
  return { domains, mounts, cgroups, dirs };
}

const knownIds: string[] = [];
function instanceIdsInRecords(): string[] {
  const recDir = join(dir, 'state', 'instances');
  return existsSync(recDir) ? readdirSync(recDir).map((f) => f.replace(/\.json$/, '')) : [];
}

/**
 * Removes whatever of this test's node is left on the host: domains whose oarcloud
 * metadata names the node, overlay mounts and folders under its instances folder, its job
 * partition. Only objects of this node are touched.
 */
function sweepNode(): void {
  for (const name of sh('virsh', ['-c', 'lxc:///system', 'list', '--all', '--name']).split('\n').filter((n) => n.startsWith('oc-'))) {
    let md = '';
    try {
      md = execFileSync('virsh', ['-c', 'lxc:///system', 'metadata', name, 'https://oarcloud.dev/xmlns/instance/1'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      continue;
    }
    if (md.includes(`<node>${node}</node>`)) execFileSync('virsh', ['-c', 'lxc:///system', 'destroy', name], { stdio: 'ignore' });
  }
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((m) => m.startsWith(`${instancesDir}/`));
  for (const m of mounts.reverse()) execFileSync('umount', ['-l', m], { stdio: 'ignore' });
  rmSync(instancesDir, { recursive: true, force: true });
  sh('bash', ['-c', `for d in /sys/fs/cgroup/*/machine/oc-${node}-j*.job; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \\; ; done; true`]);
}

function expectClean(): void {
  expect(hostObjects()).toEqual({ domains: [], mounts: [], cgroups: [], dirs: [] });
}

function grpcCode(err: unknown): string {
  return (err as Error).name;
}

/** ssh arguments that reach root in the instance whose init is `initPid` (dropbear in its network namespace). */
function sshArgs(initPid: number): string[] {
  return [
    '-i', keyFile,
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'LogLevel=ERROR',
    '-o', 'ConnectTimeout=10',
    '-o', `ProxyCommand=nsenter -t ${initPid} -n nc 127.0.0.1 22`,
    'root@instance',
  ];
}

/** Runs `cmd` as root in an instance over SSH. */
function sshIn(initPid: number, cmd: string, timeoutMs = 30_000): string {
  return execFileSync('ssh', [...sshArgs(initPid), cmd], { encoding: 'utf8', timeout: timeoutMs });
}

/** The v1 cgroup directory of `pid` in `controller` (from /proc/<pid>/cgroup). */
function cgroupDirOf(pid: number, controller: string): string {
  const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8')
    .split('\n')
    .find((l) => l.split(':')[1]?.split(',').includes(controller));
  if (!line) throw new Error(`pid ${pid} has no ${controller} cgroup`);
  return join('/sys/fs/cgroup', controller, line.split(':')[2]!);
}

function cgroupNumber(dir: string, file: string): number {
  return Number(readFileSync(join(dir, file), 'utf8').trim());
}

/** `key value` lines of a cgroup file (cpu.stat, memory.oom_control) as numbers. */
function cgroupKeyed(dir: string, file: string): Record<string, number> {
  return Object.fromEntries(
    readFileSync(join(dir, file), 'utf8')
      .trim()
      .split('\n')
      .map((l) => l.split(/\s+/))
      .map(([k, v]) => [k!, Number(v)]),
  );
}

/** libvirt's cgroup of domain `oc-<id>` inside this test's job partition, in `controller`; undefined if none. */
function domainCgroup(id: string, controller = 'memory'): string | undefined {
  const part = `/sys/fs/cgroup/${controller}/machine/oc-${node}-j${jobId}.job`;
  if (!existsSync(part)) return undefined;
  const n = readdirSync(part).find((d) => d.endsWith(`-oc-${id}.libvirt-lxc`));
  return n && join(part, n);
}

/** The state in an instance's durable record, read from the agent's state folder. */
function recordState(id: string): string | undefined {
  try {
    return (JSON.parse(readFileSync(join(dir, 'state', 'instances', `${id}.json`), 'utf8')) as { state: string }).state;
  } catch {
    return undefined;
  }
}

describe.skipIf(!p.ok)('agent - real libvirt, cgroups and overlays', () => {
  beforeAll(async () => {
    image = tinyImage();
    dir = mkdtempSync(join(localStateDir(), 'it-agent-'));
    instancesDir = join(localStateDir(), 'instances', node);
    mkdirSync(instancesDir, { recursive: true });
    await new DirLayerStore({ root: join(dir, 'state', 'layers'), idmapBase: 100_000, log: nullLogger }).importLayer(image.layers[0]!, image.layerTar);
    keyFile = join(dir, 'id_ed25519');
    sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', keyFile]);
    pubKey = readFileSync(`${keyFile}.pub`, 'utf8').trim();
    config = {
      nodeName: node,
      listen: `127.0.0.1:${await freePort()}`,
      metricsListen: `127.0.0.1:${await freePort()}`,
      natsUrl: 'nats://127.0.0.1:14222',
      libvirtUri: 'lxc:///system',
      stateDir: join(dir, 'state'),
      instancesDir,
      datapath: 'netdev',
      reconcileMs: 1000,
      heartbeatMs: 1000,
      logLevel: 'debug',
    };
    agent = await launchDaemon('agent', dir, config);
    client = new AgentServiceClient(agent.address, credentials.createInsecure());
  });

  afterAll(async () => {
    if (client) await call.release().catch(() => undefined);
    client?.close();
    await agent?.stop();
    // Safety net when the agent died mid-test (then ReleaseJob could not run).
    sweepNode();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('creates an instance that is RUNNING, confined to the job cpus and memory, unprivileged', async () => {
    const s = spec({ cpuset: '1', memoryMib: 96 });
    knownIds.push(s.id);
    const inst = await call.create(s);
    expect(inst.state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    expect(inst.node).toBe(node);
    const pid = inst.initPid;
    expect(pid).toBeGreaterThan(1);
    // The init may only run on the job's cpu, and everything of it sits in the job partition.
    expect(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]).toBe('1');
    const cg = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
    expect(cg).toMatch(new RegExp(`cpuset:/machine/oc-${node}-j${jobId}\\.job/`));
    const memPath = /:memory:(\S+)/.exec(cg)![1]!;
    expect(Number(readFileSync(`/sys/fs/cgroup/memory${memPath}/memory.limit_in_bytes`, 'utf8'))).toBe(96 * 1024 * 1024);
    const cpusetPath = /:cpuset:(\S+)/.exec(cg)![1]!;
    expect(readFileSync(`/sys/fs/cgroup/cpuset${cpusetPath}/cpuset.cpus`, 'utf8').trim()).toBe('1');
    // User namespace: root inside is uid 100000 outside.
    expect(readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/)).toEqual(['0', '100000', '65536']);
    // Dropped capabilities are out of the bounding set; what sshd needs stays.
    const bounding = BigInt(`0x${/CapBnd:\s*([0-9a-f]+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]}`);
    const has = (bit: number) => (bounding >> BigInt(bit)) & 1n;
    const CAP = { chown: 0, kill: 5, setgid: 6, setuid: 7, net_bind_service: 10, sys_module: 16, sys_rawio: 17, sys_chroot: 18, sys_pacct: 20, sys_time: 25, mknod: 27, audit_control: 30, mac_override: 32, mac_admin: 33, syslog: 34, wake_alarm: 35, block_suspend: 36 } as const;
    for (const c of ['sys_module', 'sys_rawio', 'sys_pacct', 'sys_time', 'mknod', 'audit_control', 'mac_override', 'mac_admin', 'syslog', 'wake_alarm', 'block_suspend'] as const) expect(has(CAP[c]), `CapBnd has ${c}`).toBe(0n);
    for (const c of ['chown', 'kill', 'setgid', 'setuid', 'net_bind_service', 'sys_chroot'] as const) expect(has(CAP[c]), `CapBnd lacks ${c}`).toBe(1n);
    // Its own network namespace.
    expect(sh('readlink', [`/proc/${pid}/ns/net`])).not.toBe(sh('readlink', ['/proc/self/ns/net']));
    await call.destroy(s.id);
  });

  it('lets root log in over SSH with the injected key, with the hostname set and fresh host keys', async () => {
    const s = spec();
    knownIds.push(s.id);
    const inst = await call.create(s);
    const out = await waitFor(() => sshIn(inst.initPid, 'hostname; id -u'), { timeoutMs: 15_000, intervalMs: 200, what: 'sshd to answer' });
    expect(out.trim().split('\n')).toEqual([s.hostname, '0']);
    // Host keys were made by this instance in its own writable layer, not shipped in the image.
    expect(readdirSync(join(instancesDir, s.id, 'upper', 'etc', 'dropbear')).length).toBeGreaterThan(0);
    await call.destroy(s.id);
  });

  it('agent - an instance uses at most its vcpus worth of CPU, even on a larger job cpuset (CFS quota)', async () => {
    const s = spec({ vcpus: 1, cpuset: '0-1' });
    knownIds.push(s.id);
    const inst = await call.create(s);
    let loops: ChildProcess | undefined;
    try {
      const cpu = cgroupDirOf(inst.initPid, 'cpu');
      const acct = cgroupDirOf(inst.initPid, 'cpuacct');
      expect(cpu).toContain(`/machine/oc-${node}-j${jobId}.job/`);
      expect(cgroupNumber(cpu, 'cpu.cfs_period_us')).toBe(100_000);
      expect(cgroupNumber(cpu, 'cpu.cfs_quota_us')).toBe(100_000);
      expect(readFileSync(join(cgroupDirOf(inst.initPid, 'cpuset'), 'cpuset.cpus'), 'utf8').trim()).toBe('0-1');
      // Two busy loops inside, for as long as this SSH session lasts: without the quota
      // they would take both cpus of the cpuset.
      await waitFor(() => sshIn(inst.initPid, 'echo up').trim() === 'up', { timeoutMs: 15_000, intervalMs: 200, what: 'sshd to answer' });
      loops = spawn('ssh', [...sshArgs(inst.initPid), `sh -c 'while :; do :; done' & sh -c 'while :; do :; done' & wait`], { stdio: 'ignore' });
      const coresOver = async (ms: number): Promise<number> => {
        const u = cgroupNumber(acct, 'cpuacct.usage');
        const t = process.hrtime.bigint();
        await new Promise((r) => setTimeout(r, ms));
        return (cgroupNumber(acct, 'cpuacct.usage') - u) / Number(process.hrtime.bigint() - t);
      };
      await waitFor(async () => (await coresOver(200)) > 0.5 || undefined, { timeoutMs: 15_000, intervalMs: 100, what: 'the busy loops to run in the instance' });
      const s0 = cgroupKeyed(cpu, 'cpu.stat');
      const cores = await coresOver(3000);
      const s1 = cgroupKeyed(cpu, 'cpu.stat');
      console.info('cpu under quota:', JSON.stringify({ cores: Math.round(cores * 100) / 100, throttledPeriods: s1.nr_throttled! - s0.nr_throttled!, periods: s1.nr_periods! - s0.nr_periods! }));
      // The loops really ran (about one core), no more than one core's worth, and the kernel throttled them.
      expect(cores).toBeGreaterThan(0.5);
      expect(cores).toBeLessThanOrEqual(1.2);
      expect(s1.nr_throttled! - s0.nr_throttled!).toBeGreaterThan(10);
    } finally {
      loops?.kill('SIGKILL');
      await call.destroy(s.id);
    }
  });

  it('agent - the memory limit is enforced: an allocation past it is OOM-killed inside, the instance keeps running', async () => {
    const s = spec({ memoryMib: 48 });
    knownIds.push(s.id);
    const inst = await call.create(s);
    try {
      const mem = cgroupDirOf(inst.initPid, 'memory');
      expect(cgroupNumber(mem, 'memory.limit_in_bytes')).toBe(48 * 1024 * 1024);
      await waitFor(() => sshIn(inst.initPid, 'echo up').trim() === 'up', { timeoutMs: 15_000, intervalMs: 200, what: 'sshd to answer' });
      const fail0 = cgroupNumber(mem, 'memory.failcnt');
      const oom0 = cgroupKeyed(mem, 'memory.oom_control');
      // dd's 128 MiB buffer is filled from /dev/zero: 128 MiB of anonymous memory in a 48 MiB cgroup (no swap here).
      const out = sshIn(inst.initPid, 'dd if=/dev/zero of=/dev/null bs=128M count=1 2>/dev/null; echo rc=$?');
      expect(out.trim()).toBe('rc=137'); // killed by SIGKILL: the OOM killer, inside the instance's cgroup
      expect(cgroupNumber(mem, 'memory.failcnt')).toBeGreaterThan(fail0);
      const oom1 = cgroupKeyed(mem, 'memory.oom_control');
      expect(oom1.oom_kill).toBeGreaterThan(oom0.oom_kill!);
      expect(oom1.under_oom).toBe(0);
      expect(cgroupNumber(mem, 'memory.max_usage_in_bytes')).toBeLessThanOrEqual(48 * 1024 * 1024);
      // The instance itself lives on: same init, RUNNING, still answering.
      expect(existsSync(`/proc/${inst.initPid}`)).toBe(true);
      const again = await call.get(s.id);
      expect(again.state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
      expect(again.initPid).toBe(inst.initPid);
      expect(sshIn(inst.initPid, 'echo alive').trim()).toBe('alive');
    } finally {
      await call.destroy(s.id);
    }
  });


  it('publishes every state change and a heartbeat on NATS', async () => {
    const nc = await connect({ servers: 'nats://127.0.0.1:14222', timeout: 3000 });
    try {
      const s = spec();
      knownIds.push(s.id);
      const events: Array<{ state: InstanceState; seq: number }> = [];
      const sub = nc.subscribe(subjects.instance(node, s.id));
      void (async () => {
        for await (const m of sub) {
          const ev = InstanceEvent.decode(m.data);
          expect(ev.instanceId).toBe(s.id);
          expect(ev.jobId).toBe(jobId);
          events.push({ state: ev.state, seq: ev.seq });
        }
      })();
      const beat = nc.subscribe(subjects.node(node), { max: 1 });
      await nc.flush();
      await call.create(s);
      await call.destroy(s.id);
      await waitFor(() => events.length >= 3, { timeoutMs: 5000, what: 'three instance events' });
      expect(events.map((e) => e.state)).toEqual([InstanceState.INSTANCE_STATE_CREATING, InstanceState.INSTANCE_STATE_RUNNING, InstanceState.INSTANCE_STATE_DELETED]);
      expect(events[1]!.seq).toBeGreaterThan(events[0]!.seq);
      sub.unsubscribe();
      for await (const m of beat) {
        const hb = NodeHeartbeat.decode(m.data);
        expect(hb.info?.name).toBe(node);
        expect(hb.info?.cores).toBeGreaterThan(0);
        expect(hb.memoryUsedBytes).toBeGreaterThan(0);
      }
    } finally {
      await nc.close();
    }
  });

  it('agent - heartbeats carry each running instance’s CPU time and memory, read from its cgroup', async () => {
    const nc = await connect({ servers: 'nats://127.0.0.1:14222', timeout: 3000 });
    try {
      const s = spec({ memoryMib: 96 });
      knownIds.push(s.id);
      const inst = await call.create(s);
      /** The first heartbeat (within 10 s) whose metrics satisfy `pick`. */
      const nextBeat = async <T>(pick: (hb: NodeHeartbeat) => T | undefined): Promise<T | undefined> => {
        const sub = nc.subscribe(subjects.node(node));
        const timer = setTimeout(() => sub.unsubscribe(), 10_000);
        try {
          for await (const m of sub) {
            const v = pick(NodeHeartbeat.decode(m.data));
            if (v !== undefined) return v;
          }
          return undefined;
        } finally {
          clearTimeout(timer);
          sub.unsubscribe();
        }
      };
      const mine = await nextBeat((hb) => hb.instanceMetrics.find((x) => x.instanceId === s.id));
      expect(mine, 'a heartbeat listing the instance').toBeDefined();
      const cpuNow = cgroupNumber(cgroupDirOf(inst.initPid, 'cpuacct'), 'cpuacct.usage') / 1e9;
      expect(mine!.cpuSeconds).toBeGreaterThan(0);
      expect(mine!.cpuSeconds).toBeLessThanOrEqual(cpuNow);
      expect(mine!.memoryBytes).toBeGreaterThan(0);
      expect(mine!.memoryBytes).toBeLessThanOrEqual(96 * 1024 * 1024);
      await call.destroy(s.id);
      expect(await nextBeat((hb) => (hb.instanceMetrics.some((x) => x.instanceId === s.id) ? undefined : true))).toBe(true);
    } finally {
      await nc.close();
    }
  });

  it('destroy leaves no domain, overlay mount, cgroup or folder; a second destroy is a no-op', async () => {
    const s = spec();
    knownIds.push(s.id);
    await call.create(s);
    expect((await call.destroy(s.id)).existed).toBe(true);
    expect((await call.destroy(s.id)).existed).toBe(false);
    expectClean();
  });

  it('refuses bad input with the right status and changes nothing', async () => {
    const before = (await call.list()).instances.length;
    const attempts: Array<[string, InstanceSpec]> = [
      ['NotFoundError', spec({ image: { name: 'nope:1', layers: [`sha256:${'0'.repeat(64)}`] } })],
      ['InvalidArgumentError', spec({ cpuset: '0-9999' })],
      ['InvalidArgumentError', spec({ memoryMib: 0 })],
      ['InvalidArgumentError', spec({ vcpus: 4, cpuset: '0' })],
      ['InvalidArgumentError', spec({ id: 'i-../../etc' })],
      ['InvalidArgumentError', spec({ name: 'Bad Name' })],
    ];
    for (const [want, s] of attempts) {
      await expect(call.create(s).catch(grpcCode)).resolves.toBe(want);
    }
    const ok = spec();
    knownIds.push(ok.id);
    await call.create(ok);
    const dup = spec({ name: ok.name });
    await expect(call.create(dup).catch(grpcCode)).resolves.toBe('AlreadyExistsError');
    await expect(call.get('i-000000000000').catch(grpcCode)).resolves.toBe('NotFoundError');
    expect((await call.list()).instances.length).toBe(before + 1);
    await call.destroy(ok.id);
    expectClean();
  });

  it('stops and starts an instance, keeping its writable layer', async () => {
    const s = spec();
    knownIds.push(s.id);
    await call.create(s);
    const stopped = await call.stop(s.id);
    expect(stopped.state).toBe(InstanceState.INSTANCE_STATE_STOPPED);
    expect(existsSync(join(instancesDir, s.id, 'upper'))).toBe(true);
    const started = await call.start(s.id);
    expect(started.state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    await call.destroy(s.id);
  });

  it('keeps instances running across an agent restart and re-attaches to them', async () => {
    const s = spec();
    knownIds.push(s.id);
    const inst = await call.create(s);
    await agent.stop();
    agent = await launchDaemon('agent', dir, config);
    const again = await call.get(s.id);
    expect(again.state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    expect(again.initPid).toBe(inst.initPid);
    await call.destroy(s.id);
  });

  it('agent - killed in the middle of a create, it restarts and converges with no orphan before any ReleaseJob', async () => {
    // An instance RUNNING before the kill: it must survive, and the list can never be empty.
    const survivor = spec();
    knownIds.push(survivor.id);
    await call.create(survivor);
    let victim: string | undefined;
    let round: InstanceSpec[] = [];
    // A round misses when every create finishes between two looks; then clean up and retry.
    for (let attempt = 0; attempt < 5 && !victim; attempt++) {
      round = [spec(), spec(), spec()];
      knownIds.push(...round.map((r) => r.id));
      const pending = round.map((r) => call.create(r).catch((e: ServiceError) => e));
      const deadline = Date.now() + 20_000;
      while (!victim && Date.now() < deadline) {
        // In flight: recorded as creating, overlay folder made, and libvirt is starting its domain.
        const hit = round.find((r) => recordState(r.id) === 'creating' && existsSync(join(instancesDir, r.id, 'rootfs')) && domainCgroup(r.id) !== undefined);
        if (hit) {
          await agent.kill();
          victim = hit.id;
        } else if (round.every((r) => recordState(r.id) === 'running')) {
          break;
        } else {
          await new Promise((r) => setTimeout(r, 1));
        }
      }
      await Promise.all(pending);
      if (!victim) for (const r of round) await call.destroy(r.id);
    }
    expect(victim, 'no create was caught in flight in 5 rounds').toBeDefined();
    // The agent is dead: its record of the victim is frozen at 'creating', with host objects made.
    expect(recordState(victim!)).toBe('creating');
    expect(existsSync(join(instancesDir, victim!))).toBe(true);
    const caughtCreating = round.filter((r) => recordState(r.id) === 'creating').map((r) => r.id);
    expect(caughtCreating).toContain(victim);

    agent = await launchDaemon('agent', dir, config);
    const ids = [survivor.id, ...round.map((r) => r.id)];
    const view = () => {
      const h = hostObjects();
      return {
        domains: sh('virsh', ['-c', 'lxc:///system', 'list', '--all', '--name'])
          .split('\n')
          .filter((n) => ids.some((id) => n === `oc-${id}`))
          .sort(),
        mounts: h.mounts.map((l) => /\/(i-[0-9a-f]{12})\//.exec(l.split(' ')[4] ?? '')?.[1] ?? l).sort(),
        dirs: h.dirs.sort(),
        records: instanceIdsInRecords().sort(),
        lxcCgroups: ids.filter((id) => domainCgroup(id) !== undefined).sort(),
      };
    };
    // Before any ReleaseJob: the start-up pass (and the periodic ones) converge on their own.
    const listed = await waitFor(
      async () => {
        const l = (await call.list()).instances;
        const running = l.map((i) => i.spec!.id).sort();
        const v = view();
        const same = [v.mounts, v.dirs, v.records, v.lxcCgroups].every((x) => JSON.stringify(x) === JSON.stringify(running));
        return same && JSON.stringify(v.domains) === JSON.stringify(running.map((id) => `oc-${id}`)) ? l : undefined;
      },
      { timeoutMs: 20_000, intervalMs: 250, what: `host objects to match the listed instances (last view ${JSON.stringify(view())})` },
    );
    expect(listed.length).toBeGreaterThanOrEqual(1);
    expect(listed.map((i) => i.spec!.id)).toContain(survivor.id);
    expect(listed.every((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING)).toBe(true);
    // Every create caught in flight was rolled back, everything of it gone.
    for (const id of caughtCreating) expect(listed.map((i) => i.spec!.id)).not.toContain(id);
    const leftovers = sh('bash', ['-c', `find /sys/fs/cgroup/*/machine -maxdepth 3 -name '*oc-${victim}*' 2>/dev/null || true`]);
    expect(leftovers.trim()).toBe('');
    // The survivor still answers, with the same init as before the kill.
    expect((await call.get(survivor.id)).state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    await call.release();
    expectClean();
  });


  it('leaves nothing behind after 20 create/destroy cycles', async () => {
    for (let i = 0; i < 20; i++) {
      const s = spec();
      knownIds.push(s.id);
      await call.create(s);
      await call.destroy(s.id);
    }
    expectClean();
    const leftovers = sh('bash', ['-c', `find /sys/fs/cgroup/*/machine -maxdepth 2 -name '*oc-i-*' 2>/dev/null | grep -F -e "${knownIds.join('" -e "')}" || true`]);
    expect(leftovers.trim()).toBe('');
  });
});
