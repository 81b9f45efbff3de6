/**
 * A small pool of libvirt connections with async, handle-safe domain operations.
 *
 * - Every call that may do an RPC goes through koffi `.async` (a koffi pool thread), so the
 *   Node event loop never blocks.
 * - libvirt errors are thread-local; an async call's error is read from the connection's
 *   own copy (`virConnGetLastError`). For that copy to be the error of *this* call, a
 *   connection runs one operation at a time (a lease); parallelism comes from `size`
 *   connections.
 * - Every domain handle is freed in a `finally`, whatever happened.
 * - A connection found dead (libvirtd restarted, socket closed) is closed and reopened on
 *   its next lease; read-only operations are retried once on a fresh connection, mutations
 *   are not (the caller gets UnavailableError and decides). Running containers survive a
 *   libvirtd restart (notes/HOST.md), so nothing is lost by reconnecting.
 */
import { UnavailableError, errFields, type Logger } from '@oarcloud/common';
import { fromLibvirt, isConnectionLost, VIR_ERR } from './errors.js';
import {
  connLastError,
  connResetLastError,
  nativeAsync,
  nativeLocal,
  silenceLibvirtErrors,
  VIR_DOMAIN_AFFECT_LIVE,
  VIR_DOMAIN_DESTROY_DEFAULT,
  VIR_DOMAIN_METADATA_ELEMENT,
  VIR_DOMAIN_SCHEDULER_CPU_SHARES,
  VIR_DOMAIN_SCHEDULER_VCPU_PERIOD,
  VIR_DOMAIN_SCHEDULER_VCPU_QUOTA,
  VIR_DOMAIN_MEMORY_HARD_LIMIT,
  VIR_DOMAIN_STATE,
  VIR_DOMAIN_UNDEFINE_DEFAULT,
  type Ptr,
  type TypedParam,
} from './native.js';
import { OarcloudError } from '@oarcloud/common';

/** virConnectListAllDomains flags (libvirt-domain.h). */
const VIR_CONNECT_LIST_DOMAINS_INACTIVE = 2;
const VIR_CONNECT_LIST_DOMAINS_TRANSIENT = 8;

export type NativeState = (typeof VIR_DOMAIN_STATE)[number] | 'unknown';

/** What one read of a domain returns. */
export interface DomainInfo {
  name: string;
  /** libvirt domain id; for LXC the pid of the libvirt_lxc controller; -1 if not running. */
  id: number;
  state: NativeState;
  /** Our metadata element (namespace given to the read), undefined if the domain has none. */
  metadata?: string;
}

/** What virDomainGetInfo says of a domain. */
export interface DomainRuntimeInfo {
  state: NativeState;
  maxMemKib: number;
  memoryKib: number;
  nrVirtCpu: number;
  cpuTimeNs: bigint;
  /** Has a persistent definition (virDomainDefineXML), as opposed to a transient domain. */
  persistent: boolean;
}

interface Slot {
  conn: Ptr | null;
  busy: boolean;
}

/** One connection, leased to one operation: wraps each native call with error checking. */
export class Lease {
  constructor(readonly conn: Ptr) {}

  /** Runs a native call; `failed(result)` says whether it failed, then the error is thrown. */
  async call<T>(name: string, run: (conn: Ptr) => Promise<T>, failed: (r: T) => boolean): Promise<T> {
    connResetLastError(this.conn);
    const r = await run(this.conn);
    if (failed(r)) throw fromLibvirt(name, connLastError(this.conn));
    return r;
  }
}

const isNull = (p: unknown): boolean => p === null || p === undefined;
const isNeg = (n: number | undefined): boolean => n === undefined || n < 0;

function libvirtCode(err: unknown): number | undefined {
  const cause = err instanceof OarcloudError ? err.cause : undefined;
  return cause && typeof cause === 'object' && 'code' in cause ? (cause as { code: number }).code : undefined;
}

export class Connection {
  private readonly slots: Slot[];
  private readonly waiters: Array<(s: Slot) => void> = [];
  private closed = false;

  private constructor(
    readonly uri: string,
    private readonly log: Logger,
    size: number,
  ) {
    this.slots = Array.from({ length: size }, () => ({ conn: null, busy: false }));
  }

  /** Opens `size` connections lazily; the first one now, so a wrong URI fails here. */
  static async open(uri: string, log: Logger, size = 4): Promise<Connection> {
    silenceLibvirtErrors();
    const c = new Connection(uri, log, Math.max(1, size));
    await c.with((l) => nativeAsync.connectGetLibVersion(l.conn), { readOnly: true });
    return c;
  }

  /**
   * Runs `op` with a leased connection. `readOnly` operations are retried once on a fresh
   * connection if the first attempt found the connection lost.
   */
  async with<T>(op: (lease: Lease) => Promise<T>, opts: { readOnly: boolean }): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const slot = await this.acquire();
      try {
        if (slot.conn !== null && nativeLocal.connectIsAlive(slot.conn) !== 1) await this.drop(slot, 'connection not alive');
        if (slot.conn === null) slot.conn = await this.connect();
        return await op(new Lease(slot.conn));
      } catch (err) {
        if (!isConnectionLost(err)) throw err;
        await this.drop(slot, 'connection lost');
        if (!opts.readOnly || attempt >= 1) throw err;
      } finally {
        this.release(slot);
      }
    }
  }

  private async connect(): Promise<Ptr> {
    if (this.closed) throw new UnavailableError('libvirt connection is closed');
    const conn = await nativeAsync.connectOpen(this.uri);
    // A failed async open leaves its error on a koffi thread: only the fact is known here.
    if (conn === null) throw new UnavailableError(`cannot connect to libvirt at ${this.uri}`);
    return conn;
  }

  private async drop(slot: Slot, why: string): Promise<void> {
    const conn = slot.conn;
    slot.conn = null;
    if (conn === null) return;
    this.log.warn('libvirt connection dropped, will reconnect', { uri: this.uri, why });
    await nativeAsync.connectClose(conn).catch(() => undefined);
  }

  private acquire(): Promise<Slot> {
    if (this.closed) return Promise.reject(new UnavailableError('libvirt connection is closed'));
    const free = this.slots.find((s) => !s.busy);
    if (free) {
      free.busy = true;
      return Promise.resolve(free);
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  private release(slot: Slot): void {
    const next = this.waiters.shift();
    if (next) next(slot);
    else slot.busy = false;
  }

  /** Waits for running operations, then closes every connection. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    const all = await Promise.all(this.slots.map(() => this.acquire()));
    this.closed = true;
    for (const s of all) {
      if (s.conn !== null) {
        const rc = await nativeAsync.connectClose(s.conn).catch(() => -1);
        if (rc < 0) this.log.debug('libvirt close failed', { uri: this.uri });
        s.conn = null;
      }
    }
    for (const w of this.waiters.splice(0)) w({ conn: null, busy: true });
  }

  // ---- operations -------------------------------------------------------------------

  /** libvirt's version as `major.minor.micro`. */
  async version(): Promise<string> {
    const v = await this.with((l) => l.call('virConnectGetLibVersion', (c) => nativeAsync.connectGetLibVersion(c), isNeg), { readOnly: true });
    const n = v!;
    return `${Math.floor(n / 1_000_000)}.${Math.floor(n / 1000) % 1000}.${n % 1000}`;
  }

  /** Creates and starts a transient domain; returns its name and id. */
  async createXML(xml: string): Promise<{ name: string; id: number }> {
    return this.with(async (l) => {
      const dom = (await l.call('virDomainCreateXML', (c) => nativeAsync.domainCreateXML(c, xml, 0), isNull))!;
      try {
        return { name: nativeLocal.domainGetName(dom) ?? '', id: nativeLocal.domainGetID(dom) };
      } finally {
        nativeLocal.domainFree(dom);
      }
    }, { readOnly: false });
  }

  /*
   * Persistent domains (define / start / undefine). The agent's instances stay transient
   * (createXML): the agent's own records are the durable truth, and a transient domain
   * disappears from libvirt the moment it stops, so no crash of the agent between steps can
   * leave a defined-but-stopped domain behind that libvirt would keep (and could autostart
   * outside any OAR job) until someone undefines it. A stop/start is a destroy and a new
   * createXML from the record. These calls complete the binding (define, start, get info,
   * undefine) for callers and tests that need a definition; none of them is used by the agent.
   */

  /** Defines a persistent domain from XML (not started); returns its name. Bad XML: InvalidArgumentError. */
  async define(xml: string): Promise<string> {
    return this.with(async (l) => {
      const dom = (await l.call('virDomainDefineXML', (c) => nativeAsync.domainDefineXML(c, xml), isNull))!;
      try {
        return nativeLocal.domainGetName(dom) ?? '';
      } finally {
        nativeLocal.domainFree(dom);
      }
    }, { readOnly: false });
  }

  /** Starts the defined domain `name`. No such domain: NotFoundError; already running: a typed libvirt error. */
  async start(name: string): Promise<void> {
    await this.withDomain(name, (l, dom) => l.call('virDomainCreate', () => nativeAsync.domainCreate(dom), isNeg), { readOnly: false });
  }

  /**
   * Removes the persistent definition of `name` (a running domain keeps running, as a
   * transient one). No such domain: NotFoundError; a transient domain: a typed libvirt error.
   */
  async undefine(name: string): Promise<void> {
    await this.withDomain(name, (l, dom) => l.call('virDomainUndefineFlags', () => nativeAsync.domainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_DEFAULT), isNeg), { readOnly: false });
  }

  /** virDomainGetInfo of `name` (state, memory, vcpus, cpu time) and whether it is persistent. No such domain: NotFoundError. */
  async info(name: string): Promise<DomainRuntimeInfo> {
    return this.withDomain(
      name,
      async (l, dom) => {
        const i = (await l.call('virDomainGetInfo', () => nativeAsync.domainGetInfo(dom), (r) => r === undefined))!;
        const persistent = (await l.call('virDomainIsPersistent', () => nativeAsync.domainIsPersistent(dom), isNeg)) === 1;
        return { state: VIR_DOMAIN_STATE[i.state] ?? 'unknown', maxMemKib: i.maxMemKib, memoryKib: i.memoryKib, nrVirtCpu: i.nrVirtCpu, cpuTimeNs: i.cpuTimeNs, persistent };
      },
      { readOnly: true },
    );
  }

  /** Runs `op` on a handle of domain `name` (freed afterwards); no such domain: NotFoundError. */
  private withDomain<T>(name: string, op: (l: Lease, dom: Ptr) => Promise<T>, opts: { readOnly: boolean }): Promise<T> {
    return this.with(async (l) => {
      const dom = (await l.call('virDomainLookupByName', (c) => nativeAsync.domainLookupByName(c, name), isNull))!;
      try {
        return await op(l, dom);
      } finally {
        nativeLocal.domainFree(dom);
      }
    }, opts);
  }

  /** Reads one domain (state and our metadata); undefined if there is no such domain. */
  async lookup(name: string, metadataNs: string): Promise<DomainInfo | undefined> {
    return this.with(async (l) => {
      let dom: Ptr;
      try {
        dom = (await l.call('virDomainLookupByName', (c) => nativeAsync.domainLookupByName(c, name), isNull))!;
      } catch (err) {
        if (libvirtCode(err) === VIR_ERR.NO_DOMAIN) return undefined;
        throw err;
      }
      try {
        return await this.read(l, dom, metadataNs);
      } finally {
        nativeLocal.domainFree(dom);
      }
    }, { readOnly: true });
  }

  /** The live XML of domain `name`; undefined if there is no such domain. */
  async xmlDesc(name: string): Promise<string | undefined> {
    return this.with(async (l) => {
      let dom: Ptr;
      try {
        dom = (await l.call('virDomainLookupByName', (c) => nativeAsync.domainLookupByName(c, name), isNull))!;
      } catch (err) {
        if (libvirtCode(err) === VIR_ERR.NO_DOMAIN) return undefined;
        throw err;
      }
      try {
        return (await l.call('virDomainGetXMLDesc', () => nativeAsync.domainGetXMLDesc(dom, 0), isNull).catch((err: unknown) => {
          if (libvirtCode(err) === VIR_ERR.NO_DOMAIN) return undefined;
          throw err;
        })) ?? undefined;
      } finally {
        nativeLocal.domainFree(dom);
      }
    }, { readOnly: true });
  }

  /** Every domain of this libvirtd that carries metadata in `metadataNs`. */
  async listWithMetadata(metadataNs: string): Promise<DomainInfo[]> {
    return this.with(async (l) => {
      const doms = (await l.call('virConnectListAllDomains', (c) => nativeAsync.connectListAllDomains(c, 0), (r) => r === undefined))!;
      const out: DomainInfo[] = [];
      try {
        for (const dom of doms) {
          const info = await this.read(l, dom, metadataNs);
          if (info?.metadata !== undefined) out.push(info);
        }
      } finally {
        for (const dom of doms) nativeLocal.domainFree(dom);
      }
      return out;
    }, { readOnly: true });
  }

  /**
   * Removes libvirt's stale transient domains among those `isOurs` names: a container whose
   * libvirt_lxc died while libvirtd was down is reloaded as a transient domain that is shut
   * off. It cannot be read (see `read`) or undefined, so no list shows it and it would stay
   * for good; virDomainDestroy removes it (while answering "not running"). Returns the names.
   */
  async removeStaleTransient(isOurs: (name: string) => boolean): Promise<string[]> {
    return this.with(async (l) => {
      // Inactive AND transient: only such stale objects match (a live transient domain is active).
      const doms = (await l.call('virConnectListAllDomains', (c) => nativeAsync.connectListAllDomains(c, VIR_CONNECT_LIST_DOMAINS_INACTIVE | VIR_CONNECT_LIST_DOMAINS_TRANSIENT), (r) => r === undefined))!;
      const removed: string[] = [];
      try {
        for (const dom of doms) {
          const name = nativeLocal.domainGetName(dom) ?? '';
          if (!isOurs(name)) continue;
          await l.call('virDomainDestroyFlags', () => nativeAsync.domainDestroyFlags(dom, VIR_DOMAIN_DESTROY_DEFAULT), isNeg).catch((err: unknown) => {
            const code = libvirtCode(err);
            if (code !== VIR_ERR.NO_DOMAIN && code !== VIR_ERR.OPERATION_INVALID) throw err;
          });
          removed.push(name);
        }
      } finally {
        for (const dom of doms) nativeLocal.domainFree(dom);
      }
      return removed;
    }, { readOnly: false });
  }

  /** State and metadata of a domain handle; undefined if it vanished meanwhile. */
  private async read(l: Lease, dom: Ptr, metadataNs: string): Promise<DomainInfo | undefined> {
    const name = nativeLocal.domainGetName(dom) ?? '';
    try {
      const metadata = await l
        .call('virDomainGetMetadata', () => nativeAsync.domainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, metadataNs, 0), isNull)
        .catch((err: unknown) => {
          if (libvirtCode(err) === VIR_ERR.NO_DOMAIN_METADATA) return undefined;
          throw err;
        });
      const st = await l.call('virDomainGetState', () => nativeAsync.domainGetState(dom), (r) => r === undefined);
      return { name, id: nativeLocal.domainGetID(dom), state: VIR_DOMAIN_STATE[st!.state] ?? 'unknown', metadata: metadata ?? undefined };
    } catch (err) {
      // OPERATION_INVALID: a transient domain that is no longer running ("transient domains
      // do not have any persistent config"), e.g. one whose libvirt_lxc died with a host
      // session and that libvirtd reloaded as shut off; it is on its way out, like NO_DOMAIN.
      const code = libvirtCode(err);
      if (code === VIR_ERR.NO_DOMAIN || code === VIR_ERR.OPERATION_INVALID) return undefined;
      throw err;
    }
  }

  /**
   * Destroys the domain `name` and waits until libvirt no longer knows it. False if there
   * was no such domain. `prepare` sees the domain first: it may refuse (false: nothing is
   * done) or act before libvirt's destroy (the runtime SIGKILLs the init there, because
   * libvirt's own destroy sends SIGTERM and waits ~1.8 s for an init that ignores it).
   */
  async destroy(name: string, prepare: (info: DomainInfo) => Promise<boolean>, metadataNs: string, timeoutMs = 30_000): Promise<boolean> {
    const destroyed = await this.with(async (l) => {
      let dom: Ptr;
      try {
        dom = (await l.call('virDomainLookupByName', (c) => nativeAsync.domainLookupByName(c, name), isNull))!;
      } catch (err) {
        if (libvirtCode(err) === VIR_ERR.NO_DOMAIN) return false;
        throw err;
      }
      try {
        const info = await this.read(l, dom, metadataNs);
        if (!info || !(await prepare(info))) return false;
        try {
          await l.call('virDomainDestroyFlags', () => nativeAsync.domainDestroyFlags(dom, VIR_DOMAIN_DESTROY_DEFAULT), isNeg);
        } catch (err) {
          // Already stopping or gone (our SIGKILL, or someone else): that is what we wanted.
          const code = libvirtCode(err);
          if (code !== VIR_ERR.NO_DOMAIN && code !== VIR_ERR.OPERATION_INVALID) throw err;
        }
        return true;
      } finally {
        nativeLocal.domainFree(dom);
      }
    }, { readOnly: false });
    if (!destroyed) return false;
    // virDomainDestroy of a transient LXC domain returns once it is stopped; the object
    // may linger for a moment while libvirt cleans up.
    const deadline = Date.now() + timeoutMs;
    for (let delay = 5; ; delay = Math.min(delay * 2, 200)) {
      const still = await this.lookup(name, metadataNs).catch((err: unknown) => {
        this.log.debug('lookup after destroy failed', { name, ...errFields(err) });
        return undefined;
      });
      if (!still || still.state === 'shutoff') return true;
      if (Date.now() > deadline) throw new UnavailableError(`domain ${name} still present ${timeoutMs} ms after destroy`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  /**
   * Live limits: memory hard limit (KiB), CPU shares, CFS period and quota (µs; quota -1
   * removes the limit). Scheduler values are set in one call, so a period and its quota
   * never apply half-way. No such domain: NotFoundError.
   */
  async setParameters(name: string, p: { memoryKib?: bigint; cpuShares?: bigint; cpuPeriodUs?: bigint; cpuQuotaUs?: bigint }): Promise<void> {
    const sched: TypedParam[] = [];
    if (p.cpuShares !== undefined) sched.push({ name: VIR_DOMAIN_SCHEDULER_CPU_SHARES, ullong: p.cpuShares });
    if (p.cpuPeriodUs !== undefined) sched.push({ name: VIR_DOMAIN_SCHEDULER_VCPU_PERIOD, ullong: p.cpuPeriodUs });
    if (p.cpuQuotaUs !== undefined) sched.push({ name: VIR_DOMAIN_SCHEDULER_VCPU_QUOTA, llong: p.cpuQuotaUs });
    await this.withDomain(
      name,
      async (l, dom) => {
        if (p.memoryKib !== undefined) {
          const mem: TypedParam[] = [{ name: VIR_DOMAIN_MEMORY_HARD_LIMIT, ullong: p.memoryKib }];
          await l.call('virDomainSetMemoryParameters', () => nativeAsync.domainSetMemoryParameters(dom, mem, VIR_DOMAIN_AFFECT_LIVE), isNeg);
        }
        if (sched.length > 0) {
          await l.call('virDomainSetSchedulerParameters', () => nativeAsync.domainSetSchedulerParameters(dom, sched, VIR_DOMAIN_AFFECT_LIVE), isNeg);
        }
      },
      { readOnly: false },
    );
  }

}
