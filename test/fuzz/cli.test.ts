/**
 * Bad input on the command line (fast-check): the built `oarcloud` command
 * (packages/cli/dist/main.js) run with fuzzed flag and argument values.
 * - Values invalid by construction (negative or enormous numbers, decimals, garbage units,
 *   `../` names, empty or 100 kB strings, unknown roles and shells, unknown flags): exit 2
 *   with a one-line message on stderr, nothing on stdout, never a stack trace — and nothing
 *   is sent: the controller address is a closed loopback port, so anything sent would end in
 *   exit 6 instead.
 * - Any value at all, against that closed port: a clean exit code (2 usage, or 6 controller
 *   unavailable), one message, never a stack trace or exit 1.
 * - Any value at all against the live controller of the local cluster (when it is up), as a
 *   user who owns nothing: exit 0 or 2–5, never a stack trace or exit 1.
 * Each command is a real process (~0.5 s): runs per command are few (OARCLOUD_FUZZ_RUNS).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTROLLER_ADDRESS, grpcHealth, needPath, prerequisites, userToken } from '@oarcloud/testkit';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'packages/cli/dist/main.js');
const p = prerequisites('cli fuzz', [needPath(CLI)]);
const RUNS = Number(process.env.OARCLOUD_FUZZ_RUNS ?? 25);
/** Per flag: fewer runs, every process costs half a second. */
const CLI_RUNS = Math.max(3, Math.round(RUNS / 5));
const CLOSED = '127.0.0.1:1';
const STACK = /^\s+at .+(:\d+:\d+\)?|\(native\)|<anonymous>)$/m;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

let home = '';

function oarcloud(args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd: home,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, NO_COLOR: '1', OARCLOUD_ADMIN_TOKEN_FILE: join(home, 'none'), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 30_000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const show = (args: string[], r: Run): string => `oarcloud ${args.map((a) => (a.length > 60 ? `${a.slice(0, 60)}…(${a.length})` : JSON.stringify(a))).join(' ')} → exit ${r.code}\nstderr: ${r.stderr.slice(0, 600)}\nstdout: ${r.stdout.slice(0, 200)}`;

// ----- values invalid by construction ---------------------------------------------------
const junk = fc.oneof(
  fc.constantFrom('', ' ', '../../etc/passwd', '..', '/', '-', '--', 'NaN', 'Infinity', '-Infinity', 'Null', '%s%n', '\u202e', '$(reboot)', '`id`', "'; DROP TABLE jobs; --"),
  // A space and a `!` make it invalid for every flag: no name, number, size or duration has one.
  fc.string({ maxLength: 20 }).map((s) => `x${s} !`),
  fc.integer({ min: 1, max: 4 }).map((k) => 'y'.repeat(k * 25_000)),
);
/** Not a whole number in [min, max]. */
const badInt = (min: number, max: number) =>
  fc.oneof(
    fc.integer({ min: -1_000_000, max: min - 1 }).map(String),
    fc.integer({ min: max + 1, max: 2 ** 31 }).map(String),
    fc.constantFrom('1.5', '1e3', '0x10', '+1', '1_000', '٣', '99999999999999999999999', `${max}0`, `${min}.0`),
    junk,
  );
/** Neither a duration nor H:MM[:SS], or out of [1m, 366d]. */
const badDuration = fc.oneof(fc.constantFrom('0', '59s', '0m', '1x', 'h', '1h-', '-1h', '1:60', '1:00:60', '367d', '9999999999h', '1.5h', '::', '1:2:3:4'), junk);
const badMemory = fc.oneof(fc.constantFrom('0', '15M', '1.3M', '17T', '-1G', '1K', '1PB', 'G', '1GG', '512 Mb x'), fc.integer({ min: -1000, max: 15 }).map(String), junk);
const badName = fc.oneof(fc.constantFrom('-a', 'a-', 'A', 'web_1', 'a b', '../x', 'x/../../y', 'é', 'a'.repeat(51)), junk);
const badImage = fc.oneof(fc.constantFrom('', ':latest', 'Debian:12', '../etc:x', 'a:b:c', 'a:', '.hidden', 'x:tag with space', `${'a'.repeat(129)}:1`), junk.filter((s) => s.length === 0 || !/^[a-z0-9]/.test(s)));
const badJob = fc.oneof(fc.constantFrom('0', '-1', '1.0', '1e2', '0x1', '9007199254740993', 'i-0123456789ab'), junk);
const badRef = fc.constantFrom('', ' ', 'a b', 'x\ty', 'web 1', 'z'.repeat(129));
const badUser = fc.oneof(fc.constantFrom('Root', '1abc', 'a/b', '../x', 'a b', 'a'.repeat(33), 'é'), junk);
const badRole = fc.oneof(fc.constantFrom('Admin', 'root', 'ROLE_ADMIN', '2', 'user ', 'superuser'), junk);
const badVolume = fc.oneof(fc.constantFrom('data', 'data:', 'data:rel/path', ':/x', 'data:/x:ro:ro', '../v:/x', 'a b:/x'), junk);
const word = fc.stringMatching(/^[a-z]{3,12}$/);

/** Command lines whose one fuzzed value is always invalid. */
const INVALID: Array<[string, fc.Arbitrary<string[]>]> = [
  ['reserve --nodes', badInt(1, 10000).map((v) => ['reserve', '--nodes', v])],
  ['reserve --cores', badInt(1, 10000).map((v) => ['reserve', '--cores', v])],
  ['reserve --walltime', badDuration.map((v) => ['reserve', '--walltime', v])],
  ['reserve --count', badInt(1, 10000).map((v) => ['reserve', '--image', 'tiny:latest', '--count', v])],
  ['reserve --cpus', badInt(1, 1024).map((v) => ['reserve', '--image', 'tiny:latest', '--cpus', v])],
  ['reserve --memory', badMemory.map((v) => ['reserve', '--image', 'tiny:latest', '--memory', v])],
  ['reserve --name', badName.map((v) => ['reserve', '--image', 'tiny:latest', '--name', v])],
  ['reserve --image', badImage.map((v) => ['reserve', '--image', v])],
  ['reserve --volume', badVolume.map((v) => ['reserve', '--image', 'tiny:latest', '--volume', v])],
  ['reserve --ssh-key', fc.constantFrom('/nonexistent/key.pub', '/etc/passwd', '/dev/null', '/', '../../../etc/shadow').map((v) => ['reserve', '--image', 'tiny:latest', '--ssh-key', v])],
  ['reserve --timeout', badDuration.map((v) => ['reserve', '--wait', '--timeout', v])],
  ['run --job', badJob.map((v) => ['run', '--job', v, 'tiny:latest'])],
  ['run <image>', badImage.map((v) => ['run', '--job', '1', v])],
  ['run --count', badInt(1, 10000).map((v) => ['run', '--job', '1', '--count', v, 'tiny:latest'])],
  ['run --memory', badMemory.map((v) => ['run', '--job', '1', '--memory', v, 'tiny:latest'])],
  ['run --name', badName.map((v) => ['run', '--job', '1', '--name', v, 'tiny:latest'])],
  ['job <job>', badJob.map((v) => ['job', v])],
  ['release <job>', badJob.map((v) => ['release', v])],
  ['ps --job', badJob.map((v) => ['ps', '--job', v])],
  ['show <instance>', badRef.map((v) => ['show', v])],
  ['stop <instance>', badRef.map((v) => ['stop', 'i-0123456789ab', v])],
  ['rm <instance>', badRef.map((v) => ['rm', v])],
  ['save <image>', badImage.map((v) => ['save', 'i-0123456789ab', v])],
  ['proxy <port>', badInt(1, 65535).map((v) => ['proxy', 'i-0123456789ab', v])],
  ['admin user add <name>', badUser.map((v) => ['admin', 'user', 'add', v])],
  ['admin user add --role', badRole.map((v) => ['admin', 'user', 'add', 'carol', '--role', v])],
  ['completion <shell>', fc.oneof(fc.constantFrom('fish', 'BASH', 'powershell', 'bash;id'), junk).map((v) => ['completion', v])],
  ['unknown flag', word.map((w) => ['ps', `--${w}x`])],
  ['unknown command', word.map((w) => [`${w}x`])],
  ['missing argument', fc.constantFrom(['job'], ['run', '--job', '1'], ['save', 'x'], ['proxy', 'x'], ['reserve', '--nodes'], ['admin', 'user', 'add'])],
];

describe.skipIf(!p.ok)('cli fuzz - bad flag values exit 2 with one message, never a stack trace', () => {
  beforeAll(() => {
    home = mkdtempSync(join(tmpdir(), 'oc-cli-fuzz-'));
  });
  afterAll(() => {
    rmSync(home, { recursive: true, force: true });
  });

  /** Runs one property per command line family, a few families at a time. */
  async function each(cases: Array<[string, fc.Arbitrary<string[]>]>, check: (args: string[], r: Run) => void, env: Record<string, string>, runs: number): Promise<Set<string>> {
    const seen = new Set<string>();
    const queue = [...cases];
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let c = queue.shift(); c; c = queue.shift()) {
          const [what, args] = c;
          await fc.assert(
            fc.asyncProperty(args, async (a) => {
              const r = await oarcloud(a, env);
              check(a, r);
              seen.add(what);
            }),
            { numRuns: runs },
          );
        }
      }),
    );
    return seen;
  }

  it('values invalid by construction: exit 2, a message on stderr, nothing sent', async () => {
    const seen = await each(
      INVALID,
      (args, r) => {
        expect(r.code, show(args, r)).toBe(2);
        expect(r.stderr.trim(), show(args, r)).not.toBe('');
        expect(r.stderr, show(args, r)).not.toMatch(STACK);
        expect(r.stderr, show(args, r)).not.toMatch(/cannot reach the controller/);
        expect(r.stdout, show(args, r)).toBe('');
      },
      { OARCLOUD_CONTROLLER: CLOSED, OARCLOUD_TOKEN: 'fuzz-token' },
      CLI_RUNS,
    );
    expect(seen.size).toBe(INVALID.length);
  });

  it('any value, controller unreachable: exit 2 or 6 with a message, never a stack trace', async () => {
    const any = fc.oneof(fc.string({ maxLength: 40 }), fc.integer({ min: -10, max: 100_000 }).map(String), junk);
    const keyFile = join(home, 'k.pub');
    writeFileSync(keyFile, 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzz fuzz\n');
    const flag = (name: string) => any.map((v) => [name, v]);
    const cases: Array<[string, fc.Arbitrary<string[]>]> = [
      ['reserve', fc.tuple(flag('--nodes'), flag('--walltime'), flag('--count'), flag('--memory'), flag('--name')).map((f) => ['reserve', '--image', 'tiny:latest', '--ssh-key', keyFile, ...f.flat()])],
      ['run', fc.tuple(any, flag('--count'), flag('--cpus'), any).map(([job, c, cpus, image]) => ['run', '--job', job, '--ssh-key', keyFile, ...c, ...cpus, '--', image])],
      ['show/stop/rm/logs', fc.tuple(fc.constantFrom('show', 'stop', 'start', 'rm', 'logs'), any).map(([cmd, v]) => [cmd, '--', v])],
      ['job/release', fc.tuple(fc.constantFrom('job', 'release'), any).map(([cmd, v]) => [cmd, '--', v])],
      ['volume', fc.tuple(fc.constantFrom('create', 'rm'), any).map(([cmd, v]) => ['volume', cmd, '--', v])],
      ['save/rmi', fc.tuple(any, any).map(([a, b]) => ['save', '--', a, b])],
      ['admin user', fc.tuple(fc.constantFrom('add', 'token', 'rm'), any).map(([cmd, v]) => ['admin', 'user', cmd, '--', v])],
    ];
    await each(
      cases,
      (args, r) => {
        expect([2, 6], show(args, r)).toContain(r.code);
        expect(r.stderr.trim(), show(args, r)).not.toBe('');
        expect(r.stderr, show(args, r)).not.toMatch(STACK);
      },
      { OARCLOUD_CONTROLLER: CLOSED, OARCLOUD_TOKEN: 'fuzz-token' },
      CLI_RUNS * 2,
    );
  });

  it('any value against the live controller, as a user who owns nothing: a clean exit code, never a stack trace', async () => {
    if ((await grpcHealth(CONTROLLER_ADDRESS, '', 2000).catch(() => 'DOWN')) !== 'SERVING') {
      const why = `cli fuzz: the local cluster's controller (${CONTROLLER_ADDRESS}) is not serving`;
      if (process.env.OARCLOUD_REQUIRE_INTEGRATION === '1') throw new Error(why);
      console.warn(`SKIP ${why}`);
      return;
    }
    const token = await userToken('fuzzer');
    const keyFile = join(home, 'k.pub');
    writeFileSync(keyFile, 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzz fuzz\n');
    const any = fc.oneof(fc.string({ maxLength: 40 }), fc.integer({ min: -10, max: 100_000 }).map(String), fc.constantFrom('i-0123456789ab', '1', 'tiny:latest', '../tiny:latest', 'web-1'), junk);
    const cases: Array<[string, fc.Arbitrary<string[]>]> = [
      ['show/stop/start/rm/logs', fc.tuple(fc.constantFrom('show', 'stop', 'start', 'rm', 'logs'), any).map(([cmd, v]) => [cmd, '--', v])],
      ['job/release', fc.tuple(fc.constantFrom('job', 'release'), any).map(([cmd, v]) => [cmd, '--', v])],
      ['ps --job', any.map((v) => ['ps', '--job', v])],
      ['run', fc.tuple(any, any).map(([job, image]) => ['run', '--job', job, '--ssh-key', keyFile, '--', image])],
      ['save', fc.tuple(any, any).map(([a, b]) => ['save', '--', a, b])],
      ['rmi/volume rm', fc.tuple(fc.constantFrom(['rmi'], ['volume', 'rm']), any).map(([cmd, v]) => [...cmd, '--', v])],
      ['admin', fc.tuple(fc.constantFrom('add', 'token', 'rm'), any).map(([cmd, v]) => ['admin', 'user', cmd, '--', v])],
    ];
    await each(
      cases,
      (args, r) => {
        expect([0, 2, 3, 4, 5], show(args, r)).toContain(r.code);
        expect(r.stderr, show(args, r)).not.toMatch(STACK);
        if (r.code !== 0) expect(r.stderr.trim(), show(args, r)).not.toBe('');
      },
      { OARCLOUD_CONTROLLER: CONTROLLER_ADDRESS, OARCLOUD_TOKEN: token },
      CLI_RUNS,
    );
    expect(existsSync(CLI)).toBe(true);
    expect(await grpcHealth(CONTROLLER_ADDRESS)).toBe('SERVING');
  });
});
