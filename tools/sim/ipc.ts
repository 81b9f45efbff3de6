/**
 * A tiny request/answer protocol over a child process's IPC channel: the simulator's driver
 * calls operations of its children (the controller, the agent farms) and awaits the answers.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

interface Request {
  id: number;
  op: string;
  args: unknown;
}

interface Answer {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}

const simTsconfig = fileURLToPath(new URL('./tsconfig.json', import.meta.url));

export interface Child {
  readonly pid: number;
  call<T>(op: string, args?: unknown): Promise<T>;
  /** SIGKILL by pid, and wait for the exit. */
  kill(graceMs?: number): Promise<void>;
}

/**
 * Starts `file` (a TypeScript module of tools/sim) under tsx, workspace packages resolved to
 * their sources, with its stdout/stderr inherited.
 */
export function spawnChild(file: string, opts: { execArgv?: string[]; env?: NodeJS.ProcessEnv } = {}): Child {
  const child: ChildProcess = fork(file, [], {
    execArgv: ['--import', 'tsx', ...(opts.execArgv ?? [])],
    env: { ...process.env, TSX_TSCONFIG_PATH: simTsconfig, ...opts.env },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  let next = 0;
  const waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  const exited = new Promise<void>((resolve) =>
    child.once('exit', (code, sig) => {
      for (const w of waiting.values()) w.reject(new Error(`${file} exited (${code ?? sig})`));
      waiting.clear();
      resolve();
    }),
  );
  child.on('message', (m: Answer) => {
    const w = waiting.get(m.id);
    if (!w) return;
    waiting.delete(m.id);
    if (m.ok) w.resolve(m.result);
    else w.reject(new Error(m.error));
  });
  return {
    pid: child.pid!,
    call<T>(op: string, args?: unknown): Promise<T> {
      const id = ++next;
      return new Promise<T>((resolve, reject) => {
        waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
        child.send({ id, op, args } satisfies Request);
      });
    },
    async kill(graceMs = 0) {
      // A child told to stop exits by itself (and writes its --cpu-prof): give it graceMs.
      if (graceMs > 0) await Promise.race([exited, new Promise((r) => setTimeout(r, graceMs))]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

/** In the child: serves the driver's calls with `ops`; `stop` answers then exits. */
export function serveParent(ops: Record<string, (args: never) => unknown>): void {
  process.on('message', (m: Request) => {
    void (async () => {
      try {
        const fn = ops[m.op];
        if (!fn) throw new Error(`unknown op ${m.op}`);
        const result = await fn(m.args as never);
        process.send!({ id: m.id, ok: true, result } satisfies Answer);
        if (m.op === 'stop') setTimeout(() => process.exit(0), 50);
      } catch (err) {
        process.send!({ id: m.id, ok: false, error: err instanceof Error ? (err.stack ?? err.message) : String(err) } satisfies Answer);
      }
    })();
  });
}

/** CPU time this process has used (user + system), in ms. */
export function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}
