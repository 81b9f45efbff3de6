/**
 * Flag and argument values, checked before anything is sent: a bad value is an
 * InvalidArgumentError (exit 2) that names the flag and shows an accepted form.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { InvalidArgumentError } from '@oarcloud/common';

const bad = (flag: string, value: string, expected: string): InvalidArgumentError =>
  new InvalidArgumentError(`invalid ${flag} ${JSON.stringify(value)}: ${expected}`);

/** `1h`, `90m`, `45s`, `2h30m`, `1:30:00`, `1:30` (H:MM) → seconds; at least one minute. */
export function parseWalltime(value: string, flag = '--walltime'): number {
  const v = value.trim();
  let s: number | undefined;
  const clock = /^(\d+):([0-5]?\d)(?::([0-5]?\d))?$/.exec(v);
  if (clock) s = Number(clock[1]) * 3600 + Number(clock[2]) * 60 + Number(clock[3] ?? 0);
  const units = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(v);
  if (!clock && units && v !== '') s = Number(units[1] ?? 0) * 86400 + Number(units[2] ?? 0) * 3600 + Number(units[3] ?? 0) * 60 + Number(units[4] ?? 0);
  if (s === undefined) throw bad(flag, value, 'use a duration like 1h, 90m, 2h30m or H:MM:SS like 1:30:00');
  if (s < 60) throw bad(flag, value, 'the walltime must be at least 1m');
  if (s > 366 * 86400) throw bad(flag, value, 'the walltime must be at most 366 days');
  return s;
}

/** `512M`, `1G`, `1.5G`, `512MiB`, `2048` (MiB) → MiB; 16 MiB to 16 TiB. */
export function parseMemory(value: string, flag = '--memory'): number {
  const m = /^(\d+(?:\.\d+)?)\s*([MGT]?)(?:i?B)?$/i.exec(value.trim());
  if (!m) throw bad(flag, value, 'use a size like 512M or 1G (MiB when no unit)');
  const mult = { '': 1, M: 1, G: 1024, T: 1024 * 1024 }[m[2]!.toUpperCase() as '' | 'M' | 'G' | 'T'];
  const n = Number(m[1]) * mult;
  if (!Number.isInteger(n)) throw bad(flag, value, 'the size must be a whole number of MiB');
  if (n < 16) throw bad(flag, value, 'at least 16M');
  if (n > 16 * 1024 * 1024) throw bad(flag, value, 'at most 16T');
  return n;
}

/** A whole number in [min, max]. */
export function parseIntIn(value: string, flag: string, min: number, max: number): number {
  if (!/^\d+$/.test(value.trim())) throw bad(flag, value, `expected a whole number from ${min} to ${max}`);
  const n = Number(value);
  if (n < min || n > max) throw bad(flag, value, `expected a whole number from ${min} to ${max}`);
  return n;
}

export function parseJobId(value: string, what = 'job id'): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) <= 0 || !Number.isSafeInteger(Number(value))) {
    throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(value)}: expected the OAR job number, e.g. 1234`);
  }
  return Number(value);
}

const IMAGE_RE = /^[a-z0-9][a-z0-9._/-]{0,127}(:[A-Za-z0-9._-]{1,64})?$/;

export function parseImage(value: string, flag = 'image'): string {
  if (!IMAGE_RE.test(value)) throw bad(flag, value, 'expected name:tag, e.g. debian:12 (see `oarcloud images`)');
  return value;
}

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,48}[a-z0-9])?$/;

export function parseNamePrefix(value: string, flag = '--name'): string {
  if (!NAME_RE.test(value)) throw bad(flag, value, 'lower-case letters, digits and dashes, at most 50, not starting or ending with a dash');
  return value;
}

export function parseInstanceRef(value: string): string {
  if (!value || value.length > 128 || /\s/.test(value)) throw new InvalidArgumentError(`invalid instance ${JSON.stringify(value)}: expected an instance id (i-…) or name`);
  return value;
}

export function parsePort(value: string): number {
  return parseIntIn(value, 'port', 1, 65535);
}

export function parseRole(value: string): 'admin' | 'user' {
  if (value !== 'admin' && value !== 'user') throw bad('--role', value, 'expected admin or user');
  return value;
}

const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;

export function parseUserName(value: string): string {
  if (!USER_RE.test(value)) throw new InvalidArgumentError(`invalid user name ${JSON.stringify(value)}: expected a Unix login (lower-case letters, digits, _ or -)`);
  return value;
}

const KEY_RE = /^(ssh-|ecdsa-|sk-)\S+ \S+/;

/** The authorized_keys lines of a public key file. */
export function readSshKeys(path: string, flag = '--ssh-key'): string[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new InvalidArgumentError(`cannot read ${flag} ${path}: ${(cause as Error).message}`, { cause });
  }
  const keys = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  if (keys.length === 0 || !keys.every((k) => KEY_RE.test(k))) {
    throw new InvalidArgumentError(`${flag} ${path} is not an SSH public key (expected lines like "ssh-ed25519 AAAA… comment"; did you give the private key?)`);
  }
  return keys;
}

/** The default public keys: every `~/.ssh/id_*.pub`. */
export function defaultSshKeyFiles(home: string): string[] {
  const dir = join(home, '.ssh');
  try {
    return readdirSync(dir)
      .filter((f) => /^id_[\w-]+\.pub$/.test(f))
      .sort()
      .map((f) => join(dir, f));
  } catch {
    return [];
  }
}
