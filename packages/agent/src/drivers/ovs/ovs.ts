/**
 * VSwitch over the Open vSwitch command line (`ovs-vsctl`) against a configurable ovsdb
 * socket, so one agent can drive the OVS of an emulated node living in another network
 * namespace (its own ovsdb-server/ovs-vswitchd). Every mutation is one ovs-vsctl
 * transaction, without `--no-wait`: it returns once ovs-vswitchd has applied it, so a
 * dead vswitchd shows up as a timeout here rather than as a silent black hole later.
 */
import { execFile } from 'node:child_process';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from '@oarcloud/common';
import { EXT, gatewayPortName, NotManagedError, tunnelName, type GatewayPort, type InstancePort, type SwitchState, type TunnelPort, type VSwitch } from './vswitch.js';

export interface OvsOptions {
  /** `unix:/var/run/openvswitch/db.sock`, `unix:/…/node-1/db.sock`… */
  db: string;
  bridge: string;
  datapath: 'netdev' | 'system';
  /** Seconds ovs-vsctl waits for the database and for vswitchd (default 10). */
  timeoutS?: number;
}

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;
const ID = /^[a-z]-[0-9a-f]{12}$/;

function checkPort(p: { name: string; tag: number; networkId: string }): void {
  if (!IFNAME.test(p.name)) throw new InvalidArgumentError(`bad port name ${JSON.stringify(p.name)}`);
  if (!Number.isInteger(p.tag) || p.tag < 1 || p.tag > 4094) throw new InvalidArgumentError(`bad vlan tag ${p.tag}`);
  if (!ID.test(p.networkId)) throw new InvalidArgumentError(`bad network id ${JSON.stringify(p.networkId)}`);
}

export function checkTunnel(t: Omit<TunnelPort, 'name'>): void {
  checkPort({ name: 'x', tag: t.tag, networkId: t.networkId });
  if (!Number.isInteger(t.vni) || t.vni < 1 || t.vni > 0xffffff) throw new InvalidArgumentError(`bad vni ${t.vni}`);
  if (!IPV4.test(t.remoteIp)) throw new InvalidArgumentError(`bad remote ip ${JSON.stringify(t.remoteIp)}`);
}

export function checkGateway(g: Omit<GatewayPort, 'name'>): void {
  checkPort({ name: 'x', tag: g.tag, networkId: g.networkId });
  if (!Number.isInteger(g.mtu) || g.mtu < 576 || g.mtu > 9000) throw new InvalidArgumentError(`bad gateway mtu ${g.mtu}`);
}

/** ovsdb JSON cell decoding (`--format=json --data=json`). */
type Cell = unknown;
function mapOf(cell: Cell): Record<string, string> {
  const out: Record<string, string> = {};
  if (Array.isArray(cell) && cell[0] === 'map') for (const [k, v] of cell[1] as Array<[string, string]>) out[k] = v;
  return out;
}
function intOf(cell: Cell): number {
  if (typeof cell === 'number') return cell;
  return 0; // ["set", []]: no tag
}

export class OvsVSwitch implements VSwitch {
  constructor(private readonly o: OvsOptions) {}

  private vsctl(args: string[]): Promise<string> {
    const timeout = this.o.timeoutS ?? 10;
    return new Promise((resolve, reject) => {
      execFile('ovs-vsctl', [`--db=${this.o.db}`, `--timeout=${timeout}`, ...args], { timeout: (timeout + 5) * 1000 }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const msg = `ovs-vsctl ${args.slice(0, 3).join(' ')}…: ${stderr.trim() || err.message}`;
        // Database or vswitchd unreachable / not applying: retryable.
        if (/database connection failed|timeout|alarm|Connection refused|No such file/i.test(stderr) || (err as { killed?: boolean }).killed) reject(new UnavailableError(msg, { cause: err }));
        else reject(new FailedPreconditionError(msg, { cause: err }));
      });
    });
  }

  async ensureBridge(): Promise<void> {
    const { bridge, datapath } = this.o;
    if (!IFNAME.test(bridge)) throw new InvalidArgumentError(`bad bridge name ${JSON.stringify(bridge)}`);
    const out = await this.vsctl(['--format=json', '--data=json', '--columns=datapath_type', 'find', 'Bridge', `name=${bridge}`]);
    const row = (JSON.parse(out) as { data: Cell[][] }).data[0];
    if (row) {
      const cur = String(row[0]) || 'system'; // '' is the kernel datapath
      if (cur !== datapath) throw new FailedPreconditionError(`bridge ${bridge} exists with datapath ${cur}, not ${datapath}`);
    }
    await this.vsctl(['--may-exist', 'add-br', bridge, '--', 'set', 'Bridge', bridge, `datapath_type=${datapath}`, `external_ids:${EXT.managed}=true`]);
  }

  /** external_ids of a port; undefined when absent. */
  private async portIds(name: string): Promise<Record<string, string> | undefined> {
    const out = await this.vsctl(['--format=json', '--data=json', '--columns=name,external_ids', 'find', 'Port', `name=${name}`]);
    const rows = (JSON.parse(out) as { data: Cell[][] }).data;
    return rows[0] ? mapOf(rows[0][1]) : undefined;
  }

  private async mustBeOursOrAbsent(name: string): Promise<boolean> {
    const ids = await this.portIds(name);
    if (ids && !ids[EXT.kind]) throw new NotManagedError(`port ${name} exists and is not oarcloud's`);
    return ids !== undefined;
  }

  async ensurePort(p: InstancePort): Promise<void> {
    checkPort(p);
    if (!ID.test(p.instanceId)) throw new InvalidArgumentError(`bad instance id ${JSON.stringify(p.instanceId)}`);
    await this.mustBeOursOrAbsent(p.name);
    await this.vsctl([
      '--may-exist', 'add-port', this.o.bridge, p.name,
      '--', 'set', 'Port', p.name, `tag=${p.tag}`, 'protected=false',
      `external_ids:${EXT.kind}=instance`, `external_ids:${EXT.instance}=${p.instanceId}`, `external_ids:${EXT.network}=${p.networkId}`,
    ]);
  }

  async removePort(name: string): Promise<boolean> {
    if (!IFNAME.test(name)) throw new InvalidArgumentError(`bad port name ${JSON.stringify(name)}`);
    if (!(await this.mustBeOursOrAbsent(name))) return false;
    await this.vsctl(['--if-exists', 'del-port', name]);
    return true;
  }

  async ensureTunnel(t: Omit<TunnelPort, 'name'>): Promise<string> {
    checkTunnel(t);
    const name = tunnelName(t.vni, t.remoteIp);
    await this.mustBeOursOrAbsent(name);
    await this.vsctl([
      '--may-exist', 'add-port', this.o.bridge, name,
      '--', 'set', 'Interface', name, 'type=vxlan', `options:remote_ip=${t.remoteIp}`, `options:key=${t.vni}`,
      '--', 'set', 'Port', name, `tag=${t.tag}`, 'protected=true',
      `external_ids:${EXT.kind}=tunnel`, `external_ids:${EXT.network}=${t.networkId}`, `external_ids:${EXT.vni}=${t.vni}`, `external_ids:${EXT.remote}=${t.remoteIp}`,
    ]);
    return name;
  }

  removeTunnel(name: string): Promise<boolean> {
    return this.removePort(name);
  }

  async ensureGatewayPort(g: Omit<GatewayPort, 'name'>): Promise<string> {
    checkGateway(g);
    const name = gatewayPortName(g.networkId);
    await this.mustBeOursOrAbsent(name);
    await this.vsctl([
      '--may-exist', 'add-port', this.o.bridge, name,
      '--', 'set', 'Interface', name, 'type=internal', `mtu_request=${g.mtu}`,
      '--', 'set', 'Port', name, `tag=${g.tag}`, 'protected=false',
      `external_ids:${EXT.kind}=gateway`, `external_ids:${EXT.network}=${g.networkId}`,
    ]);
    return name;
  }

  async list(): Promise<SwitchState> {
    // One transaction reads both tables: the MTU of gateway ports lives on their Interface.
    const out = await this.vsctl(['--format=json', '--data=json', '--columns=name,tag,external_ids', 'list', 'Port', '--', '--columns=name,mtu_request', 'list', 'Interface']);
    const [rows, ifaces] = out.trim().split('\n').map((l) => (JSON.parse(l) as { data: Cell[][] }).data) as [Cell[][], Cell[][]];
    const mtus = new Map(ifaces.map(([n, m]) => [String(n), intOf(m)]));
    const state: SwitchState = { ports: [], tunnels: [], gateways: [] };
    for (const [nameCell, tagCell, idsCell] of rows) {
      const name = String(nameCell);
      const ids = mapOf(idsCell);
      const tag = intOf(tagCell);
      if (ids[EXT.kind] === 'instance') state.ports.push({ name, instanceId: ids[EXT.instance] ?? '', networkId: ids[EXT.network] ?? '', tag });
      else if (ids[EXT.kind] === 'tunnel') state.tunnels.push({ name, networkId: ids[EXT.network] ?? '', vni: Number(ids[EXT.vni] ?? 0), remoteIp: ids[EXT.remote] ?? '', tag });
      else if (ids[EXT.kind] === 'gateway') state.gateways.push({ name, networkId: ids[EXT.network] ?? '', tag, mtu: mtus.get(name) ?? 0 });
    }
    return state;
  }
}
