/**
 * IP address management, pure: subnets carved from a pool, VNIs from a range, host
 * addresses inside a subnet, deterministic MACs. Callers pass what is in use (read from the
 * store inside one transaction) and get the next free value; nothing here keeps state, so
 * "release" is simply "no longer in use".
 */
import { InvalidArgumentError, ResourceExhaustedError } from '@oarcloud/common';

export interface Cidr {
  /** Network address as an unsigned 32-bit integer. */
  base: number;
  prefix: number;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$/;

export function ipToInt(ip: string): number {
  if (!IPV4.test(ip)) throw new InvalidArgumentError(`not an IPv4 address: ${JSON.stringify(ip.slice(0, 40))}`);
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function size(prefix: number): number {
  return 2 ** (32 - prefix);
}

/** Parses `a.b.c.d/p`; the address must be the network address. */
export function parseCidr(s: string): Cidr {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(s);
  if (!m) throw new InvalidArgumentError(`not a CIDR subnet: ${JSON.stringify(s.slice(0, 40))}`);
  const base = ipToInt(m[1]!);
  const prefix = Number(m[2]);
  if (prefix < 1 || prefix > 32) throw new InvalidArgumentError(`bad prefix length in ${s}`);
  if (base % size(prefix) !== 0) throw new InvalidArgumentError(`${s} is not a network address (host bits set)`);
  return { base, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${intToIp(c.base)}/${c.prefix}`;
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.base < b.base + size(b.prefix) && b.base < a.base + size(a.prefix);
}

/**
 * The first free `/subnetPrefix` of `pool` that overlaps none of `used` (any prefix).
 * ResourceExhaustedError when the pool is full.
 */
export function allocateSubnet(pool: Cidr, subnetPrefix: number, used: readonly Cidr[]): Cidr {
  if (subnetPrefix < pool.prefix || subnetPrefix > 30) throw new InvalidArgumentError(`subnet prefix /${subnetPrefix} does not fit pool /${pool.prefix}`);
  const step = size(subnetPrefix);
  const sorted = [...used].sort((a, b) => a.base - b.base);
  for (let base = pool.base; base < pool.base + size(pool.prefix); base += step) {
    const c = { base, prefix: subnetPrefix };
    const clash = sorted.find((u) => overlaps(u, c));
    if (!clash) return c;
    // Skip past the clashing subnet at once (keeps the search linear in used subnets).
    const end = clash.base + size(clash.prefix);
    const next = pool.base + Math.ceil((end - pool.base) / step) * step;
    if (next > base + step) base = next - step;
  }
  throw new ResourceExhaustedError(`the subnet pool ${formatCidr(pool)} is exhausted`);
}

/**
 * A VNI in [min, max] not in `used`: the first free one after `hint` (wrapping), so a VNI
 * just released is not handed out again at once. ResourceExhaustedError when none is free.
 */
export function allocateVni(range: { min: number; max: number }, used: ReadonlySet<number>, hint = range.min): number {
  const n = range.max - range.min + 1;
  if (used.size >= n) throw new ResourceExhaustedError('no free VNI');
  let v = Math.min(Math.max(hint, range.min), range.max);
  for (let i = 0; i < n; i++) {
    if (!used.has(v)) return v;
    v = v === range.max ? range.min : v + 1;
  }
  throw new ResourceExhaustedError('no free VNI');
}

/** The gateway of a subnet: its first host address (.1 of a /24). */
export function gatewayOf(c: Cidr): string {
  return intToIp(c.base + 1);
}

/**
 * The lowest free host address of `subnet` (never the network address, the gateway or
 * the broadcast address) not in `used` (dotted strings). ResourceExhaustedError when full.
 */
export function allocateAddress(subnet: Cidr, used: ReadonlySet<string>): string {
  return allocateAddresses(subnet, used, 1)[0]!;
}

/**
 * The `count` lowest free host addresses of `subnet` (as allocateAddress, in one scan:
 * a 1,000-instance placement is linear, not quadratic). ResourceExhaustedError when they
 * do not all fit; nothing is taken then.
 */
export function allocateAddresses(subnet: Cidr, used: ReadonlySet<string>, count: number): string[] {
  const last = subnet.base + size(subnet.prefix) - 1;
  const out: string[] = [];
  for (let a = subnet.base + 2; a < last && out.length < count; a++) {
    const ip = intToIp(a);
    if (!used.has(ip)) out.push(ip);
  }
  if (out.length < count) throw new ResourceExhaustedError(`subnet ${formatCidr(subnet)} has no free address`);
  return out;
}

/** True when `ip` is a usable host address of `subnet` (not network, gateway or broadcast). */
export function isHostOf(subnet: Cidr, ip: string): boolean {
  const a = ipToInt(ip);
  return a >= subnet.base + 2 && a < subnet.base + size(subnet.prefix) - 1;
}

/**
 * Deterministic, locally administered unicast MAC of an address: `02:0c:` + the 4 bytes
 * of the IPv4 address, so it is unique within a network exactly as addresses are.
 */
export function macOf(ip: string): string {
  const n = ipToInt(ip);
  return ['02', '0c', ...[n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}
