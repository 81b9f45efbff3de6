/**
 * The built `oarcloud` command as a user runs it on the local cluster (infra/local): alice,
 * with her own HOME, a token an admin issued and `oarcloud login` stored, reserves hosts
 * with instances, lists them, logs in over SSH through the controller, stops/starts/removes
 * them, releases the job, every step checked in its human form and with --json; bob's job,
 * whose walltime ended meanwhile, refuses new instances and SSH; every error case ends with a clear
 * message and the documented exit code, changing nothing, and with --json still prints
 * nothing on stdout and one line on stderr.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { grpcHealth, needCommand, needPath, needRoot, prerequisites, waitFor } from '@oarcloud/testkit';
import { ADMIN_TOKEN, CLI, CONTROLLER, cliUser, expectRefused, login, ok, parse, root, STATE, type CliUser, type Run } from './cli-harness.js';

const p = prerequisites('cli e2e', [
  needRoot,
  needPath(CLI),
  needPath(ADMIN_TOKEN),
  needPath(`${STATE}/controller.yaml`),
  needCommand('bash', 'infra/local/status.sh'),
  needCommand('ssh', '-V'),
]);

const oarJobsOf = (u: string): string[] => Object.keys(JSON.parse(execFileSync('oarstat', ['-u', u, '-J'], { encoding: 'utf8' }) || '{}') as object).sort();
const aliceOarJobs = (): string[] => oarJobsOf('alice');
/** `u`'s OAR jobs that were not there `before` (an ending job may leave the list meanwhile). */
const newOarJobs = (before: string[], u = 'alice'): string[] => oarJobsOf(u).filter((j) => !before.includes(j));

interface InstanceJson {
  id: string;
  name: string;
  jobId: number;
  node: string;
  state: string;
  image: string;
  vcpus: number;
  memoryMib: number;
}
interface JobJson {
  id: number;
  owner: string;
  state: string;
  hosts: Array<{ node: string }>;
  walltimeS: number;
  startedAtMs: number;
  endedAtMs: number;
  instances: number;
}

describe.skipIf(!p.ok)('cli e2e - alice drives her instances with the oarcloud command', () => {
  let user: CliUser;
  let bobUser: CliUser;
  /** Every job a test made: released in afterAll whatever happened (a failed test must not hold hosts for its walltime). */
  const jobIds: number[] = [];
  const alice = (args: string[], opts?: { input?: string; env?: Record<string, string> }): Run => user.run(args, opts);
  const bob = (args: string[], opts?: { input?: string; env?: Record<string, string> }): Run => bobUser.run(args, opts);
  /** bob's one-minute job, started first so that its walltime runs out while alice's walk goes on. */
  let expiring: { jobId: number; instanceId: string; sshOutput: string };

  beforeAll(async () => {
    await waitFor(async () => (await grpcHealth(CONTROLLER)) === 'SERVING', { timeoutMs: 20_000, what: 'controller serving' });
    user = cliUser('alice');
    // The admin issues alice's token; alice stores it with `login` (stdin, never argv).
    login(user);
    expect(ok(alice(['whoami'])).stdout).toBe(`alice (user) on ${CONTROLLER}\n`);
    bobUser = cliUser('bob');
    login(bobUser);
    const r = parse<{ job: JobJson; instances: InstanceJson[] }>(bob(['reserve', '--nodes', '1', '--cores', '1', '--walltime', '1m', '--image', 'tiny:latest', '--memory', '64M', '--name', 'exp', '--wait', '--json']));
    jobIds.push(r.job.id);
    expect(r).toMatchObject({ job: { owner: 'bob', walltimeS: 60, state: 'running' }, instances: [{ name: 'exp-1', state: 'running' }] });
    expiring = { jobId: r.job.id, instanceId: r.instances[0]!.id, sshOutput: ok(bob(['ssh', 'exp-1', '--', 'hostname'])).stdout };
  }, 180_000);

  afterAll(() => {
    for (const id of jobIds) root(['release', String(id)]);
    user?.cleanup();
    bobUser?.cleanup();
  });

  it('cli - reserve --wait, ps, show, ssh, stop/start, run, rm, release: every step in its human form and with --json', async () => {
    // reserve, human: progress on stderr, the instances as a table on stdout, ready when it returns.
    const t0 = Date.now();
    const reserved = ok(alice(['reserve', '--nodes', '2', '--cores', '2', '--walltime', '10m', '--image', 'tiny:latest', '--count', '3', '--memory', '128M', '--name', 'web', '--wait', '--timeout', '8m']));
    console.log(`e2e: oarcloud reserve --wait (2 hosts, 3 instances) returned in ${Date.now() - t0} ms`);
    const jobId = Number(/^job (\d+) submitted /.exec(reserved.stderr)?.[1]);
    expect(jobId).toBeGreaterThan(0);
    jobIds.push(jobId);
    expect(reserved.stderr).toMatch(new RegExp(`^job ${jobId} submitted \\(2 hosts x 2 cores, walltime 10m00s, 3 x tiny:latest\\)\n(job ${jobId}: [^\n]+ \\((\\d+m)?\\d+s\\)\n)*job ${jobId}: running on node-\\d, node-\\d, 3/3 instances running \\((\\d+m)?\\d+s\\)\n$`));
    const reservedRows = reserved.stdout.trimEnd().split('\n');
    expect(reservedRows[0]).toMatch(/^ID +NAME +JOB +NODE +STATE +IMAGE +CPUS +MEMORY +AGE$/);
    expect(reservedRows.slice(1).map((l) => l.split(/ +/)[1]).sort()).toEqual(['web-1', 'web-2', 'web-3']);
    for (const l of reservedRows.slice(1)) expect(l).toMatch(new RegExp(`^i-[0-9a-f]{12}  web-\\d +${jobId}  node-\\d +running +tiny:latest +1 +128M +\\S+$`));

    // The job, with --json and human.
    const job = parse<JobJson>(alice(['job', String(jobId), '--json']));
    expect(job).toMatchObject({ id: jobId, owner: 'alice', state: 'running' });
    expect(job.hosts).toHaveLength(2);
    expect(ok(alice(['job', String(jobId)])).stdout).toMatch(new RegExp(`^job: +${jobId}\nowner: +alice\nstate: +running \\(OAR Running\\)\nhosts: +node-\\d \\(cpus [0-9,-]+\\), node-\\d \\(cpus [0-9,-]+\\)\nwalltime: +10m00s\n`));

    // ps --json: the same instances, for scripts.
    const instances = parse<InstanceJson[]>(alice(['ps', '--job', String(jobId), '--json']));
    expect(instances.map((i) => i.name).sort()).toEqual(['web-1', 'web-2', 'web-3']);
    expect(instances.every((i) => i.state === 'running' && i.jobId === jobId && i.image === 'tiny:latest' && i.memoryMib === 128 && i.vcpus === 1)).toBe(true);
    expect(new Set(instances.map((i) => i.node)).size).toBe(2);
    const byName = (n: string): InstanceJson => instances.find((i) => i.name === n)!;
    // ps, human: a header and one aligned row per instance, no colour (not a TTY).
    const ps = ok(alice(['ps']));
    const lines = ps.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^ID +NAME +JOB +NODE +STATE +IMAGE +CPUS +MEMORY +AGE$/);
    for (const i of instances) expect(lines.find((l) => l.startsWith(i.id))).toMatch(new RegExp(`^${i.id}  ${i.name} +${jobId}  ${i.node} +running +tiny:latest +1 +128M +\\S+$`));
    expect(ps.stdout).not.toContain('\x1b[');

    // show, human and --json.
    expect(ok(alice(['show', 'web-1'])).stdout).toMatch(
      new RegExp(`^id: +${byName('web-1').id}\nname: +web-1\njob: +${jobId}\nowner: +alice\nnode: +${byName('web-1').node}\nstate: +running\nimage: +tiny:latest\ncpus: +1 \\(job cpuset [0-9,-]+\\)\nmemory: +128M\n(usage: +cpu [0-9.]+%, memory [0-9.]+[BKMG] of 128M \\(\\S+ ago\\)\n)?created: +\\S+ \\(\\S+ ago\\)\nssh: +oarcloud ssh web-1\n$`),
    );
    expect(parse<InstanceJson>(alice(['show', byName('web-1').id, '--json']))).toMatchObject({ id: byName('web-1').id, name: 'web-1', state: 'running', node: byName('web-1').node });

    // ssh through the controller's relay; the remote exit code comes back.
    const ssh = alice(['ssh', 'web-1', '--', 'hostname']);
    expect(ssh.stderr).toBe('');
    expect(ssh.code).toBe(0);
    expect(ssh.stdout).toBe('web-1\n');
    expect(alice(['ssh', 'web-2', '--', 'exit 42']).code).toBe(42);

    // stats: each running instance's use, from its node's heartbeats (every 5 s here).
    const measured = await waitFor(
      () => {
        const list = parse<Array<InstanceJson & { usage?: { cpuPercent: number; cpuSeconds: number; memoryBytes: number; atMs: number } }>>(alice(['stats', '--job', String(jobId), '--json']));
        return list.length === 3 && list.every((i) => i.usage && i.usage.atMs > 0) ? list : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 1000, what: 'usage of the 3 instances' },
    );
    for (const i of measured) {
      expect(i.usage!.cpuSeconds).toBeGreaterThan(0);
      expect(i.usage!.cpuPercent).toBeGreaterThanOrEqual(0);
      expect(i.usage!.memoryBytes).toBeGreaterThan(0);
      expect(i.usage!.memoryBytes).toBeLessThanOrEqual(128 * 2 ** 20);
    }
    const stats = ok(alice(['stats', '--job', String(jobId)])).stdout.trimEnd().split('\n');
    expect(stats[0]).toMatch(/^ID +NAME +NODE +STATE +CPU% +CPUS +CPU TIME +MEMORY +LIMIT +MEASURED$/);
    for (const i of instances) expect(stats.find((l) => l.startsWith(i.id))).toMatch(new RegExp(`^${i.id}  ${i.name} +${i.node} +running +[0-9.]+ +1 +[0-9.]+s +[0-9.]+[BKMG] +128M +\\S+ ago$`));
    expect(ok(alice(['show', 'web-1'])).stdout).toMatch(/\nmemory: +128M\nusage: +cpu [0-9.]+%, memory [0-9.]+[BKMG] of 128M \(\S+ ago\)\n/);
    expectRefused(bob(['stats', '--job', String(jobId)]), 3, `no job ${jobId}`);

    // stop: human, then --json.
    expect(ok(alice(['stop', 'web-2'])).stdout).toBe(`stopped web-2 (${byName('web-2').id}): stopped\n`);
    expect(parse<InstanceJson>(alice(['show', 'web-2', '--json'])).state).toBe('stopped');
    expect(alice(['ssh', 'web-2', '--', 'true'])).toMatchObject({ code: 5, stdout: '', stderr: `oarcloud: instance web-2 (${byName('web-2').id}) is stopped, not running (oarcloud start web-2)\n` });
    const stopped = parse<InstanceJson[]>(alice(['stop', 'web-1', '--json']));
    expect(stopped.map((i) => [i.id, i.name, i.state])).toEqual([[byName('web-1').id, 'web-1', 'stopped']]);
    expect(ok(alice(['show', 'web-1'])).stdout).toMatch(/\nstate: +stopped \(stopped by request\)\n/);
    // start: --json, then human.
    const started = parse<InstanceJson[]>(alice(['start', 'web-2', '--json']));
    expect(started.map((i) => [i.name, i.state])).toEqual([['web-2', 'running']]);
    expect(ok(alice(['start', 'web-1'])).stdout).toBe(`started web-1 (${byName('web-1').id}): running\n`);
    for (const n of ['web-1', 'web-2']) {
      expect(await waitFor(() => (alice(['ssh', n, '--', 'hostname']).stdout === `${n}\n` ? true : undefined), { timeoutMs: 30_000, intervalMs: 500, what: `ssh ${n} after start` })).toBe(true);
    }

    // run one more (--json), then rm: human for web-3, --json for it.
    const extra = parse<InstanceJson[]>(alice(['run', '--job', String(jobId), '--name', 'extra', '--memory', '64M', '--wait', '--timeout', '3m', '--json', 'tiny:latest']));
    expect(extra.map((i) => [i.name, i.state, i.jobId, i.memoryMib])).toEqual([['extra-1', 'running', jobId, 64]]);
    expect(ok(alice(['rm', 'web-3'])).stdout).toBe(`removed web-3 (${byName('web-3').id})\n`);
    const removed = parse<InstanceJson[]>(alice(['rm', 'extra-1', '--json']));
    expect(removed.map((i) => [i.id, i.name, i.state])).toEqual([[extra[0]!.id, 'extra-1', 'deleted']]);
    expect(parse<InstanceJson[]>(alice(['ps', '--json'])).map((i) => i.name).sort()).toEqual(['web-1', 'web-2']);
    expectRefused(alice(['show', 'web-3']), 3, 'no instance web-3');
    expectRefused(alice(['show', 'extra-1', '--json']), 3, 'no instance extra-1');

    // release: human with --wait; the job ends, its instances go; again with --json (idempotent).
    expect(ok(alice(['release', String(jobId), '--wait'])).stdout).toMatch(new RegExp(`^job ${jobId} released: ended \\(OAR state \\w+\\)\n$`));
    expect(parse<JobJson>(alice(['release', String(jobId), '--json']))).toMatchObject({ id: jobId, owner: 'alice', state: 'ended' });
    expect(parse<JobJson>(alice(['job', String(jobId), '--json'])).state).toBe('ended');
    await waitFor(() => (parse<InstanceJson[]>(alice(['ps', '--json'])).length === 0 ? true : undefined), { timeoutMs: 30_000, intervalMs: 500, what: 'no instances left' });
    expect(alice(['ps'])).toMatchObject({ code: 0, stdout: '', stderr: 'no instances\n' });
    expect(alice(['ps', '--json'])).toMatchObject({ code: 0, stdout: '[]\n', stderr: '' });

    // A released job: a clear refusal, nothing started.
    const before = aliceOarJobs();
    expectRefused(alice(['run', '--job', String(jobId), 'tiny:latest']), 5, `job ${jobId} has ended`);
    expectRefused(alice(['run', '--job', String(jobId), '--json', 'tiny:latest']), 5, `job ${jobId} has ended`);
    expect(parse<InstanceJson[]>(alice(['ps', '--job', String(jobId), '--json']))).toEqual([]);
    expect(newOarJobs(before)).toEqual([]);
  }, 600_000);

  it('cli - with --json an error still prints nothing on stdout and one clear line on stderr', () => {
    const cases: Array<[string[], number, RegExp | string, Record<string, string>?]> = [
      [['show', 'nope-1', '--json'], 3, 'no instance nope-1'],
      [['stop', 'nope-1', '--json'], 3, 'no instance nope-1'],
      [['start', 'nope-1', '--json'], 3, 'no instance nope-1'],
      [['rm', 'nope-1', '--json'], 3, 'no instance nope-1'],
      [['job', '999999999', '--json'], 3, 'no job 999999999'],
      [['release', '999999999', '--json'], 3, 'no job 999999999'],
      [['run', '--job', '999999999', '--json', 'tiny:latest'], 3, 'no job 999999999'],
      [['save', 'nope-1', 'x:1', '--json'], 3, 'no instance nope-1'],
      [['rmi', 'nope:1', '--json'], 3, 'no image nope:1'],
      [['volume', 'rm', 'nope', '--json'], 3, /^oarcloud: no volume nope\n$/],
      [['volume', 'create', '../x', '--json'], 2, /^oarcloud: invalid volume name "\.\.\/x"/],
      [['reserve', '--image', 'nope:1', '--json'], 3, 'image nope:1 is unknown'],
      [['reserve', '--nodes', '0', '--json'], 2, /^oarcloud: invalid --nodes "0"/],
      [['ps', '--job', '0', '--json'], 2, /^oarcloud: invalid --job "0"/],
      [['images', '--json'], 4, 'unknown or revoked token', { OARCLOUD_TOKEN: 'not-a-real-token-0123456789' }],
      [['ps', '--json'], 6, /^oarcloud: cannot reach the controller at 127\.0\.0\.1:1 /, { OARCLOUD_CONTROLLER: '127.0.0.1:1' }],
      [['admin', 'nodes', '--json'], 4, /^oarcloud: (this call is for admins|alice is not an admin)\n$/],
    ];
    const before = aliceOarJobs();
    for (const [args, code, message, env] of cases) expectRefused(alice(args, { env }), code, message, args.join(' '));
    expect(newOarJobs(before)).toEqual([]);
  });

  it('cli - unknown instances: exit 3 with a clear message, from every command', () => {
    for (const args of [['show', 'nope-1'], ['stop', 'nope-1'], ['start', 'nope-1'], ['rm', 'nope-1'], ['ssh', 'nope-1', '--', 'true'], ['proxy', 'nope-1', '22'], ['show', 'i-000000000000']]) {
      const r = alice(args);
      expect(r, args.join(' ')).toMatchObject({ code: 3, stdout: '' });
      expect(r.stderr).toMatch(/^oarcloud: no instance (nope-1|i-000000000000)\n$/);
    }
    expect(alice(['job', '999999999'])).toMatchObject({ code: 3, stderr: 'oarcloud: no job 999999999\n' });
    expect(alice(['release', '999999999']).code).toBe(3);
  });

  it('cli - bad flag values: exit 2, a message naming the flag, nothing sent or changed', () => {
    const before = aliceOarJobs();
    const cases: Array<[string[], RegExp]> = [
      [['reserve', '--walltime', '5x'], /invalid --walltime "5x": use a duration like 1h, 90m/],
      [['reserve', '--walltime', '30s'], /invalid --walltime "30s": the walltime must be at least 1m/],
      [['reserve', '--nodes', '0'], /invalid --nodes "0": expected a whole number from 1 to 10000/],
      [['reserve', '--nodes', 'two'], /invalid --nodes "two"/],
      [['reserve', '--image', 'tiny:latest', '--memory', '5Q'], /invalid --memory "5Q": use a size like 512M or 1G/],
      [['reserve', '--image', 'tiny:latest', '--count', '-3'], /error: unknown option '-3'|invalid --count/],
      [['reserve', '--image', 'Bad Image'], /invalid --image "Bad Image": expected name:tag/],
      [['reserve', '--count', '3'], /--count: only with --image/],
      [['reserve', '--image', 'tiny:latest', '--ssh-key', '/etc/hostname'], /is not an SSH public key/],
      [['run', '--job', 'abc', 'tiny:latest'], /invalid --job "abc": expected the OAR job number/],
      [['run', 'tiny:latest'], /required option '--job <id>' not specified/],
      [['ps', '--job', '0'], /invalid --job "0"/],
      [['release', '12x'], /invalid job id "12x"/],
      [['logs', 'web-1', '--bytes', 'lots'], /invalid --bytes "lots"/],
      [['completion', 'fish'], /unknown shell "fish": expected bash or zsh/],
      [['frobnicate'], /unknown command 'frobnicate'/],
    ];
    for (const [args, message] of cases) {
      const r = alice(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(message);
    }
    expect(newOarJobs(before)).toEqual([]);
  });

  it('cli - tokens: a token file others can read is refused; bad, revoked or missing tokens and an unreachable controller have their own exit codes', () => {
    const tokenFile = join(user.home, '.config/oarcloud/token');
    chmodSync(tokenFile, 0o644);
    const open = alice(['ps']);
    chmodSync(tokenFile, 0o600);
    expect(open.code).toBe(4);
    expect(open.stderr).toMatch(/refusing to use .*\/token: it is accessible by other users \(mode 0644\); run `chmod 600 /);
    expect(alice(['ps'], { env: { OARCLOUD_TOKEN: 'not-a-real-token-0123456789' } })).toMatchObject({ code: 4, stderr: 'oarcloud: unknown or revoked token\n' });
    expect(alice(['ps'], { env: { HOME: '/nonexistent' } })).toMatchObject({ code: 4, stderr: expect.stringMatching(/^oarcloud: no token: ask an admin for one, then run `oarcloud login --token-file FILE`/) });
    expect(alice(['ps'], { env: { OARCLOUD_CONTROLLER: '127.0.0.1:1' } })).toMatchObject({ code: 6, stderr: expect.stringMatching(/^oarcloud: cannot reach the controller at 127\.0\.0\.1:1 /) });
    expect(alice(['login', '--token', '-'], { input: 'not-a-real-token-0123456789\n' })).toMatchObject({ code: 4, stderr: expect.stringMatching(/does not accept this token .*nothing stored/) });
    expect(ok(alice(['whoami'])).stdout).toMatch(/^alice /);
  });

  it('cli - admin commands: root sees nodes, users and everyone; alice is refused with exit 4', () => {
    const nodes = parse<Array<{ name: string; healthy: boolean; cores: number; coresFree: number }>>(root(['admin', 'nodes', '--json']));
    expect(nodes.map((n) => n.name)).toEqual(expect.arrayContaining(['node-1', 'node-2']));
    expect(nodes.filter((n) => n.name.startsWith('node-')).every((n) => n.healthy && n.cores > 0)).toBe(true);
    expect(ok(root(['admin', 'nodes'])).stdout.split('\n')[0]).toMatch(/^NODE +HEALTH +LOAD +INSTANCES +CPUS +USED +FREE +MEMORY USED +LAST SEEN$/);
    expect(parse<Array<{ name: string; role: string }>>(root(['admin', 'user', 'list', '--json']))).toEqual(expect.arrayContaining([{ name: 'alice', role: 'user', createdAtMs: expect.any(Number) }]));
    expect(ok(root(['admin', 'jobs'])).stdout.split('\n')[0]).toMatch(/^JOB +OWNER +STATE/);
    for (const args of [['admin', 'nodes'], ['admin', 'user', 'list'], ['admin', 'user', 'add', 'mallory'], ['admin', 'user', 'token', 'bob'], ['admin', 'instances'], ['admin', 'jobs']]) {
      const r = alice(args);
      expect(r.code, args.join(' ')).toBe(4);
      expect(r.stderr).toMatch(/^oarcloud: (this call is for admins|alice is not an admin)\n$/);
    }
  });

  it('cli - help, completion and version work without a controller', () => {
    const help = alice(['reserve', '--help'], { env: { OARCLOUD_CONTROLLER: '127.0.0.1:1' } });
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Examples:\n  oarcloud reserve --nodes 2/);
    expect(ok(alice(['--help'])).stdout).toMatch(/Exit codes:\n  0  ok\n  1  other error\n  2  bad usage/);
    const bash = ok(alice(['completion', 'bash'])).stdout;
    expect(bash).toContain('complete -o default -F _oarcloud oarcloud');
    expect(spawnSync('bash', ['-n'], { input: bash }).status).toBe(0);
    expect(spawnSync('bash', ['-c', `${bash}\nCOMP_WORDS=(oarcloud admin user a); COMP_CWORD=3; _oarcloud; echo "\${COMPREPLY[*]}"`], { encoding: 'utf8' }).stdout.trim()).toBe('add');
    expect(existsSync(CLI)).toBe(true);
  });
  it('cli - a job whose walltime ended: run in it and ssh to its gone instance are refused with a clear message, nothing created', async () => {
    // bob's job (beforeAll) ran its instance and answered SSH while it lived.
    expect(expiring.sshOutput).toBe('exp-1\n');
    const jobId = expiring.jobId;
    // OAR ends the job at its walltime; the controller removes its instances.
    const ended = await waitFor(() => {
      const j = parse<JobJson>(bob(['job', String(jobId), '--json']));
      return j.state === 'ended' ? j : undefined;
    }, { timeoutMs: 180_000, intervalMs: 2000, what: `job ${jobId} ended by its walltime` });
    expect(ended.endedAtMs - ended.startedAtMs).toBeGreaterThanOrEqual(55_000);
    await waitFor(() => (parse<InstanceJson[]>(bob(['ps', '--job', String(jobId), '--json'])).length === 0 ? true : undefined), { timeoutMs: 60_000, intervalMs: 1000, what: 'its instance gone' });

    const before = oarJobsOf('bob');
    expectRefused(bob(['run', '--job', String(ended.id), 'tiny:latest']), 5, `job ${ended.id} has ended`, 'run in an expired job');
    expectRefused(bob(['run', '--job', String(ended.id), '--json', 'tiny:latest']), 5, `job ${ended.id} has ended`, 'run --json in an expired job');
    expectRefused(bob(['ssh', 'exp-1', '--', 'true']), 3, 'no instance exp-1', 'ssh by name to the gone instance');
    // By id the record is still there, deleted: refused in its state, and no advice to start it.
    expectRefused(bob(['ssh', expiring.instanceId, '--', 'true']), 5, `instance exp-1 (${expiring.instanceId}) is deleted, not running`, 'ssh by id to the gone instance');
    expectRefused(bob(['proxy', expiring.instanceId, '22']), 5, `instance exp-1 (${expiring.instanceId}) is deleted, not running`, 'proxy to the gone instance');
    expect(parse<InstanceJson>(bob(['show', expiring.instanceId, '--json']))).toMatchObject({ id: expiring.instanceId, state: 'deleted' });
    expect(parse<InstanceJson[]>(bob(['ps', '--job', String(ended.id), '--json']))).toEqual([]);
    expect(parse<JobJson>(bob(['job', String(ended.id), '--json']))).toMatchObject({ state: 'ended', instances: 0 });
    // Someone else's ended job is not found, as any of their jobs is.
    expectRefused(alice(['run', '--job', String(ended.id), 'tiny:latest']), 3, new RegExp(`no job ${ended.id}`), "run in bob's ended job as alice");
    expect(newOarJobs(before, 'bob')).toEqual([]);
  }, 400_000);
});
