/**
 * `oarsub` / `oardel` run as the calling user (the controller runs as root on the OAR
 * server): `runuser -u <user> -- oarsub …`, no shell, so no quoting issue; the working
 * folder is the user's home (OAR writes `OAR.<id>.stdout` there).
 */
import { execFile } from 'node:child_process';
import { InvalidArgumentError, NotFoundError, UnavailableError } from '@oarcloud/common';
import type { OarCommands, SubmitRequest } from './types.js';

const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs: number }): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: opts.cwd, timeout: opts.timeoutMs, encoding: 'utf8', maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new UnavailableError(`${cmd} could not run: ${err.message}`, { cause: err }));
        return;
      }
      resolve({ code: err ? Number(err.code) : 0, stdout, stderr });
    });
  });
}

export class CliOarCommands implements OarCommands {
  constructor(private readonly timeoutMs = 30_000) {}

  private async home(user: string): Promise<string> {
    if (!USER_RE.test(user)) throw new InvalidArgumentError(`not a valid user name: ${JSON.stringify(user.slice(0, 40))}`);
    const r = await run('getent', ['passwd', user], { timeoutMs: 5000 });
    const home = r.code === 0 ? r.stdout.trim().split(':')[5] : undefined;
    if (!home) throw new NotFoundError(`no Unix user ${user} on the OAR server`);
    return home;
  }

  async submit(req: SubmitRequest): Promise<number> {
    const cwd = await this.home(req.user);
    // -d: OAR takes the launching folder from $PWD (the controller's), not from the cwd.
    const args = ['-u', req.user, '--', 'oarsub', '-d', cwd];
    for (const t of req.types) args.push('-t', t);
    args.push('-l', req.resources, req.command);
    const r = await run('runuser', args, { cwd, timeoutMs: this.timeoutMs });
    const id = /OAR_JOB_ID=(\d+)/.exec(r.stdout)?.[1];
    if (r.code !== 0 || !id) {
      const why = oarMessage(r) || `oarsub exited with ${r.code}`;
      throw new InvalidArgumentError(`OAR refused the job: ${why}`);
    }
    return Number(id);
  }

  async delete(user: string, jobId: number): Promise<void> {
    const cwd = await this.home(user);
    const r = await run('runuser', ['-u', user, '--', 'oardel', String(jobId)], { cwd, timeoutMs: this.timeoutMs });
    if (r.code !== 0) throw new InvalidArgumentError(`oardel ${jobId} failed: ${oarMessage(r) || `exit ${r.code}`}`);
  }
}

function oarMessage(r: RunResult): string {
  return `${r.stderr}\n${r.stdout}`
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('[ADMISSION RULE] Modify') && !l.startsWith('Generate a job key'))
    .join(' ')
    .slice(0, 500);
}
