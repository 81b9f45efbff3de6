/**
 * Controller ↔ agent mutual TLS with certificates from `oarcloud admin pki` (the built CLI):
 * a real agent started with `tls:` refuses every client but the controller, and the
 * controller's agent pool refuses an agent whose certificate is not an agent certificate
 * for that node.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentServiceClient } from '@oarcloud/api';
import { loadTlsMaterial, mtlsChannelCredentials, nullLogger, tlsChannelOptions, type TlsMaterial } from '@oarcloud/common';
import { freePort, grpcHealth, launchDaemon, localStateDir, needCommand, needPath, needRoot, prerequisites, type DaemonProcess } from '@oarcloud/testkit';
import { GrpcAgents } from '../../packages/controller/src/agents/grpc-pool.js';

const p = prerequisites('mtls', [
  needRoot,
  needCommand('openssl', 'version'),
  needCommand('virsh', '-c', 'lxc:///system', 'version'),
  needPath('packages/agent/dist/main.js'),
  needPath('packages/cli/dist/main.js'),
  needPath(join(localStateDir(), 'instances')),
]);

const node = `it-tls-${process.pid}`;
const wrongRoleNode = `it-tlsr-${process.pid}`;
let dir: string;
let pki: string;
let otherPki: string;
const agents: DaemonProcess[] = [];
let agent: DaemonProcess;
let wrongRoleAgent: DaemonProcess;

/** `oarcloud admin pki …` with the built CLI, as an admin would run it. */
function pkiCmd(args: string[]): string {
  return execFileSync(process.execPath, ['packages/cli/dist/main.js', 'admin', 'pki', ...args], { encoding: 'utf8', timeout: 60_000 });
}

function material(d: string, base: string): TlsMaterial {
  return loadTlsMaterial({ ca: join(d, 'ca.crt'), cert: join(d, `${base}.crt`), key: join(d, `${base}.key`) });
}

/** Client credentials presenting `base`'s certificate, trusting the CA of `d` (no name check). */
function presenting(d: string, base: string): grpc.ChannelCredentials {
  const m = material(d, base);
  return grpc.credentials.createSsl(m.ca, m.key, m.cert, { checkServerIdentity: () => undefined });
}

/** The raw gRPC status code of AgentService/ListInstances through `creds` (0 = OK). */
function listCode(address: string, creds: grpc.ChannelCredentials): Promise<grpc.status> {
  const c = new AgentServiceClient(address, creds, tlsChannelOptions(address));
  return new Promise((resolve) => {
    c.listInstances({ jobId: 0 }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err) => {
      c.close();
      resolve(err ? err.code : grpc.status.OK);
    });
  });
}

function agentConfig(name: string, tls: { ca: string; cert: string; key: string }, listen: number, metrics: number): Record<string, unknown> {
  const instancesDir = join(localStateDir(), 'instances', name);
  mkdirSync(instancesDir, { recursive: true });
  return {
    nodeName: name,
    listen: `127.0.0.1:${listen}`,
    metricsListen: `127.0.0.1:${metrics}`,
    natsUrl: 'nats://127.0.0.1:14222',
    libvirtUri: 'lxc:///system',
    stateDir: join(dir, name, 'state'),
    instancesDir,
    datapath: 'netdev',
    tls,
  };
}

describe.skipIf(!p.ok)('mtls - controller and agents', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(localStateDir(), 'it-mtls-'));
    pki = join(dir, 'pki');
    otherPki = join(dir, 'other-pki');
    pkiCmd(['init', '--dir', pki]);
    pkiCmd(['issue', '--dir', pki, '--name', 'ctl', '--role', 'controller']);
    pkiCmd(['issue', '--dir', pki, '--name', node, '--role', 'agent']);
    pkiCmd(['issue', '--dir', pki, '--name', 'node-x', '--role', 'agent']);
    pkiCmd(['issue', '--dir', pki, '--name', 'alice', '--role', 'user']);
    pkiCmd(['issue', '--dir', pki, '--name', wrongRoleNode, '--role', 'user']);
    // Another CA, and a controller certificate from it that looks exactly like ours.
    pkiCmd(['init', '--dir', otherPki]);
    pkiCmd(['issue', '--dir', otherPki, '--name', 'ctl', '--role', 'controller']);
    const files = (d: string, base: string) => ({ ca: join(d, 'ca.crt'), cert: join(d, `${base}.crt`), key: join(d, `${base}.key`) });
    agent = await launchDaemon('agent', join(dir, node), agentConfig(node, files(pki, `agent-${node}`), await freePort(), await freePort()), {
      healthCredentials: presenting(pki, 'controller-ctl'),
    });
    agents.push(agent);
    // An "agent" serving with a certificate of the wrong role (a user's, with the node's name).
    wrongRoleAgent = await launchDaemon('agent', join(dir, wrongRoleNode), agentConfig(wrongRoleNode, files(pki, `user-${wrongRoleNode}`), await freePort(), await freePort()), {
      healthCredentials: presenting(pki, 'controller-ctl'),
    });
    agents.push(wrongRoleAgent);
  });

  afterAll(async () => {
    for (const a of agents) await a.stop();
    for (const n of [node, wrongRoleNode]) rmSync(join(localStateDir(), 'instances', n), { recursive: true, force: true });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('pki - keys are 0600, a second init or issue is refused unless --if-missing', () => {
    for (const f of ['ca.key', 'controller-ctl.key', `agent-${node}.key`]) expect(statSync(join(pki, f)).mode & 0o777).toBe(0o600);
    expect(() => pkiCmd(['init', '--dir', pki])).toThrow(/already exists/);
    expect(pkiCmd(['init', '--dir', pki, '--if-missing'])).toMatch(/kept existing CA/);
    expect(pkiCmd(['issue', '--dir', pki, '--name', node, '--role', 'agent', '--if-missing'])).toMatch(/kept existing agent certificate/);
  });

  it('agent - accepts the controller certificate', async () => {
    expect(await listCode(agent.address, presenting(pki, 'controller-ctl'))).toBe(grpc.status.OK);
    // The way the controller dials it: our CA, agent role, the node's name.
    expect(await listCode(agent.address, mtlsChannelCredentials(material(pki, 'controller-ctl'), { role: 'agent', name: node }))).toBe(grpc.status.OK);
  });

  it('agent - refuses a plaintext client and a TLS client without a certificate (handshake: UNAVAILABLE)', async () => {
    expect(await listCode(agent.address, grpc.credentials.createInsecure())).toBe(grpc.status.UNAVAILABLE);
    const ca = material(pki, 'controller-ctl').ca;
    expect(await listCode(agent.address, grpc.credentials.createSsl(ca, null, null, { checkServerIdentity: () => undefined }))).toBe(grpc.status.UNAVAILABLE);
  });

  it('agent - refuses a controller certificate from another CA (UNAVAILABLE)', async () => {
    // Trusting the agent's CA, but presenting a certificate the agent's CA did not sign.
    const ours = material(pki, 'controller-ctl');
    const forged = material(otherPki, 'controller-ctl');
    const creds = grpc.credentials.createSsl(ours.ca, forged.key, forged.cert, { checkServerIdentity: () => undefined });
    expect(await listCode(agent.address, creds)).toBe(grpc.status.UNAVAILABLE);
  });

  it('agent - refuses an agent certificate and a user certificate (PERMISSION_DENIED), health included', async () => {
    expect(await listCode(agent.address, presenting(pki, `agent-${node}`))).toBe(grpc.status.PERMISSION_DENIED);
    expect(await listCode(agent.address, presenting(pki, 'agent-node-x'))).toBe(grpc.status.PERMISSION_DENIED);
    expect(await listCode(agent.address, presenting(pki, 'user-alice'))).toBe(grpc.status.PERMISSION_DENIED);
    // Not even health or reflection: nothing of the agent answers another role.
    await expect(grpcHealth(agent.address, '', 3000, presenting(pki, 'agent-node-x'))).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    await expect(grpcHealth(agent.address, '', 3000, presenting(pki, 'controller-ctl'))).resolves.toBe('SERVING');
  });

  it('controller - its agent pool talks to the agent with the right certificate, refuses another node\'s or role\'s', async () => {
    const ctl = material(pki, 'controller-ctl');
    const pool = new GrpcAgents(
      [
        { name: node, address: agent.address },
        // The same agent configured as node-x: its certificate names another node.
        { name: 'node-x', address: agent.address },
        // An agent serving with a user certificate that names the right node.
        { name: wrongRoleNode, address: wrongRoleAgent.address },
      ],
      { log: nullLogger, createTimeoutMs: 5000, callTimeoutMs: 3000, attempts: 1, credentials: (n) => mtlsChannelCredentials(ctl, { role: 'agent', name: n }) },
    );
    try {
      await expect(pool.get(node)!.listInstances()).resolves.toEqual([]);
      await expect(pool.get('node-x')!.listInstances()).rejects.toMatchObject({ name: 'UnavailableError', message: expect.stringMatching(/expected node-x/) });
      await expect(pool.get(wrongRoleNode)!.listInstances()).rejects.toMatchObject({ name: 'UnavailableError', message: expect.stringMatching(/role user, expected agent/) });
      const health = Object.fromEntries(pool.health().map((h) => [h.node, h.reachable]));
      expect(health).toEqual({ [node]: true, 'node-x': false, [wrongRoleNode]: false });
    } finally {
      pool.close();
    }
  });

  it('controller - refuses an agent whose certificate comes from another CA', async () => {
    // An agent presenting a certificate of another CA: the controller's channel fails the handshake.
    const forgedCa = material(otherPki, 'controller-ctl');
    const ctl = material(pki, 'controller-ctl');
    // Dial our agent trusting only the other CA: the agent's certificate does not verify.
    const creds = grpc.credentials.createSsl(forgedCa.ca, ctl.key, ctl.cert);
    expect(await listCode(agent.address, creds)).toBe(grpc.status.UNAVAILABLE);
  });
});
