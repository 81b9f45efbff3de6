/**
 * Main-thread side of libvirt lifecycle events.
 *
 * libvirt's event implementation is process-wide, and two threads must not run its loop at
 * once, so there is one event worker per process and URI (`EventHub`), shared by every
 * runtime of that URI and stopped when the last one releases it.
 *
 * `hub.stop()` sets the stop flag and waits for the worker's own clean exit (≤ one tick);
 * only if that does not come within `stopTimeoutMs` is the worker terminated.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { errFields, type Logger } from '@oarcloud/common';
import type { EventWorkerData, EventWorkerMessage } from './event-worker.js';

export type HubMessage = Exclude<EventWorkerMessage, { type: 'stopped' }>;
type HubListener = (m: HubMessage) => void;

const TICK_MS = 100;

/**
 * The worker: the compiled `event-worker.js` next to this file; from TypeScript sources
 * (vitest, tsx) there is none, so a tiny CommonJS bootstrap registers tsx's require hook
 * in the worker (Node 20 workers do not inherit `--import` loaders) and loads the `.ts`.
 */
function startWorker(data: EventWorkerData): Worker {
  const opts = { workerData: data, stdout: false, stderr: false };
  const js = new URL('./event-worker.js', import.meta.url);
  if (existsSync(fileURLToPath(js))) return new Worker(js, opts);
  const ts = fileURLToPath(new URL('./event-worker.ts', import.meta.url));
  const bootstrap = [
    `const r = require('node:module').createRequire(${JSON.stringify(ts)});`,
    `r('tsx/cjs/api').register();`,
    `r(${JSON.stringify(ts)});`,
  ].join('\n');
  return new Worker(bootstrap, { ...opts, eval: true });
}

export class EventHub {
  private static readonly hubs = new Map<string, EventHub>();
  private readonly listeners = new Set<HubListener>();
  private refs = 0;
  private worker?: Worker;
  private readonly stopFlag = new SharedArrayBuffer(4);
  private exited?: Promise<void>;

  private constructor(
    readonly uri: string,
    private readonly log: Logger,
  ) {}

  /** The hub of `uri`, started if needed; release it with `release()`. */
  static acquire(uri: string, log: Logger): EventHub {
    let hub = EventHub.hubs.get(uri);
    if (!hub) {
      hub = new EventHub(uri, log);
      EventHub.hubs.set(uri, hub);
      hub.start();
    }
    hub.refs++;
    return hub;
  }

  subscribe(l: HubListener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  private start(): void {
    const w = startWorker({ uri: this.uri, stop: this.stopFlag, tickMs: TICK_MS });
    this.worker = w;
    w.on('message', (m: EventWorkerMessage) => {
      if (m.type === 'stopped') return;
      if (m.type === 'disconnected') this.log.warn('libvirt event connection lost', { uri: this.uri, message: m.message });
      for (const l of this.listeners) l(m);
    });
    w.on('error', (err) => this.log.error('libvirt event worker failed', { uri: this.uri, ...errFields(err) }));
    this.exited = new Promise((resolve) => w.once('exit', () => resolve()));
    // Never keep the process alive for the event loop alone. After the listeners: adding
    // a 'message' listener refs the worker again.
    w.unref();
  }

  /** Drops one reference; the last one stops the worker and waits for it. */
  async release(stopTimeoutMs = 2000): Promise<void> {
    if (--this.refs > 0) return;
    EventHub.hubs.delete(this.uri);
    this.listeners.clear();
    Atomics.store(new Int32Array(this.stopFlag), 0, 1);
    const w = this.worker;
    if (!w) return;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.exited!.then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), stopTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.log.warn('libvirt event worker did not stop, terminating it', { uri: this.uri });
      await w.terminate();
    }
  }
}
