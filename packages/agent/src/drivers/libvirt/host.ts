/**
 * What the libvirt LXC driver reads from, or tidies on, the host itself: the init pid of a
 * container and the cgroup directories libvirt leaves behind.
 *
 * Init pid: libvirt's public API has no call for it (`virDomainLxcGetInitPid` does not
 * exist; `virDomainLxcOpenNamespace` is in libvirt-lxc.so and returns fds, not a pid). For
 * the LXC driver the domain id *is* the pid of its `libvirt_lxc` controller (checked on
 * libvirt 9.0), and the container's init is that controller's only child. So: domain id →
 * /proc/<id>/cmdline must be `libvirt_lxc … --name <domain>` (guards against a reused pid)
 * → /proc/<id>/task/<tid>/children. libvirtd runs in its own mount namespace but in our pid
 * namespace, so these pids are ours.
 */
import { readdir, readFile, readlink, rmdir } from 'node:fs/promises';
import { join } from 'node:path';

const CGROUP_ROOT = '/sys/fs/cgroup';

async function readOr(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Host pid of the init of domain `name` whose controller pid is `controllerPid`; 0 if unknown. */
export async function initPidOf(controllerPid: number, name: string, procRoot = '/proc'): Promise<number> {
  if (!Number.isSafeInteger(controllerPid) || controllerPid <= 1) return 0;
  const cmdline = (await readOr(join(procRoot, String(controllerPid), 'cmdline')))?.split('\0') ?? [];
  const at = cmdline.indexOf('--name');
  if (!cmdline[0]?.endsWith('libvirt_lxc') || at < 0 || cmdline[at + 1] !== name) return 0;
  let tasks: string[] = [];
  try {
    tasks = await readdir(join(procRoot, String(controllerPid), 'task'));
  } catch {
    return 0;
  }
  const children: number[] = [];
  for (const tid of tasks) {
    const list = (await readOr(join(procRoot, String(controllerPid), 'task', tid, 'children')))?.trim();
    for (const c of list?.split(/\s+/) ?? []) if (/^\d+$/.test(c)) children.push(Number(c));
  }
  // The init is the child in a PID namespace of its own: a helper the controller forks
  // (in the host's namespaces) must never be taken for it, or nsenter would enter the host.
  const nsOf = (pid: number) => readlink(join(procRoot, String(pid), 'ns', 'pid')).catch(() => undefined);
  const mine = await nsOf(controllerPid);
  for (const c of children) {
    const ns = await nsOf(c);
    // Namespaces unreadable for the controller (a fake /proc): the first child, as before.
    if (mine === undefined || (ns !== undefined && ns !== mine)) return c;
  }
  return 0;
}

/** Name of the cgroup directory libvirt gives a running LXC domain, as a pattern. */
function cgroupDirPattern(domain: string): RegExp {
  const esc = domain.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return new RegExp(`^lxc-\\d+-${esc}\\.libvirt-lxc$`);
}

/**
 * Every cgroup directory of domain `domain` (v1: one per controller; v2: one), searched
 * under each `machine` / `machine.slice` tree (resource partitions included).
 */
export async function cgroupDirsOf(domain: string, root = CGROUP_ROOT): Promise<string[]> {
  const pattern = cgroupDirPattern(domain);
  const found: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const p = join(dir, e.name);
      if (pattern.test(e.name)) found.push(p);
      else if (depth < 5) await walk(p, depth + 1);
    }
  };
  const tops = [root, ...(await readdir(root, { withFileTypes: true }).catch(() => [])).filter((e) => e.isDirectory()).map((e) => join(root, e.name))];
  for (const top of tops) {
    for (const m of ['machine', 'machine.slice']) await walk(join(top, m), 0);
  }
  return found;
}

/**
 * Removes the empty cgroup directories left by domain `domain` (a failed start leaves
 * `lxc-<pid>-<name>.libvirt-lxc` behind). Only directories whose name is exactly that
 * pattern are touched; rmdir fails on a non-empty or busy cgroup, which is then kept.
 * Returns the removed paths.
 */
export async function removeEmptyCgroups(domain: string, root = CGROUP_ROOT): Promise<string[]> {
  const removed: string[] = [];
  for (const dir of await cgroupDirsOf(domain, root)) {
    try {
      await rmdir(dir);
      removed.push(dir);
    } catch {
      // busy (tasks still inside) or already gone
    }
  }
  return removed;
}
