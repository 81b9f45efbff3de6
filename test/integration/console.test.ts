/**
 * Instance console output (AgentService.GetConsoleLog) with the real libvirt LXC driver:
 * the agent reads each running instance's console pty into a bounded log. The instance's
 * image has one more layer whose inittab prints a line at boot and a tick every second.
 */
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServiceClient, InstanceState, type InstanceSpec } from '@oarcloud/api';
import { callUnary, nullLogger } from '@oarcloud/common';
import { freePort, launchDaemon, localStateDir, needCommand, needPath, needRoot, prerequisites, tinyImage, waitFor, type BuiltImage, type DaemonProcess } from '@oarcloud/testkit';
import { DirLayerStore } from '../../packages/agent/src/drivers/images/index.js';

const p = prerequisites('console', [
  needRoot,
  needCommand('virsh', '-c', 'lxc:///system', 'version'),
  needPath('packages/agent/dist/main.js'),
  needPath(join(localStateDir(), 'instances')),
]);

const node = `it-con-${process.pid}`;
const jobId = 910_000 + (process.pid % 10_000);
const nonce = randomBytes(4).toString('hex');
let dir: string;
let instancesDir: string;
let config: Record<string, unknown>;
let agent: DaemonProcess;
let client: AgentServiceClient;
let image: BuiltImage;
let layers: string[];
const created: string[] = [];

const call = {
  create: (s: InstanceSpec) => callUnary(client.createInstance.bind(client), { spec: s }, { timeoutMs: 60_000 }),
  stop: (id: string) => callUnary(client.stopInstance.bind(client), { id }, { timeoutMs: 60_000 }),
  start: (id: string) => callUnary(client.startInstance.bind(client), { id }, { timeoutMs: 60_000 }),
  log: async (id: string, maxBytes = 0) => Buffer.from((await callUnary(client.getConsoleLog.bind(client), { id, maxBytes })).data).toString('utf8'),
};

/** A layer (uncompressed tar) whose /etc/inittab prints to the console; returns its digest. */
async function consoleLayer(store: DirLayerStore): Promise<string> {
  const root = join(dir, 'layer-root');
  mkdirSync(join(root, 'etc'), { recursive: true });
  writeFileSync(
    join(root, 'etc/inittab'),
    [
      '::sysinit:/etc/oarcloud/rc',
      `::sysinit:/bin/echo console-hello-${nonce}`,
      `::once:/bin/sh -c 'i=0; while :; do echo tick-${nonce}-$i; i=$((i+1)); sleep 1; done'`,
      '::respawn:/usr/sbin/dropbear -F -E -R -p 22',
      '::restart:/sbin/init',
      '',
    ].join('\n'),
  );
  const tar = join(dir, 'console-layer.tar');
  execFileSync('tar', ['-C', root, '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-cf', tar, 'etc']);
  const digest = `sha256:${createHash('sha256').update(readFileSync(tar)).digest('hex')}`;
  await store.importLayer(digest, tar);
  return digest;
}

function spec(id: string): InstanceSpec {
  return {
    id,
    name: `con-${id.slice(2)}`,
    jobId,
    owner: 'alice',
    image: { name: 'tiny-console:test', layers },
    vcpus: 1,
    memoryMib: 64,
    cpuset: '0',
    sshAuthorizedKeys: [],
    hostname: `con-${id.slice(2)}`,
    networks: [],
  };
}

const newId = (): string => `i-${randomBytes(6).toString('hex')}`;

describe.skipIf(!p.ok)('console - instance console output through the agent', () => {
  beforeAll(async () => {
    image = tinyImage();
    dir = mkdtempSync(join(localStateDir(), 'it-console-'));
    instancesDir = join(localStateDir(), 'instances', node);
    mkdirSync(instancesDir, { recursive: true });
    const store = new DirLayerStore({ root: join(dir, 'state', 'layers'), idmapBase: 100_000, log: nullLogger });
    await store.importLayer(image.layers[0]!, image.layerTar);
    layers = [image.layers[0]!, await consoleLayer(store)];
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
    };
    agent = await launchDaemon('agent', dir, config);
    client = new AgentServiceClient(agent.address, credentials.createInsecure());
  });

  afterAll(async () => {
    if (client) await callUnary(client.releaseJob.bind(client), { jobId }, { timeoutMs: 120_000 }).catch(() => undefined);
    client?.close();
    await agent?.stop();
    rmSync(instancesDir, { recursive: true, force: true });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('console - what the instance\'s init prints is returned by GetConsoleLog, as plain lines', async () => {
    const id = newId();
    created.push(id);
    expect((await call.create(spec(id))).state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    const text = await waitFor(async () => {
      const t = await call.log(id);
      return t.includes(`console-hello-${nonce}`) && t.includes(`tick-${nonce}-1`) ? t : undefined;
    }, { timeoutMs: 15_000, intervalMs: 200, what: 'the boot line in the console log' });
    expect(text.split('\n')).toContain(`console-hello-${nonce}`);
    expect(text).not.toContain('\r');
    // The log sits in the instance's folder on the host, not readable from inside, 0600.
    expect(statSync(join(instancesDir, id, 'console.log')).mode & 0o777).toBe(0o600);
    // max_bytes: the end of the log.
    const tail = await call.log(id, 16);
    expect(Buffer.byteLength(tail)).toBeLessThanOrEqual(16);
    expect(text.endsWith(tail) || (await call.log(id)).includes(tail)).toBe(true);
  });

  it('console - a stopped and started instance keeps its earlier output and adds the new boot\'s', async () => {
    const id = created[0]!;
    await call.stop(id);
    await call.start(id);
    await waitFor(async () => (await call.log(id)).split('\n').filter((l) => l === `console-hello-${nonce}`).length === 2, {
      timeoutMs: 15_000,
      intervalMs: 200,
      what: 'the second boot line',
    });
  });

  it('console - after an agent restart the console is read again (output meanwhile included)', async () => {
    const id = created[0]!;
    const lastTick = (t: string): number => Math.max(...[...t.matchAll(new RegExp(`tick-${nonce}-(\\d+)`, 'g'))].map((m) => Number(m[1])));
    const before = lastTick(await call.log(id));
    await agent.stop();
    await new Promise((r) => setTimeout(r, 2500));
    agent = await launchDaemon('agent', dir, config);
    client.close();
    client = new AgentServiceClient(agent.address, credentials.createInsecure());
    await waitFor(async () => lastTick(await call.log(id)) >= before + 4, { timeoutMs: 15_000, intervalMs: 250, what: 'ticks after the restart' });
    // Nothing was lost while the agent was away: the ticks follow each other.
    const ticks = [...(await call.log(id)).matchAll(new RegExp(`tick-${nonce}-(\\d+)`, 'g'))].map((m) => Number(m[1]));
    const afterRestart = ticks.slice(ticks.lastIndexOf(0));
    expect(afterRestart).toEqual(afterRestart.map((_, i) => i));
  });

  it('console - an unknown instance is NOT_FOUND', async () => {
    await expect(call.log('i-000000000000')).rejects.toMatchObject({ name: 'NotFoundError' });
  });
});
