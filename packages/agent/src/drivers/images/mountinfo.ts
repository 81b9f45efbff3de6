/**
 * /proc/<pid>/mountinfo parsing (proc(5)), shared by the rootfs and cgroup drivers.
 */
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  id: number;
  parentId: number;
  /** Root of the mount within its filesystem. */
  root: string;
  mountPoint: string;
  fsType: string;
  source: string;
  /** Per-superblock options (`lowerdir=…`, controller names of a cgroup v1 mount…). */
  superOptions: string[];
}

/** Undoes the kernel's octal escapes (`\040` for a space…). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const left = line.slice(0, dash).split(' ');
    const right = line.slice(dash + 3).split(' ');
    if (left.length < 5 || right.length < 3) continue;
    out.push({
      id: Number(left[0]),
      parentId: Number(left[1]),
      root: unescape(left[3]!),
      mountPoint: unescape(left[4]!),
      fsType: right[0]!,
      source: unescape(right[1]!),
      superOptions: splitOptions(right.slice(2).join(' ')),
    });
  }
  return out;
}

/** Splits mount options on commas not escaped with a backslash. */
function splitOptions(s: string): string[] {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === '\\' && i + 1 < s.length && s[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (c === ',') {
      parts.push(unescape(cur));
      cur = '';
    } else cur += c;
  }
  if (cur !== '') parts.push(unescape(cur));
  return parts;
}

export async function readMountinfo(path = '/proc/self/mountinfo'): Promise<MountEntry[]> {
  return parseMountinfo(await readFile(path, 'utf8'));
}
