/**
 * The user's commands: jobs (reserve, jobs, release), images, instances (run, ps, show,
 * stop, start, rm, logs, save) and whoami. Every value is checked before anything is sent.
 */
import type { Command } from 'commander';
import { DeadlineExceededError, InvalidArgumentError, UnimplementedError } from '@oarcloud/common';
import type { Ctx } from '../context.js';
import { bytes, duration, json, keyValues, mib, paintState, table, type Column } from '../output.js';
import {
  defaultSshKeyFiles,
  parseImage,
  parseInstanceRef,
  parseIntIn,
  parseJobId,
  parseMemory,
  parseNamePrefix,
  parseWalltime,
  readSshKeys,
} from '../parse.js';
import { imageView, instanceView, jobView, userView, type InstanceView, type JobView } from '../views.js';
import { parseVolumeMount } from './volumes.js';
import { waitForJob } from './wait.js';

const DEFAULTS = { nodes: '1', walltime: '1h', count: '1', cpus: '1', memory: '512M', waitTimeout: '10m', logBytes: '65536' } as const;

interface LaunchOpts {
  count?: string;
  cpus?: string;
  memory?: string;
  sshKey?: string[];
  name?: string;
  volume?: string[];
}

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** The launch options shared by reserve and run. */
function launchOptions(cmd: Command): Command {
  return cmd
    .option('--count <n>', `instances to start (default ${DEFAULTS.count})`)
    .option('--cpus <n>', `vCPUs per instance, each pinned inside the job's cores (default ${DEFAULTS.cpus})`)
    .option('--memory <size>', `memory per instance: 512M, 1G… (default ${DEFAULTS.memory})`)
    .option('--ssh-key <file>', 'public key allowed to log in as root (repeatable; default ~/.ssh/id_*.pub)', collect)
    .option('--name <prefix>', 'instance name prefix: instances are <prefix>-1, <prefix>-2…')
    .option('--volume <name:/path[:ro]>', 'mount one of your volumes (see `oarcloud volume`) at /path in every instance (repeatable)', collect);
}

function launchSpec(ctx: Ctx, image: string, o: LaunchOpts) {
  const files = o.sshKey?.length ? o.sshKey : defaultSshKeyFiles(ctx.config().home);
  const keys = files.flatMap((f) => readSshKeys(f, '--ssh-key'));
  if (keys.length === 0) ctx.out.err('warning: no SSH public key (~/.ssh/id_*.pub, --ssh-key): nobody will be able to log in to these instances\n');
  return {
    image: parseImage(image, '--image'),
    count: parseIntIn(o.count ?? DEFAULTS.count, '--count', 1, 1000),
    vcpus: parseIntIn(o.cpus ?? DEFAULTS.cpus, '--cpus', 1, 1024),
    memoryMib: parseMemory(o.memory ?? DEFAULTS.memory),
    sshAuthorizedKeys: keys,
    namePrefix: o.name === undefined ? '' : parseNamePrefix(o.name),
    volumes: o.volume?.length ? { mounts: o.volume.map((v) => parseVolumeMount(v)) } : undefined,
  };
}

const age = (ms: number): string => (ms > 0 ? duration(Date.now() - ms) : '-');

export function instanceColumns(ctx: Ctx, withOwner: boolean): Array<Column<InstanceView>> {
  const cols: Array<Column<InstanceView>> = [
    { header: 'ID', value: (i) => i.id },
    { header: 'NAME', value: (i) => i.name },
    { header: 'JOB', value: (i) => String(i.jobId), align: 'right' },
    { header: 'NODE', value: (i) => i.node || '-' },
    { header: 'STATE', value: (i) => i.state, paint: (t) => paintState(t, ctx.out.color) },
    { header: 'IMAGE', value: (i) => i.image },
    { header: 'CPUS', value: (i) => String(i.vcpus), align: 'right' },
    { header: 'MEMORY', value: (i) => mib(i.memoryMib), align: 'right' },
    { header: 'AGE', value: (i) => age(i.createdAtMs) },
  ];
  if (withOwner) cols.splice(3, 0, { header: 'OWNER', value: (i) => i.owner });
  return cols;
}

export function jobColumns(ctx: Ctx, withOwner: boolean): Array<Column<JobView>> {
  const cols: Array<Column<JobView>> = [
    { header: 'JOB', value: (j) => String(j.id), align: 'right' },
    { header: 'STATE', value: (j) => j.state, paint: (t) => paintState(t, ctx.out.color) },
    { header: 'OAR', value: (j) => j.oarState },
    { header: 'HOSTS', value: (j) => j.hosts.map((h) => `${h.node}(${h.cores})`).join(',') || '-' },
    { header: 'INSTANCES', value: (j) => String(j.instances), align: 'right' },
    { header: 'WALLTIME', value: (j) => duration(j.walltimeS * 1000) },
    { header: 'ELAPSED', value: (j) => (j.startedAtMs ? duration((j.endedAtMs || Date.now()) - j.startedAtMs) : '-') },
  ];
  if (withOwner) cols.splice(1, 0, { header: 'OWNER', value: (j) => j.owner });
  return cols;
}

export function printInstances(ctx: Ctx, list: InstanceView[], asJson: boolean | undefined, withOwner = false): void {
  if (asJson) ctx.out.out(json(list));
  else if (list.length === 0) ctx.out.err('no instances\n');
  else ctx.out.out(table(list, instanceColumns(ctx, withOwner)));
}

export function printJobs(ctx: Ctx, list: JobView[], asJson: boolean | undefined, withOwner = false): void {
  if (asJson) ctx.out.out(json(list));
  else if (list.length === 0) ctx.out.err('no jobs\n');
  else ctx.out.out(table(list, jobColumns(ctx, withOwner)));
}

function showInstance(ctx: Ctx, i: InstanceView): string {
  return keyValues([
    ['id', i.id],
    ['name', i.name],
    ['job', String(i.jobId)],
    ['owner', i.owner],
    ['node', i.node || '-'],
    ['state', paintState(i.state, ctx.out.color) + (i.reason ? ` (${i.reason})` : '')],
    ['image', i.image],
    ['cpus', `${i.vcpus} (job cpuset ${i.cpuset || '-'})`],
    ['memory', mib(i.memoryMib)],
    ...(i.usage ? [['usage', usageText(i)] as [string, string]] : []),
    ['created', i.createdAtMs ? `${new Date(i.createdAtMs).toISOString()} (${age(i.createdAtMs)} ago)` : '-'],
    ['ssh', `oarcloud ssh ${i.name || i.id}`],
  ]);
}

/** `cpu 12.5%, memory 3.2M of 128M (2s ago)`: what `show` says of a running instance's use. */
function usageText(i: InstanceView): string {
  const u = i.usage!;
  return `cpu ${u.cpuPercent.toFixed(1)}%, memory ${bytes(u.memoryBytes)} of ${mib(i.memoryMib)} (${age(u.atMs)} ago)`;
}

/** `oarcloud stats`: one row per instance, its use ('-' until measured, or when not running). */
export function statsColumns(ctx: Ctx): Array<Column<InstanceView>> {
  const dash = (i: InstanceView, f: (u: NonNullable<InstanceView['usage']>) => string) => (i.usage ? f(i.usage) : '-');
  return [
    { header: 'ID', value: (i) => i.id },
    { header: 'NAME', value: (i) => i.name },
    { header: 'NODE', value: (i) => i.node || '-' },
    { header: 'STATE', value: (i) => i.state, paint: (t) => paintState(t, ctx.out.color) },
    { header: 'CPU%', value: (i) => dash(i, (u) => u.cpuPercent.toFixed(1)), align: 'right' },
    { header: 'CPUS', value: (i) => String(i.vcpus), align: 'right' },
    { header: 'CPU TIME', value: (i) => dash(i, (u) => `${u.cpuSeconds.toFixed(1)}s`), align: 'right' },
    { header: 'MEMORY', value: (i) => dash(i, (u) => bytes(u.memoryBytes)), align: 'right' },
    { header: 'LIMIT', value: (i) => mib(i.memoryMib), align: 'right' },
    { header: 'MEASURED', value: (i) => dash(i, (u) => `${age(u.atMs)} ago`) },
  ];
}

/** What an UNIMPLEMENTED answer means to the user. */
function notYet(err: unknown, what: string): never {
  if (err instanceof UnimplementedError) throw new UnimplementedError(`${what} is not supported by this controller yet (${err.message})`, { cause: err });
  throw err;
}

export function registerUserCommands(program: Command, ctx: Ctx): void {
  // ------------------------------------------------------------------- reserve
  launchOptions(
    program
      .command('reserve')
      .description('Reserve hosts with OAR (oarsub -t cloud as you) and, with --image, start instances in the job as soon as it runs')
      .option('--nodes <n>', `hosts to reserve (default ${DEFAULTS.nodes})`)
      .option('--cores <n>', 'cores per host (default: whole hosts)')
      .option('--walltime <duration>', `how long: 1h, 90m, 1:30:00 (default ${DEFAULTS.walltime})`)
      .option('--image <name:tag>', 'image of the instances to start (see `oarcloud images`)'),
  )
    .option('--wait', 'wait until the job runs and its instances are RUNNING (progress on stderr)')
    .option('--timeout <duration>', `with --wait: give up after this long (default ${DEFAULTS.waitTimeout})`)
    .option('--json', 'print the job (and with --wait its instances) as JSON')
    .addHelpText(
      'after',
      `
Examples:
  oarcloud reserve --nodes 2 --walltime 1h --image debian:12 --count 4 --wait
  oarcloud reserve --nodes 1 --cores 2 --walltime 30m          # a job only; oarcloud run later
  oarcloud reserve --nodes 2 --image tiny:latest --count 3 --cpus 1 --memory 256M --name web --json`,
    )
    .action(async (o: LaunchOpts & { nodes?: string; cores?: string; walltime?: string; image?: string; wait?: boolean; timeout?: string; json?: boolean }) => {
      const nodes = parseIntIn(o.nodes ?? DEFAULTS.nodes, '--nodes', 1, 10_000);
      const cores = o.cores === undefined ? 0 : parseIntIn(o.cores, '--cores', 1, 4096);
      const walltimeS = parseWalltime(o.walltime ?? DEFAULTS.walltime);
      const timeoutMs = parseWalltime(o.timeout ?? DEFAULTS.waitTimeout, '--timeout') * 1000;
      // `--image ''` is a bad image, not "no image": only an absent flag reserves hosts alone.
      if (o.image === undefined) {
        const given = (['count', 'cpus', 'memory', 'sshKey', 'name', 'volume'] as const).filter((k) => o[k] !== undefined);
        if (given.length) throw new InvalidArgumentError(`${given.map((k) => `--${k.replace('sshKey', 'ssh-key')}`).join(', ')}: only with --image (what to start in the job)`);
      }
      const spec = o.image !== undefined ? launchSpec(ctx, o.image, o) : undefined;
      const api = ctx.api();
      const job = jobView(await api.call(api.jobs, api.jobs.reserve, { nodes, coresPerNode: cores, walltimeS, spec, idempotencyKey: '' }));
      ctx.out.err(`job ${job.id} submitted (${nodes} host${nodes > 1 ? 's' : ''}${cores ? ` x ${cores} cores` : ''}, walltime ${duration(walltimeS * 1000)}${spec ? `, ${spec.count} x ${spec.image}` : ''})\n`);
      if (!o.wait) {
        if (o.json) ctx.out.out(json({ job, instances: [] }));
        else ctx.out.out(`${job.id}\n`);
        return;
      }
      const done = await waitForJob(ctx, { jobId: job.id, count: spec?.count ?? 0, timeoutMs });
      if (o.json) ctx.out.out(json(done));
      else printInstances(ctx, done.instances, false);
    });

  // ---------------------------------------------------------------------- jobs
  program
    .command('jobs')
    .description('List your cloud jobs')
    .option('--all', "admins: every user's jobs")
    .option('--json', 'print as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud jobs\n  oarcloud jobs --json | jq \'.[] | select(.state=="running") | .id\'')
    .action(async (o: { all?: boolean; json?: boolean }) => {
      const api = ctx.api();
      const list = (await api.call(api.jobs, api.jobs.listJobs, { allUsers: !!o.all })).jobs.map(jobView);
      printJobs(ctx, list, o.json, !!o.all);
    });

  program
    .command('job')
    .description('Show one job')
    .argument('<job>', 'OAR job id')
    .option('--json', 'print as JSON')
    .addHelpText('after', '\nExample:\n  oarcloud job 1234')
    .action(async (jobArg: string, o: { json?: boolean }) => {
      const api = ctx.api();
      const j = jobView(await api.call(api.jobs, api.jobs.getJob, { id: parseJobId(jobArg) }));
      if (o.json) return ctx.out.out(json(j));
      ctx.out.out(
        keyValues([
          ['job', String(j.id)],
          ['owner', j.owner],
          ['state', `${paintState(j.state, ctx.out.color)} (OAR ${j.oarState})`],
          ['hosts', j.hosts.map((h) => `${h.node} (cpus ${h.cpuset})`).join(', ') || '-'],
          ['walltime', duration(j.walltimeS * 1000)],
          ['started', j.startedAtMs ? new Date(j.startedAtMs).toISOString() : '-'],
          ['ended', j.endedAtMs ? new Date(j.endedAtMs).toISOString() : '-'],
          ['instances', String(j.instances)],
          ...(j.error ? ([['error', j.error]] as Array<[string, string]>) : []),
        ]),
      );
    });

  program
    .command('release')
    .description('End a job (oardel): its instances and networks are removed on every host')
    .argument('<job>', 'OAR job id')
    .option('--wait', 'wait until the job has ended and its instances are gone')
    .option('--timeout <duration>', `with --wait: give up after this long (default ${DEFAULTS.waitTimeout})`)
    .option('--json', 'print the job as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud release 1234\n  oarcloud release 1234 --wait')
    .action(async (jobArg: string, o: { wait?: boolean; timeout?: string; json?: boolean }) => {
      const id = parseJobId(jobArg);
      const timeoutMs = parseWalltime(o.timeout ?? DEFAULTS.waitTimeout, '--timeout') * 1000;
      const api = ctx.api();
      let j = jobView(await api.call(api.jobs, api.jobs.release, { id }));
      // --wait: until OAR itself has ended the job, not only the controller.
      for (const t0 = Date.now(); o.wait && !(j.state === 'ended' && ['Terminated', 'Error'].includes(j.oarState)); ) {
        if (Date.now() - t0 > timeoutMs) throw new DeadlineExceededError(`job ${id} has not ended after ${duration(timeoutMs)} (OAR state ${j.oarState})`);
        await new Promise((r) => setTimeout(r, 500));
        j = jobView(await api.call(api.jobs, api.jobs.getJob, { id }));
      }
      if (o.json) ctx.out.out(json(j));
      else if (j.state !== 'ended') ctx.out.out(`job ${j.id} released: OAR is ending it, its instances are being removed\n`);
      else if (['Terminated', 'Error'].includes(j.oarState)) ctx.out.out(`job ${j.id} released: ended (OAR state ${j.oarState})\n`);
      else ctx.out.out(`job ${j.id} released: its instances are removed; OAR is finishing the job (OAR state ${j.oarState})\n`);
    });

  // -------------------------------------------------------------------- images
  program
    .command('images')
    .description('List the images you can start')
    .option('--json', 'print as JSON')
    .addHelpText('after', '\nExample:\n  oarcloud images')
    .action(async (o: { json?: boolean }) => {
      const api = ctx.api();
      const list = (await api.call(api.images, api.images.listImages, {}).catch((e: unknown) => notYet(e, 'listing images'))).images.map(imageView);
      if (o.json) return ctx.out.out(json(list));
      if (list.length === 0) return ctx.out.err('no images\n');
      ctx.out.out(
        table(list, [
          { header: 'NAME', value: (i) => i.name },
          { header: 'OWNER', value: (i) => (i.public ? 'public' : i.owner) },
          { header: 'SIZE', value: (i) => bytes(i.sizeBytes), align: 'right' },
          { header: 'LAYERS', value: (i) => String(i.layers), align: 'right' },
          { header: 'CREATED', value: (i) => (i.createdAtMs ? new Date(i.createdAtMs).toISOString().slice(0, 10) : '-') },
        ]),
      );
    });

  // ----------------------------------------------------------------------- run
  launchOptions(
    program
      .command('run')
      .description('Start instances in one of your running jobs')
      .argument('<image>', 'image name:tag')
      .requiredOption('--job <id>', 'the OAR job to run in'),
  )
    .option('--network <id>', 'network to attach (repeatable; default: the job network)', collect)
    .option('--wait', 'wait until the instances are RUNNING')
    .option('--timeout <duration>', `with --wait: give up after this long (default ${DEFAULTS.waitTimeout})`)
    .option('--json', 'print the instances as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud run --job 1234 debian:12\n  oarcloud run --job 1234 --count 2 --cpus 2 --memory 1G --name db --wait tiny:latest')
    .action(async (image: string, o: LaunchOpts & { job: string; network?: string[]; wait?: boolean; timeout?: string; json?: boolean }) => {
      const jobId = parseJobId(o.job, '--job');
      const timeoutMs = parseWalltime(o.timeout ?? DEFAULTS.waitTimeout, '--timeout') * 1000;
      const spec = launchSpec(ctx, image, o);
      const api = ctx.api();
      const res = await api.call(api.instances, api.instances.runInstances, { jobId, spec, networks: o.network ?? [], idempotencyKey: '' });
      let list = res.instances.map(instanceView);
      if (o.wait) list = (await waitForJob(ctx, { jobId, ids: list.map((i) => i.id), count: list.length, timeoutMs })).instances;
      printInstances(ctx, list, o.json);
    });

  // ------------------------------------------------------------------------ ps
  program
    .command('ps')
    .description('List your instances')
    .option('--job <id>', "only this job's instances")
    .option('--all', "admins: every user's instances")
    .option('--json', 'print as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud ps\n  oarcloud ps --job 1234 --json | jq -r \'.[].name\'')
    .action(async (o: { job?: string; all?: boolean; json?: boolean }) => {
      const jobId = o.job === undefined ? 0 : parseJobId(o.job, '--job');
      const api = ctx.api();
      const list = (await api.call(api.instances, api.instances.listInstances, { jobId, allUsers: !!o.all })).instances.map(instanceView);
      printInstances(ctx, list, o.json, !!o.all);
    });

  program
    .command('show')
    .description('Show one instance')
    .argument('<instance>', 'instance id or name')
    .option('--json', 'print as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud show web-1\n  oarcloud show i-0123456789ab --json')
    .action(async (ref: string, o: { json?: boolean }) => {
      const api = ctx.api();
      const i = instanceView(await api.call(api.instances, api.instances.getInstance, { id: parseInstanceRef(ref) }));
      ctx.out.out(o.json ? json(i) : showInstance(ctx, i));
    });

  program
    .command('stats')
    .description("Show what your running instances use: CPU (percent of one core) and memory, as their nodes measured it")
    .option('--job <id>', "only this job's instances")
    .option('--all', "admins: every user's instances")
    .option('--json', 'print as JSON (the `usage` of an instance is absent until it is measured)')
    .addHelpText(
      'after',
      '\nAgents read each instance\'s cgroup at every heartbeat (a few seconds apart); CPU% is the rate between\nthe last two, 100 = one core busy.\n\nExamples:\n  oarcloud stats\n  oarcloud stats --job 1234 --json | jq \'.[] | {name, mem: .usage.memoryBytes}\'',
    )
    .action(async (o: { job?: string; all?: boolean; json?: boolean }) => {
      const jobId = o.job === undefined ? 0 : parseJobId(o.job, '--job');
      const api = ctx.api();
      const list = (await api.call(api.instances, api.instances.listInstances, { jobId, allUsers: !!o.all })).instances.map(instanceView).filter((i) => i.state !== 'deleted');
      if (o.json) ctx.out.out(json(list));
      else if (list.length === 0) ctx.out.err('no instances\n');
      else ctx.out.out(table(list, statsColumns(ctx)));
    });

  // ------------------------------------------------------- stop / start / rm
  const actions = [
    { name: 'stop', verb: 'stopped', desc: 'Stop instances (their disk is kept; `oarcloud start` boots them again)' },
    { name: 'start', verb: 'started', desc: 'Start stopped instances' },
    { name: 'rm', verb: 'removed', desc: 'Remove instances and their disk' },
  ] as const;
  for (const a of actions) {
    program
      .command(a.name)
      .description(a.desc)
      .argument('<instance...>', 'instance ids or names')
      .option('--json', 'print the instances as JSON')
      .addHelpText('after', `\nExample:\n  oarcloud ${a.name} web-1 web-2`)
      .action(async (refs: string[], o: { json?: boolean }) => {
        // Every argument is checked before anything is sent (exit 2, nothing stopped).
        const ids = refs.map(parseInstanceRef);
        const api = ctx.api();
        const done: InstanceView[] = [];
        let firstError: unknown;
        for (const [i, ref] of refs.entries()) {
          try {
            const id = ids[i]!;
            let view: InstanceView;
            if (a.name === 'rm') {
              view = instanceView(await api.call(api.instances, api.instances.getInstance, { id }));
              await api.call(api.instances, api.instances.deleteInstance, { id: view.id });
              view = { ...view, state: 'deleted' };
            } else {
              const m = a.name === 'stop' ? api.instances.stopInstance : api.instances.startInstance;
              view = instanceView(await api.call(api.instances, m, { id }));
            }
            done.push(view);
            if (!o.json) ctx.out.out(`${a.verb} ${view.name} (${view.id})${a.name === 'rm' ? '' : `: ${paintState(view.state, ctx.out.color)}`}\n`);
          } catch (err) {
            // Go on with the others; the first failure decides the exit code.
            firstError ??= err;
            if (refs.length > 1) ctx.out.err(`oarcloud ${a.name} ${ref}: ${(err as Error).message}\n`);
          }
        }
        // A failure prints nothing on stdout: scripts must never parse `[]` as "done, nothing to do".
        if (o.json && (done.length > 0 || !firstError)) ctx.out.out(json(done));
        if (firstError) {
          if (refs.length > 1) (firstError as { reported?: boolean }).reported = true;
          throw firstError;
        }
      });
  }

  // ---------------------------------------------------------------- logs / save
  program
    .command('logs')
    .description("Print an instance's console output")
    .argument('<instance>', 'instance id or name')
    .option('--bytes <n>', `the last N bytes (default ${DEFAULTS.logBytes})`)
    .addHelpText('after', '\nExample:\n  oarcloud logs web-1 --bytes 4096')
    .action(async (ref: string, o: { bytes?: string }) => {
      const maxBytes = parseIntIn(o.bytes ?? DEFAULTS.logBytes, '--bytes', 1, 16 * 1024 * 1024);
      const api = ctx.api();
      const res = await api.call(api.instances, api.instances.getConsoleLog, { id: parseInstanceRef(ref), maxBytes }).catch((e: unknown) => notYet(e, 'reading console logs'));
      ctx.out.out(Buffer.from(res.data).toString('utf8'));
    });

  program
    .command('save')
    .description("Save an instance's disk as a new image name:tag (yours)")
    .argument('<instance>', 'instance id or name')
    .argument('<image>', 'new image name:tag')
    .option('--json', 'print the image as JSON')
    .addHelpText('after', '\nExample:\n  oarcloud save web-1 myweb:v2')
    .action(async (ref: string, name: string, o: { json?: boolean }) => {
      const api = ctx.api();
      const img = imageView(
        await api.call(api.images, api.images.saveInstance, { instanceId: parseInstanceRef(ref), name: parseImage(name) }).catch((e: unknown) => notYet(e, 'saving instances as images')),
      );
      ctx.out.out(o.json ? json(img) : `saved ${ref} as ${img.name}\n`);
    });

  program
    .command('whoami')
    .description('Show who the controller thinks you are')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const api = ctx.api();
      const u = userView(await api.call(api.users, api.users.whoAmI, {}));
      ctx.out.out(o.json ? json({ ...u, controller: api.address }) : `${u.name} (${u.role}) on ${api.address}\n`);
    });
}
