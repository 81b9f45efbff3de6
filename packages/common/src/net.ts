import { InvalidArgumentError } from './errors.js';

/** Splits `host:port` (or `[v6]:port`). */
export function splitHostPort(address: string): { host: string; port: number } {
  const m = /^\[([0-9a-fA-F:]+)\]:(\d{1,5})$/.exec(address) ?? /^([^:]+):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new InvalidArgumentError(`not a host:port address: ${JSON.stringify(address)}`);
  return { host: m[1]!, port };
}
