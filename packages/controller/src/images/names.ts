/**
 * Image names: `name:tag`. The name is lower-case letters, digits, `.`, `_`, `-` (1–64,
 * starting with a letter or digit); the tag letters, digits, `.`, `_`, `-` (1–64). No
 * tag means `:latest`. Anything else (`../x`, `a:b:c`, spaces) is INVALID_ARGUMENT.
 */
import { InvalidArgumentError } from '@oarcloud/common';

const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const TAG_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** The canonical `name:tag` of `value`, or InvalidArgumentError. */
export function parseImageName(value: string, what = 'image name'): string {
  const v = typeof value === 'string' ? value : '';
  const parts = v.split(':');
  const bad = (): never => {
    throw new InvalidArgumentError(`${what} must be name:tag (name: a-z 0-9 . _ -, tag: A-Z a-z 0-9 . _ -), got ${JSON.stringify(v.slice(0, 80))}`);
  };
  if (parts.length > 2) bad();
  const [name, tag = 'latest'] = parts as [string, string?];
  if (!NAME_RE.test(name) || !TAG_RE.test(tag) || name.includes('..') || tag === '.' || tag === '..') bad();
  return `${name}:${tag}`;
}

const VOLUME_RE = /^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$/;

/** Volume names: 1–64 of a-z 0-9 . _ -, starting and ending with a letter or digit. */
export function parseVolumeName(value: string): string {
  if (typeof value !== 'string' || !VOLUME_RE.test(value) || value.includes('..')) {
    throw new InvalidArgumentError(`volume name must be 1-64 of a-z 0-9 . _ - (starting and ending with a letter or digit), got ${JSON.stringify(String(value).slice(0, 80))}`);
  }
  return value;
}

/** A mount path inside an instance: absolute, no `.`/`..`, not `/` nor a system folder. */
export function checkMountPath(path: string): string {
  if (typeof path !== 'string' || !path.startsWith('/') || path.length > 255 || /[\0\n:]/.test(path)) {
    throw new InvalidArgumentError(`volume mount path must be absolute, e.g. /data, got ${JSON.stringify(String(path).slice(0, 80))}`);
  }
  const parts = path.split('/').filter((p) => p !== '');
  if (parts.length === 0 || parts.some((p) => p === '.' || p === '..')) throw new InvalidArgumentError(`bad volume mount path ${JSON.stringify(path)}`);
  const clean = `/${parts.join('/')}`;
  if (['/proc', '/sys', '/dev', '/etc', '/bin', '/sbin', '/lib', '/usr', '/run'].some((s) => clean === s)) {
    throw new InvalidArgumentError(`volumes cannot be mounted on ${clean}`);
  }
  return clean;
}
