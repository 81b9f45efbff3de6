/**
 * Host-side links of instance interfaces. libvirt creates each instance's veth pair
 * (`<interface type='ethernet'>`: the host end keeps its deterministic name and is plugged
 * nowhere); the agent then moves the host end into the node's switch namespace when the
 * node's ovs-vswitchd lives in its own netns (emulated nodes), brings it up with the
 * network's MTU, and turns tx checksum offload off inside the instance (the userspace
 * datapath forwards veth packets with partial checksums otherwise: notes/HOST.md).
 *
 * The host end is a switch port and nothing else. With the userspace datapath OVS reads
 * it through a packet socket, so the node's own IP stack sees every frame the instance
 * sends too: left as is, the node answered ARP there for any of its addresses (a NAT
 * gateway's, the underlay's) with the veth's MAC, so an instance could resolve its gateway
 * to the wrong port (NAT then failed at random) or talk to the node itself. So before it is
 * up: no ARP replies (arp_ignore=8), no IPv6 (no link-local address), unicast IP in L2
 * broadcast dropped, strict reverse-path filter. Device sysctls: they go with the device.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { FailedPreconditionError, InvalidArgumentError } from '@oarcloud/common';

/** Host-side interface name of an instance's `index`-th interface: ≤ 15 characters. */
export function hostIfName(instanceId: string, index: number): string {
  if (!/^i-[0-9a-f]{12}$/.test(instanceId)) throw new InvalidArgumentError(`bad instance id ${instanceId}`);
  if (!Number.isInteger(index) || index < 0 || index > 35) throw new InvalidArgumentError('at most 36 interfaces');
  return `oc${instanceId.slice(2)}${index.toString(36)}`;
}

/** Deterministic locally administered unicast MAC (for callers that have no address-based one). */
export function macFor(seed: string): string {
  const h = createHash('sha256').update(seed).digest();
  return ['02', ...[...h.subarray(0, 5)].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

export interface HostLinks {
  /**
   * Makes the host end `name` ready for the switch: in the switch's netns, MTU set, up.
   * Idempotent (a link already moved is found there). The link must exist somewhere:
   * FailedPreconditionError otherwise.
   */
  prepare(name: string, mtu: number): Promise<void>;
  /** tx checksum offload off on `guestIf` inside the network namespace of `initPid`. Best effort. */
  offloadOff(initPid: number, guestIf: string): Promise<void>;
  /** Deletes the host end if it still exists (either namespace). Idempotent. */
  remove(name: string): Promise<void>;
}

function run(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 10_000 }, (err, stdout, stderr) => resolve({ ok: !err, out: `${stdout}${stderr}`.trim() }));
  });
}

const PREPARE_SCRIPT = `n=$1 ns=$2 mtu=$3
if [ -n "$ns" ] && ip link show dev "$n" >/dev/null 2>&1; then
  ip link set dev "$n" netns "$ns" || { echo "cannot move $n into netns $ns" >&2; exit 1; }
fi
inns() { if [ -n "$ns" ]; then nsenter --net=/run/netns/"$ns" "$@"; else "$@"; fi; }
inns ip link show dev "$n" >/dev/null 2>&1 || { echo "no link $n here\${ns:+ nor in netns $ns}" >&2; exit 1; }
c=/proc/sys/net/ipv4/conf/$n v=/proc/sys/net/ipv6/conf/$n/disable_ipv6
inns sh -c "echo 8 > $c/arp_ignore && echo 2 > $c/arp_announce && echo 1 > $c/drop_unicast_in_l2_multicast && echo 1 > $c/rp_filter && { [ ! -e $v ] || echo 1 > $v; }" ||
  { echo "cannot make $n a plain switch port" >&2; exit 1; }
inns ip link set dev "$n" mtu "$mtu" up || { echo "cannot bring $n up\${ns:+ in netns $ns}" >&2; exit 1; }`;

export class IpLinks implements HostLinks {
  /** `netns`: the switch's network namespace ('' : the agent's own). */
  constructor(private readonly netns: string) {}

  private ipIn(args: string[]): Promise<{ ok: boolean; out: string }> {
    return run('ip', this.netns ? ['-n', this.netns, ...args] : args);
  }

  async prepare(name: string, mtu: number): Promise<void> {
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name) || !Number.isInteger(mtu)) throw new InvalidArgumentError(`bad link ${JSON.stringify(name)} or mtu ${mtu}`);
    // One process for the whole step (four spawns from the agent cost ~100 ms a port when
    // instances start side by side): move the link into the switch's netns if it is still
    // here, quiet the node's stack on it (see the module comment; the IPv6 key is absent
    // when IPv6 is off), MTU and up. nsenter --net is enough for /proc/sys/net and ip.
    const r = await run('sh', ['-c', PREPARE_SCRIPT, 'sh', name, this.netns, String(mtu)]);
    if (!r.ok) throw new FailedPreconditionError(r.out || `cannot prepare ${name}`);
  }

  async offloadOff(initPid: number, guestIf: string): Promise<void> {
    if (initPid > 1) await run('nsenter', ['-t', String(initPid), '-n', '--', 'ethtool', '-K', guestIf, 'tx', 'off']);
  }

  async remove(name: string): Promise<void> {
    await this.ipIn(['link', 'del', 'dev', name]);
    if (this.netns) await run('ip', ['link', 'del', 'dev', name]);
  }
}

/** In-memory links for unit tests: records calls, takes one injected failure. */
export class FakeLinks implements HostLinks {
  readonly prepared = new Map<string, number>();
  readonly calls: string[] = [];
  failPrepare: Error | undefined;
  async prepare(name: string, mtu: number): Promise<void> {
    this.calls.push(`prepare ${name}`);
    if (this.failPrepare) {
      const e = this.failPrepare;
      this.failPrepare = undefined;
      throw e;
    }
    this.prepared.set(name, mtu);
  }
  async offloadOff(initPid: number, guestIf: string): Promise<void> {
    this.calls.push(`offload ${initPid} ${guestIf}`);
  }
  async remove(name: string): Promise<void> {
    this.calls.push(`remove ${name}`);
    this.prepared.delete(name);
  }
}
