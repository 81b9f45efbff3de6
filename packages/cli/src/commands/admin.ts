/**
 * `oarcloud admin …`: accounts and tokens, everyone's nodes, jobs and instances, and the
 * PKI of controller ↔ agent mutual TLS. As root, the controller's admin token file is used
 * when no token of your own is stored (see config.ts).
 */
import { Role } from '@oarcloud/api';
import { InvalidArgumentError, PermissionDeniedError } from '@oarcloud/common';
import type { Command } from 'commander';
import type { Ctx } from '../context.js';
import { bytes, duration, json, paint, table } from '../output.js';
import { parseIntIn, parseRole, parseUserName } from '../parse.js';
import { initCa, issueCert, PKI_ROLES, type CertInfo, type PkiRole } from '../pki.js';
import { instanceView, jobView, nodeView, userView } from '../views.js';
import { printInstances, printJobs } from './user.js';
import { registerAdminImageCommands } from './volumes.js';

const collect = (v: string, prev: string[] = []): string[] => [...prev, v];

/** The CLI refuses admin listings for users up front (the API would only show their own). */
async function requireAdmin(ctx: Ctx): Promise<void> {
  const api = ctx.api();
  const me = userView(await api.call(api.users, api.users.whoAmI, {}));
  if (me.role !== 'admin') throw new PermissionDeniedError(`${me.name} is not an admin`);
}

export function registerAdminCommands(program: Command, ctx: Ctx): void {
  const admin = program
    .command('admin')
    .description('Administration: users and tokens, nodes, everyone\'s jobs and instances, PKI')
    .addHelpText('after', '\nAs root with no token of your own, the controller\'s admin token file is used if readable\n(default /var/lib/oarcloud/controller/admin.token; OARCLOUD_ADMIN_TOKEN_FILE or adminTokenFile in config.yaml).');

  // --------------------------------------------------------------------- users
  const user = admin.command('user').description('Accounts: add, remove, list, issue tokens');
  const printToken = (verb: string, name: string, role: string, token: string, asJson?: boolean): void => {
    if (asJson) return ctx.out.out(json({ user: { name, role }, token }));
    ctx.out.err(`${verb} ${name} (${role}). Their token is below, shown only this once: hand it over safely; they run \`oarcloud login --token -\`.\n`);
    ctx.out.out(`${token}\n`);
  };
  user
    .command('add')
    .description('Add a user (their Unix/OAR login) and issue their first token')
    .argument('<name>', 'Unix login')
    .option('--role <role>', 'admin or user', 'user')
    .option('--json', 'print the user and token as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud admin user add alice > alice.token\n  oarcloud admin user add carol --role admin --json')
    .action(async (name: string, o: { role: string; json?: boolean }) => {
      const n = parseUserName(name);
      const role = parseRole(o.role);
      const api = ctx.api();
      const r = await api.call(api.users, api.users.addUser, { name: n, role: role === 'admin' ? Role.ROLE_ADMIN : Role.ROLE_USER });
      printToken('added', n, userView(r.user).role, r.token, o.json);
    });
  user
    .command('token')
    .description('Issue a new token for a user; their previous tokens stop working at once')
    .argument('<name>', 'Unix login')
    .option('--json', 'print the user and token as JSON')
    .addHelpText('after', '\nExample:\n  oarcloud admin user token alice > alice.token')
    .action(async (name: string, o: { json?: boolean }) => {
      const api = ctx.api();
      const r = await api.call(api.users, api.users.issueToken, { name: parseUserName(name) });
      printToken('new token for', r.user?.name ?? name, userView(r.user).role, r.token, o.json);
    });
  user
    .command('rm')
    .description('Remove a user; their tokens stop working at once')
    .argument('<name>', 'Unix login')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExample:\n  oarcloud admin user rm bob')
    .action(async (name: string, o: { json?: boolean }) => {
      const n = parseUserName(name);
      const api = ctx.api();
      await api.call(api.users, api.users.removeUser, { name: n });
      ctx.out.out(o.json ? json({ removed: n }) : `removed ${n}\n`);
    });
  user
    .command('list')
    .alias('ls')
    .description('List users')
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      const api = ctx.api();
      const list = (await api.call(api.users, api.users.listUsers, {})).users.map(userView);
      if (o.json) return ctx.out.out(json(list));
      ctx.out.out(
        table(list, [
          { header: 'USER', value: (u) => u.name },
          { header: 'ROLE', value: (u) => u.role },
          { header: 'CREATED', value: (u) => (u.createdAtMs ? new Date(u.createdAtMs).toISOString().replace(/\.\d+Z$/, 'Z') : '-') },
        ]),
      );
    });

  // --------------------------------------------------------------------- nodes
  admin
    .command('nodes')
    .description('Every node: agent health, load, instances, cores used and free')
    .option('--json', 'print as JSON')
    .addHelpText('after', '\nExample:\n  oarcloud admin nodes')
    .action(async (o: { json?: boolean }) => {
      const api = ctx.api();
      const list = (await api.call(api.nodes, api.nodes.listNodes, {})).nodes.map(nodeView);
      if (o.json) return ctx.out.out(json(list));
      const c = ctx.out.color;
      ctx.out.out(
        table(list, [
          { header: 'NODE', value: (n) => n.name },
          { header: 'HEALTH', value: (n) => (n.healthy ? 'ok' : 'down'), paint: (t, n) => paint(t, n.healthy ? 'green' : 'red', c) },
          { header: 'LOAD', value: (n) => n.load1.toFixed(2), align: 'right' },
          { header: 'INSTANCES', value: (n) => String(n.instances), align: 'right' },
          // The node's cpus as its agent sees them (OAR may count more cores on them).
          { header: 'CPUS', value: (n) => String(n.cores), align: 'right' },
          { header: 'USED', value: (n) => String(n.coresUsed), align: 'right' },
          { header: 'FREE', value: (n) => String(n.coresFree), align: 'right' },
          { header: 'MEMORY USED', value: (n) => `${bytes(n.memoryUsedBytes)}/${bytes(n.memoryBytes)}`, align: 'right' },
          { header: 'LAST SEEN', value: (n) => (n.lastSeenMs ? `${duration(Date.now() - n.lastSeenMs)} ago` : 'never') },
        ]),
      );
    });

  admin
    .command('instances')
    .description("Everyone's instances")
    .option('--job <id>', "only this job's instances")
    .option('--json', 'print as JSON')
    .action(async (o: { job?: string; json?: boolean }) => {
      await requireAdmin(ctx);
      const jobId = o.job === undefined ? 0 : parseIntIn(o.job, '--job', 1, Number.MAX_SAFE_INTEGER);
      const api = ctx.api();
      const list = (await api.call(api.instances, api.instances.listInstances, { jobId, allUsers: true })).instances.map(instanceView);
      printInstances(ctx, list, o.json, true);
    });

  admin
    .command('jobs')
    .description("Everyone's cloud jobs")
    .option('--json', 'print as JSON')
    .action(async (o: { json?: boolean }) => {
      await requireAdmin(ctx);
      const api = ctx.api();
      printJobs(ctx, (await api.call(api.jobs, api.jobs.listJobs, { allUsers: true })).jobs.map(jobView), o.json, true);
    });

  registerAdminImageCommands(admin, ctx);

  // ----------------------------------------------------------------------- pki
  const pki = admin
    .command('pki')
    .description('Certificates for controller ↔ agent mutual TLS (made with openssl)')
    .addHelpText(
      'after',
      `
Agents serve gRPC with an agent certificate and accept only clients with a controller
certificate from the same CA; the controller checks that each agent's certificate has
the agent role and the node's name. Config of both daemons:
  tls: { ca: /etc/oarcloud/pki/ca.crt, cert: /etc/oarcloud/pki/agent-node-1.crt, key: /etc/oarcloud/pki/agent-node-1.key }

Example:
  oarcloud admin pki init --dir /etc/oarcloud/pki
  oarcloud admin pki issue --dir /etc/oarcloud/pki --name frontend --role controller
  for n in node-1 node-2; do oarcloud admin pki issue --dir /etc/oarcloud/pki --name $n --role agent; done`,
    );
  const printCert = (what: string, c: CertInfo & { created: boolean }, asJson?: boolean): void => {
    if (asJson) return ctx.out.out(json(c));
    ctx.out.out(`${c.created ? 'created' : 'kept existing'} ${what}: ${c.cert} (key ${c.key})\n  subject ${c.subject}\n${c.san ? `  san     ${c.san}\n` : ''}  expires ${c.notAfter}\n  sha256  ${c.fingerprint256}\n`);
  };
  pki
    .command('init')
    .description('Create a CA (key + self-signed certificate) in a folder')
    .requiredOption('--dir <dir>', 'where the CA lives (ca.key is written 0600)')
    .option('--days <n>', 'validity in days', '3650')
    .option('--if-missing', 'keep an existing CA instead of failing')
    .option('--json', 'print as JSON')
    .action((o: { dir: string; days: string; ifMissing?: boolean; json?: boolean }) => {
      printCert('CA', initCa(o.dir, { days: parseIntIn(o.days, '--days', 1, 36500), ifMissing: o.ifMissing }), o.json);
    });
  pki
    .command('issue')
    .description('Issue a certificate signed by the CA: <dir>/<role>-<name>.{crt,key}')
    .requiredOption('--dir <dir>', 'the CA folder')
    .requiredOption('--name <name>', 'node name (agents: the OAR network_address), host or user name')
    .requiredOption('--role <role>', PKI_ROLES.join(', '))
    .option('--dns <name>', 'extra DNS name (repeatable)', collect)
    .option('--ip <addr>', 'extra IP address (repeatable)', collect)
    .option('--days <n>', 'validity in days', '825')
    .option('--if-missing', 'keep an existing certificate instead of failing')
    .option('--json', 'print as JSON')
    .action((o: { dir: string; name: string; role: string; dns?: string[]; ip?: string[]; days: string; ifMissing?: boolean; json?: boolean }) => {
      if (!(PKI_ROLES as readonly string[]).includes(o.role)) throw new InvalidArgumentError(`invalid --role ${JSON.stringify(o.role)}: expected ${PKI_ROLES.join(', ')}`);
      const c = issueCert(o.dir, { name: o.name, role: o.role as PkiRole, dns: o.dns, ips: o.ip, days: parseIntIn(o.days, '--days', 1, 36500), ifMissing: o.ifMissing });
      printCert(`${o.role} certificate`, c, o.json);
    });
}
