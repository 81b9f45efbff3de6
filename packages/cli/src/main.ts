#!/usr/bin/env node
/**
 * The `oarcloud` command: users, admins, and the OAR hook entry points.
 */
import { runCli } from './program.js';

process.exitCode = await runCli(process.argv.slice(2), {
  env: process.env,
  io: { stdoutIsTTY: !!process.stdout.isTTY, stderrIsTTY: !!process.stderr.isTTY, uid: process.getuid?.() ?? -1 },
  write: { out: (t) => void process.stdout.write(t), err: (t) => void process.stderr.write(t) },
  stdin: process.stdin,
  self: { node: process.execPath, script: process.argv[1] ?? 'oarcloud' },
});
