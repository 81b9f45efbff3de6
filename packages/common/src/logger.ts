/**
 * The logging interface every component receives. Messages are constant; details go in
 * fields: `log.info('instance started', { instanceId, ms })`. Only `main.ts` files create
 * a real (pino) logger; tests use `nullLogger` or `memoryLogger`.
 */
import { pino, destination, stdSerializers, stdTimeFunctions, type Logger as PinoLogger, type LevelWithSilent } from 'pino';

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger whose every line carries `bindings` (ids of the job, instance, node…). */
  child(bindings: LogFields): Logger;
}

function wrap(p: PinoLogger): Logger {
  return {
    debug: (msg, fields) => p.debug(fields ?? {}, msg),
    info: (msg, fields) => p.info(fields ?? {}, msg),
    warn: (msg, fields) => p.warn(fields ?? {}, msg),
    error: (msg, fields) => p.error(fields ?? {}, msg),
    child: (bindings) => wrap(p.child(bindings)),
  };
}

/** JSON lines on stdout (or to `destination`), for daemons. */
export function createLogger(opts: { name: string; level?: LevelWithSilent; destination?: number | string }): Logger {
  const dest = destination({ dest: opts.destination ?? 1, sync: false });
  return wrap(
    pino(
      {
        name: opts.name,
        level: opts.level ?? 'info',
        base: { pid: process.pid },
        timestamp: stdTimeFunctions.isoTime,
        serializers: { err: stdSerializers.err },
      },
      dest,
    ),
  );
}

export const nullLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
  child: () => nullLogger,
};

export interface LogLine {
  level: 'debug' | 'info' | 'warn' | 'error';
  msg: string;
  fields: LogFields;
}

/** A logger that keeps its lines in memory, for tests that check what was logged. */
export function memoryLogger(lines: LogLine[] = [], bindings: LogFields = {}): Logger & { lines: LogLine[] } {
  const at =
    (level: LogLine['level']) =>
    (msg: string, fields?: LogFields): void => {
      lines.push({ level, msg, fields: { ...bindings, ...fields } });
    };
  return {
    lines,
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (more) => memoryLogger(lines, { ...bindings, ...more }),
  };
}

/** Error details for a log line, without dumping huge objects. */
export function errFields(err: unknown): LogFields {
  if (err instanceof Error) return { err: { name: err.name, message: err.message, stack: err.stack } };
  return { err: String(err) };
}
