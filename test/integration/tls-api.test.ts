/**
 * The controller's user-facing services over TLS (`tlsListen`) on the local cluster: the
 * CLI and the OAR hooks reach them with the cluster CA (`--ca`), tokens travel only inside
 * TLS, and a client refuses whatever is not the cluster's controller: no TLS, another CA,
 * or a certificate of the cluster's CA with another role (an agent's).
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadTlsMaterial, tlsServerCredentials } from '@oarcloud/common';
import { clusterPkiDir, localStateDir, needCommand, needPath, needRoot, prerequisites } from '@oarcloud/testkit';
import { loadControllerConfig } from '../../packages/controller/src/config.js';

const STATE = localStateDir();
const CLI = 'packages/cli/dist/main.js';
const p = prerequisites('controller TLS listener', [needRoot, needCommand('openssl', 'version'), needPath(CLI), needPath(`${STATE}/controller.yaml`), needPath(join(clusterPkiDir(), 'ca.crt'))]);

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The built CLI as root (the controller's admin token), with a clean config dir. Not
 * spawnSync: a server of this test process must answer the CLI's TLS handshake meanwhile.
 */
function cli(args: string[], home: string, extraEnv: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000, env: { PATH: process.env.PATH, HOME: home, OARCLOUD_ADMIN_TOKEN_FILE: join(STATE, 'controller/admin.token'), ...extraEnv } }, (err, stdout, stderr) => {
      resolve({ status: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr });
    });
  });
}

describe.skipIf(!p.ok)('controller TLS listener - users and hooks over TLS, checked against the cluster CA', () => {
  let dir: string;
  let tlsAddress: string;
  let fake: grpc.Server | undefined;
  let fakeAddress = '';

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-tls-'));
    const config = loadControllerConfig(`${STATE}/controller.yaml`);
    expect(config.tlsListen, 'the local cluster configures tlsListen').toBeDefined();
    tlsAddress = config.tlsListen!;
    // Another CA, and an agent certificate of the cluster's own CA, for the refusals.
    const pki = (args: string[]) => execFileSync(process.execPath, [CLI, 'admin', 'pki', ...args], { encoding: 'utf8', timeout: 60_000 });
    pki(['init', '--dir', join(dir, 'other')]);
    // A server that speaks TLS with an agent's certificate from the cluster CA: not a controller.
    const agentCert = loadTlsMaterial({ ca: join(clusterPkiDir(), 'ca.crt'), cert: join(clusterPkiDir(), 'agent-node-1.crt'), key: join(clusterPkiDir(), 'agent-node-1.key') });
    fake = new grpc.Server();
    const port = await new Promise<number>((resolve, reject) => fake!.bindAsync('127.0.0.1:0', tlsServerCredentials(agentCert), (err, n) => (err ? reject(err) : resolve(n))));
    fakeAddress = `127.0.0.1:${port}`;
  });

  afterAll(() => {
    fake?.forceShutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('tls api - whoami and a listing over TLS with the cluster CA, the same answers as in clear', async () => {
    const ca = join(clusterPkiDir(), 'ca.crt');
    const clear = await cli(['whoami', '--json'], dir);
    expect(clear.status, clear.stderr).toBe(0);
    const overTls = await cli(['--controller', tlsAddress, '--ca', ca, 'whoami', '--json'], dir);
    expect(overTls.status, overTls.stderr).toBe(0);
    expect(overTls.stderr).toBe(''); // no Node warning about an IP as TLS server name either
    const user = (out: string): unknown => ({ ...(JSON.parse(out) as Record<string, unknown>), controller: undefined });
    expect(user(overTls.stdout)).toEqual(user(clear.stdout));
    expect(JSON.parse(overTls.stdout)).toMatchObject({ controller: tlsAddress });
    const clearImages = await cli(['images', '--json'], dir);
    const viaEnv = await cli(['images', '--json'], dir, { OARCLOUD_CONTROLLER: tlsAddress, OARCLOUD_CA: ca });
    expect(viaEnv.status, viaEnv.stderr).toBe(0);
    expect(JSON.parse(viaEnv.stdout)).toEqual(JSON.parse(clearImages.stdout));
    expect((JSON.parse(viaEnv.stdout) as unknown[]).length).toBeGreaterThan(0);
  });

  it('tls api - refused: plaintext to the TLS port, another CA, a cluster certificate of another role, an unreadable CA file', async () => {
    const ca = join(clusterPkiDir(), 'ca.crt');
    const cases: Array<[string, string[], number, RegExp]> = [
      ['no --ca against the TLS port', ['--controller', tlsAddress, 'whoami'], 6, /cannot reach the controller/],
      ['another CA', ['--controller', tlsAddress, '--ca', join(dir, 'other', 'ca.crt'), 'whoami'], 6, /cannot reach the controller/],
      ['an agent certificate of the cluster CA', ['--controller', fakeAddress, '--ca', ca, 'whoami'], 6, /cannot reach the controller/],
      ['a CA file that does not exist', ['--controller', tlsAddress, '--ca', join(dir, 'nope.crt'), 'whoami'], 2, /cannot read the CA certificate/],
    ];
    for (const [what, args, code, message] of cases) {
      const r = await cli(args, dir);
      expect(r.status, `${what}: ${r.stderr}`).toBe(code);
      expect(r.stdout, what).toBe('');
      expect(r.stderr, what).toMatch(message);
      expect(r.stderr, what).not.toMatch(/\n\s+at /); // a message, never a stack trace
    }
  });

  it('tls api - the OAR hook entry point reaches the controller over TLS and always exits 0', () => {
    const hookToken = join(STATE, 'controller/hook.token');
    const ok = spawnSync(process.execPath, [CLI, 'hook', 'server-epilogue', '999999', '--controller', tlsAddress, '--ca', join(clusterPkiDir(), 'ca.crt'), '--token-file', hookToken], { encoding: 'utf8', timeout: 20_000 });
    expect(ok.status).toBe(0);
    expect(ok.stdout).toMatch(/event sent/);
    const bad = spawnSync(process.execPath, [CLI, 'hook', 'server-epilogue', '999999', '--controller', tlsAddress, '--ca', join(dir, 'other', 'ca.crt'), '--token-file', hookToken], { encoding: 'utf8', timeout: 20_000 });
    expect(bad.status).toBe(0);
    expect(bad.stdout).toMatch(/did not take the event \(UNAVAILABLE/);
  });

  it('tls api - the agents fetch layers from the TLS listener (their config), never in clear', () => {
    for (const node of ['localhost', 'node-1', 'node-2']) {
      const text = readFileSync(join(STATE, `agent-${node}.yaml`), 'utf8');
      expect(text).toContain(`controllerAddress: ${tlsAddress}`);
      expect(text).toMatch(/^controllerTls: true$/m);
    }
  });
});
