/**
 * A pass-through check that a byte stream is a whole tar archive, so that what is not one
 * (random bytes, a text file, a tar cut in the middle of a member) is refused when it is
 * imported, not later on every node that unpacks it.
 *
 * Walks the 512-byte headers: each must carry a valid checksum; the data of each member
 * (its size, rounded up to 512) is skipped; at the end, the stream must not stop inside a
 * header or a member. Zero blocks are skipped and headers after them still checked, as the
 * agents unpack with `tar --ignore-zeros`. Knows what shifts the data: pax `size=` records
 * (x), GNU long names (L, K) and old GNU sparse headers with extension blocks (S).
 * Errors are InvalidArgumentError "not a tar archive: …".
 */
import { Transform, type TransformCallback } from 'node:stream';
import { InvalidArgumentError } from '@oarcloud/common';

const BLOCK = 512;
/** Types whose size field is not followed by data (links, devices, directories, fifos). */
const NO_DATA = new Set(['1', '2', '3', '4', '5', '6']);
/** A pax header bigger than this is not read for `size=` (its data is still skipped). */
const MAX_PAX = 1024 * 1024;

function octal(b: Buffer, off: number, len: number): number | undefined {
  // GNU base-256 for big numbers: high bit of the first byte set.
  if (b[off]! & 0x80) {
    let n = b[off]! & 0x7f;
    for (let i = 1; i < len; i++) n = n * 256 + b[off + i]!;
    return n;
  }
  const s = b.toString('latin1', off, off + len).replace(/[\0 ]+$/, '').replace(/^ +/, '');
  if (s === '') return 0;
  return /^[0-7]+$/.test(s) ? parseInt(s, 8) : undefined;
}

function checksumOk(h: Buffer): boolean {
  const stored = octal(h, 148, 8);
  if (stored === undefined) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const v = i >= 148 && i < 156 ? 0x20 : h[i]!;
    unsigned += v;
    signed += v > 127 ? v - 256 : v;
  }
  return stored === unsigned || stored === signed;
}

const isZero = (b: Buffer): boolean => b.every((x) => x === 0);

export class TarCheck extends Transform {
  private offset = 0;
  private header = Buffer.alloc(0);
  /** Bytes of member data (padding included) still to pass. */
  private skip = 0;
  /** Sparse extension blocks expected before the data. */
  private sparseExt = false;
  /** Data (padded) of the sparse member whose extension blocks are being read. */
  private pendingData = 0;
  /** Data (padded) of the sparse member whose extension blocks are being read. */  private member = '';
  private members = 0;
  /** The pax header being read (to find `size=`), and the size it sets for the next member. */
  private pax: Buffer[] | undefined;
  private paxLeft = 0;
  private nextSize: number | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.scan(chunk);
    } catch (err) {
      return cb(err as Error);
    }
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.skip > 0 || this.header.length > 0) {
      return cb(new InvalidArgumentError(`not a tar archive: it ends in the middle of ${this.member ? `member ${JSON.stringify(this.member)}` : 'a header'} (truncated at byte ${this.offset})`));
    }
    if (this.members === 0 && this.offset > 0) return cb(new InvalidArgumentError('not a tar archive: no member in it'));
    cb();
  }

  private scan(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - i);
        if (this.pax && this.paxLeft > 0) {
          const take = Math.min(n, this.paxLeft);
          this.pax.push(chunk.subarray(i, i + take));
          this.paxLeft -= take;
        }
        this.skip -= n;
        i += n;
        this.offset += n;
        if (this.skip === 0 && this.pax) this.endPax();
        continue;
      }
      const need = BLOCK - this.header.length;
      const take = Math.min(need, chunk.length - i);
      this.header = Buffer.concat([this.header, chunk.subarray(i, i + take)]);
      i += take;
      this.offset += take;
      if (this.header.length === BLOCK) {
        const h = this.header;
        this.header = Buffer.alloc(0);
        this.block(h);
      }
    }
  }

  private block(h: Buffer): void {
    if (this.sparseExt) {
      this.sparseExt = h[504] !== 0;
      if (!this.sparseExt) this.skip = this.pendingData;
      return;
    }
    if (isZero(h)) return;
    const at = this.offset - BLOCK;
    if (!checksumOk(h)) throw new InvalidArgumentError(`not a tar archive: bad header at byte ${at}`);
    const type = String.fromCharCode(h[156]!);
    const size = octal(h, 124, 12);
    if (size === undefined) throw new InvalidArgumentError(`not a tar archive: bad size in the header at byte ${at}`);
    this.member = h.toString('utf8', 0, 100).replace(/\0.*$/s, '');
    this.members++;
    let data = NO_DATA.has(type) ? 0 : size;
    if (!['x', 'g', 'L', 'K'].includes(type) && this.nextSize !== undefined) {
      if (!NO_DATA.has(type)) data = this.nextSize;
      this.nextSize = undefined;
    }
    const padded = Math.ceil(data / BLOCK) * BLOCK;
    if (type === 'x') {
      this.pax = [];
      this.paxLeft = Math.min(data, MAX_PAX);
      if (padded === 0) this.endPax();
    }
    if (type === 'S' && h[482] !== 0) {
      this.sparseExt = true;
      this.pendingData = padded;
      return;
    }
    this.skip = padded;
  }

  private endPax(): void {
    const text = Buffer.concat(this.pax ?? []).toString('utf8');
    this.pax = undefined;
    const m = /(?:^|\n)\d+ size=(\d+)\n/.exec(text);
    if (m) this.nextSize = Number(m[1]);
  }
}
