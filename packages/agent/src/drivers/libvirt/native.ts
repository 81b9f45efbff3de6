/**
 * The native boundary: the only file that imports koffi. It declares the few libvirt C
 * functions the driver uses (libvirt.so.0, libvirt 9.0) and nothing else; every other
 * file of the driver sees plain TypeScript signatures.
 *
 * Pointers are koffi 3 BigInts (`Ptr`); a NULL pointer is `null`. Calls that may do an RPC
 * to libvirtd are exposed twice: `sync` (used only by the event worker thread, which owns
 * its thread) and `async` (koffi runs the call on one of its worker threads and settles a
 * Promise, so the Node event loop never blocks).
 *
 * libvirt error reporting is thread-local, and a koffi async call runs on a koffi pool
 * thread: the main thread cannot read `virGetLastError` of such a call. The per-connection
 * copy (`virConnGetLastError`, filled by libvirt for every failed public call on that
 * connection) is read instead; `connection.ts` keeps at most one call in flight per
 * connection so that copy is exactly the error of the call that just failed.
 */
import { createRequire } from 'node:module';
import type * as KoffiModule from 'koffi';

// koffi ships CommonJS; createRequire keeps this ESM file loadable in Node and vitest alike.
const koffi = createRequire(import.meta.url)('koffi') as typeof KoffiModule;

export type Ptr = bigint;

/** virConnectListAllDomains flags. */
export const VIR_CONNECT_LIST_DOMAINS_ACTIVE = 1;
/** virDomainGetXMLDesc / virDomainGetMetadata / virDomainSet*Parameters flags. */
export const VIR_DOMAIN_AFFECT_CURRENT = 0;
export const VIR_DOMAIN_AFFECT_LIVE = 1;
/** virDomainDestroyFlags: SIGTERM first, then SIGKILL (0), or SIGTERM only (1). */
export const VIR_DOMAIN_DESTROY_DEFAULT = 0;
export const VIR_DOMAIN_DESTROY_GRACEFUL = 1;
/** virDomainMetadataType. */
export const VIR_DOMAIN_METADATA_ELEMENT = 2;
/** virDomainEventID. */
export const VIR_DOMAIN_EVENT_ID_LIFECYCLE = 0;
/** virDomainEventType (lifecycle `event` argument). */
export const VIR_DOMAIN_EVENT = {
  DEFINED: 0,
  UNDEFINED: 1,
  STARTED: 2,
  SUSPENDED: 3,
  RESUMED: 4,
  STOPPED: 5,
  SHUTDOWN: 6,
  PMSUSPENDED: 7,
  CRASHED: 8,
} as const;
/** virDomainEventStoppedDetailType values that mean the guest died. */
export const VIR_DOMAIN_EVENT_STOPPED_CRASHED = 2;
export const VIR_DOMAIN_EVENT_STOPPED_FAILED = 5;
/** virDomainState. */
export const VIR_DOMAIN_STATE = ['nostate', 'running', 'blocked', 'paused', 'shutdown', 'shutoff', 'crashed', 'pmsuspended'] as const;
/** Typed parameter names (virDomainSetMemoryParameters: KiB; virDomainSetSchedulerParameters). */
export const VIR_DOMAIN_MEMORY_HARD_LIMIT = 'hard_limit';
export const VIR_DOMAIN_SCHEDULER_CPU_SHARES = 'cpu_shares';
/** CFS period (µs, unsigned long long) and quota (µs, signed long long; -1 = none) of the domain's cgroup. */
export const VIR_DOMAIN_SCHEDULER_VCPU_PERIOD = 'vcpu_period';
export const VIR_DOMAIN_SCHEDULER_VCPU_QUOTA = 'vcpu_quota';
/** virDomainUndefineFlags: no extra flag is meaningful for an LXC domain (no managed save, snapshots or NVRAM). */
export const VIR_DOMAIN_UNDEFINE_DEFAULT = 0;

/**
 * One typed parameter for virDomainSet*Parameters: libvirt checks the type of each name
 * (e.g. `vcpu_quota` must be LLONG, `cpu_shares`/`vcpu_period`/`hard_limit` ULLONG).
 */
export type TypedParam = { name: string; ullong: bigint } | { name: string; llong: bigint };

/** virDomainGetInfo's result (virDomainInfo). */
export interface NativeDomainInfo {
  /** virDomainState. */
  state: number;
  /** Maximum memory, KiB. */
  maxMemKib: number;
  /** Memory in use, KiB (for LXC: the cgroup's usage while running). */
  memoryKib: number;
  nrVirtCpu: number;
  /** CPU time used, ns (for LXC: the cgroup's cpuacct.usage while running). */
  cpuTimeNs: bigint;
}

/** The fields of a libvirt `virError` the driver uses. */
export interface NativeError {
  code: number;
  domain: number;
  message: string;
}

/*
 * libvirt.so.0 is loaded on first use, not at import: a process that never talks to libvirt
 * (unit tests, `--help`, a machine where libvirt is not installed yet) must not need it.
 */
function loadNative() {
  let lib: KoffiModule.LibraryHandle;
  try {
    lib = koffi.load('libvirt.so.0');
  } catch (err) {
    throw new Error(`cannot load libvirt.so.0 (${(err as Error).message}): install Debian's libvirt0 (infra/local/up.sh does)`);
  }
  const libc = koffi.load('libc.so.6');

  // Strings libvirt returns with ownership (malloc'ed): koffi decodes them then calls free().
  koffi.disposable('virOwnedStr', 'str');
  const VirError = koffi.struct('virError', {
    code: 'int',
    domain: 'int',
    message: 'str',
    level: 'int',
    conn: 'void *',
    dom: 'void *',
    str1: 'str',
    str2: 'str',
    str3: 'str',
    int1: 'int',
    int2: 'int',
    net: 'void *',
  });
  // Named, so that prototypes can say `virDomainInfo *`.
  koffi.struct('virDomainInfo', {
    state: 'unsigned char',
    maxMem: 'unsigned long',
    memory: 'unsigned long',
    nrVirtCpu: 'unsigned short',
    cpuTime: 'unsigned long long',
  });
  const LifecycleCallback = koffi.proto('int virConnectDomainEventCallback(void *conn, void *dom, int event, int detail, void *opaque)');

  const f = {
    virConnectOpen: lib.func('void *virConnectOpen(const char *name)'),
    virConnectClose: lib.func('int virConnectClose(void *conn)'),
    virConnectIsAlive: lib.func('int virConnectIsAlive(void *conn)'),
    virConnectGetLibVersion: lib.func('int virConnectGetLibVersion(void *conn, _Out_ unsigned long *libVer)'),
    virConnectListAllDomains: lib.func('int virConnectListAllDomains(void *conn, _Out_ void **domains, unsigned int flags)'),
    virDomainCreateXML: lib.func('void *virDomainCreateXML(void *conn, const char *xml, unsigned int flags)'),
    virDomainDefineXML: lib.func('void *virDomainDefineXML(void *conn, const char *xml)'),
    virDomainCreate: lib.func('int virDomainCreate(void *dom)'),
    virDomainUndefine: lib.func('int virDomainUndefine(void *dom)'),
    virDomainUndefineFlags: lib.func('int virDomainUndefineFlags(void *dom, unsigned int flags)'),
    virDomainGetInfo: lib.func('int virDomainGetInfo(void *dom, _Out_ virDomainInfo *info)'),
    virDomainIsPersistent: lib.func('int virDomainIsPersistent(void *dom)'),
    virDomainLookupByName: lib.func('void *virDomainLookupByName(void *conn, const char *name)'),
    virDomainDestroy: lib.func('int virDomainDestroy(void *dom)'),
    virDomainDestroyFlags: lib.func('int virDomainDestroyFlags(void *dom, unsigned int flags)'),
    virDomainFree: lib.func('int virDomainFree(void *dom)'),
    virDomainGetName: lib.func('const char *virDomainGetName(void *dom)'),
    virDomainGetID: lib.func('unsigned int virDomainGetID(void *dom)'),
    virDomainGetState: lib.func('int virDomainGetState(void *dom, _Out_ int *state, _Out_ int *reason, unsigned int flags)'),
    virDomainGetXMLDesc: lib.func('virOwnedStr virDomainGetXMLDesc(void *dom, unsigned int flags)'),
    virDomainGetMetadata: lib.func('virOwnedStr virDomainGetMetadata(void *dom, int type, const char *uri, unsigned int flags)'),
    virDomainSetMemoryParameters: lib.func('int virDomainSetMemoryParameters(void *dom, void *params, int nparams, unsigned int flags)'),
    virDomainSetSchedulerParametersFlags: lib.func('int virDomainSetSchedulerParametersFlags(void *dom, void *params, int nparams, unsigned int flags)'),
    virTypedParamsAddULLong: lib.func(
      'int virTypedParamsAddULLong(_Inout_ void **params, _Inout_ int *nparams, _Inout_ int *maxparams, const char *name, unsigned long long value)',
    ),
    virTypedParamsAddLLong: lib.func(
      'int virTypedParamsAddLLong(_Inout_ void **params, _Inout_ int *nparams, _Inout_ int *maxparams, const char *name, long long value)',
    ),
    virTypedParamsFree: lib.func('void virTypedParamsFree(void *params, int nparams)'),
    virSetErrorFunc: lib.func('void virSetErrorFunc(void *userData, void *handler)'),
    virGetLastError: lib.func('virError *virGetLastError()'),
    virGetLastErrorMessage: lib.func('const char *virGetLastErrorMessage()'),
    virResetLastError: lib.func('void virResetLastError()'),
    virConnGetLastError: lib.func('virError *virConnGetLastError(void *conn)'),
    virConnResetLastError: lib.func('void virConnResetLastError(void *conn)'),
    virEventRegisterDefaultImpl: lib.func('int virEventRegisterDefaultImpl()'),
    virEventRunDefaultImpl: lib.func('int virEventRunDefaultImpl()'),
    virEventAddTimeout: lib.func('int virEventAddTimeout(int timeout, void *cb, void *opaque, void *ff)'),
    virEventRemoveTimeout: lib.func('int virEventRemoveTimeout(int timer)'),
    virConnectDomainEventRegisterAny: lib.func(
      'int virConnectDomainEventRegisterAny(void *conn, void *dom, int eventID, virConnectDomainEventCallback *cb, void *opaque, void *freecb)',
    ),
    virConnectDomainEventDeregisterAny: lib.func('int virConnectDomainEventDeregisterAny(void *conn, int callbackID)'),
    free: libc.func('void free(void *ptr)'),
  };

  /*
   * A C function that does nothing with any arguments, passed where libvirt wants a callback
   * we do not need in JS: the error handler (`void (*)(void *, virErrorPtr)`, called as
   * free(NULL, err) → free(NULL), a no-op, on whatever thread failed) and the event-loop tick
   * (`void (*)(int, void *)`). With x86-64/aarch64 C calling conventions extra arguments are
   * ignored. This avoids koffi callbacks on libvirt's (foreign) threads altogether.
   */
  const NOOP_ERROR_HANDLER: Ptr = libc.symbol('free') as Ptr;
  const SCHED_YIELD: Ptr = libc.symbol('sched_yield') as Ptr;
  return { f, VirError, LifecycleCallback, NOOP_ERROR_HANDLER, SCHED_YIELD };
}

type Native = ReturnType<typeof loadNative>;
let loaded: Native | undefined;
const native = (): Native => (loaded ??= loadNative());
/** The C functions, resolved (and the library loaded) on first access. */
const f = new Proxy({} as Native['f'], { get: (_t, name) => native().f[name as keyof Native['f']] });

function promisify<T>(fn: { async: (...args: unknown[]) => void }, ...args: unknown[]): Promise<T> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, res: T) => (err ? reject(err) : resolve(res)));
  });
}

let errorFuncInstalled = false;
/** Stops libvirt from printing errors on stderr (they are read and converted instead). */
export function silenceLibvirtErrors(): void {
  if (errorFuncInstalled) return;
  f.virSetErrorFunc(null, native().NOOP_ERROR_HANDLER);
  errorFuncInstalled = true;
}

function readError(p: unknown): NativeError | undefined {
  if (p === null || p === undefined) return undefined;
  const e = koffi.decode(p, native().VirError) as { code: number; domain: number; message: string | null };
  if (e.code === 0) return undefined;
  return { code: e.code, domain: e.domain, message: e.message ?? `libvirt error ${e.code}` };
}

/** The last error of this thread (sync calls only). */
export function lastError(): NativeError | undefined {
  return readError(f.virGetLastError());
}
export function resetLastError(): void {
  f.virResetLastError();
}
/** The last error recorded on `conn` (valid when no other call on `conn` ran since). */
export function connLastError(conn: Ptr): NativeError | undefined {
  return readError(f.virConnGetLastError(conn));
}
export function connResetLastError(conn: Ptr): void {
  f.virConnResetLastError(conn);
}

/** Calls made with `.async` (each may do an RPC). */
export const nativeAsync = {
  connectOpen: (uri: string) => promisify<Ptr | null>(f.virConnectOpen, uri),
  connectClose: (conn: Ptr) => promisify<number>(f.virConnectClose, conn),
  async connectGetLibVersion(conn: Ptr): Promise<number | undefined> {
    const out: [number] = [0];
    const rc = await promisify<number>(f.virConnectGetLibVersion, conn, out);
    return rc < 0 ? undefined : out[0];
  },
  /** Active domains, or undefined on error. The caller frees every returned pointer. */
  async connectListAllDomains(conn: Ptr, flags: number): Promise<Ptr[] | undefined> {
    const out: [Ptr | null] = [null];
    const n = await promisify<number>(f.virConnectListAllDomains, conn, out, flags);
    if (n < 0) return undefined;
    const arr = out[0];
    if (n === 0 || arr === null) {
      if (arr !== null) f.free(arr);
      return [];
    }
    const doms = koffi.decode(arr, 'void *', n) as Ptr[];
    f.free(arr);
    return doms;
  },
  domainCreateXML: (conn: Ptr, xml: string, flags: number) => promisify<Ptr | null>(f.virDomainCreateXML, conn, xml, flags),
  /** Defines (or redefines) a persistent domain; null on error. The caller frees the handle. */
  domainDefineXML: (conn: Ptr, xml: string) => promisify<Ptr | null>(f.virDomainDefineXML, conn, xml),
  /** Starts a defined (inactive, persistent) domain; -1 on error. */
  domainCreate: (dom: Ptr) => promisify<number>(f.virDomainCreate, dom),
  /** Removes a persistent definition (a running domain becomes transient); -1 on error. */
  domainUndefine: (dom: Ptr) => promisify<number>(f.virDomainUndefine, dom),
  domainUndefineFlags: (dom: Ptr, flags: number) => promisify<number>(f.virDomainUndefineFlags, dom, flags),
  /** 1 persistent, 0 transient, -1 on error. */
  domainIsPersistent: (dom: Ptr) => promisify<number>(f.virDomainIsPersistent, dom),
  async domainGetInfo(dom: Ptr): Promise<NativeDomainInfo | undefined> {
    const out: Record<string, number | bigint> = {};
    const rc = await promisify<number>(f.virDomainGetInfo, dom, out);
    if (rc < 0) return undefined;
    return {
      state: Number(out.state),
      maxMemKib: Number(out.maxMem),
      memoryKib: Number(out.memory),
      nrVirtCpu: Number(out.nrVirtCpu),
      cpuTimeNs: BigInt(out.cpuTime ?? 0),
    };
  },
  domainLookupByName: (conn: Ptr, name: string) => promisify<Ptr | null>(f.virDomainLookupByName, conn, name),
  domainDestroyFlags: (dom: Ptr, flags: number) => promisify<number>(f.virDomainDestroyFlags, dom, flags),
  async domainGetState(dom: Ptr): Promise<{ state: number; reason: number } | undefined> {
    const state: [number] = [0];
    const reason: [number] = [0];
    const rc = await promisify<number>(f.virDomainGetState, dom, state, reason, 0);
    return rc < 0 ? undefined : { state: state[0], reason: reason[0] };
  },
  domainGetXMLDesc: (dom: Ptr, flags: number) => promisify<string | null>(f.virDomainGetXMLDesc, dom, flags),
  domainGetMetadata: (dom: Ptr, type: number, uri: string, flags: number) => promisify<string | null>(f.virDomainGetMetadata, dom, type, uri, flags),
  /** Sets typed parameters; -1 on error. */
  domainSetMemoryParameters: (dom: Ptr, params: TypedParam[], flags: number) =>
    withTypedParams(params, (p, n) => promisify<number>(f.virDomainSetMemoryParameters, dom, p, n, flags)),
  domainSetSchedulerParameters: (dom: Ptr, params: TypedParam[], flags: number) =>
    withTypedParams(params, (p, n) => promisify<number>(f.virDomainSetSchedulerParametersFlags, dom, p, n, flags)),
};

/** Calls that never do an RPC (local to the client library), made synchronously. */
export const nativeLocal = {
  domainFree: (dom: Ptr): number => f.virDomainFree(dom) as number,
  /** 1 if alive, 0 if not, -1 on error; checks the client side only (no RPC). */
  connectIsAlive: (conn: Ptr): number => f.virConnectIsAlive(conn) as number,
  domainGetName: (dom: Ptr): string | null => f.virDomainGetName(dom) as string | null,
  /** For libvirt LXC, the id of a running domain is the pid of its libvirt_lxc controller. */
  domainGetID: (dom: Ptr): number => {
    const id = f.virDomainGetID(dom) as number;
    return id === 0xffffffff ? -1 : id;
  },
};

async function withTypedParams(params: TypedParam[], call: (p: Ptr | null, n: number) => Promise<number>): Promise<number> {
  const p: [Ptr | null] = [null];
  const n: [number] = [0];
  const max: [number] = [0];
  try {
    for (const t of params) {
      const rc = 'llong' in t ? f.virTypedParamsAddLLong(p, n, max, t.name, t.llong) : f.virTypedParamsAddULLong(p, n, max, t.name, t.ullong);
      if ((rc as number) < 0) return -1;
    }
    return await call(p[0], n[0]);
  } finally {
    if (p[0] !== null) f.virTypedParamsFree(p[0], n[0]);
  }
}

/**
 * Synchronous calls for the event worker thread, which runs libvirt's event loop itself:
 * blocking there is the point, and lifecycle callbacks then fire on that same (JS) thread.
 */
export const nativeEventLoop = {
  registerDefaultImpl: (): number => f.virEventRegisterDefaultImpl() as number,
  runDefaultImpl: (): number => f.virEventRunDefaultImpl() as number,
  /** A timer that only makes `runDefaultImpl` return every `ms` (its callback is a no-op C function). */
  addTick: (ms: number): number => f.virEventAddTimeout(ms, native().SCHED_YIELD, null, null) as number,
  removeTimeout: (timer: number): number => f.virEventRemoveTimeout(timer) as number,
  connectOpen: (uri: string): Ptr | null => f.virConnectOpen(uri) as Ptr | null,
  connectClose: (conn: Ptr): number => f.virConnectClose(conn) as number,
  connectIsAlive: (conn: Ptr): number => f.virConnectIsAlive(conn) as number,
  /** Synchronous RPC (blocks this thread): used to measure what `.async` costs. */
  connectGetLibVersion(conn: Ptr): number | undefined {
    const out: [number] = [0];
    return (f.virConnectGetLibVersion(conn, out) as number) < 0 ? undefined : out[0];
  },
  /**
   * Registers a lifecycle listener for every domain; returns the libvirt callback id and a
   * release function (deregister first, then release).
   */
  registerLifecycle(conn: Ptr, listener: (name: string, event: number, detail: number) => void): { id: number; release: () => void } {
    const cb = koffi.register((_c: Ptr, dom: Ptr, event: number, detail: number) => {
      try {
        listener((f.virDomainGetName(dom) as string | null) ?? '', event, detail);
      } catch {
        // never let an exception cross into C
      }
      return 0;
    }, koffi.pointer(native().LifecycleCallback));
    const id = f.virConnectDomainEventRegisterAny(conn, null, VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, null, null) as number;
    return { id, release: () => koffi.unregister(cb) };
  },
  deregister: (conn: Ptr, id: number): number => f.virConnectDomainEventDeregisterAny(conn, id) as number,
  getLastErrorMessage: (): string => (f.virGetLastErrorMessage() as string | null) ?? 'unknown libvirt error',
};
