/**
 * A VSwitch that keeps its state in maps, records every call and takes injected errors.
 * It applies the same validation as the real one (shared checks), so the contract suite
 * (`vswitch.contract.ts`) holds for both.
 */
import { InvalidArgumentError, type OarcloudError } from '@oarcloud/common';
import { checkGateway, checkTunnel } from './ovs.js';
import { gatewayPortName, NotManagedError, tunnelName, type GatewayPort, type InstancePort, type SwitchState, type TunnelPort, type VSwitch } from './vswitch.js';

type Method = keyof VSwitch;

export class FakeVSwitch implements VSwitch {
  readonly ports = new Map<string, InstancePort>();
  readonly tunnels = new Map<string, TunnelPort>();
  readonly gateways = new Map<string, GatewayPort>();
  /** Ports that exist but are not ours (a test puts them there). */
  readonly foreign = new Set<string>();
  bridge = false;
  readonly calls: Array<{ method: Method; arg: string }> = [];
  private readonly failures = new Map<Method, { err: OarcloudError; times: number }>();

  failNext(method: Method, err: OarcloudError, times = 1): void {
    this.failures.set(method, { err, times });
  }

  private enter(method: Method, arg: string): void {
    this.calls.push({ method, arg });
    const f = this.failures.get(method);
    if (f && f.times > 0) {
      f.times--;
      throw f.err;
    }
  }

  private ours(name: string): void {
    if (this.foreign.has(name)) throw new NotManagedError(`port ${name} exists and is not oarcloud's`);
  }

  async ensureBridge(): Promise<void> {
    this.enter('ensureBridge', '');
    this.bridge = true;
  }

  async ensurePort(p: InstancePort): Promise<void> {
    this.enter('ensurePort', p.name);
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(p.name) || !(p.tag >= 1 && p.tag <= 4094)) throw new InvalidArgumentError(`bad port ${p.name}/${p.tag}`);
    this.ours(p.name);
    this.tunnels.delete(p.name);
    this.gateways.delete(p.name);
    this.ports.set(p.name, { ...p });
  }

  async removePort(name: string): Promise<boolean> {
    this.enter('removePort', name);
    this.ours(name);
    return this.ports.delete(name) || this.tunnels.delete(name) || this.gateways.delete(name);
  }

  async ensureTunnel(t: Omit<TunnelPort, 'name'>): Promise<string> {
    this.enter('ensureTunnel', `${t.vni}/${t.remoteIp}`);
    checkTunnel(t);
    const name = tunnelName(t.vni, t.remoteIp);
    this.ours(name);
    this.tunnels.set(name, { ...t, name });
    return name;
  }

  async removeTunnel(name: string): Promise<boolean> {
    this.enter('removeTunnel', name);
    this.ours(name);
    return this.tunnels.delete(name) || this.ports.delete(name) || this.gateways.delete(name);
  }

  async ensureGatewayPort(g: Omit<GatewayPort, 'name'>): Promise<string> {
    this.enter('ensureGatewayPort', g.networkId);
    checkGateway(g);
    const name = gatewayPortName(g.networkId);
    this.ours(name);
    this.gateways.set(name, { ...g, name });
    return name;
  }

  async list(): Promise<SwitchState> {
    this.enter('list', '');
    return {
      ports: [...this.ports.values()].map((p) => ({ ...p })),
      tunnels: [...this.tunnels.values()].map((t) => ({ ...t })),
      gateways: [...this.gateways.values()].map((g) => ({ ...g })),
    };
  }
}
