/**
 * ContainerRuntime over libvirt LXC (libvirt.so through koffi).
 *
 * - Domains are transient (virDomainCreateXML) and carry oarcloud metadata; this runtime
 *   only lists, returns, changes or destroys domains whose metadata names its own node.
 * - Every libvirt call that may do an RPC runs off the event loop (koffi `.async`, see
 *   connection.ts), over a small pool of connections.
 * - Events: `events: 'libvirt'` (default) runs libvirt's event loop in a worker thread
 *   (events.ts, event-worker.ts); `events: 'relist'` polls `list()` and diffs. In both modes
 *   a (re)connection of the event source triggers a relist-and-diff, so events missed while
 *   libvirtd was away are still reported. Events are hints; `list()` is the truth.
 * - A failed create or a destroy removes the empty `lxc-<pid>-<name>.libvirt-lxc` cgroup
 *   directories libvirt may leave behind for that domain (notes/HOST.md).
 */
import { InvalidArgumentError, NotFoundError, AlreadyExistsError, errFields, type Logger } from '@oarcloud/common';
import {
  domainName,
  OARCLOUD_METADATA_NS,
  type ContainerRuntime,
  type DomainEvent,
  type DomainEventKind,
  type DomainLimits,
  type DomainSpec,
  type DomainState,
  type DomainStatus,
} from '../runtime.js';
import { Connection, type DomainInfo } from './connection.js';
import { domainXml, parseMetadata, validateDomainLimits } from './domain-xml.js';
import { EventHub, type HubMessage } from './events.js';
import { cgroupDirsOf, initPidOf, removeEmptyCgroups } from './host.js';
import { VIR_DOMAIN_EVENT, VIR_DOMAIN_EVENT_STOPPED_CRASHED, VIR_DOMAIN_EVENT_STOPPED_FAILED } from './native.js';

export interface LibvirtRuntimeOptions {
  /** Event source: libvirt's event loop in a worker thread (default) or polling `list()`. */
  events?: 'libvirt' | 'relist';
  /** Poll period of the relist event source (ms). */
  relistMs?: number;
  /** Connections in the pool (parallel libvirt calls; default DEFAULT_CONNECTIONS). */
  connections?: number;
}

const DOMAIN_PREFIX = domainName('');

/**
 * Default size of the connection pool. A connection runs one call at a time (for its error
 * copy, see connection.ts) and a destroy holds it ~0.2 s while libvirt tears the container
 * down, so the pool bounds how many instances start or stop at once. Connections open
 * lazily, on first need, and cost libvirtd one client each.
 *
 * The other bound is libuv's thread pool, which koffi's async calls run on (with Node's fs):
 * 4 threads unless UV_THREADPOOL_SIZE says otherwise, read once at process start (setting it
 * from JS is too late for an ES module program: the module loader already started the pool).
 * Ten parallel destroys through the manager, measured on this 2-core host: 4 connections /
 * 4 threads 0.69-0.76 s; 4 / 16 0.69 s; 16 / 4 0.41-0.81 s; 16 / 16 0.36-0.43 s (ten raw
 * kill + virsh destroy + umount + rm: 0.34-0.38 s). The agent's unit sets UV_THREADPOOL_SIZE=16.
 */
export const DEFAULT_CONNECTIONS = 16;

function toState(s: DomainInfo['state']): DomainState {
  switch (s) {
    case 'running':
    case 'blocked':
    case 'paused':
    case 'shutdown':
    case 'shutoff':
    case 'crashed':
      return s;
    case 'pmsuspended':
      return 'paused';
    default:
      return 'unknown';
  }
}

function eventKind(event: number, detail: number): DomainEventKind {
  if (event === VIR_DOMAIN_EVENT.STARTED) return 'started';
  if (event === VIR_DOMAIN_EVENT.CRASHED) return 'crashed';
  if (event === VIR_DOMAIN_EVENT.STOPPED) return detail === VIR_DOMAIN_EVENT_STOPPED_CRASHED || detail === VIR_DOMAIN_EVENT_STOPPED_FAILED ? 'crashed' : 'stopped';
  return 'other';
}

export class LibvirtRuntime implements ContainerRuntime {
  private readonly listeners = new Set<(ev: DomainEvent) => void>();
  /** This node's domains as last seen (name → instance id): filters events by node. */
  private readonly known = new Map<string, string>();
  private hub?: EventHub;
  private unsubscribeHub?: () => void;
  private relistTimer?: NodeJS.Timeout;
  /** Event processing is serialised so that started/stopped of one domain stay ordered. */
  private eventChain: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly conn: Connection,
    readonly node: string,
    private readonly log: Logger,
    private readonly opts: Required<LibvirtRuntimeOptions>,
  ) {}

  /** Connects to libvirt at `uri` as node `node`; fails with UnavailableError if libvirtd is unreachable. */
  static async open(uri: string, node: string, log: Logger, opts: LibvirtRuntimeOptions = {}): Promise<LibvirtRuntime> {
    const l = log.child({ component: 'libvirt', node });
    const connections = opts.connections ?? DEFAULT_CONNECTIONS;
    const conn = await Connection.open(uri, l, connections);
    return new LibvirtRuntime(conn, node, l, { events: opts.events ?? 'libvirt', relistMs: opts.relistMs ?? 1000, connections });
  }

  async create(spec: DomainSpec): Promise<DomainStatus> {
    if (spec.node !== this.node) throw new InvalidArgumentError(`domain spec is for node ${JSON.stringify(spec.node)}, this runtime is ${JSON.stringify(this.node)}`);
    const xml = domainXml(spec);
    const name = domainName(spec.instanceId);
    const t0 = performance.now();
    let created: { name: string; id: number };
    try {
      created = await this.conn.createXML(xml);
    } catch (err) {
      // libvirt reports a name clash of a transient create as OPERATION_FAILED ("already
      // exists with uuid"): check rather than trust the code, and never clean up then.
      if (!(err instanceof AlreadyExistsError) && (await this.conn.lookup(name, OARCLOUD_METADATA_NS).catch(() => undefined))) {
        throw new AlreadyExistsError(`domain ${name} already exists`, { cause: err });
      }
      if (!(err instanceof AlreadyExistsError)) await this.removeLeftovers(name);
      throw err;
    }
    const initPid = await initPidOf(created.id, name);
    this.log.debug('domain created', { instanceId: spec.instanceId, ms: Math.round(performance.now() - t0) });
    return { name, instanceId: spec.instanceId, jobId: spec.jobId, node: spec.node, state: 'running', initPid };
  }

  async destroy(instanceId: string): Promise<boolean> {
    const name = domainName(instanceId);
    const destroyed = await this.conn.destroy(
      name,
      async (info) => {
        if (!this.ours(info)) return false;
        // SIGKILL the init now: libvirt's destroy would SIGTERM first and wait.
        const pid = info.state === 'running' ? await initPidOf(info.id, name) : 0;
        if (pid > 1) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
        return true;
      },
      OARCLOUD_METADATA_NS,
    );
    if (destroyed) await this.removeLeftovers(name);
    return destroyed;
  }

  async get(instanceId: string): Promise<DomainStatus | undefined> {
    const info = await this.conn.lookup(domainName(instanceId), OARCLOUD_METADATA_NS);
    return info ? this.toStatus(info) : undefined;
  }

  async list(): Promise<DomainStatus[]> {
    // Stale transient domains of ours are dead containers no list can show: drop them here,
    // or they stay in libvirt for good (seen after libvirtd was killed and restarted).
    const stale = await this.conn.removeStaleTransient((n) => /^oc-i-[0-9a-f]{12}$/.test(n)).catch((err: unknown) => {
      this.log.warn('stale domains not removed', errFields(err));
      return [];
    });
    if (stale.length > 0) this.log.info('stale domains removed', { names: stale });
    const infos = await this.conn.listWithMetadata(OARCLOUD_METADATA_NS);
    const out = await Promise.all(infos.map((i) => this.toStatus(i)));
    return out.filter((s): s is DomainStatus => s !== undefined);
  }

  async setLimits(instanceId: string, limits: DomainLimits): Promise<void> {
    validateDomainLimits(limits);
    if (!(await this.get(instanceId))) throw new NotFoundError(`no domain for instance ${instanceId} on node ${this.node}`);
    const big = (v: number | undefined): bigint | undefined => (v === undefined ? undefined : BigInt(v));
    await this.conn.setParameters(domainName(instanceId), {
      memoryKib: limits.memoryMib === undefined ? undefined : BigInt(limits.memoryMib) * 1024n,
      cpuShares: big(limits.cpuShares),
      cpuPeriodUs: big(limits.cpuPeriodUs),
      cpuQuotaUs: big(limits.cpuQuotaUs),
    });
  }


  version(): Promise<string> {
    return this.conn.version();
  }

  async consolePty(instanceId: string): Promise<string | undefined> {
    const name = domainName(instanceId);
    const info = await this.conn.lookup(name, OARCLOUD_METADATA_NS);
    if (!info || !this.ours(info) || info.state !== 'running') return undefined;
    const xml = await this.conn.xmlDesc(name);
    // libvirt records the host end of the console it allocated: <console type='pty' tty='/dev/pts/N'>.
    const tty = xml && /<console type='pty' tty='(\/dev\/pts\/\d+)'/.exec(xml)?.[1];
    return tty || undefined;
  }

  onEvent(listener: (ev: DomainEvent) => void): () => void {
    this.listeners.add(listener);
    this.startEvents();
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    clearInterval(this.relistTimer);
    this.unsubscribeHub?.();
    await this.hub?.release();
    await this.eventChain;
    await this.conn.close();
  }

  /** Cgroup directories of an instance's domain (for tests and diagnostics). */
  cgroupDirs(instanceId: string): Promise<string[]> {
    return cgroupDirsOf(domainName(instanceId));
  }

  // ---- internals --------------------------------------------------------------------

  /** The metadata of `info` if it is an oarcloud domain of this node. */
  private ours(info: DomainInfo): { instanceId: string; jobId: number; node: string } | undefined {
    const md = info.metadata === undefined ? undefined : parseMetadata(info.metadata);
    if (!md || md.node !== this.node || domainName(md.instanceId) !== info.name) return undefined;
    return md;
  }

  private async toStatus(info: DomainInfo): Promise<DomainStatus | undefined> {
    const md = this.ours(info);
    if (!md) return undefined;
    const initPid = info.state === 'running' ? await initPidOf(info.id, info.name) : 0;
    return { name: info.name, instanceId: md.instanceId, jobId: md.jobId, node: md.node, state: toState(info.state), initPid };
  }

  private async removeLeftovers(name: string): Promise<void> {
    try {
      const removed = await removeEmptyCgroups(name);
      if (removed.length > 0) this.log.info('removed leftover cgroups', { name, count: removed.length });
    } catch (err) {
      this.log.warn('could not remove leftover cgroups', { name, ...errFields(err) });
    }
  }

  private emit(ev: DomainEvent): void {
    for (const l of this.listeners) {
      try {
        l(ev);
      } catch (err) {
        this.log.error('domain event listener threw', { ...errFields(err) });
      }
    }
  }

  private enqueue(work: () => Promise<void>): void {
    this.eventChain = this.eventChain.then(work).catch((err: unknown) => this.log.warn('domain event handling failed', { ...errFields(err) }));
  }

  private startEvents(): void {
    if (this.closed || this.hub || this.relistTimer) return;
    if (this.opts.events === 'relist') {
      this.enqueue(() => this.relist(false));
      this.relistTimer = setInterval(() => this.enqueue(() => this.relist(true)), this.opts.relistMs);
      this.relistTimer.unref();
      return;
    }
    // Seed `known` so that stop events of domains that existed before are recognised.
    this.enqueue(() => this.relist(false));
    this.hub = EventHub.acquire(this.conn.uri, this.log);
    this.unsubscribeHub = this.hub.subscribe((m) => this.enqueue(() => this.onHubMessage(m)));
  }

  private async onHubMessage(m: HubMessage): Promise<void> {
    if (this.closed) return;
    if (m.type === 'connected') return this.relist(true);
    if (m.type !== 'event' || !m.name.startsWith(DOMAIN_PREFIX)) return;
    const kind = eventKind(m.event, m.detail);
    let instanceId = this.known.get(m.name);
    if (kind === 'started' || instanceId === undefined) {
      const info = await this.conn.lookup(m.name, OARCLOUD_METADATA_NS).catch(() => undefined);
      const md = info && this.ours(info);
      if (md) instanceId = md.instanceId;
      else if (kind === 'started') return;
    }
    if (instanceId === undefined) return;
    if (kind === 'started') this.known.set(m.name, instanceId);
    if (kind === 'stopped' || kind === 'crashed') this.known.delete(m.name);
    this.emit({ name: m.name, instanceId, kind, detail: m.detail });
  }

  /** Lists, and when `report`, emits started/stopped for what changed since `known`. */
  private async relist(report: boolean): Promise<void> {
    if (this.closed) return;
    const before = new Map(this.known);
    const now = await this.list();
    this.known.clear();
    for (const d of now) this.known.set(d.name, d.instanceId);
    if (!report) return;
    for (const d of now) if (!before.has(d.name)) this.emit({ name: d.name, instanceId: d.instanceId, kind: 'started', detail: -1 });
    for (const [name, instanceId] of before) if (!this.known.has(name)) this.emit({ name, instanceId, kind: 'stopped', detail: -1 });
  }
}
