/**
 * Prerequisites of integration tests. A missing prerequisite skips the suite with a clear
 * reason on a developer's machine; with `OARCLOUD_REQUIRE_INTEGRATION=1` (set by CI) it
 * fails instead, so CI can never pass by skipping.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';

export function integrationRequired(): boolean {
  return process.env.OARCLOUD_REQUIRE_INTEGRATION === '1';
}

export interface Prereq {
  ok: boolean;
  reason: string;
}

/** Runs the checks; returns ok, or the first failure's reason. Throws in required mode. */
export function prerequisites(suite: string, checks: Array<() => string | undefined>): Prereq {
  for (const check of checks) {
    let problem: string | undefined;
    try {
      problem = check();
    } catch (err) {
      problem = String(err instanceof Error ? err.message : err);
    }
    if (problem) {
      const reason = `${suite}: ${problem}`;
      if (integrationRequired()) throw new Error(`${reason} (OARCLOUD_REQUIRE_INTEGRATION=1: not skipping)`);
      console.warn(`SKIP ${reason}`);
      return { ok: false, reason };
    }
  }
  return { ok: true, reason: '' };
}

export const needRoot = (): string | undefined => (process.getuid?.() === 0 ? undefined : 'must run as root');

export const needCommand =
  (cmd: string, ...args: string[]) =>
  (): string | undefined => {
    try {
      execFileSync(cmd, args, { stdio: 'ignore', timeout: 10_000 });
      return undefined;
    } catch {
      return `\`${[cmd, ...args].join(' ')}\` failed (is the local cluster up? npm run cluster:up)`;
    }
  };

export const needPath =
  (path: string) =>
  (): string | undefined => {
    try {
      accessSync(path, constants.F_OK);
      return undefined;
    } catch {
      return `${path} is missing`;
    }
  };

/** The local cluster's state folder (infra/local). */
export function localStateDir(): string {
  return process.env.OARCLOUD_LOCAL_STATE ?? '/var/lib/oarcloud-local';
}
