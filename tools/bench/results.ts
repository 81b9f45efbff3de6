/**
 * Benchmark results: figures merged by key into bench/results.json (so one benchmark's run
 * never erases another's), and bench/RESULTS.md + an SVG plot rendered from all of them.
 * Format: ../shared/BENCH.md.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { dirname, join } from 'node:path';

export interface Figure {
  value: number;
  unit: string;
  stat: 'median' | 'p95' | 'p99' | 'mean' | 'max' | 'value';
  n: number;
  p95?: number;
  baseline?: { what: string; value: number; p95?: number };
  /** ours / baseline. */
  ratio?: number;
  /** `lower` for times, `higher` for throughputs. */
  better: 'lower' | 'higher';
  what: string;
  machine: string;
  commit: string;
  date: string;
  command: string;
  note?: string;
}

export type Results = Record<string, Figure>;

/** Where and how a run was made, stamped on every figure. */
export interface Meta {
  machine: string;
  commit: string;
  date: string;
  command: string;
}

export function median(xs: number[]): number {
  return quantile(xs, 0.5);
}

export function p95(xs: number[]): number {
  return quantile(xs, 0.95);
}

export function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function machine(): string {
  let os = 'Linux';
  try {
    os = /PRETTY_NAME="([^"]+)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? os;
  } catch {
    // keep the default
  }
  return `${cpus().length} cores (${cpus()[0]?.model.trim() ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, ${os}, kernel ${execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim()}`;
}

export function commit(root: string): string {
  try {
    const sha = execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' }).trim();
    return dirty ? `${sha}+dirty` : sha;
  } catch {
    return 'unknown';
  }
}

export class ResultsFile {
  private readonly jsonPath: string;
  private readonly mdPath: string;
  private readonly svgPath: string;
  readonly results: Results;

  constructor(dir: string) {
    mkdirSync(dir, { recursive: true });
    this.jsonPath = join(dir, 'results.json');
    this.mdPath = join(dir, 'RESULTS.md');
    this.svgPath = join(dir, 'ratios.svg');
    this.results = existsSync(this.jsonPath) ? (JSON.parse(readFileSync(this.jsonPath, 'utf8')) as Results) : {};
  }

  set(key: string, fig: Figure): void {
    if (fig.baseline && fig.baseline.value > 0) fig.ratio = round(fig.value / fig.baseline.value, 2);
    this.results[key] = fig;
  }

  /**
   * Records a time figure (median and p95 of `xs`, in ms) with its baseline measured in the
   * same run; nothing is recorded when there are no samples.
   */
  time(key: string, meta: Meta, what: string, xs: number[], base?: { what: string; xs: number[] }, note?: string): void {
    if (xs.length === 0) return;
    // Sub-10 ms figures (round trips) keep three decimals, the rest one.
    const digits = median(xs) < 10 ? 3 : 1;
    this.set(key, {
      value: round(median(xs), digits),
      p95: round(p95(xs), digits),
      unit: 'ms',
      stat: 'median',
      n: xs.length,
      better: 'lower',
      what,
      baseline: base && base.xs.length > 0 ? { what: base.what, value: round(median(base.xs), digits), p95: round(p95(base.xs), digits) } : undefined,
      note,
      ...meta,
    });
  }

  save(): void {
    const sorted = Object.fromEntries(Object.entries(this.results).sort(([a], [b]) => a.localeCompare(b)));
    writeFileSync(this.jsonPath, `${JSON.stringify(sorted, null, 2)}\n`);
    writeFileSync(this.mdPath, renderMarkdown(sorted));
    writeFileSync(this.svgPath, renderSvg(sorted));
    writeFileSync(join(dirname(this.svgPath), 'sim.svg'), renderSimSvg(sorted));
  }
}

function renderMarkdown(r: Results): string {
  const lines = [
    '# Benchmark results',
    '',
    'Written by `npm run bench` (tools/bench): every figure below was measured on the machine named in',
    'its row, with its raw baseline measured in the same run. `ratio` = ours / baseline; for times',
    '(ms) lower is better, for throughputs (per second, Mbit/s) higher is better. Rerun one group with',
    '`npm run bench -- <group>` (e.g. `agent`), all with `npm run bench`, quickly with `npm run bench -- --quick`.',
    '',
    '![ratios to baseline](ratios.svg)',
    '',
    '![simulated scale: dispatch rate and controller memory by node count](sim.svg)',
    '',
    '| key | what | value | p95 | baseline | ratio | n | machine | commit | date |',
    '|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const [k, f] of Object.entries(r)) {
    const base = f.baseline ? `${f.baseline.value} ${f.unit} (${f.baseline.what})` : '—';
    lines.push(`| \`${k}\` | ${f.what}${f.note ? ` — ${f.note}` : ''} | **${f.value} ${f.unit}** (${f.stat}) | ${f.p95 ?? '—'} | ${base} | ${f.ratio ?? '—'} | ${f.n} | ${f.machine} | ${f.commit} | ${f.date} |`);
  }
  lines.push('', 'Commands:', '');
  for (const cmd of [...new Set(Object.values(r).map((f) => f.command))]) lines.push(`- \`${cmd}\``);
  return `${lines.join('\n')}\n`;
}

function renderSvg(r: Results): string {
  const rows = Object.entries(r).filter(([, f]) => f.ratio !== undefined);
  const h = 40 + rows.length * 26;
  const w = 760;
  const maxRatio = Math.max(2, ...rows.map(([, f]) => f.ratio!));
  const x0 = 300;
  const scale = (w - x0 - 60) / maxRatio;
  const bars = rows
    .map(([k, f], i) => {
      const y = 30 + i * 26;
      const bw = Math.max(1, f.ratio! * scale);
      const good = f.better === 'lower' ? f.ratio! <= 1.3 : f.ratio! >= 0.77;
      return `<text x="${x0 - 8}" y="${y + 14}" text-anchor="end" font-size="12">${k}</text>
<rect x="${x0}" y="${y}" width="${bw.toFixed(1)}" height="18" fill="${good ? '#3a7' : '#d73'}"/>
<text x="${x0 + bw + 4}" y="${y + 14}" font-size="12">${f.ratio}×</text>`;
    })
    .join('\n');
  const one = x0 + scale;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif">
<text x="10" y="18" font-size="14" font-weight="bold">oarcloud / raw baseline (same run; 1× = the raw tool)</text>
<line x1="${one}" y1="24" x2="${one}" y2="${h - 4}" stroke="#888" stroke-dasharray="4 3"/>
${bars}
</svg>
`;
}

/**
 * The scale simulation as two panels over the node count (log scale): instances dispatched
 * per second (light and real agents, with Nomad's C1M rate as a line) and the controller's
 * resident memory.
 */
function renderSimSvg(r: Results): string {
  const series = (re: RegExp): Array<[number, number]> =>
    Object.entries(r)
      .map(([k, f]) => [re.exec(k), f.value] as const)
      .filter((e): e is readonly [RegExpExecArray, number] => e[0] !== null)
      .map(([m, v]) => [Number(m[1]), v] as [number, number])
      .sort((a, b) => a[0] - b[0]);
  const panels = [
    {
      title: 'instances RUNNING per second, jobs started at once',
      unit: '/s',
      lines: [
        { name: 'simulated agents', color: '#37a', pts: series(/^sim\.dispatch_per_s_(\d+)_nodes$/) },
        { name: 'real agents, fake drivers', color: '#3a7', pts: series(/^sim\.dispatch_per_s_(\d+)_nodes_real_agents$/) },
      ],
      ref: { name: 'Nomad C1M (published)', value: 3333 },
    },
    {
      title: 'controller memory (RSS), all running',
      unit: ' MB',
      lines: [
        { name: 'simulated agents', color: '#37a', pts: series(/^sim\.controller_rss_mb_(\d+)_nodes$/) },
        { name: 'real agents, fake drivers', color: '#3a7', pts: series(/^sim\.controller_rss_mb_(\d+)_nodes_real_agents$/) },
      ],
    },
  ];
  const pw = 360;
  const ph = 220;
  const left = 60;
  const parts: string[] = [];
  panels.forEach((p, i) => {
    const ox = 10 + i * (pw + 60);
    const oy = 30;
    const all = p.lines.flatMap((l) => l.pts);
    if (all.length === 0) return;
    const xs = all.map(([n]) => Math.log10(n));
    const [xmin, xmax] = [Math.min(...xs, 2), Math.max(...xs, 3.7)];
    const ymax = Math.max(...all.map(([, v]) => v), p.ref?.value ?? 0) * 1.1;
    const X = (n: number): number => ox + left + ((Math.log10(n) - xmin) / (xmax - xmin || 1)) * (pw - left - 10);
    const Y = (v: number): number => oy + ph - (v / ymax) * (ph - 30);
    parts.push(`<text x="${ox}" y="${oy}" font-size="13" font-weight="bold">${p.title}</text>`);
    parts.push(`<line x1="${ox + left}" y1="${oy + ph}" x2="${ox + pw}" y2="${oy + ph}" stroke="#444"/><line x1="${ox + left}" y1="${oy + 20}" x2="${ox + left}" y2="${oy + ph}" stroke="#444"/>`);
    for (const n of [...new Set(all.map(([x]) => x))]) parts.push(`<text x="${X(n)}" y="${oy + ph + 16}" font-size="11" text-anchor="middle">${n} nodes</text>`);
    for (const t of [0, 0.25, 0.5, 0.75, 1]) parts.push(`<text x="${ox + left - 4}" y="${Y(t * ymax) + 4}" font-size="10" text-anchor="end">${Math.round(t * ymax)}</text>`);
    if (p.ref) parts.push(`<line x1="${ox + left}" y1="${Y(p.ref.value)}" x2="${ox + pw}" y2="${Y(p.ref.value)}" stroke="#d73" stroke-dasharray="5 3"/><text x="${ox + pw}" y="${Y(p.ref.value) - 4}" font-size="10" text-anchor="end" fill="#d73">${p.ref.name} ${p.ref.value}${p.unit}</text>`);
    p.lines.forEach((l, j) => {
      if (l.pts.length === 0) return;
      parts.push(`<polyline fill="none" stroke="${l.color}" stroke-width="2" points="${l.pts.map(([n, v]) => `${X(n).toFixed(1)},${Y(v).toFixed(1)}`).join(' ')}"/>`);
      for (const [n, v] of l.pts) parts.push(`<circle cx="${X(n).toFixed(1)}" cy="${Y(v).toFixed(1)}" r="3" fill="${l.color}"/><text x="${(X(n) + 5).toFixed(1)}" y="${(Y(v) - 5).toFixed(1)}" font-size="10" fill="${l.color}">${Math.round(v)}</text>`);
      parts.push(`<rect x="${ox + left + 10}" y="${oy + 14 + j * 14}" width="10" height="3" fill="${l.color}"/><text x="${ox + left + 24}" y="${oy + 19 + j * 14}" font-size="10">${l.name}</text>`);
    });
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * (pw + 60) + 10}" height="${ph + 70}" font-family="sans-serif">
${parts.join('\n')}
</svg>
`;
}
