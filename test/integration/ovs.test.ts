/**
 * The VSwitch contract against a real ovsdb-server + ovs-vswitchd (userspace datapath),
 * started by this test inside a network namespace of its own, with its own run dir, so it
 * touches neither the local cluster's OVS nor the host's interfaces.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { needCommand, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';
import { OvsVSwitch } from '../../packages/agent/src/drivers/ovs/ovs.js';
import { vswitchContract } from '../../packages/agent/src/drivers/ovs/vswitch.contract.js';

const p = prerequisites('ovs', [needRoot, needCommand('ovsdb-server', '--version'), needCommand('ovs-vswitchd', '--version'), needCommand('ip', '-V')]);

const ns = `oc-it-ovs-${process.pid}`;
let dir = '';
const procs: ChildProcess[] = [];
let bridgeSeq = 0;

const vsctl = (...args: string[]) => execFileSync('ovs-vsctl', [`--db=unix:${dir}/db.sock`, '--timeout=10', ...args], { encoding: 'utf8' });

describe.skipIf(!p.ok)('ovs integration - real ovsdb-server/ovs-vswitchd in a private netns', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-ovs-'));
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ovsdb-tool', ['create', `${dir}/conf.db`, '/usr/share/openvswitch/vswitch.ovsschema']);
    const env = { ...process.env, OVS_RUNDIR: dir };
    procs.push(spawn('ip', ['netns', 'exec', ns, 'ovsdb-server', `${dir}/conf.db`, `--remote=punix:${dir}/db.sock`, `--unixctl=${dir}/ovsdb.ctl`, `--log-file=${dir}/ovsdb.log`], { env, stdio: 'ignore' }));
    await waitFor(() => spawnSync('ovs-vsctl', [`--db=unix:${dir}/db.sock`, '--timeout=1', '--no-wait', 'init']).status === 0, { timeoutMs: 10_000, what: 'ovsdb-server' });
    procs.push(spawn('ip', ['netns', 'exec', ns, 'ovs-vswitchd', `unix:${dir}/db.sock`, `--unixctl=${dir}/vswitchd.ctl`, `--log-file=${dir}/vswitchd.log`], { env, stdio: 'ignore' }));
    await waitFor(() => spawnSync('ovs-appctl', ['-t', `${dir}/vswitchd.ctl`, 'version']).status === 0, { timeoutMs: 10_000, what: 'ovs-vswitchd' });
  });

  afterAll(() => {
    for (const c of procs) c.kill('SIGTERM');
    spawnSync('ip', ['netns', 'del', ns]);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // A fresh bridge per test: tests do not see each other's ports.
  vswitchContract('OvsVSwitch (netdev)', async () => {
    const bridge = `brt${bridgeSeq++}`;
    const sw = new OvsVSwitch({ db: `unix:${dir}/db.sock`, bridge, datapath: 'netdev' });
    return {
      sw: {
        ensureBridge: () => sw.ensureBridge(),
        ensurePort: (x) => sw.ensurePort(x),
        removePort: (x) => sw.removePort(x),
        ensureTunnel: (x) => sw.ensureTunnel(x),
        removeTunnel: (x) => sw.removeTunnel(x),
        ensureGatewayPort: (x) => sw.ensureGatewayPort(x),
        // Only this bridge's ports: the database is shared by the tests' bridges.
        list: async () => {
          const own = new Set(vsctl('list-ports', bridge).split('\n').filter(Boolean));
          const s = await sw.list();
          return { ports: s.ports.filter((x) => own.has(x.name)), tunnels: s.tunnels.filter((x) => own.has(x.name)), gateways: s.gateways.filter((x) => own.has(x.name)) };
        },
      },
      addForeignPort: async (name) => void spawnSync('ovs-vsctl', [`--db=unix:${dir}/db.sock`, '--timeout=10', '--may-exist', 'add-port', bridge, name], { stdio: 'ignore' }),
    };
  });

  it('ovs - the bridge gets the datapath and our mark; tunnels are protected vxlan access ports keyed by the vni', async () => {
    const sw = new OvsVSwitch({ db: `unix:${dir}/db.sock`, bridge: 'brtx', datapath: 'netdev' });
    await sw.ensureBridge();
    expect(vsctl('get', 'Bridge', 'brtx', 'datapath_type').trim()).toBe('netdev');
    expect(vsctl('get', 'Bridge', 'brtx', 'external_ids:oarcloud-managed').trim()).toBe('"true"');
    await expect(new OvsVSwitch({ db: `unix:${dir}/db.sock`, bridge: 'brtx', datapath: 'system' }).ensureBridge()).rejects.toThrow(/datapath netdev/);
    const name = await sw.ensureTunnel({ networkId: 'n-00000000000a', vni: 70000, remoteIp: '192.168.240.99', tag: 12 });
    expect(vsctl('get', 'Interface', name, 'type').trim()).toBe('vxlan');
    expect(vsctl('get', 'Interface', name, 'options:key').trim()).toBe('"70000"');
    expect(vsctl('get', 'Interface', name, 'options:remote_ip').trim()).toBe('"192.168.240.99"');
    expect(vsctl('get', 'Port', name, 'protected').trim()).toBe('true');
    expect(vsctl('get', 'Port', name, 'tag').trim()).toBe('12');
  });

  it('ovs - a dead vswitchd makes mutations fail (UNAVAILABLE-class) instead of hanging', async () => {
    const sw = new OvsVSwitch({ db: 'unix:/nonexistent/db.sock', bridge: 'brty', datapath: 'netdev', timeoutS: 1 });
    const t0 = Date.now();
    await expect(sw.ensureBridge()).rejects.toHaveProperty('name', 'UnavailableError');
    expect(Date.now() - t0).toBeLessThan(5000);
  });
});
