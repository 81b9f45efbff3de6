/**
 * Shifting the owners of a tar stream's members on the fly (uid/gid += base), so an
 * unpacked layer needs no second pass over its files: the header fields are rewritten and
 * their checksums recomputed while the archive streams into `tar -x`.
 *
 * Handles ustar/GNU/pax headers with octal ids. Anything it cannot rewrite in place (ids in
 * base-256 or beyond 7 octal digits, or pax records that override uid/gid) is passed through
 * unchanged and reported in `needsWalk`, so the caller shifts those files afterwards. Names
 * that contain an OCI whiteout (`.wh.`) set `whiteouts`.
 */
import { Transform, type TransformCallback } from 'node:stream';

const BLOCK = 512;
const MAX_OCTAL7 = 0o7777777;

export class TarShift extends Transform {
  /** Some member could not be shifted in its header: walk the files afterwards. */
  needsWalk = false;
  /** Some member name looks like an OCI whiteout. */
  whiteouts = false;
  private pending = Buffer.alloc(0);
  /** Bytes of member data (plus padding) still to pass through before the next header. */
  private skip = 0;
  /** Data of a pax / GNU long-name member being collected (inspected, not changed). */
  private collect: { kind: 'pax' | 'name'; left: number; parts: Buffer[] } | undefined;

  constructor(private readonly base: number) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let buf = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    const out: Buffer[] = [];
    while (buf.length > 0) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, buf.length);
        const part = buf.subarray(0, n);
        if (this.collect) this.collectData(part);
        out.push(part);
        this.skip -= n;
        buf = buf.subarray(n);
        if (this.skip === 0) this.endCollect();
        continue;
      }
      if (buf.length < BLOCK) break;
      const header = Buffer.from(buf.subarray(0, BLOCK));
      buf = buf.subarray(BLOCK);
      this.header(header);
      out.push(header);
    }
    this.pending = Buffer.from(buf);
    cb(null, out.length === 1 ? out[0] : Buffer.concat(out));
  }

  override _flush(cb: TransformCallback): void {
    cb(null, this.pending);
  }

  private header(h: Buffer): void {
    if (h.every((b) => b === 0)) return; // end-of-archive blocks
    const type = String.fromCharCode(h[156]!);
    const size = readNumber(h, 124, 12);
    if (size === undefined) {
      // Unreadable size: leave the rest of the archive as is and shift by walking.
      this.needsWalk = true;
      this.skip = Number.MAX_SAFE_INTEGER;
      return;
    }
    const name = h.subarray(0, 100).toString('latin1') + h.subarray(345, 500).toString('latin1');
    if (name.includes('.wh.')) this.whiteouts = true;
    if (type === 'x' || type === 'g') this.collect = { kind: 'pax', left: size, parts: [] };
    else if (type === 'L') this.collect = { kind: 'name', left: size, parts: [] };
    this.skip = Math.ceil(size / BLOCK) * BLOCK;
    if (type !== 'x' && type !== 'g' && type !== 'L' && type !== 'K') {
      const okU = shiftField(h, 108, this.base);
      const okG = shiftField(h, 116, this.base);
      if (!okU || !okG) this.needsWalk = true;
      writeChecksum(h);
    }
    if (this.skip === 0) this.endCollect();
  }

  private collectData(part: Buffer): void {
    const c = this.collect!;
    if (c.left > 0) {
      const take = part.subarray(0, Math.min(part.length, c.left));
      c.parts.push(Buffer.from(take));
      c.left -= take.length;
    }
  }

  private endCollect(): void {
    const c = this.collect;
    this.collect = undefined;
    if (!c) return;
    const text = Buffer.concat(c.parts).toString('utf8');
    if (c.kind === 'name' && text.includes('.wh.')) this.whiteouts = true;
    if (c.kind === 'pax') {
      if (/(^|\n)\d+ (uid|gid)=/.test(text)) this.needsWalk = true;
      if (/(^|\n)\d+ path=[^\n]*\.wh\./.test(text)) this.whiteouts = true;
    }
  }
}

/** An octal (or base-256) number field; undefined when unreadable. */
function readNumber(h: Buffer, off: number, len: number): number | undefined {
  if ((h[off]! & 0x80) !== 0) {
    let n = 0;
    for (let i = off + 1; i < off + len; i++) n = n * 256 + h[i]!;
    return Number.isSafeInteger(n) ? n : undefined;
  }
  const s = h.subarray(off, off + len).toString('latin1').replace(/[\0 ]+$/g, '').trim();
  if (s === '') return 0;
  return /^[0-7]+$/.test(s) ? parseInt(s, 8) : undefined;
}

/** Adds `base` to an 8-byte id field; false when it cannot be written as 7 octal digits. */
function shiftField(h: Buffer, off: number, base: number): boolean {
  const v = readNumber(h, off, 8);
  if (v === undefined || (h[off]! & 0x80) !== 0) return false;
  const next = v + base;
  if (next > MAX_OCTAL7) return false;
  h.write(`${next.toString(8).padStart(7, '0')}\0`, off, 8, 'latin1');
  return true;
}

function writeChecksum(h: Buffer): void {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i]!;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
}
