/**
 * Human and machine output: aligned tables, state colours (only on a TTY, never with
 * NO_COLOR), key/value blocks, and JSON for scripts (`--json`).
 */

export interface Out {
  /** stdout, one chunk. */
  out(text: string): void;
  /** stderr, one chunk. */
  err(text: string): void;
  color: boolean;
  stderrIsTTY: boolean;
}

const ANSI = { green: 32, yellow: 33, red: 31, cyan: 36, dim: 2, bold: 1 } as const;
type Colour = keyof typeof ANSI;

export function paint(text: string, colour: Colour, on: boolean): string {
  return on ? `\x1b[${ANSI[colour]}m${text}\x1b[0m` : text;
}

const STATE_COLOUR: Record<string, Colour> = {
  running: 'green',
  pending: 'cyan',
  creating: 'cyan',
  stopped: 'yellow',
  failed: 'red',
  ended: 'dim',
  deleted: 'dim',
};

export function paintState(state: string, on: boolean): string {
  const c = STATE_COLOUR[state];
  return c ? paint(state, c, on) : state;
}

export interface Column<T> {
  header: string;
  value: (row: T) => string;
  /** Colour applied after padding, so escapes never break the alignment. */
  paint?: (text: string, row: T) => string;
  align?: 'left' | 'right';
}

/** An aligned table, two spaces between columns, no trailing blanks. */
export function table<T>(rows: readonly T[], columns: ReadonlyArray<Column<T>>): string {
  const cells = rows.map((r) => columns.map((c) => c.value(r)));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((row) => row[i]!.length)));
  const line = (values: string[], row?: T): string =>
    values
      .map((v, i) => {
        const col = columns[i]!;
        const last = i === values.length - 1;
        const padded = col.align === 'right' ? v.padStart(widths[i]!) : last ? v : v.padEnd(widths[i]!);
        if (!row || !col.paint) return padded;
        // Paint only the text, keep the padding outside the escapes.
        const start = padded.indexOf(v);
        return padded.slice(0, start) + col.paint(v, row) + padded.slice(start + v.length);
      })
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.header)), ...rows.map((r, k) => line(cells[k]!, r))].join('\n') + '\n';
}

/** `key: value` lines, keys aligned. */
export function keyValues(pairs: ReadonlyArray<readonly [string, string]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(w)} ${v}`.trimEnd()).join('\n') + '\n';
}

export function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** `1h05m`, `3m20s`, `42s`. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, '0')}h`;
}

/** `512M`, `2G`, `1.5G` from MiB. */
export function mib(n: number): string {
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}G`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)}G`;
  return `${n}M`;
}

export function bytes(n: number): string {
  const units = ['B', 'K', 'M', 'G', 'T'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 1 : 0)}${units[u]}`;
}
