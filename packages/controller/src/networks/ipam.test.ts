import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ResourceExhaustedError } from '@oarcloud/common';
import { allocateAddress, allocateAddresses, allocateSubnet, allocateVni, formatCidr, gatewayOf, isHostOf, macOf, overlaps, parseCidr, type Cidr } from './ipam.js';

describe('ipam', () => {
  const pool = parseCidr('10.90.0.0/16');

  it('ipam - subnets come from the pool in order, /24 by default, gateway .1', () => {
    const a = allocateSubnet(pool, 24, []);
    expect(formatCidr(a)).toBe('10.90.0.0/24');
    expect(gatewayOf(a)).toBe('10.90.0.1');
    expect(formatCidr(allocateSubnet(pool, 24, [a]))).toBe('10.90.1.0/24');
    // A user-chosen /22 in the middle is skipped over.
    expect(formatCidr(allocateSubnet(pool, 24, [a, parseCidr('10.90.1.0/24'), parseCidr('10.90.4.0/22')]))).toBe('10.90.2.0/24');
    expect(formatCidr(allocateSubnet(pool, 24, [parseCidr('10.90.0.0/22')]))).toBe('10.90.4.0/24');
  });

  it('ipam - property: allocated subnets never overlap each other nor the pool outside; release returns them', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.nat(50)), { minLength: 1, maxLength: 200 }), (ops) => {
        const small = parseCidr('10.90.0.0/20'); // 16 /24s: exhaustion happens
        let live: Cidr[] = [];
        for (const [alloc, k] of ops) {
          if (alloc || live.length === 0) {
            try {
              const c = allocateSubnet(small, 24, live);
              expect(overlaps(c, small) && c.base >= small.base).toBe(true);
              for (const u of live) expect(overlaps(u, c)).toBe(false);
              live.push(c);
            } catch (err) {
              expect(err).toBeInstanceOf(ResourceExhaustedError);
              expect(live.length).toBe(16);
            }
          } else {
            const gone = live[k % live.length]!;
            live = live.filter((x) => x !== gone);
            // Released: the next allocation may reuse it, and finds a free one.
            expect(() => allocateSubnet(small, 24, live)).not.toThrow();
          }
        }
      }),
    );
  });

  it('ipam - property: addresses are unique, inside the subnet, never network/gateway/broadcast; release frees', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.nat(300)), { maxLength: 300 }), fc.integer({ min: 24, max: 29 }), (ops, prefix) => {
        const subnet = parseCidr(`10.90.7.0/${prefix}`);
        const capacity = 2 ** (32 - prefix) - 3;
        const used = new Set<string>();
        for (const [alloc, k] of ops) {
          if (alloc || used.size === 0) {
            try {
              const ip = allocateAddress(subnet, used);
              expect(used.has(ip)).toBe(false);
              expect(isHostOf(subnet, ip)).toBe(true);
              used.add(ip);
            } catch (err) {
              expect(err).toBeInstanceOf(ResourceExhaustedError);
              expect(used.size).toBe(capacity);
            }
          } else {
            const ip = [...used][k % used.size]!;
            used.delete(ip);
            expect(allocateAddress(subnet, used)).toBeDefined();
          }
        }
        expect(new Set([...used].map(macOf)).size).toBe(used.size);
      }),
    );
  });

  it('ipam - property: a batch of addresses is what as many single allocations give, or nothing when it does not fit', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.nat(60), { maxLength: 40 }), fc.nat(70), (taken, count) => {
        const subnet = parseCidr('10.90.7.0/26');
        const used = new Set(taken.filter((k) => k >= 2 && k < 63).map((k) => `10.90.7.${k}`));
        const one = new Set(used);
        const singles: string[] = [];
        try {
          for (let k = 0; k < count; k++) {
            const ip = allocateAddress(subnet, one);
            one.add(ip);
            singles.push(ip);
          }
        } catch (err) {
          expect(err).toBeInstanceOf(ResourceExhaustedError);
          expect(() => allocateAddresses(subnet, used, count)).toThrow(ResourceExhaustedError);
          return;
        }
        expect(allocateAddresses(subnet, used, count)).toEqual(singles);
      }),
    );
  });

  it('ipam - property: VNIs are unique and in range; the hint avoids immediate reuse', () => {
    fc.assert(
      fc.property(fc.array(fc.nat(20), { maxLength: 60 }), (ops) => {
        const range = { min: 4096, max: 4111 };
        const used = new Set<number>();
        let hint = range.min;
        for (const k of ops) {
          if (k % 3 === 0 && used.size > 0) used.delete([...used][k % used.size]!);
          else if (used.size < 16) {
            const v = allocateVni(range, used, hint);
            expect(v >= range.min && v <= range.max && !used.has(v)).toBe(true);
            used.add(v);
            hint = v + 1;
          } else expect(() => allocateVni(range, used, hint)).toThrow(ResourceExhaustedError);
        }
      }),
    );
  });

  it('ipam - MACs are locally administered unicast and deterministic', () => {
    expect(macOf('10.90.0.5')).toBe('02:0c:0a:5a:00:05');
    expect(parseInt(macOf('10.90.3.200').slice(0, 2), 16) & 3).toBe(2);
  });

  it('ipam - bad CIDRs are refused', () => {
    expect(() => parseCidr('10.90.0.1/24')).toThrow(/network address/);
    expect(() => parseCidr('10.90.0.0')).toThrow(/CIDR/);
    expect(() => parseCidr('300.1.1.0/24')).toThrow(/IPv4/);
  });
});
