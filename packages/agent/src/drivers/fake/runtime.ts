/**
 * In-memory ContainerRuntime for unit tests: keeps real state in maps, records every call,
 * takes injected errors, and emits lifecycle events. `implements ContainerRuntime` plus the
 * `RuntimeMethod` key type tie it to the interface, so the fake and the contract cannot
 * drift; the same contract suite (runtime.contract.ts) runs against it and against libvirt.
 *
 * Several fakes may share one `FakeHost` (like several emulated nodes sharing one
 * libvirtd): each only sees the domains of its own node.
 */
import { AlreadyExistsError, InvalidArgumentError, NotFoundError, UnavailableError } from '@oarcloud/common';
import { validateDomainLimits, validateDomainSpec } from '../libvirt/domain-xml.js';
import { domainName, type ContainerRuntime, type DomainEvent, type DomainLimits, type DomainSpec, type DomainStatus } from '../runtime.js';

export type RuntimeMethod = { [K in keyof ContainerRuntime]: ContainerRuntime[K] extends (...a: never[]) => unknown ? K : never }[keyof ContainerRuntime];

export interface FakeDomain {
  spec: DomainSpec;
  status: DomainStatus;
  /** What the host would apply (cgroup values: period 100000 µs and quota -1 by default). */
  limits: { memoryMib: number; cpuShares: number; cpuPeriodUs: number; cpuQuotaUs: number };
}

/** The shared "daemon": every domain by name, and who to tell about lifecycle changes. */
export class FakeHost {
  readonly domains = new Map<string, FakeDomain>();
  readonly subscribers = new Set<(ev: DomainEvent, node: string) => void>();
  private nextPid = 10_000;

  pid(): number {
    return this.nextPid++;
  }

  publish(ev: DomainEvent, node: string): void {
    // Asynchronous like libvirt's: never inside the caller's stack.
    queueMicrotask(() => {
      for (const s of this.subscribers) s(ev, node);
    });
  }

  /** Simulates the container's init dying on its own (crash or exit). */
  kill(instanceId: string, kind: 'stopped' | 'crashed' = 'crashed'): void {
    const name = domainName(instanceId);
    const d = this.domains.get(name);
    if (!d) return;
    this.domains.delete(name);
    this.publish({ name, instanceId, kind, detail: -1 }, d.spec.node);
  }
}

export class FakeRuntime implements ContainerRuntime {
  readonly calls: Array<{ method: RuntimeMethod; args: unknown[] }> = [];
  private readonly failures = new Map<RuntimeMethod, Error[]>();
  private readonly listeners = new Set<(ev: DomainEvent) => void>();
  private readonly subscriber = (ev: DomainEvent, node: string): void => {
    if (node !== this.node) return;
    for (const l of this.listeners) l(ev);
  };
  private closed = false;

  constructor(
    readonly node: string,
    readonly host: FakeHost = new FakeHost(),
  ) {
    host.subscribers.add(this.subscriber);
  }

  /** The next call of `method` fails with `error` (queued: call several times for several). */
  failNext(method: RuntimeMethod, error: Error): void {
    const q = this.failures.get(method) ?? [];
    q.push(error);
    this.failures.set(method, q);
  }

  /** This node's domain of an instance, with the limits it was given (for assertions). */
  domain(instanceId: string): FakeDomain | undefined {
    const d = this.host.domains.get(domainName(instanceId));
    return d && d.spec.node === this.node ? d : undefined;
  }

  private enter(method: RuntimeMethod, args: unknown[]): void {
    this.calls.push({ method, args });
    if (this.closed && method !== 'close') throw new UnavailableError('runtime is closed');
    const err = this.failures.get(method)?.shift();
    if (err) throw err;
  }

  async create(spec: DomainSpec): Promise<DomainStatus> {
    this.enter('create', [spec]);
    if (spec.node !== this.node) throw new InvalidArgumentError(`domain spec is for node ${spec.node}, this runtime is ${this.node}`);
    validateDomainSpec(spec);
    const name = domainName(spec.instanceId);
    if (this.host.domains.has(name)) throw new AlreadyExistsError(`domain ${name} already exists`);
    const status: DomainStatus = { name, instanceId: spec.instanceId, jobId: spec.jobId, node: spec.node, state: 'running', initPid: this.host.pid() };
    this.host.domains.set(name, {
      spec: structuredClone(spec),
      status,
      limits: { memoryMib: spec.memoryMib, cpuShares: spec.cpuShares ?? 1024, cpuPeriodUs: spec.cpuPeriodUs ?? 100_000, cpuQuotaUs: spec.cpuQuotaUs ?? -1 },
    });
    this.host.publish({ name, instanceId: spec.instanceId, kind: 'started', detail: -1 }, this.node);
    return { ...status };
  }

  async destroy(instanceId: string): Promise<boolean> {
    this.enter('destroy', [instanceId]);
    if (!this.domain(instanceId)) return false;
    this.host.kill(instanceId, 'stopped');
    return true;
  }

  async get(instanceId: string): Promise<DomainStatus | undefined> {
    this.enter('get', [instanceId]);
    const d = this.domain(instanceId);
    return d && { ...d.status };
  }

  async list(): Promise<DomainStatus[]> {
    this.enter('list', []);
    return [...this.host.domains.values()].filter((d) => d.spec.node === this.node).map((d) => ({ ...d.status }));
  }

  async setLimits(instanceId: string, limits: DomainLimits): Promise<void> {
    this.enter('setLimits', [instanceId, limits]);
    validateDomainLimits(limits);
    const d = this.domain(instanceId);
    if (!d) throw new NotFoundError(`no domain for instance ${instanceId} on node ${this.node}`);
    if (limits.memoryMib !== undefined) d.limits.memoryMib = limits.memoryMib;
    if (limits.cpuShares !== undefined) d.limits.cpuShares = limits.cpuShares;
    if (limits.cpuPeriodUs !== undefined) d.limits.cpuPeriodUs = limits.cpuPeriodUs;
    if (limits.cpuQuotaUs !== undefined) d.limits.cpuQuotaUs = limits.cpuQuotaUs;
  }


  async version(): Promise<string> {
    this.enter('version', []);
    return '';
  }

  async consolePty(instanceId: string): Promise<string | undefined> {
    this.enter('consolePty', [instanceId]);
    return undefined;
  }

  onEvent(listener: (ev: DomainEvent) => void): () => void {
    this.calls.push({ method: 'onEvent', args: [] });
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.enter('close', []);
    this.closed = true;
    this.listeners.clear();
    this.host.subscribers.delete(this.subscriber);
  }
}
