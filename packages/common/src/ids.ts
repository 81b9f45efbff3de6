/**
 * Ids of oarcloud objects: a one-letter kind, a dash, 12 lower-case hex digits (`i-3fa2…`).
 * They appear in host object names (libvirt domains, OVS ports, cgroups, folders), so they
 * are validated strictly everywhere they come in.
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from './errors.js';

export type IdKind = 'i' | 'n' | 's' | 'v';
const ID_RE = /^[insv]-[0-9a-f]{12}$/;

export function newId(kind: IdKind): string {
  return `${kind}-${randomBytes(6).toString('hex')}`;
}

export function isId(value: string, kind?: IdKind): boolean {
  return ID_RE.test(value) && (kind === undefined || value.startsWith(`${kind}-`));
}

export function checkId(value: string, kind: IdKind, what = 'id'): string {
  if (!isId(value, kind)) throw new InvalidArgumentError(`malformed ${what}: ${JSON.stringify(value.slice(0, 80))}`);
  return value;
}

/** Instance names and hostnames: RFC 1123 labels, 1–63 characters. */
const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export function checkName(value: string, what = 'name'): string {
  if (!NAME_RE.test(value)) {
    throw new InvalidArgumentError(`${what} must be 1-63 lower-case letters, digits or dashes, not starting or ending with a dash: ${JSON.stringify(value.slice(0, 80))}`);
  }
  return value;
}
