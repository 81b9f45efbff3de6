/**
 * Durable instance records: one JSON file per instance under `<stateDir>/instances/`,
 * written atomically (temp file + rename), so a crash never leaves a half-written record.
 */
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { isId, type Logger } from '@oarcloud/common';
import type { InstanceRecord } from './model.js';

export interface RecordStore {
  get(id: string): InstanceRecord | undefined;
  list(): InstanceRecord[];
  put(rec: InstanceRecord): void;
  remove(id: string): void;
}

export class FileRecordStore implements RecordStore {
  private readonly dir: string;
  private readonly cache = new Map<string, InstanceRecord>();

  constructor(stateDir: string, log: Logger) {
    this.dir = join(stateDir, 'instances');
    mkdirSync(this.dir, { recursive: true });
    for (const f of readdirSync(this.dir)) {
      const id = f.replace(/\.json$/, '');
      if (!f.endsWith('.json') || !isId(id, 'i')) {
        // Leftover temp files of an interrupted write.
        if (f.endsWith('.tmp')) rmSync(join(this.dir, f), { force: true });
        continue;
      }
      try {
        this.cache.set(id, JSON.parse(readFileSync(join(this.dir, f), 'utf8')) as InstanceRecord);
      } catch (err) {
        log.warn('unreadable instance record ignored', { file: f, err: String(err) });
      }
    }
  }

  get(id: string): InstanceRecord | undefined {
    return this.cache.get(id);
  }

  list(): InstanceRecord[] {
    return [...this.cache.values()];
  }

  put(rec: InstanceRecord): void {
    const file = join(this.dir, `${rec.spec.id}.json`);
    writeFileSync(`${file}.tmp`, JSON.stringify(rec));
    renameSync(`${file}.tmp`, file);
    this.cache.set(rec.spec.id, rec);
  }

  remove(id: string): void {
    rmSync(join(this.dir, `${id}.json`), { force: true });
    this.cache.delete(id);
  }
}

/** In-memory records, for unit tests. */
export class MemoryRecordStore implements RecordStore {
  readonly map = new Map<string, InstanceRecord>();
  get(id: string): InstanceRecord | undefined {
    return this.map.get(id);
  }
  list(): InstanceRecord[] {
    return [...this.map.values()];
  }
  put(rec: InstanceRecord): void {
    this.map.set(rec.spec.id, structuredClone(rec));
  }
  remove(id: string): void {
    this.map.delete(id);
  }
}
