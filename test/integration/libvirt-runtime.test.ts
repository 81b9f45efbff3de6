/**
 * LibvirtRuntime against the real libvirtd of the local cluster (lxc:///system): the
 * ContainerRuntime contract, plus host-level checks (cgroups, cpuset, network namespace,
 * leftovers) and the process exit path with the event worker running.
 *
 * Every domain is a busybox container whose root lives in a temporary folder under the
 * shared instances folder; all are destroyed and the folder removed in afterAll.
 */
import { spawn } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError, nullLogger } from '@oarcloud/common';
import { localStateDir, needCommand, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';
import { runtimeContract } from '../../packages/agent/src/drivers/runtime.contract.js';
import type { DomainEvent, DomainSpec } from '../../packages/agent/src/drivers/runtime.js';
import { LibvirtRuntime } from '../../packages/agent/src/drivers/libvirt/runtime.js';
import { cgroupDirsOf } from '../../packages/agent/src/drivers/libvirt/host.js';
import { Connection } from '../../packages/agent/src/drivers/libvirt/connection.js';
import { domainXml } from '../../packages/agent/src/drivers/libvirt/domain-xml.js';
import { LibvirtError, VIR_ERR } from '../../packages/agent/src/drivers/libvirt/errors.js';

const URI = 'lxc:///system';
const p = prerequisites('libvirt', [needRoot, needCommand('virsh', '-c', URI, 'list'), needCommand('test', '-x', '/bin/busybox')]);
const repo = fileURLToPath(new URL('../../', import.meta.url));

/** A busybox root whose init just sleeps. */
function makeRootfs(dir: string): string {
  const root = join(dir, 'rootfs');
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'tmp', 'etc', 'run']) mkdirSync(join(root, d), { recursive: true });
  copyFileSync('/bin/busybox', join(root, 'bin/busybox'));
  for (const c of ['sh', 'sleep', 'cat', 'ls', 'echo']) symlinkSync('busybox', join(root, 'bin', c));
  writeFileSync(join(root, 'sbin/init-script'), '#!/bin/sh\nexec sleep 1000000\n');
  chmodSync(join(root, 'sbin/init-script'), 0o755);
  return root;
}

function cgroupValue(dirs: string[], controller: string, file: string): number {
  const dir = dirs.find((d) => d.includes(`/${controller}/`));
  if (!dir) throw new Error(`no ${controller} cgroup among ${dirs.join(', ')}`);
  return Number(readFileSync(join(dir, file), 'utf8').trim());
}

let work = '';
let rootfs = '';
const spec = (instanceId: string, node: string): DomainSpec => ({
  instanceId,
  jobId: 4242,
  node,
  rootDir: rootfs,
  init: '/sbin/init-script',
  vcpus: 1,
  cpuset: '1',
  memoryMib: 64,
  interfaces: [],
});

describe.skipIf(!p.ok)('libvirt runtime', () => {
  const opened: LibvirtRuntime[] = [];
  beforeAll(() => {
    work = mkdtempSync(join(localStateDir(), 'instances', '.it-libvirt-'));
    rootfs = makeRootfs(work);
  });
  afterAll(async () => {
    // Safety net: whatever a failed test left, of any node this file used.
    for (const rt of opened) {
      for (const d of await rt.list().catch(() => [])) await rt.destroy(d.instanceId).catch(() => undefined);
      await rt.close().catch(() => undefined);
    }
    if (work) rmSync(work, { recursive: true, force: true });
  });
  const open = async (node: string, opts?: Parameters<typeof LibvirtRuntime.open>[3]): Promise<LibvirtRuntime> => {
    const rt = await LibvirtRuntime.open(URI, node, nullLogger, opts);
    opened.push(rt);
    return rt;
  };

  runtimeContract(
    'libvirt',
    async (node) => {
      const runtime = await open(node);
      return {
        runtime,
        limits: async (id) => {
          const dirs = await runtime.cgroupDirs(id);
          return {
            memoryMib: cgroupValue(dirs, 'memory', 'memory.limit_in_bytes') / (1024 * 1024),
            cpuShares: cgroupValue(dirs, 'cpu', 'cpu.shares'),
            cpuPeriodUs: cgroupValue(dirs, 'cpu', 'cpu.cfs_period_us'),
            cpuQuotaUs: cgroupValue(dirs, 'cpu', 'cpu.cfs_quota_us'),
          };
        },
      };
    },
    spec,
  );

  describe('host', () => {
    const node = `it-host-${process.pid}`;
    let rt: LibvirtRuntime;
    beforeAll(async () => {
      rt = await open(node);
    });

    it('libvirt runtime - version is libvirt 9.x', async () => {
      expect(await rt.version()).toMatch(/^\d+\.\d+\.\d+$/);
    });

    it('libvirt runtime - init runs only on the given cpuset, in its own network namespace', async () => {
      const id = `it-ns-${process.pid}`;
      try {
        const st = await rt.create({ ...spec(id, node), cpuset: '1' });
        expect(st.initPid).toBeGreaterThan(1);
        expect((await rt.get(id))?.initPid).toBe(st.initPid);
        // The init script execs sleep: the pid is the container's init, not the controller.
        await waitFor(() => readFileSync(`/proc/${st.initPid}/cmdline`, 'utf8').split('\0')[0] === 'sleep', { timeoutMs: 5000, what: 'init to exec sleep' });
        expect(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${st.initPid}/status`, 'utf8'))?.[1]).toBe('1');
        expect(readlinkSync(`/proc/${st.initPid}/ns/net`)).not.toBe(readlinkSync('/proc/self/ns/net'));
      } finally {
        await rt.destroy(id);
      }
    });

    it('libvirt runtime - 20 create/destroy cycles leave no domain and no cgroup behind', async () => {
      const ids = Array.from({ length: 20 }, (_, i) => `it-cyc-${process.pid}-${i}`);
      for (const id of ids) {
        await rt.create(spec(id, node));
        expect(await rt.destroy(id)).toBe(true);
      }
      expect(await rt.list()).toEqual([]);
      for (const id of ids) expect(await cgroupDirsOf(`oc-${id}`)).toEqual([]);
    }, 120_000);

    it('libvirt runtime - a failed start is a typed error and leaves no domain or cgroup', async () => {
      const id = `it-fail-${process.pid}`;
      const err = await rt.create({ ...spec(id, node), rootDir: join(work, 'no-such-root') }).catch((e: unknown) => e);
      // libvirt_lxc cannot mount the root: libvirt says VIR_ERR_INTERNAL_ERROR, which is ours InternalError.
      expect(err).toBeInstanceOf(InternalError);
      expect((err as InternalError).cause).toBeInstanceOf(LibvirtError);
      expect(((err as InternalError).cause as LibvirtError).code).toBe(VIR_ERR.INTERNAL_ERROR);
      expect(((err as InternalError).cause as LibvirtError).call).toBe('virDomainCreateXML');
      expect(await rt.get(id)).toBeUndefined();
      expect(await cgroupDirsOf(`oc-${id}`)).toEqual([]);
    });

    it('libvirt runtime - libvirt errors reach callers as their typed classes', async () => {
      const conn = await Connection.open(URI, nullLogger, 1);
      try {
        const unknown = `oc-it-unknown-${process.pid}`;
        // A plain Error, or an error of the wrong class, fails every one of these.
        for (const op of [() => conn.info(unknown), () => conn.undefine(unknown), () => conn.start(unknown), () => conn.setParameters(unknown, { cpuShares: 100n })]) {
          const err = await op().then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(err).toBeInstanceOf(NotFoundError);
          expect((err as NotFoundError).cause).toBeInstanceOf(LibvirtError);
          expect(((err as NotFoundError).cause as LibvirtError).code).toBe(VIR_ERR.NO_DOMAIN);
        }
        await expect(conn.define('<domain type="lxc"><name>x</name>')).rejects.toBeInstanceOf(InvalidArgumentError);
        // Undefining a transient (running) domain is not valid in its state.
        const id = `it-tr-${process.pid}`;
        await rt.create(spec(id, node));
        try {
          expect((await conn.info(`oc-${id}`)).persistent).toBe(false);
          await expect(conn.undefine(`oc-${id}`)).rejects.toBeInstanceOf(FailedPreconditionError);
        } finally {
          await rt.destroy(id);
        }
      } finally {
        await conn.close();
      }
    });

    it('libvirt runtime - define, get info, start and undefine a persistent domain', async () => {
      // The agent's instances stay transient (see connection.ts); the binding still covers
      // persistent domains, checked here against libvirtd.
      const defNode = `it-def-${process.pid}`;
      const def = await open(defNode);
      const conn = await Connection.open(URI, nullLogger, 1);
      const id = `it-def-${process.pid}`;
      const name = `oc-${id}`;
      try {
        expect(await conn.define(domainXml({ ...spec(id, defNode), memoryMib: 48 }))).toBe(name);
        const off = await conn.info(name);
        expect(off).toMatchObject({ state: 'shutoff', persistent: true, maxMemKib: 48 * 1024, nrVirtCpu: 1 });
        // A defined domain that is not running is not listed as a live instance.
        expect((await def.get(id))?.state).toBe('shutoff');
        await conn.start(name);
        const on = await conn.info(name);
        expect(on).toMatchObject({ state: 'running', persistent: true, maxMemKib: 48 * 1024, nrVirtCpu: 1 });
        expect(typeof on.cpuTimeNs).toBe('bigint');
        expect((await def.get(id))?.initPid).toBeGreaterThan(1);
        await expect(conn.start(name)).rejects.toBeInstanceOf(FailedPreconditionError);
        expect(await def.destroy(id)).toBe(true);
        // Stopped, the definition stays until it is undefined.
        expect(await conn.info(name)).toMatchObject({ state: 'shutoff', persistent: true });
        await conn.undefine(name);
        await expect(conn.info(name)).rejects.toBeInstanceOf(NotFoundError);
        await expect(conn.undefine(name)).rejects.toBeInstanceOf(NotFoundError);
        expect(await cgroupDirsOf(name)).toEqual([]);
      } finally {
        await def.destroy(id).catch(() => undefined);
        await conn.undefine(name).catch(() => undefined);
        await conn.close();
      }
    });

    it('libvirt runtime - the Node event loop stays responsive while 10 instances are created in parallel', async () => {
      const ids = Array.from({ length: 10 }, (_, i) => `it-par-${process.pid}-${i}`);
      const h = monitorEventLoopDelay({ resolution: 5 });
      // A timer that must keep firing on time while the creates run.
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 10);
      const t0 = performance.now();
      h.enable();
      try {
        const created = await Promise.all(ids.map((id) => rt.create(spec(id, node))));
        h.disable();
        const ms = performance.now() - t0;
        clearInterval(ticker);
        expect(created.map((c) => c.state)).toEqual(ids.map(() => 'running'));
        const p99Ms = h.percentile(99) / 1e6;
        const maxMs = h.max / 1e6;
        console.info('event loop during 10 parallel creates:', JSON.stringify({ createsMs: Math.round(ms), p99Ms: Math.round(p99Ms), maxMs: Math.round(maxMs), ticks }));
        // The creates took long enough for the monitor to see the loop many times.
        expect(ms).toBeGreaterThan(100);
        expect(h.count).toBeGreaterThan(10);
        expect(p99Ms).toBeLessThan(100);
        // A blocked loop would also starve this 10 ms timer.
        expect(ticks).toBeGreaterThan(ms / 10 / 3);
      } finally {
        h.disable();
        clearInterval(ticker);
        await Promise.all(ids.map((id) => rt.destroy(id).catch(() => false)));
      }
    });

    it('libvirt runtime - invalid XML input never reaches libvirt', async () => {
      await expect(rt.create({ ...spec(`it-x-${process.pid}`, node), init: "/sbin/init'/><evil/>" })).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    it('libvirt runtime - the relist event source reports start and stop too', async () => {
      const relist = await open(`it-relist-${process.pid}`, { events: 'relist', relistMs: 200 });
      const seen: DomainEvent[] = [];
      const off = relist.onEvent((e) => seen.push(e));
      const id = `it-rl-${process.pid}`;
      try {
        await new Promise((r) => setTimeout(r, 300));
        await relist.create(spec(id, relist.node));
        await waitFor(() => seen.find((e) => e.instanceId === id && e.kind === 'started'), { timeoutMs: 5000, what: 'started' });
        await relist.destroy(id);
        await waitFor(() => seen.find((e) => e.instanceId === id && e.kind === 'stopped'), { timeoutMs: 5000, what: 'stopped' });
      } finally {
        off();
        await relist.destroy(id);
      }
    });

    it.each(['close', 'forget-close', 'exit-without-close'])('libvirt runtime - a process with the event worker running exits promptly (%s)', async (mode) => {
      // Child: open, subscribe (starts the worker), create+destroy to get events, then
      // close() and process.exit(), or forget close() and end naturally, or process.exit() at once.
      const script = join(work, 'exit-path.mts');
      const runtimeTs = join(repo, 'packages/agent/src/drivers/libvirt/runtime.ts');
      const node = `it-exit-${process.pid}`;
      const id = `it-exit-${process.pid}`;
      writeFileSync(
        script,
        `import { LibvirtRuntime } from ${JSON.stringify(runtimeTs)};
import { nullLogger } from ${JSON.stringify(join(repo, 'packages/common/src/index.ts'))};
const mode = process.argv[2];
const rt = await LibvirtRuntime.open(${JSON.stringify(URI)}, ${JSON.stringify(node)}, nullLogger);
const kinds = [];
rt.onEvent((e) => kinds.push(e.kind));
await new Promise((r) => setTimeout(r, 300));
await rt.create(${JSON.stringify(spec(id, node))});
await rt.destroy(${JSON.stringify(id)});
const t0 = Date.now();
while (!kinds.includes('stopped') && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
const c0 = Date.now();
if (mode === 'close') await rt.close();
console.log(JSON.stringify({ kinds, closeMs: Date.now() - c0 }));
console.error('T_EXIT ' + Date.now());
if (mode !== 'forget-close') process.exit(0);
`,
      );
      const r = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; out: string; err: string; exitLagMs: number }>((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', 'tsx', script, mode], { cwd: repo, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        let exitAt = 0;
        child.stdout.on('data', (d: Buffer) => (out += d.toString()));
        child.stderr.on('data', (d: Buffer) => {
          err += d.toString();
          const m = /T_EXIT (\d+)/.exec(err);
          if (m && !exitAt) exitAt = Number(m[1]);
        });
        const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
        child.on('error', reject);
        child.on('close', (code, signal) => {
          clearTimeout(killer);
          resolve({ code, signal, out, err, exitLagMs: exitAt ? Date.now() - exitAt : -1 });
        });
      });
      expect(r.signal, r.err).toBeNull();
      expect(r.code, r.err).toBe(0);
      const res = JSON.parse(r.out.trim().split('\n').pop()!) as { kinds: string[]; closeMs: number };
      expect(res.kinds).toContain('started');
      expect(res.kinds).toContain('stopped');
      // close() stops the worker within about one loop tick; exit itself is prompt.
      expect(res.closeMs).toBeLessThan(2000);
      expect(r.exitLagMs).toBeGreaterThanOrEqual(0);
      expect(r.exitLagMs).toBeLessThan(2000);
    });
  });
});
