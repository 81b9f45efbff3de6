/**
 * Process lifecycle for the daemons: start, then close everything on SIGTERM/SIGINT, bounded,
 * and exit. A second signal exits at once.
 */
import { errFields, type Logger } from './logger.js';

export interface Closable {
  close(): Promise<void>;
}

export async function runDaemon(log: Logger, start: () => Promise<Closable>, graceMs = 10_000): Promise<void> {
  let running: Closable;
  try {
    running = await start();
  } catch (err) {
    log.error('start-up failed', errFields(err));
    // Give the async log destination a moment to flush before exiting.
    setTimeout(() => process.exit(1), 100);
    return;
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) process.exit(1);
    stopping = true;
    log.info('stopping', { signal });
    const hard = setTimeout(() => {
      log.error('stop timed out', { graceMs });
      process.exit(1);
    }, graceMs);
    hard.unref();
    running.close().then(
      () => {
        log.info('stopped');
        setTimeout(() => process.exit(0), 50);
      },
      (err: unknown) => {
        log.error('stop failed', errFields(err));
        setTimeout(() => process.exit(1), 50);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
