/**
 * `oarcloud login`: keeps the caller's token in `~/.config/oarcloud/token`, mode 0600, after
 * checking it with the controller; `oarcloud logout` removes it.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import { InvalidArgumentError, UnauthenticatedError } from '@oarcloud/common';
import type { Command } from 'commander';
import { Api } from '../api.js';
import { controllerCredentials } from '../config.js';
import type { Ctx } from '../context.js';
import { json } from '../output.js';
import { userView, type UserView } from '../views.js';

/** Writes `content` to `path` with mode 0600, atomically (never readable by others, even briefly). */
export function writePrivateFile(path: string, content: string): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

async function readAll(stream: NodeJS.ReadableStream): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks).toString('utf8');
}

export function registerLoginCommands(program: Command, ctx: Ctx, stdin: NodeJS.ReadableStream): void {
  program
    .command('login')
    .description('Store your token (from an admin) in ~/.config/oarcloud/token, mode 0600')
    .option('--token-file <file>', 'read the token from this file')
    .option('--token <value>', 'the token; "-" reads it from stdin (safer than the command line)')
    .option('--no-check', 'store it without asking the controller')
    .option('--json', 'print the user as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud login --token-file ./alice.token && rm ./alice.token\n  printf %s "$TOKEN" | oarcloud login --token -\n  oarcloud --controller frontend:7000 login --token -   # also remembers the controller\n  oarcloud --controller frontend:7443 --ca /etc/oarcloud/ca.crt login --token -   # over TLS')
    .action(async (o: { tokenFile?: string; token?: string; check: boolean; json?: boolean }) => {
      if (!!o.tokenFile === (o.token !== undefined)) throw new InvalidArgumentError('give exactly one of --token-file FILE or --token - (stdin)');
      let raw: string;
      if (o.tokenFile) {
        try {
          raw = readFileSync(o.tokenFile, 'utf8');
        } catch (cause) {
          throw new InvalidArgumentError(`cannot read --token-file ${o.tokenFile}: ${(cause as Error).message}`, { cause });
        }
      } else raw = o.token === '-' ? await readAll(stdin) : o.token!;
      const token = raw.trim();
      if (!/^[A-Za-z0-9_.~+/=-]{16,512}$/.test(token)) throw new InvalidArgumentError('that does not look like an oarcloud token (one line of base64url)');
      const cfg = ctx.config();
      let user: UserView | undefined;
      if (o.check) {
        const api = new Api(cfg.controller, token, 10_000, controllerCredentials(cfg.ca));
        try {
          user = userView(await api.call(api.users, api.users.whoAmI, {}));
        } catch (err) {
          if (err instanceof UnauthenticatedError) throw new UnauthenticatedError(`the controller at ${cfg.controller} does not accept this token (${err.message}); nothing stored`, { cause: err });
          ctx.out.err(`warning: could not check the token with ${cfg.controller} (${(err as Error).message}); storing it anyway\n`);
        } finally {
          api.close();
        }
      }
      writePrivateFile(cfg.tokenFile, `${token}\n`);
      const given = program.opts<{ controller?: string; ca?: string }>();
      if (given.controller || given.ca) {
        // Remember the controller (and its CA), keeping the file's other keys.
        let doc: Record<string, unknown> = {};
        try {
          doc = (parseYaml(readFileSync(cfg.configFile, 'utf8')) as Record<string, unknown> | null) ?? {};
        } catch {
          // No config file yet.
        }
        writePrivateFile(cfg.configFile, stringifyYaml({ ...doc, ...(given.controller ? { controller: given.controller } : {}), ...(given.ca ? { ca: resolve(given.ca) } : {}) }));
      }
      if (o.json) ctx.out.out(json({ user: user ?? null, controller: cfg.controller, tokenFile: cfg.tokenFile }));
      else ctx.out.out(`${user ? `logged in as ${user.name} (${user.role}) on ${cfg.controller}` : 'token stored'}; token kept in ${cfg.tokenFile} (mode 0600)\n`);
    });

  program
    .command('logout')
    .description('Forget the stored token')
    .action(() => {
      const cfg = ctx.config();
      rmSync(cfg.tokenFile, { force: true });
      ctx.out.out(`removed ${cfg.tokenFile}\n`);
    });
}
