/**
 * DomainSpec → libvirt LXC domain XML, and back for the metadata. Pure: no I/O.
 *
 * Facts this relies on (libvirt 9.0 LXC, checked on the host):
 * - `<features><privnet/></features>` is always set: without it a domain with no
 *   `<interface>` shares the host's network namespace.
 * - Only `<console type='pty'>` is accepted ("Only PTY console types are supported"); a
 *   `<log file=…/>` child is accepted but ignored by the LXC driver. `consoleLog` is emitted
 *   as that `<log>` element so the intent is in the XML; the agent itself reads the console
 *   pty into a log (instances/console.ts), and does not set `consoleLog`.
 * - Every name and path is validated (InvalidArgumentError) before any XML is produced,
 *   and every value is escaped anyway.
 * - `<capabilities policy='default'>` keeps libvirt's own drops (sys_module, sys_time,
 *   mknod, audit_control, mac_admin) and drops DROPPED_CAPABILITIES from the bounding set
 *   too, so even a process that gets root in the instance cannot get them back.
 */
import { InvalidArgumentError, parseCpuset } from '@oarcloud/common';
import { domainName, OARCLOUD_METADATA_NS, type DomainInterface, type DomainLimits, type DomainSpec } from '../runtime.js';

/**
 * Capabilities no instance needs (sshd, package managers, services run without them); most
 * only reach the host's kernel, so the user namespace already makes them void: dropping them
 * as well keeps a privileged instance (idmap off) or a kernel bug from giving them back.
 * sys_boot is kept: reboot(2) inside an instance only ends that instance.
 */
export const DROPPED_CAPABILITIES = [
  'audit_control',
  'block_suspend',
  'mac_admin',
  'mac_override',
  'mknod',
  'sys_module',
  'sys_pacct',
  'sys_rawio',
  'sys_time',
  'syslog',
  'wake_alarm',
] as const;

const FEATURES_XML = `  <features><privnet/><capabilities policy='default'>${DROPPED_CAPABILITIES.map((c) => `<${c} state='off'/>`).join('')}</capabilities></features>`;

/** Instance ids and node names: what may appear in a domain name and a file name. */
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
/** Linux interface names (IFNAMSIZ - 1). */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
const PARTITION_PART = /^[A-Za-z0-9_.-]+$/;

export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' })[c]!);
}

function bad(what: string, value: unknown): never {
  throw new InvalidArgumentError(`invalid domain spec: ${what} ${JSON.stringify(value)?.slice(0, 120)}`);
}

function checkName(what: string, v: string): void {
  if (typeof v !== 'string' || !SAFE_NAME.test(v) || v === '.' || v === '..') bad(what, v);
}

/** Bounds libvirt (and the kernel) accept for the CFS period and quota, µs. */
export const CFS_PERIOD_MIN_US = 1000;
export const CFS_PERIOD_MAX_US = 1_000_000;
export const CFS_QUOTA_MIN_US = 1000;
export const CFS_QUOTA_MAX_US = 17_592_186_044_415;

/** Characters allowed in paths: no quotes, markup, spaces or control characters. */
const PATH_CHARS = /^[A-Za-z0-9_.,:@%+=~\/-]+$/;

/** An absolute, normalised path of safe characters, with no `.`/`..` parts. */
function checkPath(what: string, v: string): void {
  if (typeof v !== 'string' || !v.startsWith('/') || v.length > 4096 || !PATH_CHARS.test(v)) bad(what, v);
  const parts = v.split('/').slice(1);
  if (v !== '/' && parts.some((p) => p === '' || p === '.' || p === '..')) bad(what, v);
}

function checkInt(what: string, v: number, min: number, max: number): void {
  if (!Number.isSafeInteger(v) || v < min || v > max) bad(what, v);
}

function checkInterface(i: DomainInterface, n: number): void {
  if (!IFNAME.test(i.hostName)) bad(`interfaces[${n}].hostName`, i.hostName);
  if (!IFNAME.test(i.guestName)) bad(`interfaces[${n}].guestName`, i.guestName);
  if (i.bridge !== undefined && !IFNAME.test(i.bridge)) bad(`interfaces[${n}].bridge`, i.bridge);
  if (i.bridge === undefined && i.vlan !== undefined) bad(`interfaces[${n}].vlan (needs a bridge)`, i.vlan);
  // Unicast only: the low bit of the first octet marks multicast.
  if (!MAC.test(i.mac) || (parseInt(i.mac.slice(0, 2), 16) & 1) === 1) bad(`interfaces[${n}].mac`, i.mac);
  if (i.vlan !== undefined) checkInt(`interfaces[${n}].vlan`, i.vlan, 1, 4094);
  if (i.mtu !== undefined) checkInt(`interfaces[${n}].mtu`, i.mtu, 68, 65535);
}

/** Throws InvalidArgumentError unless `spec` can be turned into a safe domain. */
export function validateDomainSpec(spec: DomainSpec): void {
  checkName('instanceId', spec.instanceId);
  checkName('node', spec.node);
  checkInt('jobId', spec.jobId, 0, Number.MAX_SAFE_INTEGER);
  checkPath('rootDir', spec.rootDir);
  if (spec.rootDir === '/') bad('rootDir', spec.rootDir);
  checkPath('init', spec.init);
  checkInt('vcpus', spec.vcpus, 1, 4096);
  if (typeof spec.cpuset !== 'string' || parseCpuset(spec.cpuset).length === 0) bad('cpuset', spec.cpuset);
  checkInt('memoryMib', spec.memoryMib, 1, 16 * 1024 * 1024);
  if (spec.cpuShares !== undefined) checkInt('cpuShares', spec.cpuShares, 2, 262144);
  if ((spec.cpuPeriodUs === undefined) !== (spec.cpuQuotaUs === undefined)) bad('cpuPeriodUs/cpuQuotaUs (both or neither)', [spec.cpuPeriodUs, spec.cpuQuotaUs]);
  if (spec.cpuPeriodUs !== undefined) checkInt('cpuPeriodUs', spec.cpuPeriodUs, CFS_PERIOD_MIN_US, CFS_PERIOD_MAX_US);
  if (spec.cpuQuotaUs !== undefined) checkInt('cpuQuotaUs', spec.cpuQuotaUs, CFS_QUOTA_MIN_US, CFS_QUOTA_MAX_US);
  if (spec.partition !== undefined) {
    const parts = typeof spec.partition === 'string' && spec.partition.startsWith('/') ? spec.partition.split('/').slice(1) : [];
    if (parts.length === 0 || parts.some((p) => !PARTITION_PART.test(p) || p === '.' || p === '..')) bad('partition', spec.partition);
  }
  if (spec.idmap !== undefined) {
    checkInt('idmap.start', spec.idmap.start, 1, 0xfffffffe);
    checkInt('idmap.count', spec.idmap.count, 1, 0xfffffffe);
    if (spec.idmap.start + spec.idmap.count > 0xffffffff) bad('idmap', spec.idmap);
  }
  if (!Array.isArray(spec.interfaces)) bad('interfaces', spec.interfaces);
  spec.interfaces.forEach(checkInterface);
  const hostNames = new Set(spec.interfaces.map((i) => i.hostName));
  const guestNames = new Set(spec.interfaces.map((i) => i.guestName));
  if (hostNames.size !== spec.interfaces.length || guestNames.size !== spec.interfaces.length) bad('interfaces (duplicate names)', spec.interfaces.length);
  if (spec.consoleLog !== undefined) checkPath('consoleLog', spec.consoleLog);
  (spec.mounts ?? []).forEach((m, n) => {
    checkPath(`mounts[${n}].source`, m.source);
    checkPath(`mounts[${n}].target`, m.target);
    if (m.source === '/' || m.target === '/') bad(`mounts[${n}]`, m.target);
  });
}

/** Throws InvalidArgumentError unless every given live limit is acceptable (see DomainLimits). */
export function validateDomainLimits(limits: DomainLimits): void {
  const int = (what: string, v: number | undefined, min: number, max: number): void => {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < min || v > max)) throw new InvalidArgumentError(`invalid ${what} ${v}`);
  };
  int('memoryMib', limits.memoryMib, 1, 16 * 1024 * 1024);
  int('cpuShares', limits.cpuShares, 2, 262144);
  int('cpuPeriodUs', limits.cpuPeriodUs, CFS_PERIOD_MIN_US, CFS_PERIOD_MAX_US);
  if (limits.cpuQuotaUs !== -1) int('cpuQuotaUs', limits.cpuQuotaUs, CFS_QUOTA_MIN_US, CFS_QUOTA_MAX_US);
}

function interfaceXml(i: DomainInterface): string {
  const e = escapeXml;
  if (i.bridge === undefined) {
    // Unplugged veth: the agent moves/plugs the host end itself (the node's OVS may live
    // in another network namespace, which libvirt's plain ovs-vsctl cannot reach).
    return [
      `    <interface type='ethernet'>`,
      `      <target dev='${e(i.hostName)}'/>`,
      `      <guest dev='${e(i.guestName)}'/>`,
      `      <mac address='${e(i.mac.toLowerCase())}'/>`,
      ...(i.mtu !== undefined ? [`      <mtu size='${i.mtu}'/>`] : []),
      `    </interface>`,
    ].join('\n');
  }
  return [
    `    <interface type='bridge'>`,
    `      <source bridge='${e(i.bridge)}'/>`,
    `      <virtualport type='openvswitch'/>`,
    ...(i.vlan !== undefined ? [`      <vlan><tag id='${i.vlan}'/></vlan>`] : []),
    `      <target dev='${e(i.hostName)}'/>`,
    `      <guest dev='${e(i.guestName)}'/>`,
    `      <mac address='${e(i.mac.toLowerCase())}'/>`,
    ...(i.mtu !== undefined ? [`      <mtu size='${i.mtu}'/>`] : []),
    `    </interface>`,
  ].join('\n');
}

/** `<cputune>`: shares and the CFS bandwidth limit, when given. */
function cputuneXml(spec: DomainSpec): string[] {
  const parts = [
    ...(spec.cpuShares !== undefined ? [`<shares>${spec.cpuShares}</shares>`] : []),
    ...(spec.cpuPeriodUs !== undefined ? [`<period>${spec.cpuPeriodUs}</period>`, `<quota>${spec.cpuQuotaUs}</quota>`] : []),
  ];
  return parts.length > 0 ? [`  <cputune>${parts.join('')}</cputune>`] : [];
}

/** The metadata element oarcloud stores in each domain (namespace OARCLOUD_METADATA_NS). */
export function metadataXml(spec: Pick<DomainSpec, 'instanceId' | 'jobId' | 'node'>): string {
  const e = escapeXml;
  return `<oc:instance xmlns:oc='${e(OARCLOUD_METADATA_NS)}'><oc:id>${e(spec.instanceId)}</oc:id><oc:job>${spec.jobId}</oc:job><oc:node>${e(spec.node)}</oc:node></oc:instance>`;
}

/** Validates `spec` and returns the domain XML for virDomainCreateXML. */
export function domainXml(spec: DomainSpec): string {
  validateDomainSpec(spec);
  const e = escapeXml;
  const kib = spec.memoryMib * 1024;
  const lines = [
    `<domain type='lxc'>`,
    `  <name>${e(domainName(spec.instanceId))}</name>`,
    `  <metadata>`,
    `    ${metadataXml(spec)}`,
    `  </metadata>`,
    `  <memory unit='KiB'>${kib}</memory>`,
    `  <vcpu placement='static' cpuset='${e(spec.cpuset)}'>${spec.vcpus}</vcpu>`,
    ...cputuneXml(spec),
    ...(spec.partition !== undefined ? [`  <resource><partition>${e(spec.partition)}</partition></resource>`] : []),
    `  <os>`,
    `    <type>exe</type>`,
    `    <init>${e(spec.init)}</init>`,
    `  </os>`,
    ...(spec.idmap !== undefined
      ? [
          `  <idmap>`,
          `    <uid start='0' target='${spec.idmap.start}' count='${spec.idmap.count}'/>`,
          `    <gid start='0' target='${spec.idmap.start}' count='${spec.idmap.count}'/>`,
          `  </idmap>`,
        ]
      : []),
    FEATURES_XML,
    `  <on_poweroff>destroy</on_poweroff>`,
    `  <on_reboot>destroy</on_reboot>`,
    `  <on_crash>destroy</on_crash>`,
    `  <devices>`,
    `    <filesystem type='mount'>`,
    `      <source dir='${e(spec.rootDir)}'/>`,
    `      <target dir='/'/>`,
    `    </filesystem>`,
    ...(spec.mounts ?? []).map(
      (m) => `    <filesystem type='mount' accessmode='passthrough'><source dir='${e(m.source)}'/><target dir='${e(m.target)}'/>${m.readOnly ? '<readonly/>' : ''}</filesystem>`,
    ),
    ...spec.interfaces.map(interfaceXml),
    spec.consoleLog !== undefined ? `    <console type='pty'><log file='${e(spec.consoleLog)}' append='on'/></console>` : `    <console type='pty'/>`,
    `  </devices>`,
    `</domain>`,
    '',
  ];
  return lines.join('\n');
}

export interface DomainMetadata {
  instanceId: string;
  jobId: number;
  node: string;
}

function unescapeXml(s: string): string {
  return s.replace(/&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, (_m, ent: string) => {
    const named: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
    if (ent in named) return named[ent]!;
    return String.fromCodePoint(ent[1] === 'x' ? parseInt(ent.slice(2), 16) : parseInt(ent.slice(1), 10));
  });
}

/**
 * Parses what virDomainGetMetadata returns for our namespace (libvirt re-serialises it with
 * its own prefix choice, so the element names are matched with any prefix). Undefined if
 * the element is not ours or is incomplete.
 */
export function parseMetadata(xml: string): DomainMetadata | undefined {
  const field = (name: string): string | undefined => {
    const m = new RegExp(`<(?:[A-Za-z_][\\w.-]*:)?${name}>([^<]*)</(?:[A-Za-z_][\\w.-]*:)?${name}>`).exec(xml);
    return m ? unescapeXml(m[1]!) : undefined;
  };
  const instanceId = field('id');
  const job = field('job');
  const node = field('node');
  if (instanceId === undefined || job === undefined || node === undefined || !/^\d+$/.test(job)) return undefined;
  return { instanceId, jobId: Number(job), node };
}
