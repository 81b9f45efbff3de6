/**
 * Networks of your jobs: `oarcloud network create|ls|rm`. Every job has its `default`
 * network; more can be made in a running job and instances attached to them with
 * `oarcloud run --network NAME`. `--nat` gives a network outbound NAT through one node of
 * the job (off by default).
 */
import type { Command } from 'commander';
import type { Network } from '@oarcloud/api';
import { InvalidArgumentError, NotFoundError } from '@oarcloud/common';
import type { Ctx } from '../context.js';
import { json, table } from '../output.js';
import { parseJobId } from '../parse.js';

/** What `--json` prints for a network (stable field names). */
export interface NetworkView {
  id: string;
  name: string;
  jobId: number;
  owner: string;
  subnet: string;
  gateway: string;
  vni: number;
  mtu: number;
  nat: boolean;
  /** With nat: the node whose uplink the network goes out by; '' otherwise. */
  gatewayNode: string;
}

export const networkView = (n: Network): NetworkView => ({
  id: n.id,
  name: n.name,
  jobId: n.jobId,
  owner: n.owner,
  subnet: n.subnet,
  gateway: n.gateway,
  vni: n.vni,
  mtu: n.mtu,
  nat: n.nat,
  gatewayNode: n.gatewayNode,
});

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$/;
const ID_RE = /^n-[0-9a-f]{12}$/;
const OCTET = '(25[0-5]|2[0-4]\\d|1?\\d?\\d)';
const CIDR_RE = new RegExp(`^${OCTET}(\\.${OCTET}){3}/(\\d{1,2})$`);

/** A name for a new network: what the controller accepts, checked before anything is sent. */
export function parseNetworkName(value: string): string {
  if (!NAME_RE.test(value) || value === 'default') {
    throw new InvalidArgumentError(`invalid network name ${JSON.stringify(value)}: 1-32 lower-case letters, digits or dashes, not starting or ending with a dash, and not "default"`);
  }
  return value;
}

/** `--subnet`: an IPv4 network in CIDR form (the controller checks the range /16-/29 and overlaps). */
export function parseSubnet(value: string): string {
  const m = CIDR_RE.exec(value.trim());
  if (!m || Number(m[m.length - 1]) > 32) throw new InvalidArgumentError(`invalid --subnet ${JSON.stringify(value)}: expected an IPv4 network in CIDR form, e.g. 10.90.50.0/24`);
  return value.trim();
}

/** A network argument of `rm`: an id (n-…) or a name (then --job is needed). */
export function parseNetworkRef(value: string): string {
  if (!ID_RE.test(value) && !NAME_RE.test(value)) throw new InvalidArgumentError(`invalid network ${JSON.stringify(value)}: expected a network id (n-…) or name`);
  return value;
}

function natCell(n: NetworkView): string {
  return n.nat ? `via ${n.gatewayNode || '?'}` : '-';
}

export function registerNetworkCommands(program: Command, ctx: Ctx): void {
  const network = program
    .command('network')
    .description("Your jobs' private networks: every job has a `default` one; make more and attach instances with `oarcloud run --network NAME`")
    .addHelpText(
      'after',
      `
Examples:
  oarcloud network create --job 1234 back
  oarcloud network create --job 1234 --subnet 10.90.50.0/24 --nat out
  oarcloud run --job 1234 --network out tiny:latest
  oarcloud network ls --job 1234
  oarcloud network rm --job 1234 back

Networks of different jobs never reach each other. A network made with --nat also reaches
the outside through one node of the job (shown as "via NODE"): its instances' traffic
leaves by that node's uplink, behind the node's address; nothing can connect in.`,
    );

  network
    .command('create')
    .description('Create a network in one of your running jobs')
    .argument('<name>', 'network name (a-z 0-9 -, unique in the job)')
    .requiredOption('--job <id>', 'the OAR job')
    .option('--subnet <cidr>', 'its subnet (default: the next free one of the pool), /16 to /29')
    .option('--nat', 'outbound NAT through a node of the job (off by default)')
    .option('--json', 'print the network as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud network create --job 1234 back\n  oarcloud network create --job 1234 --subnet 172.31.8.0/24 --nat out --json')
    .action(async (name: string, o: { job: string; subnet?: string; nat?: boolean; json?: boolean }) => {
      // Everything checked before anything is sent.
      const jobId = parseJobId(o.job, '--job');
      const req = { jobId, name: parseNetworkName(name), subnet: o.subnet === undefined ? '' : parseSubnet(o.subnet), nat: !!o.nat, idempotencyKey: '' };
      const api = ctx.api();
      const n = networkView(await api.call(api.networks, api.networks.createNetwork, req));
      if (o.json) return ctx.out.out(json(n));
      ctx.out.out(`created network ${n.name} (${n.id}) in job ${n.jobId}: ${n.subnet}, gateway ${n.gateway}${n.nat ? `, NAT via ${n.gatewayNode}` : ''}\n`);
    });

  network
    .command('ls')
    .alias('list')
    .description('List your networks (of one job with --job)')
    .option('--job <id>', "only this job's networks")
    .option('--json', 'print as JSON')
    .addHelpText('after', "\nExamples:\n  oarcloud network ls\n  oarcloud network ls --job 1234 --json | jq -r '.[] | select(.nat) | .name'")
    .action(async (o: { job?: string; json?: boolean }) => {
      const jobId = o.job === undefined ? 0 : parseJobId(o.job, '--job');
      const api = ctx.api();
      const list = (await api.call(api.networks, api.networks.listNetworks, { jobId })).networks.map(networkView).sort((a, b) => a.jobId - b.jobId || a.name.localeCompare(b.name));
      if (o.json) return ctx.out.out(json(list));
      if (list.length === 0) return ctx.out.err('no networks\n');
      ctx.out.out(
        table(list, [
          { header: 'ID', value: (n) => n.id },
          { header: 'NAME', value: (n) => n.name },
          { header: 'JOB', value: (n) => String(n.jobId), align: 'right' },
          { header: 'SUBNET', value: (n) => n.subnet },
          { header: 'GATEWAY', value: (n) => n.gateway },
          { header: 'NAT', value: natCell },
          { header: 'VNI', value: (n) => String(n.vni), align: 'right' },
          { header: 'MTU', value: (n) => String(n.mtu), align: 'right' },
        ]),
      );
    });

  network
    .command('rm')
    .description('Delete a network (refused while an instance is attached to it; a job\'s networks go with the job anyway)')
    .argument('<network>', 'network name (with --job) or id')
    .option('--job <id>', 'the job the network is in (needed for a name)')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', '\nExamples:\n  oarcloud network rm --job 1234 back\n  oarcloud network rm n-0123456789ab')
    .action(async (ref: string, o: { job?: string; json?: boolean }) => {
      parseNetworkRef(ref);
      const jobId = o.job === undefined ? 0 : parseJobId(o.job, '--job');
      if (!ID_RE.test(ref) && jobId === 0) throw new InvalidArgumentError(`--job is needed to remove a network by name (${JSON.stringify(ref)}); or give its id`);
      const api = ctx.api();
      let id = ref;
      let name = ref;
      if (jobId !== 0) {
        const found = (await api.call(api.networks, api.networks.listNetworks, { jobId })).networks.find((n) => n.id === ref || n.name === ref);
        if (!found) throw new NotFoundError(`no network ${ref} in job ${jobId}`);
        id = found.id;
        name = found.name;
      }
      await api.call(api.networks, api.networks.deleteNetwork, { id });
      ctx.out.out(o.json ? json({ removed: id, name }) : `removed network ${name}${name === id ? '' : ` (${id})`}\n`);
    });
}
