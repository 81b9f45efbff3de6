/**
 * Worker thread that runs libvirt's default event loop with its own connection and posts
 * domain lifecycle events to the main thread.
 *
 * Why a worker: `virEventRunDefaultImpl` blocks, and libvirt calls lifecycle callbacks on
 * the thread that runs it. Here that thread is this worker's own JS thread, so the koffi
 * callback always fires on a thread koffi owns (never a foreign one), synchronously inside
 * `runDefaultImpl`. A no-op C timer (`addTick`) makes the loop return every `tickMs` to
 * check the stop flag (a SharedArrayBuffer: messages cannot be read while the loop blocks).
 * On stop it deregisters, releases the koffi callback, closes its connection and exits on
 * its own, so the process never exits with a callback registered.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { nativeEventLoop as ev, silenceLibvirtErrors, type Ptr } from './native.js';

export interface EventWorkerData {
  uri: string;
  /** Int32[0] != 0 asks the loop to stop. */
  stop: SharedArrayBuffer;
  tickMs: number;
}

export type EventWorkerMessage =
  | { type: 'event'; name: string; event: number; detail: number }
  /** (Re)connected: events may have been missed before this; relist. */
  | { type: 'connected' }
  | { type: 'disconnected'; message: string }
  | { type: 'stopped' };

const { uri, stop, tickMs } = workerData as EventWorkerData;
const flag = new Int32Array(stop);
const post = (m: EventWorkerMessage): void => parentPort!.postMessage(m);

silenceLibvirtErrors();
if (ev.registerDefaultImpl() < 0) throw new Error(`virEventRegisterDefaultImpl: ${ev.getLastErrorMessage()}`);
const tick = ev.addTick(tickMs);

let conn: Ptr | null = null;
let reg: { id: number; release: () => void } | undefined;
let retryAt = 0;
let reported = false;

function connect(): void {
  conn = ev.connectOpen(uri);
  if (conn === null) {
    if (!reported) post({ type: 'disconnected', message: ev.getLastErrorMessage() });
    reported = true;
    retryAt = Date.now() + 1000;
    return;
  }
  const r = ev.registerLifecycle(conn, (name, event, detail) => post({ type: 'event', name, event, detail }));
  if (r.id < 0) {
    r.release();
    const message = ev.getLastErrorMessage();
    ev.connectClose(conn);
    conn = null;
    post({ type: 'disconnected', message });
    retryAt = Date.now() + 1000;
    return;
  }
  reg = r;
  reported = false;
  post({ type: 'connected' });
}

function disconnect(): void {
  if (conn === null) return;
  if (reg) {
    ev.deregister(conn, reg.id);
    // Deregistered and dispatched only from this thread: no call can be in flight now.
    reg.release();
    reg = undefined;
  }
  ev.connectClose(conn);
  conn = null;
}

while (Atomics.load(flag, 0) === 0) {
  if (conn === null && Date.now() >= retryAt) connect();
  ev.runDefaultImpl();
  if (conn !== null && ev.connectIsAlive(conn) !== 1) {
    disconnect();
    post({ type: 'disconnected', message: 'connection to libvirtd lost' });
    retryAt = Date.now() + 200;
  }
}
disconnect();
// Let libvirt finish the close on the loop (freeing the connection's watches), then stop.
ev.runDefaultImpl();
ev.removeTimeout(tick);
post({ type: 'stopped' });
