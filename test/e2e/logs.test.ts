/**
 * `oarcloud logs` on the local cluster: what an instance prints on its console (here a line
 * written to /dev/console over `oarcloud ssh`, and its sshd's own log lines) comes back to
 * its owner, the end of it with --bytes; another user gets "not found" (exit 3).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_IMAGE, CONTROLLER_ADDRESS, localStateDir, needCommand, needPath, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';

const CLI = resolve('packages/cli/dist/main.js');
const ADMIN_TOKEN = join(localStateDir(), 'controller/admin.token');
const p = prerequisites('logs e2e', [needRoot, needPath(CLI), needPath(ADMIN_TOKEN), needCommand('ssh', '-V')]);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const homes: Record<string, string> = {};

/** `oarcloud …` as a Unix user with their own HOME (in their real home: OAR's epilogue cleans /tmp). */
function as(user: string, args: string[], input?: string): Run {
  const env = [`HOME=${homes[user]}`, `OARCLOUD_CONTROLLER=${CONTROLLER_ADDRESS}`, `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`];
  const r = spawnSync('runuser', ['-u', user, '--', 'env', '-i', ...env, process.execPath, CLI, ...args], { cwd: '/tmp', encoding: 'utf8', input, timeout: 300_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function root(args: string[]): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000, env: { PATH: process.env.PATH, HOME: '/nonexistent', OARCLOUD_CONTROLLER: CONTROLLER_ADDRESS, OARCLOUD_ADMIN_TOKEN_FILE: ADMIN_TOKEN } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

const ok = (r: Run): Run => {
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}${r.stdout}`);
  return r;
};

describe.skipIf(!p.ok)('logs e2e - oarcloud logs shows an instance\'s console output to its owner only', () => {
  let jobId = 0;
  let instance = '';
  const nonce = randomBytes(4).toString('hex');

  beforeAll(() => {
    for (const user of ['alice', 'bob']) {
      const pw = execFileSync('getent', ['passwd', user], { encoding: 'utf8' }).split(':');
      const home = mkdtempSync(join(pw[5]!, '.oc-logs-e2e-'));
      homes[user] = home;
      chownSync(home, Number(pw[2]), Number(pw[3]));
      chmodSync(home, 0o700);
      mkdirSync(join(home, '.ssh'), { mode: 0o700 });
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(home, '.ssh', 'id_ed25519')]);
      execFileSync('chown', ['-R', `${user}:`, home]);
      const users = JSON.parse(ok(root(['admin', 'user', 'list', '--json'])).stdout) as Array<{ name: string }>;
      const issued = ok(root(['admin', 'user', users.some((u) => u.name === user) ? 'token' : 'add', user]));
      ok(as(user, ['login', '--token', '-'], issued.stdout));
    }
    const r = JSON.parse(ok(as('alice', ['reserve', '--nodes', '1', '--walltime', '10m', '--image', CLUSTER_IMAGE, '--count', '1', '--name', `lg${nonce}`, '--wait', '--json'])).stdout) as {
      job: { id: number };
      instances: Array<{ id: string; name: string; state: string }>;
    };
    jobId = r.job.id;
    expect(r.instances.map((i) => i.state)).toEqual(['running']);
    instance = r.instances[0]!.name;
  }, 300_000);

  afterAll(() => {
    if (jobId) root(['release', String(jobId)]);
    for (const h of Object.values(homes)) rmSync(h, { recursive: true, force: true });
  });

  it('logs - a line the instance writes to its console is shown, after sshd\'s own log lines', async () => {
    ok(as('alice', ['ssh', instance, '--', `echo console-line-${nonce} > /dev/console`]));
    const out = await waitFor(
      () => {
        const r = ok(as('alice', ['logs', instance]));
        return r.stdout.includes(`console-line-${nonce}`) ? r.stdout : undefined;
      },
      { timeoutMs: 15_000, intervalMs: 300, what: 'the line in oarcloud logs' },
    );
    const lines = out.split('\n');
    expect(lines).toContain(`console-line-${nonce}`);
    // dropbear logs to the console (-E): its start and alice's key login came first.
    const login = lines.findIndex((l) => /Pubkey auth succeeded for 'root'/.test(l));
    expect(login).toBeGreaterThanOrEqual(0);
    expect(login).toBeLessThan(lines.indexOf(`console-line-${nonce}`));
    expect(out).not.toContain('\r');
  });

  it('logs - --bytes gives the end of the log; a bad value is a usage error', () => {
    const tail = ok(as('alice', ['logs', instance, '--bytes', '64'])).stdout;
    expect(Buffer.byteLength(tail)).toBeLessThanOrEqual(64);
    expect(ok(as('alice', ['logs', instance])).stdout.endsWith(tail)).toBe(true);
    expect(as('alice', ['logs', instance, '--bytes', '0'])).toMatchObject({ code: 2, stdout: '' });
    expect(as('alice', ['logs', instance, '--bytes', 'lots'])).toMatchObject({ code: 2, stdout: '' });
  });

  it('logs - another user and an unknown instance get "not found" (exit 3) and no output', () => {
    const id = (JSON.parse(ok(as('alice', ['show', instance, '--json'])).stdout) as { id: string }).id;
    for (const ref of [instance, id]) expect(as('bob', ['logs', ref])).toMatchObject({ code: 3, stdout: '', stderr: expect.stringMatching(/no instance/) });
    expect(as('alice', ['logs', 'i-000000000000'])).toMatchObject({ code: 3, stdout: '' });
  });
});
