/**
 * The host side of a network's outbound NAT gateway, on the one node that hosts it. The
 * gateway's OVS internal port (VSwitch.ensureGatewayPort) gives a kernel device on the
 * network's VLAN; this module makes it a gateway that only does NAT:
 *
 * - the device: the gateway address (and no other IPv4 address), the network's MTU, up,
 *   IPv6 off (no link-local address instances could reach the node by), ARP answered for
 *   the gateway address only, IPv4 forwarding on;
 * - an nftables table `oarcloud-nat-<network id>` (family ip) that forwards only the
 *   subnet out of the node's uplink, masqueraded, and the established/related replies
 *   back; drops everything else from or to the device (so never between two networks, nor
 *   from the uplink in), accepts only ping and replies to the node itself from the device,
 *   and lets the node open nothing towards the subnet;
 * - forwarding on the uplink, which the replies need. If it was off, the agent turns it
 *   on, notes so in a small ledger file (`stateFile`), and every table of ours carries a
 *   guard (a forward rule that drops what enters from the uplink unless it is a reply of
 *   a masqueraded flow), so the node routes nothing it did not route before; once no
 *   table of ours uses that uplink any more, it is turned off again. If it was on already
 *   (the node routes for someone else), it is left alone and there is no guard. The
 *   ledger, not the tables, is the memory of who turned it on: a flushed ruleset (an
 *   nftables service reload) must not turn "ours" into "someone else's".
 *
 * A table's spec is kept in the comment of its masquerade rule
 * (`oarcloud-nat v1 dev=… uplink=… subnet=… guard=0|1`). Only tables with our prefix are
 * ever listed, replaced or deleted; nothing is written to the device before ensure has
 * seen it exists (OVS creates it). Everything else on the host is untouched: the
 * device's own sysctls go away with the device.
 *
 * All methods are idempotent; calls are serialised by the caller (NodeNetworks).
 */
import { spawn } from 'node:child_process';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { FailedPreconditionError, InvalidArgumentError, isId } from '@oarcloud/common';

export const NAT_TABLE_PREFIX = 'oarcloud-nat-';
const MARK = 'oarcloud-nat v1';

export function natTableName(networkId: string): string {
  return `${NAT_TABLE_PREFIX}${networkId}`;
}

export interface GatewaySpec {
  networkId: string;
  /** The gateway port's kernel device (`gatewayPortName`). */
  device: string;
  /** Gateway address with the subnet's prefix: `10.90.3.1/24`. */
  address: string;
  mtu: number;
}

/** One of our tables as the kernel holds it. */
export interface NatState {
  networkId: string;
  device: string;
  uplink: string;
  subnet: string;
  /** The agent turned the uplink's forwarding on (see the module comment). */
  guard: boolean;
  /** Rules per chain, to see a table someone edited. */
  rules: Record<string, number>;
}

export interface GatewayHost {
  /**
   * Makes the gateway of a network work (device, table, forwarding), writing only what
   * differs. Returns whether anything changed and the uplink used. Device absent (the port
   * is not there yet) or no uplink: FailedPreconditionError. Bad spec: InvalidArgumentError.
   */
  ensure(g: GatewaySpec): Promise<{ changed: boolean; uplink: string }>;
  /** Removes the network's table (then `settle`). Absent: false. */
  remove(networkId: string): Promise<boolean>;
  /** Our tables. */
  list(): Promise<NatState[]>;
  /**
   * Turns the forwarding of an uplink the agent turned on back off once no table of ours
   * uses it (after a release, or a flushed ruleset). Returns those uplinks. Cheap when
   * the ledger is empty (nothing is run).
   */
  settle(): Promise<string[]>;
}

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

function ipToInt(ip: string): number {
  return ip.split('.').reduce((a, b) => a * 256 + Number(b), 0);
}
function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

/** `10.90.3.1/24` → `10.90.3.0/24`; InvalidArgumentError unless an IPv4 address with a /8–/30 prefix. */
export function subnetOfAddress(address: string): string {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(address);
  if (!m || !IPV4.test(m[1]!) || Number(m[2]) < 8 || Number(m[2]) > 30) throw new InvalidArgumentError(`gateway address must be an IPv4 address with a /8-/30 prefix, got ${JSON.stringify(address.slice(0, 40))}`);
  const prefix = Number(m[2]);
  const size = 2 ** (32 - prefix);
  const base = Math.floor(ipToInt(m[1]!) / size) * size;
  if (ipToInt(m[1]!) === base || ipToInt(m[1]!) === base + size - 1) throw new InvalidArgumentError(`gateway address ${address} is the subnet's network or broadcast address`);
  return `${intToIp(base)}/${prefix}`;
}

export function checkGatewaySpec(g: GatewaySpec): void {
  if (!isId(g.networkId, 'n')) throw new InvalidArgumentError(`malformed network id ${JSON.stringify(g.networkId.slice(0, 40))}`);
  if (!IFNAME.test(g.device)) throw new InvalidArgumentError(`bad gateway device ${JSON.stringify(g.device.slice(0, 40))}`);
  if (!Number.isInteger(g.mtu) || g.mtu < 576 || g.mtu > 9000) throw new InvalidArgumentError(`gateway mtu must be 576-9000, got ${g.mtu}`);
  subnetOfAddress(g.address);
}

/** The chains of a gateway's table, rule by rule (nft syntax). Pure: unit-tested as text. */
export function natChains(t: { device: string; uplink: string; subnet: string; guard: boolean }): Record<string, { hook: string; type: string; priority: string; rules: string[] }> {
  const dev = JSON.stringify(t.device);
  const up = JSON.stringify(t.uplink);
  const mark = `${MARK} dev=${t.device} uplink=${t.uplink} subnet=${t.subnet} guard=${t.guard ? 1 : 0}`;
  return {
    // The node itself, seen from the network: ping and replies, nothing else.
    input: { type: 'filter', hook: 'input', priority: 'filter', rules: [`iifname ${dev} ct state established,related accept`, `iifname ${dev} icmp type echo-request accept`, `iifname ${dev} drop`] },
    forward: {
      type: 'filter',
      hook: 'forward',
      priority: 'filter',
      rules: [
        `iifname ${dev} oifname ${up} ip saddr ${t.subnet} accept`,
        `iifname ${dev} drop`,
        `oifname ${dev} iifname ${up} ct state established,related accept`,
        `oifname ${dev} drop`,
        ...(t.guard ? [`iifname ${up} ct status & snat != snat drop`] : []),
      ],
    },
    // The node opens nothing towards the network (other users' processes on it included).
    output: { type: 'filter', hook: 'output', priority: 'filter', rules: [`oifname ${dev} ct state established,related accept`, `oifname ${dev} drop`] },
    postrouting: { type: 'nat', hook: 'postrouting', priority: 'srcnat', rules: [`oifname ${up} ip saddr ${t.subnet} masquerade comment ${JSON.stringify(mark)}`] },
  };
}

/** The nft script that creates or atomically replaces a gateway's table. */
export function natScript(networkId: string, t: { device: string; uplink: string; subnet: string; guard: boolean }): string {
  const name = natTableName(networkId);
  const chains = Object.entries(natChains(t))
    .map(([c, v]) => `  chain ${c} {\n    type ${v.type} hook ${v.hook} priority ${v.priority}; policy accept;\n${v.rules.map((r) => `    ${r}\n`).join('')}  }\n`)
    .join('');
  // "table" then "delete table" then the full table: one transaction, created or replaced.
  return `table ip ${name}\ndelete table ip ${name}\ntable ip ${name} {\n${chains}}\n`;
}

interface NftRuleset {
  nftables: Array<{ rule?: { family: string; table: string; chain: string; comment?: string } }>;
}

/** Our tables in `nft -j list ruleset ip` output. Pure. */
export function parseNatRuleset(jsonText: string): NatState[] {
  const doc = JSON.parse(jsonText || '{"nftables":[]}') as NftRuleset & { nftables: Array<{ table?: { family: string; name: string } }> };
  const byId = new Map<string, NatState>();
  for (const o of doc.nftables) {
    if (o.table && o.table.family === 'ip' && o.table.name.startsWith(NAT_TABLE_PREFIX)) {
      const networkId = o.table.name.slice(NAT_TABLE_PREFIX.length);
      byId.set(networkId, { networkId, device: '', uplink: '', subnet: '', guard: false, rules: {} });
    }
  }
  for (const o of doc.nftables) {
    const r = o.rule;
    if (!r || r.family !== 'ip' || !r.table.startsWith(NAT_TABLE_PREFIX)) continue;
    const st = byId.get(r.table.slice(NAT_TABLE_PREFIX.length));
    if (!st) continue;
    st.rules[r.chain] = (st.rules[r.chain] ?? 0) + 1;
    if (r.comment?.startsWith(MARK)) {
      const kv = Object.fromEntries(r.comment.slice(MARK.length).trim().split(/\s+/).map((p) => p.split('=', 2) as [string, string]));
      st.device = kv.dev ?? '';
      st.uplink = kv.uplink ?? '';
      st.subnet = kv.subnet ?? '';
      st.guard = kv.guard === '1';
    }
  }
  return [...byId.values()];
}

interface RunResult {
  ok: boolean;
  out: string;
  err: string;
}

/** Runs a command; never throws (a failure is `ok: false`). `input` goes to its stdin. */
function run(cmd: string, args: string[], input?: string): Promise<RunResult> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'], timeout: 10_000 });
    let out = '';
    let err = '';
    p.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    p.on('error', (e) => resolve({ ok: false, out, err: err || e.message }));
    p.on('close', (code) => resolve({ ok: code === 0, out, err: err.trim() }));
    if (p.stdin) {
      // A command that exits before reading (bad arguments) closes the pipe: EPIPE, not a crash.
      p.stdin.on('error', () => undefined);
      p.stdin.end(input);
    }
  });
}

export interface NftGatewayOptions {
  /** Network namespace of the switch (and so of the gateway devices); '' : the agent's own. */
  netns: string;
  /** The uplink interface; '' : the one holding `underlayIp`, else the default route's. */
  uplink: string;
  underlayIp: string;
  /** The ledger of uplinks whose forwarding the agent turned on ('' : kept in memory only). */
  stateFile: string;
}

/** GatewayHost over `ip`, `nft` and /proc/sys, inside the switch's netns. */
export class NftGatewayHost implements GatewayHost {
  private memoryLedger: string[] = [];

  constructor(private readonly o: NftGatewayOptions) {}

  /** Uplinks whose forwarding the agent turned on. */
  private owned(): Set<string> {
    if (!this.o.stateFile) return new Set(this.memoryLedger);
    try {
      const v = JSON.parse(readFileSync(this.o.stateFile, 'utf8')) as { uplinks?: unknown };
      return new Set(Array.isArray(v.uplinks) ? v.uplinks.filter((u): u is string => typeof u === 'string' && IFNAME.test(u)) : []);
    } catch {
      return new Set();
    }
  }

  private saveOwned(set: Set<string>): void {
    const uplinks = [...set].sort();
    if (!this.o.stateFile) {
      this.memoryLedger = uplinks;
      return;
    }
    writeFileSync(`${this.o.stateFile}.tmp`, JSON.stringify({ uplinks }));
    renameSync(`${this.o.stateFile}.tmp`, this.o.stateFile);
  }

  private inNs(cmd: string, args: string[], input?: string): Promise<RunResult> {
    if (cmd === 'ip') return run('ip', this.o.netns ? ['-n', this.o.netns, ...args] : args, input);
    return this.o.netns ? run('ip', ['netns', 'exec', this.o.netns, cmd, ...args], input) : run(cmd, args, input);
  }

  private async must(cmd: string, args: string[], input?: string): Promise<string> {
    const r = await this.inNs(cmd, args, input);
    if (!r.ok) throw new FailedPreconditionError(`${cmd} ${args.slice(0, 4).join(' ')}…: ${r.err || 'failed'}`);
    return r.out;
  }

  /** The uplink's name: configured, else the interface holding the underlay address, else the default route's. */
  async uplink(): Promise<string> {
    if (this.o.uplink) return this.o.uplink;
    if (this.o.underlayIp) {
      const addrs = JSON.parse((await this.must('ip', ['-j', '-4', 'addr', 'show'])) || '[]') as Array<{ ifname: string; addr_info?: Array<{ local?: string }> }>;
      const hit = addrs.find((a) => a.addr_info?.some((x) => x.local === this.o.underlayIp));
      if (hit) return hit.ifname;
    }
    const routes = JSON.parse((await this.must('ip', ['-j', '-4', 'route', 'show', 'default'])) || '[]') as Array<{ dev?: string }>;
    const dev = routes.find((r) => r.dev)?.dev;
    if (!dev) throw new FailedPreconditionError('no uplink for NAT: no interface holds the underlay address and there is no default route (set natUplink)');
    return dev;
  }

  /** Values of some /proc/sys keys (path form: interface names may hold dots); missing keys are absent. */
  private async sysctls(keys: string[]): Promise<Map<string, string>> {
    const r = await this.inNs('sh', ['-c', 'for k; do v=$(cat "/proc/sys/$k" 2>/dev/null) && echo "$k=$v"; done', 'sh', ...keys]);
    const res = new Map<string, string>();
    for (const line of r.out.split('\n')) {
      const i = line.indexOf('=');
      if (i > 0) res.set(line.slice(0, i), line.slice(i + 1).trim());
    }
    return res;
  }

  private async setSysctls(pairs: Array<[string, string]>): Promise<void> {
    if (pairs.length === 0) return;
    await this.must('sh', ['-c', 'while [ $# -gt 1 ]; do echo "$2" > "/proc/sys/$1" || exit 1; shift 2; done', 'sh', ...pairs.flat()]);
  }

  async list(): Promise<NatState[]> {
    const r = await this.inNs('nft', ['-j', 'list', 'ruleset', 'ip']);
    if (!r.ok) throw new FailedPreconditionError(`nft list ruleset: ${r.err || 'failed'}`);
    return parseNatRuleset(r.out);
  }

  async ensure(g: GatewaySpec): Promise<{ changed: boolean; uplink: string }> {
    checkGatewaySpec(g);
    const subnet = subnetOfAddress(g.address);
    const uplink = await this.uplink();
    if (uplink === g.device) throw new FailedPreconditionError(`the uplink ${uplink} cannot be the gateway device`);
    let changed = false;

    // 1. The device (created by OVS; give it a moment to appear).
    let dev: { flags?: string[]; mtu?: number; addr_info?: Array<{ family: string; local: string; prefixlen: number }> } | undefined;
    for (let i = 0; i < 20 && !dev; i++) {
      const r = await this.inNs('ip', ['-j', 'addr', 'show', 'dev', g.device]);
      if (r.ok) dev = (JSON.parse(r.out || '[]') as Array<typeof dev>)[0];
      else await new Promise((res) => setTimeout(res, 100));
    }
    if (!dev) throw new FailedPreconditionError(`gateway device ${g.device} does not exist (its OVS port is missing)`);
    const devKeys = [`net/ipv4/conf/${g.device}/forwarding`, `net/ipv6/conf/${g.device}/disable_ipv6`, `net/ipv4/conf/${uplink}/forwarding`, `net/ipv4/conf/${g.device}/arp_ignore`] as const;
    const cur = await this.sysctls([...devKeys]);
    // Before the device is up: IPv6 off (no link-local address ever shows on it), and ARP
    // answered for the gateway address only (not for the node's other addresses).
    const quiet: Array<[string, string]> = [];
    if (cur.has(devKeys[1]) && cur.get(devKeys[1]) !== '1') quiet.push([devKeys[1], '1']);
    if (cur.get(devKeys[3]) !== '1') quiet.push([devKeys[3], '1']);
    if (quiet.length > 0) {
      await this.setSysctls(quiet);
      changed = true;
    }
    const v4 = (dev.addr_info ?? []).filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`);
    if (v4.length !== 1 || v4[0] !== g.address) {
      if (v4.length > 0) await this.must('ip', ['-4', 'addr', 'flush', 'dev', g.device]);
      await this.must('ip', ['addr', 'add', g.address, 'dev', g.device]);
      changed = true;
    }
    if (!(dev.flags ?? []).includes('UP') || dev.mtu !== g.mtu) {
      await this.must('ip', ['link', 'set', 'dev', g.device, 'mtu', String(g.mtu), 'up']);
      changed = true;
    }

    // 2. The table: guarded if the agent turned (or is about to turn) the uplink's forwarding on.
    const tables = await this.list();
    const mine = tables.find((t) => t.networkId === g.networkId);
    const uplinkForwards = cur.get(devKeys[2]) === '1';
    const owned = this.owned();
    const guard = owned.has(uplink) || tables.some((t) => t.guard && t.uplink === uplink) || !uplinkForwards;
    if (guard && !owned.has(uplink)) {
      // Noted before anything is turned on: a crash from here on still knows it is ours.
      owned.add(uplink);
      this.saveOwned(owned);
    }
    const want = natChains({ device: g.device, uplink, subnet, guard });
    const same =
      mine &&
      mine.device === g.device &&
      mine.uplink === uplink &&
      mine.subnet === subnet &&
      mine.guard === guard &&
      Object.keys(want).every((c) => mine.rules[c] === want[c]!.rules.length) &&
      Object.keys(mine.rules).every((c) => c in want);
    if (!same) {
      await this.must('nft', ['-f', '-'], natScript(g.networkId, { device: g.device, uplink, subnet, guard }));
      changed = true;
    }

    // 3. Forwarding, after the table (and its guard) is in place.
    const fw: Array<[string, string]> = [];
    if (cur.get(devKeys[0]) !== '1') fw.push([devKeys[0], '1']);
    if (!uplinkForwards) fw.push([devKeys[2], '1']);
    await this.setSysctls(fw);
    return { changed: changed || fw.length > 0, uplink };
  }

  async remove(networkId: string): Promise<boolean> {
    if (!isId(networkId, 'n')) throw new InvalidArgumentError(`malformed network id ${JSON.stringify(networkId.slice(0, 40))}`);
    const tables = await this.list();
    const mine = tables.find((t) => t.networkId === networkId);
    if (mine) {
      // The uplink's forwarding first (settle, with this table counted out), then the table.
      await this.settleWith(tables.filter((t) => t !== mine));
      const r = await this.inNs('nft', ['delete', 'table', 'ip', natTableName(networkId)]);
      if (!r.ok && !/No such file or directory/.test(r.err)) throw new FailedPreconditionError(`nft delete table: ${r.err}`);
      return true;
    }
    await this.settleWith(tables);
    return false;
  }

  async settle(): Promise<string[]> {
    if (this.owned().size === 0) return [];
    return this.settleWith(await this.list());
  }

  private async settleWith(tables: NatState[]): Promise<string[]> {
    const owned = this.owned();
    const idle = [...owned].filter((u) => !tables.some((t) => t.uplink === u));
    if (idle.length === 0) return [];
    await this.setSysctls(idle.map((u) => [`net/ipv4/conf/${u}/forwarding`, '0']));
    for (const u of idle) owned.delete(u);
    this.saveOwned(owned);
    return idle;
  }
}

/** In-memory GatewayHost for unit tests: keeps tables, records calls, takes injected failures. */
export class FakeGatewayHost implements GatewayHost {
  readonly tables = new Map<string, NatState & { address: string; mtu: number }>();
  readonly calls: string[] = [];
  uplinkName = 'eth0';
  /** Forwarding of the uplink as the fake host has it. */
  uplinkForwarding = false;
  /** The ledger: the fake turned the uplink's forwarding on. */
  owned = false;
  private failures: Array<{ method: 'ensure' | 'remove' | 'list'; err: Error }> = [];

  failNext(method: 'ensure' | 'remove' | 'list', err: Error): void {
    this.failures.push({ method, err });
  }

  private enter(method: 'ensure' | 'remove' | 'list' | 'settle', arg: string): void {
    this.calls.push(`${method} ${arg}`.trim());
    const i = this.failures.findIndex((f) => f.method === method);
    if (i >= 0) throw this.failures.splice(i, 1)[0]!.err;
  }

  async ensure(g: GatewaySpec): Promise<{ changed: boolean; uplink: string }> {
    this.enter('ensure', g.networkId);
    checkGatewaySpec(g);
    const subnet = subnetOfAddress(g.address);
    const guard = this.owned || !this.uplinkForwarding;
    this.owned = guard;
    const cur = this.tables.get(g.networkId);
    const next = { networkId: g.networkId, device: g.device, uplink: this.uplinkName, subnet, guard, address: g.address, mtu: g.mtu, rules: Object.fromEntries(Object.entries(natChains({ device: g.device, uplink: this.uplinkName, subnet, guard })).map(([c, v]) => [c, v.rules.length])) };
    this.tables.set(g.networkId, next);
    this.uplinkForwarding = true;
    return { changed: JSON.stringify(cur) !== JSON.stringify(next), uplink: this.uplinkName };
  }

  async remove(networkId: string): Promise<boolean> {
    this.enter('remove', networkId);
    const had = this.tables.delete(networkId);
    this.settleNow();
    return had;
  }

  async list(): Promise<NatState[]> {
    this.enter('list', '');
    return [...this.tables.values()].map(({ address: _a, mtu: _m, ...t }) => ({ ...t, rules: { ...t.rules } }));
  }

  async settle(): Promise<string[]> {
    this.enter('settle', '');
    return this.settleNow();
  }

  private settleNow(): string[] {
    if (!this.owned || this.tables.size > 0) return [];
    this.owned = false;
    this.uplinkForwarding = false;
    return [this.uplinkName];
  }
}
