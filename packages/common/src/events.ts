/**
 * NATS carries events, never commands (DESIGN.md). This module owns the subjects, the
 * JetStream stream that keeps them, and a publisher that never blocks its caller: when NATS
 * is down, events wait in a bounded queue and the oldest are dropped first (the reconcile
 * loops' relists are the truth; events only make convergence faster).
 */
import { jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { errFields, type Logger } from './logger.js';

export const EVENT_STREAM = 'OARCLOUD';
export const SUBJECT_ROOT = 'oarcloud.v1';

export const subjects = {
  instance: (node: string, instanceId: string) => `${SUBJECT_ROOT}.instance.${token(node)}.${token(instanceId)}`,
  allInstances: `${SUBJECT_ROOT}.instance.>`,
  node: (node: string) => `${SUBJECT_ROOT}.node.${token(node)}`,
  allNodes: `${SUBJECT_ROOT}.node.*`,
};

/** A subject token may not contain `.`, `*`, `>` or white space. */
function token(s: string): string {
  return s.replace(/[.*>\s]/g, '_');
}

/** Creates the event stream if it is absent (idempotent; safe from several processes). */
export async function ensureEventStream(nc: NatsConnection, maxAgeMs = 24 * 3600_000): Promise<void> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(EVENT_STREAM);
  } catch {
    try {
      await jsm.streams.add({
        name: EVENT_STREAM,
        subjects: [`${SUBJECT_ROOT}.>`],
        retention: RetentionPolicy.Limits,
        storage: StorageType.File,
        max_age: maxAgeMs * 1_000_000,
        max_msgs_per_subject: 1000,
      });
    } catch (err) {
      // Another process may have created it between our two calls.
      await jsm.streams.info(EVENT_STREAM).catch(() => {
        throw err;
      });
    }
  }
}

export interface EventPublisher {
  publish(subject: string, data: Uint8Array): void;
  /** True while connected. */
  readonly connected: boolean;
  /** Number of events dropped because the queue was full. */
  readonly dropped: number;
  close(): Promise<void>;
}

/**
 * Connects in the background (forever, with back-off) and publishes; `publish` never throws
 * and never waits.
 */
export function startEventPublisher(url: string, log: Logger, opts: { name: string; maxQueued?: number } = { name: 'oarcloud' }): EventPublisher {
  const maxQueued = opts.maxQueued ?? 10_000;
  const queue: Array<{ subject: string; data: Uint8Array }> = [];
  let nc: NatsConnection | undefined;
  let closed = false;
  let dropped = 0;
  let connected = false;

  const flush = (): void => {
    while (nc && connected && queue.length > 0) {
      const ev = queue.shift()!;
      try {
        nc.publish(ev.subject, ev.data);
      } catch (err) {
        queue.unshift(ev);
        log.warn('event publish failed', errFields(err));
        return;
      }
    }
  };

  const run = async (): Promise<void> => {
    let delay = 200;
    while (!closed) {
      try {
        nc = await connect({ servers: url, name: opts.name, maxReconnectAttempts: -1, reconnectTimeWait: 500, timeout: 2000 });
        connected = true;
        log.info('nats connected', { url });
        await ensureEventStream(nc).catch((err: unknown) => log.warn('event stream not ensured', errFields(err)));
        flush();
        for await (const s of nc.status()) {
          if (s.type === 'disconnect') connected = false;
          if (s.type === 'reconnect') {
            connected = true;
            flush();
          }
        }
        await nc.closed();
      } catch (err) {
        if (!closed) log.warn('nats unavailable', { url, retryMs: delay, ...errFields(err) });
      }
      connected = false;
      if (closed) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  };
  void run();

  return {
    publish(subject, data) {
      if (closed) return;
      if (nc && connected) {
        try {
          nc.publish(subject, data);
          return;
        } catch {
          // fall through to the queue
        }
      }
      if (queue.length >= maxQueued) {
        queue.shift();
        dropped++;
      }
      queue.push({ subject, data });
    },
    get connected() {
      return connected;
    },
    get dropped() {
      return dropped;
    },
    async close() {
      closed = true;
      if (nc) {
        flush();
        await nc.drain().catch(() => nc?.close());
      }
    },
  };
}
