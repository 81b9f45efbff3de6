import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULT_CONTROLLER, hookConfig, runHook } from './hook.js';

describe('hook - configuration and failure modes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oc-hook-'));
  const tokenFile = join(dir, 'hook.token');
  writeFileSync(tokenFile, 'tok\n');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('options win over the environment, which wins over defaults; the wait is capped at 60 s', () => {
    expect(hookConfig({}, {})).toMatchObject({ controller: DEFAULT_CONTROLLER, waitMs: 30_000 });
    expect(hookConfig({}, { OARCLOUD_CONTROLLER: 'c:1', OARCLOUD_HOOK_TOKEN_FILE: '/t', OARCLOUD_HOOK_WAIT: '5' })).toEqual({ controller: 'c:1', tokenFile: '/t', waitMs: 5000 });
    expect(hookConfig({ controller: 'o:2', tokenFile: '/o', wait: '600' }, { OARCLOUD_CONTROLLER: 'c:1' })).toEqual({ controller: 'o:2', tokenFile: '/o', waitMs: 60_000 });
  });

  it('a server hook with the controller down returns quickly with one line', async () => {
    const t0 = Date.now();
    const line = await runHook('server-prologue', ['12'], { controller: '127.0.0.1:1', tokenFile, waitMs: 30_000 });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(line).toMatch(/^oarcloud hook server-prologue job=12: controller 127.0.0.1:1 did not take the event/);
  });

  it('refuses bad arguments and a missing token file without throwing', async () => {
    expect(await runHook('nope', ['1'], { controller: '127.0.0.1:1', tokenFile, waitMs: 0 })).toMatch(/unknown hook kind/);
    expect(await runHook('prologue', ['x'], { controller: '127.0.0.1:1', tokenFile, waitMs: 0 })).toMatch(/positive integer/);
    expect(await runHook('epilogue', ['3'], { controller: '127.0.0.1:1', tokenFile: join(dir, 'absent'), waitMs: 0 })).toMatch(/cannot read the hook token/);
  });
});
