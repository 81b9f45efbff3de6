import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '@oarcloud/common';
import { OARCLOUD_METADATA_NS, type DomainSpec } from '../runtime.js';
import { domainXml, DROPPED_CAPABILITIES, escapeXml, metadataXml, parseMetadata } from './domain-xml.js';

const base: DomainSpec = {
  instanceId: 'i-0123456789ab',
  jobId: 17,
  node: 'node-1',
  rootDir: '/var/lib/oarcloud/instances/i-0123456789ab/merged',
  init: '/sbin/init',
  vcpus: 2,
  cpuset: '0-1',
  memoryMib: 512,
  interfaces: [],
};

describe('domainXml', () => {
  it('domain xml - minimal spec gives an LXC domain with privnet, metadata and destroy actions', () => {
    const xml = domainXml(base);
    expect(xml).toContain("<domain type='lxc'>");
    expect(xml).toContain('<name>oc-i-0123456789ab</name>');
    expect(xml).toContain(`<oc:instance xmlns:oc='${OARCLOUD_METADATA_NS}'><oc:id>i-0123456789ab</oc:id><oc:job>17</oc:job><oc:node>node-1</oc:node></oc:instance>`);
    expect(xml).toContain("<memory unit='KiB'>524288</memory>");
    expect(xml).toContain("<vcpu placement='static' cpuset='0-1'>2</vcpu>");
    expect(xml).toContain('<os>\n    <type>exe</type>\n    <init>/sbin/init</init>\n  </os>');
    expect(xml).toContain("<features><privnet/><capabilities policy='default'>");
    for (const c of DROPPED_CAPABILITIES) expect(xml).toContain(`<${c} state='off'/>`);
    expect(xml).not.toMatch(/<(setuid|setgid|chown|sys_chroot|net_bind_service|kill|sys_boot) state/);
    expect(xml).toContain("<filesystem type='mount'>\n      <source dir='/var/lib/oarcloud/instances/i-0123456789ab/merged'/>\n      <target dir='/'/>");
    expect(xml).toContain("<console type='pty'/>");
    for (const ev of ['on_poweroff', 'on_reboot', 'on_crash']) expect(xml).toContain(`<${ev}>destroy</${ev}>`);
    expect(xml).not.toContain('<cputune>');
    expect(xml).not.toContain('<resource>');
    expect(xml).not.toContain('<idmap>');
    expect(xml).not.toContain('<interface');
  });

  it('domain xml - optional parts appear when set', () => {
    const xml = domainXml({
      ...base,
      cpuShares: 2048,
      partition: '/machine/oc-node-1-j17.job',
      idmap: { start: 100000, count: 65536 },
      consoleLog: '/var/log/oarcloud/i-0123456789ab.console',
      interfaces: [{ hostName: 'oc17a0', guestName: 'eth0', mac: '52:54:00:AB:CD:EF', bridge: 'br-int', vlan: 101, mtu: 1400 }],
    });
    expect(xml).toContain('<cputune><shares>2048</shares></cputune>');
    expect(domainXml({ ...base, cpuShares: 1024, cpuPeriodUs: 100000, cpuQuotaUs: 150000 })).toContain(
      '<cputune><shares>1024</shares><period>100000</period><quota>150000</quota></cputune>',
    );
    expect(domainXml({ ...base, cpuPeriodUs: 50000, cpuQuotaUs: 50000 })).toContain('<cputune><period>50000</period><quota>50000</quota></cputune>');
    expect(xml).toContain('<resource><partition>/machine/oc-node-1-j17.job</partition></resource>');
    expect(xml).toContain("<uid start='0' target='100000' count='65536'/>");
    expect(xml).toContain("<gid start='0' target='100000' count='65536'/>");
    expect(xml).toContain(
      [
        "    <interface type='bridge'>",
        "      <source bridge='br-int'/>",
        "      <virtualport type='openvswitch'/>",
        "      <vlan><tag id='101'/></vlan>",
        "      <target dev='oc17a0'/>",
        "      <guest dev='eth0'/>",
        "      <mac address='52:54:00:ab:cd:ef'/>",
        "      <mtu size='1400'/>",
        '    </interface>',
      ].join('\n'),
    );
    expect(xml).toContain("<console type='pty'><log file='/var/log/oarcloud/i-0123456789ab.console' append='on'/></console>");
    expect(xml).toContain('<features><privnet/><capabilities');
  });

  it('domain xml - escapes what it writes', () => {
    expect(escapeXml(`a&b<c>"d"'e'`)).toBe('a&amp;b&lt;c&gt;&quot;d&quot;&apos;e&apos;');
    // Paths with characters that are special in XML are refused before escaping matters.
    expect(() => domainXml({ ...base, rootDir: "/srv/a&b/it's" })).toThrow(InvalidArgumentError);
    expect(() => domainXml({ ...base, init: "/sbin/init'/><evil/>" })).toThrow(InvalidArgumentError);
  });

  it.each<[string, Partial<DomainSpec>]>([
    ['instance id with a slash', { instanceId: 'a/b' }],
    ['instance id with markup', { instanceId: 'a<b' }],
    ['instance id dot-dot', { instanceId: '..' }],
    ['empty node', { node: '' }],
    ['relative root', { rootDir: 'var/x' }],
    ['root with ..', { rootDir: '/var/../x' }],
    ['root is /', { rootDir: '/' }],
    ['root with newline', { rootDir: '/var/x\ny' }],
    ['root with a space', { rootDir: '/var/x y' }],
    ['relative init', { init: 'init' }],
    ['zero memory', { memoryMib: 0 }],
    ['fractional vcpus', { vcpus: 1.5 }],
    ['bad cpuset', { cpuset: 'all' }],
    ['empty cpuset', { cpuset: '' }],
    ['negative job', { jobId: -1 }],
    ['shares too small', { cpuShares: 1 }],
    ['a quota without a period', { cpuQuotaUs: 100000 }],
    ['a period without a quota', { cpuPeriodUs: 100000 }],
    ['a period under 1 ms', { cpuPeriodUs: 999, cpuQuotaUs: 100000 }],
    ['a period over 1 s', { cpuPeriodUs: 1_000_001, cpuQuotaUs: 100000 }],
    ['a quota under 1 ms', { cpuPeriodUs: 100000, cpuQuotaUs: 999 }],
    ['a fractional quota', { cpuPeriodUs: 100000, cpuQuotaUs: 1000.5 }],
    ['partition with ..', { partition: '/machine/../x' }],
    ['relative partition', { partition: 'machine/x' }],
    ['idmap to root', { idmap: { start: 0, count: 65536 } }],
    ['long host ifname', { interfaces: [{ hostName: 'abcdefghijklmnop', guestName: 'eth0', mac: '52:54:00:00:00:01', bridge: 'br-int' }] }],
    ['multicast mac', { interfaces: [{ hostName: 'v0', guestName: 'eth0', mac: '01:54:00:00:00:01', bridge: 'br-int' }] }],
    ['vlan 0', { interfaces: [{ hostName: 'v0', guestName: 'eth0', mac: '52:54:00:00:00:01', bridge: 'br-int', vlan: 0 }] }],
    ['bridge with quote', { interfaces: [{ hostName: 'v0', guestName: 'eth0', mac: '52:54:00:00:00:01', bridge: "br'x" }] }],
    [
      'duplicate guest names',
      {
        interfaces: [
          { hostName: 'v0', guestName: 'eth0', mac: '52:54:00:00:00:01', bridge: 'br-int' },
          { hostName: 'v1', guestName: 'eth0', mac: '52:54:00:00:00:02', bridge: 'br-int' },
        ],
      },
    ],
    ['relative console log', { consoleLog: 'console.log' }],
    ['a volume mounted on /', { mounts: [{ source: '/srv/v/v-000000000001', target: '/', readOnly: false }] }],
    ['a volume path with ..', { mounts: [{ source: '/srv/v/v-000000000001', target: '/data/../etc', readOnly: false }] }],
    ['a volume source with a quote', { mounts: [{ source: "/srv/v/x'y", target: '/data', readOnly: false }] }],
  ])('domain xml - rejects %s', (_what, patch) => {
    expect(() => domainXml({ ...base, ...patch })).toThrow(InvalidArgumentError);
  });
});

describe('domainXml volumes', () => {
  it('domain xml - volumes are bind mounts at their path, read-only when asked', () => {
    const xml = domainXml({
      ...base,
      mounts: [
        { source: '/srv/v/v-000000000001', target: '/data', readOnly: false },
        { source: '/srv/v/v-000000000002', target: '/ro', readOnly: true },
      ],
    });
    expect(xml).toContain("<filesystem type='mount' accessmode='passthrough'><source dir='/srv/v/v-000000000001'/><target dir='/data'/></filesystem>");
    expect(xml).toContain("<source dir='/srv/v/v-000000000002'/><target dir='/ro'/><readonly/></filesystem>");
  });
});

describe('parseMetadata', () => {
  it('domain xml - metadata round-trips, whatever prefix libvirt re-serialises with', () => {
    expect(parseMetadata(metadataXml(base))).toEqual({ instanceId: base.instanceId, jobId: 17, node: 'node-1' });
    const libvirtStyle = `<instance xmlns="${OARCLOUD_METADATA_NS}">\n  <id>i-1</id>\n  <job>3</job>\n  <node>a&amp;b</node>\n</instance>`;
    expect(parseMetadata(libvirtStyle)).toEqual({ instanceId: 'i-1', jobId: 3, node: 'a&b' });
  });

  it('domain xml - incomplete metadata is not ours', () => {
    expect(parseMetadata('<instance><id>i-1</id><node>n</node></instance>')).toBeUndefined();
    expect(parseMetadata('<instance><id>i-1</id><job>x</job><node>n</node></instance>')).toBeUndefined();
  });
});
