/**
 * Running the built `oarcloud` command in end-to-end tests as the local cluster's users do:
 * a Unix user (alice, bob) with their own HOME, SSH key and a token an admin issued and
 * `oarcloud login` stored; and root, the admin, through the controller's admin.token.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { expect } from 'vitest';
import { localStateDir } from '@oarcloud/testkit';

export const STATE = localStateDir();
export const CONTROLLER = '127.0.0.1:17000';
export const CLI = resolve('packages/cli/dist/main.js');
export const ADMIN_TOKEN = `${STATE}/controller/admin.token`;

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOpts {
  input?: string;
  env?: Record<string, string>;
  timeoutMs?: number;
}

export interface CliUser {
  name: string;
  /** Their HOME (under their real home: OAR's epilogue cleans the job user's /tmp). */
  home: string;
  /** `oarcloud …` as this user (runuser, `env -i`, their HOME, cwd /tmp), like a user at a shell. */
  run(args: string[], opts?: RunOpts): Run;
  /** Removes the HOME. */
  cleanup(): void;
}

/** A user's HOME for the test, with an SSH key (no token yet). */
export function cliUser(name: string): CliUser {
  const realHome = execFileSync('getent', ['passwd', name], { encoding: 'utf8' }).split(':')[5]!;
  const home = mkdtempSync(join(realHome, '.oc-cli-e2e-'));
  chownSync(home, Number(execFileSync('id', ['-u', name], { encoding: 'utf8' })), Number(execFileSync('id', ['-g', name], { encoding: 'utf8' })));
  chmodSync(home, 0o700);
  mkdirSync(join(home, '.ssh'), { mode: 0o700 });
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `${name}@e2e`, '-f', join(home, '.ssh', 'id_ed25519')]);
  execFileSync('chown', ['-R', `${name}:`, home]);
  return {
    name,
    home,
    run(args, opts = {}) {
      const env = Object.entries({ HOME: home, OARCLOUD_CONTROLLER: CONTROLLER, PATH: process.env.PATH ?? '/usr/bin:/bin', ...opts.env }).map(([k, v]) => `${k}=${v}`);
      const r = spawnSync('runuser', ['-u', name, '--', 'env', '-i', ...env, process.execPath, CLI, ...args], { cwd: '/tmp', encoding: 'utf8', input: opts.input, timeout: opts.timeoutMs ?? 560_000 });
      return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
    },
    cleanup: () => rmSync(home, { recursive: true, force: true }),
  };
}

/** `oarcloud …` as root: the admin, through the controller's admin.token. */
export function root(args: string[], opts: RunOpts = {}): Run {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    input: opts.input,
    timeout: opts.timeoutMs ?? 60_000,
    env: { PATH: process.env.PATH, HOME: '/nonexistent', OARCLOUD_CONTROLLER: CONTROLLER, OARCLOUD_ADMIN_TOKEN_FILE: ADMIN_TOKEN, ...opts.env },
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export const ok = (r: Run): Run => {
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.stderr}${r.stdout}`);
  return r;
};
export const parse = <T>(r: Run): T => JSON.parse(ok(r).stdout) as T;

/** A refusal as scripts see it: exit `code`, nothing on stdout, exactly one `oarcloud: …` line on stderr matching `message`. */
export function expectRefused(r: Run, code: number, message: RegExp | string, what = ''): void {
  expect(r.code, `${what} exit (stderr: ${r.stderr})`).toBe(code);
  expect(r.stdout, `${what} stdout`).toBe('');
  expect(r.stderr, `${what} stderr`).toMatch(/^oarcloud: [^\n]+\n$/);
  if (typeof message === 'string') expect(r.stderr, what).toBe(`oarcloud: ${message}\n`);
  else expect(r.stderr, what).toMatch(message);
}

/** Issues `user` a token as the admin and stores it with `oarcloud login` (stdin, never argv). */
export function login(user: CliUser): void {
  const users = parse<Array<{ name: string }>>(root(['admin', 'user', 'list', '--json']));
  const issued = users.some((u) => u.name === user.name) ? root(['admin', 'user', 'token', user.name]) : root(['admin', 'user', 'add', user.name]);
  expect(issued.code).toBe(0);
  expect(issued.stderr).toMatch(/shown only this once/);
  const r = user.run(['login', '--token', '-'], { input: issued.stdout });
  expect(r.stdout).toMatch(new RegExp(`^logged in as ${user.name} \\(user\\) on 127\\.0\\.0\\.1:17000; token kept in .*/\\.config/oarcloud/token \\(mode 0600\\)`));
  expect(statSync(join(user.home, '.config/oarcloud/token')).mode & 0o777).toBe(0o600);
}
