/**
 * The SQLite store (better-sqlite3): WAL, foreign keys, versioned migrations applied at
 * open. Unit tests open it on `:memory:`.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { AlreadyExistsError, NotFoundError } from '@oarcloud/common';
import type { AttachmentRecord, DesiredState, ImageRecord, InstanceRecord, LayerRecord, NetworkRecord, JobRecord, JobState, LaunchSpec, ReportedState, Role, UserRecord, VolumeMount, VolumeRecord } from '../domain.js';
import type { InstanceFilter, Store } from './store.js';

/** Migrations in order; version N is `MIGRATIONS[N-1]`. Never edit one that shipped: append. */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('user','admin')),
    created_ms INTEGER NOT NULL
  );
  CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER NOT NULL DEFAULT 0
  );
  CREATE INDEX tokens_user ON tokens(user_name);
  CREATE TABLE specs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    image TEXT NOT NULL,
    count INTEGER NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    ssh_keys TEXT NOT NULL,
    name_prefix TEXT NOT NULL,
    created_ms INTEGER NOT NULL
  );
  CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending','running','ended')),
    oar_state TEXT NOT NULL,
    hosts TEXT NOT NULL,
    spec_id TEXT NOT NULL DEFAULT '',
    walltime_s INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER NOT NULL DEFAULT 0,
    ended_ms INTEGER NOT NULL DEFAULT 0,
    last_log_id INTEGER NOT NULL DEFAULT 0,
    spec_applied INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    released_ms INTEGER NOT NULL DEFAULT 0
  );
  CREATE INDEX jobs_owner ON jobs(owner);
  CREATE INDEX jobs_state ON jobs(state);
  CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    node TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    image TEXT NOT NULL,
    ssh_keys TEXT NOT NULL,
    desired TEXT NOT NULL CHECK (desired IN ('running','stopped','deleted')),
    reported TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
  );
  CREATE INDEX instances_job ON instances(job_id);
  CREATE INDEX instances_owner ON instances(owner);
  CREATE UNIQUE INDEX instances_live_name ON instances(job_id, name) WHERE desired != 'deleted';
  CREATE TABLE oar_cursor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    log_id INTEGER NOT NULL
  );
  CREATE TABLE idempotency (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    result TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
  );
  `,
  `
  CREATE TABLE networks (
    id TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    subnet TEXT NOT NULL,
    gateway TEXT NOT NULL,
    vni INTEGER NOT NULL UNIQUE,
    mtu INTEGER NOT NULL,
    nat INTEGER NOT NULL DEFAULT 0,
    is_default INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
  );
  CREATE INDEX networks_job ON networks(job_id);
  CREATE UNIQUE INDEX networks_job_name ON networks(job_id, name);
  CREATE UNIQUE INDEX networks_subnet ON networks(subnet);
  CREATE TABLE attachments (
    instance_id TEXT NOT NULL REFERENCES instances(id),
    network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    address TEXT NOT NULL,
    mac TEXT NOT NULL,
    PRIMARY KEY (instance_id, network_id),
    UNIQUE (network_id, address),
    UNIQUE (instance_id, idx)
  );
  CREATE INDEX attachments_network ON attachments(network_id);
  `,
  `
  CREATE TABLE layers (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
  );
  CREATE TABLE images (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    public INTEGER NOT NULL,
    parent TEXT NOT NULL DEFAULT '',
    layers TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
  );
  CREATE INDEX images_parent ON images(parent);
  CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (owner, name)
  );
  ALTER TABLE instances ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
  ALTER TABLE specs ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
  `,
];

interface JobRow {
  id: number;
  owner: string;
  state: string;
  oar_state: string;
  hosts: string;
  spec_id: string;
  walltime_s: number;
  started_ms: number;
  ended_ms: number;
  last_log_id: number;
  spec_applied: number;
  error: string;
  released_ms: number;
}

interface InstanceRow {
  id: string;
  job_id: number;
  owner: string;
  name: string;
  node: string;
  vcpus: number;
  memory_mib: number;
  image: string;
  ssh_keys: string;
  volumes: string;
  desired: string;
  reported: string;
  reason: string;
  created_ms: number;
  updated_ms: number;
}

interface SpecRow {
  id: string;
  owner: string;
  image: string;
  count: number;
  vcpus: number;
  memory_mib: number;
  ssh_keys: string;
  name_prefix: string;
  volumes: string;
  created_ms: number;
}

interface UserRow {
  name: string;
  role: string;
  created_ms: number;
}

const userOf = (r: UserRow): UserRecord => ({ name: r.name, role: r.role as Role, createdAtMs: r.created_ms });

const jobOf = (r: JobRow): JobRecord => ({
  id: r.id,
  owner: r.owner,
  state: r.state as JobState,
  oarState: r.oar_state,
  hosts: JSON.parse(r.hosts) as JobRecord['hosts'],
  specId: r.spec_id,
  walltimeS: r.walltime_s,
  startedAtMs: r.started_ms,
  endedAtMs: r.ended_ms,
  lastLogId: r.last_log_id,
  specApplied: r.spec_applied !== 0,
  error: r.error,
  releasedAtMs: r.released_ms,
});

const jobRow = (j: JobRecord): JobRow => ({
  id: j.id,
  owner: j.owner,
  state: j.state,
  oar_state: j.oarState,
  hosts: JSON.stringify(j.hosts),
  spec_id: j.specId,
  walltime_s: j.walltimeS,
  started_ms: j.startedAtMs,
  ended_ms: j.endedAtMs,
  last_log_id: j.lastLogId,
  spec_applied: j.specApplied ? 1 : 0,
  error: j.error,
  released_ms: j.releasedAtMs,
});

const instanceOf = (r: InstanceRow): InstanceRecord => ({
  id: r.id,
  jobId: r.job_id,
  owner: r.owner,
  name: r.name,
  node: r.node,
  vcpus: r.vcpus,
  memoryMib: r.memory_mib,
  image: r.image,
  sshKeys: JSON.parse(r.ssh_keys) as string[],
  volumes: JSON.parse(r.volumes) as VolumeMount[],
  desired: r.desired as DesiredState,
  reported: r.reported as ReportedState,
  reason: r.reason,
  createdAtMs: r.created_ms,
  updatedAtMs: r.updated_ms,
});

const specOf = (r: SpecRow): LaunchSpec => ({
  id: r.id,
  owner: r.owner,
  image: r.image,
  count: r.count,
  vcpus: r.vcpus,
  memoryMib: r.memory_mib,
  sshKeys: JSON.parse(r.ssh_keys) as string[],
  namePrefix: r.name_prefix,
  volumes: JSON.parse(r.volumes) as VolumeMount[],
  createdAtMs: r.created_ms,
});

interface NetworkRow {
  id: string;
  job_id: number;
  owner: string;
  name: string;
  subnet: string;
  gateway: string;
  vni: number;
  mtu: number;
  nat: number;
  is_default: number;
  created_ms: number;
}

interface AttachmentRow {
  instance_id: string;
  network_id: string;
  idx: number;
  address: string;
  mac: string;
}

function networkOf(r: NetworkRow): NetworkRecord {
  return {
    id: r.id,
    jobId: r.job_id,
    owner: r.owner,
    name: r.name,
    subnet: r.subnet,
    gateway: r.gateway,
    vni: r.vni,
    mtu: r.mtu,
    nat: r.nat === 1,
    isDefault: r.is_default === 1,
    createdAtMs: r.created_ms,
  };
}

interface LayerRow {
  digest: string;
  size: number;
  stored_size: number;
  created_ms: number;
}

interface ImageRow {
  name: string;
  owner: string;
  public: number;
  parent: string;
  layers: string;
  size: number;
  created_ms: number;
}

interface VolumeRow {
  id: string;
  owner: string;
  name: string;
  created_ms: number;
}

const imageOf = (r: ImageRow): ImageRecord => ({
  name: r.name,
  owner: r.owner,
  public: r.public === 1,
  parent: r.parent,
  layers: JSON.parse(r.layers) as string[],
  sizeBytes: r.size,
  createdAtMs: r.created_ms,
});

const volumeOf = (r: VolumeRow): VolumeRecord => ({ id: r.id, owner: r.owner, name: r.name, createdAtMs: r.created_ms });

/**
 * Read-through cache of the rows of one table that are read far more often than written
 * (jobs, networks, images: read for every instance created or reported). Entries are
 * frozen, so a caller that mutates one fails loudly, and only filled outside explicit
 * transactions, so they never hold a row a rollback undoes: a write drops the key, and
 * after a rollback the next read goes to the database again.
 */
class RowCache<K, V extends object> {
  private readonly rows = new Map<K, V>();
  constructor(private readonly settled: () => boolean) {}

  get(key: K, load: () => V | undefined): V | undefined {
    const hit = this.rows.get(key);
    if (hit) return hit;
    const v = load();
    if (v && this.settled()) this.rows.set(key, deepFreeze(v));
    return v;
  }

  drop(key: K): void {
    this.rows.delete(key);
  }

  clear(): void {
    this.rows.clear();
  }
}

function deepFreeze<T extends object>(v: T): T {
  for (const x of Object.values(v)) if (x && typeof x === 'object' && !Object.isFrozen(x)) deepFreeze(x as object);
  return Object.freeze(v);
}

function isUniqueViolation(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE';
}

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  /** Prepared statements by SQL text: preparing costs more than running most of them. */
  private readonly statements = new Map<string, Database.Statement>();
  private readonly jobs: RowCache<number, JobRecord>;
  private readonly networks: RowCache<string, NetworkRecord>;
  private readonly images: RowCache<string, ImageRecord>;
  /** Explicit transactions (transaction()) in progress, nested included. */
  private depth = 0;
  /** A group commit is open (see batched()). */
  private batchOpen = false;

  /** Opens (creating the folder and file if needed) and migrates. */
  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    // WAL + NORMAL: no fsync per commit (one per checkpoint); a power loss may drop the last
    // commits but never corrupts the file, and the reconcile loop rebuilds what they held
    // from OAR and the agents. FULL cost ~1 fsync per instance state change.
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
    const settled = (): boolean => this.depth === 0;
    this.jobs = new RowCache(settled);
    this.networks = new RowCache(settled);
    this.images = new RowCache(settled);
  }

  private q(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.statements.set(sql, st);
    }
    return st;
  }

  /** The schema version (number of migrations applied). */
  get schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  private migrate(): void {
    const from = this.schemaVersion;
    for (let v = from; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  addUser(name: string, role: Role, tokenHash: string, nowMs: number): UserRecord {
    return this.transaction(() => {
      try {
        this.q('INSERT INTO users (name, role, created_ms) VALUES (?, ?, ?)').run(name, role, nowMs);
      } catch (err) {
        if (isUniqueViolation(err)) throw new AlreadyExistsError(`user ${name} already exists`, { cause: err });
        throw err;
      }
      this.q('INSERT INTO tokens (hash, user_name, created_ms) VALUES (?, ?, ?)').run(tokenHash, name, nowMs);
      return { name, role, createdAtMs: nowMs };
    });
  }

  getUser(name: string): UserRecord | undefined {
    const r = this.q('SELECT * FROM users WHERE name = ?').get(name) as UserRow | undefined;
    return r && userOf(r);
  }

  listUsers(): UserRecord[] {
    return (this.q('SELECT * FROM users ORDER BY name').all() as UserRow[]).map(userOf);
  }

  removeUser(name: string): boolean {
    return this.q('DELETE FROM users WHERE name = ?').run(name).changes > 0;
  }

  replaceToken(name: string, tokenHash: string, nowMs: number): void {
    this.transaction(() => {
      if (!this.getUser(name)) throw new NotFoundError(`no user ${name}`);
      this.q('UPDATE tokens SET revoked_ms = ? WHERE user_name = ? AND revoked_ms = 0').run(nowMs, name);
      this.q('INSERT INTO tokens (hash, user_name, created_ms) VALUES (?, ?, ?)').run(tokenHash, name, nowMs);
    });
  }

  userByTokenHash(tokenHash: string): UserRecord | undefined {
    const r = this
      .q('SELECT u.* FROM tokens t JOIN users u ON u.name = t.user_name WHERE t.hash = ? AND t.revoked_ms = 0')
      .get(tokenHash) as UserRow | undefined;
    return r && userOf(r);
  }

  hasAdmin(): boolean {
    return this.q("SELECT 1 FROM users WHERE role = 'admin' LIMIT 1").get() !== undefined;
  }

  putSpec(s: LaunchSpec): void {
    this
      .q(
        `INSERT OR REPLACE INTO specs (id, owner, image, count, vcpus, memory_mib, ssh_keys, name_prefix, volumes, created_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(s.id, s.owner, s.image, s.count, s.vcpus, s.memoryMib, JSON.stringify(s.sshKeys), s.namePrefix, JSON.stringify(s.volumes ?? []), s.createdAtMs);
  }

  getSpec(id: string): LaunchSpec | undefined {
    const r = this.q('SELECT * FROM specs WHERE id = ?').get(id) as SpecRow | undefined;
    return r && specOf(r);
  }

  getJob(id: number): JobRecord | undefined {
    return this.jobs.get(id, () => {
      const r = this.q('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
      return r && jobOf(r);
    });
  }

  listJobs(filter: { owner?: string; notEnded?: boolean } = {}): JobRecord[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.owner !== undefined) {
      where.push('owner = ?');
      args.push(filter.owner);
    }
    if (filter.notEnded) where.push("state != 'ended'");
    const sql = `SELECT * FROM jobs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC`;
    return (this.q(sql).all(...args) as JobRow[]).map(jobOf);
  }

  putJob(job: JobRecord): void {
    this.jobs.drop(job.id);
    this
      .q(
        `INSERT OR REPLACE INTO jobs (id, owner, state, oar_state, hosts, spec_id, walltime_s, started_ms, ended_ms, last_log_id, spec_applied, error, released_ms)
         VALUES (@id, @owner, @state, @oar_state, @hosts, @spec_id, @walltime_s, @started_ms, @ended_ms, @last_log_id, @spec_applied, @error, @released_ms)`,
      )
      .run(jobRow(job));
  }

  updateJob(id: number, patch: Partial<Omit<JobRecord, 'id'>>): JobRecord {
    return this.transaction(() => {
      const cur = this.getJob(id);
      if (!cur) throw new NotFoundError(`no job ${id}`);
      const next = { ...cur, ...patch, id };
      this.putJob(next);
      return next;
    });
  }

  addInstances(list: InstanceRecord[]): void {
    const ins = this.q(
      `INSERT INTO instances (id, job_id, owner, name, node, vcpus, memory_mib, image, ssh_keys, volumes, desired, reported, reason, created_ms, updated_ms)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.transaction(() => {
      for (const i of list) {
        try {
          ins.run(i.id, i.jobId, i.owner, i.name, i.node, i.vcpus, i.memoryMib, i.image, JSON.stringify(i.sshKeys), JSON.stringify(i.volumes ?? []), i.desired, i.reported, i.reason, i.createdAtMs, i.updatedAtMs);
        } catch (err) {
          if (isUniqueViolation(err)) throw new AlreadyExistsError(`instance ${i.id} (${i.name}) already exists in job ${i.jobId}`, { cause: err });
          throw err;
        }
      }
    });
  }

  getInstance(id: string): InstanceRecord | undefined {
    const r = this.q('SELECT * FROM instances WHERE id = ?').get(id) as InstanceRow | undefined;
    return r && instanceOf(r);
  }

  listInstances(filter: InstanceFilter = {}): InstanceRecord[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.jobId !== undefined) {
      where.push('job_id = ?');
      args.push(filter.jobId);
    }
    if (filter.owner !== undefined) {
      where.push('owner = ?');
      args.push(filter.owner);
    }
    if (filter.node !== undefined) {
      where.push('node = ?');
      args.push(filter.node);
    }
    if (filter.liveOnly) where.push("NOT (desired = 'deleted' AND reported = 'deleted')");
    const sql = `SELECT * FROM instances ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY job_id, created_ms, name`;
    return (this.q(sql).all(...args) as InstanceRow[]).map(instanceOf);
  }

  setDesired(id: string, desired: DesiredState, nowMs: number): void {
    const r = this.q('UPDATE instances SET desired = ?, updated_ms = ? WHERE id = ?').run(desired, nowMs, id);
    if (r.changes === 0) throw new NotFoundError(`no instance ${id}`);
  }

  setReported(id: string, reported: ReportedState, reason: string, nowMs: number): number | undefined {
    this.batched();
    const r = this
      .q('UPDATE instances SET reported = ?, reason = ?, updated_ms = ? WHERE id = ? AND (reported != ? OR reason != ?) RETURNING job_id')
      .get(reported, reason, nowMs, id, reported, reason) as { job_id: number } | undefined;
    return r?.job_id;
  }

  deleteJobInstances(jobId: number, nowMs: number): number {
    return this.q("UPDATE instances SET desired = 'deleted', updated_ms = ? WHERE job_id = ? AND desired != 'deleted'").run(nowMs, jobId).changes;
  }

  addNetwork(n: NetworkRecord): void {
    this.networks.drop(n.id);
    try {
      this
        .q('INSERT INTO networks (id, job_id, owner, name, subnet, gateway, vni, mtu, nat, is_default, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(n.id, n.jobId, n.owner, n.name, n.subnet, n.gateway, n.vni, n.mtu, n.nat ? 1 : 0, n.isDefault ? 1 : 0, n.createdAtMs);
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError(`network ${n.name} (${n.subnet}, vni ${n.vni}) clashes with an existing one`, { cause: err });
      throw err;
    }
  }

  getNetwork(id: string): NetworkRecord | undefined {
    return this.networks.get(id, () => {
      const r = this.q('SELECT * FROM networks WHERE id = ?').get(id) as NetworkRow | undefined;
      return r && networkOf(r);
    });
  }

  listNetworks(filter: { jobId?: number } = {}): NetworkRecord[] {
    const rows = (filter.jobId !== undefined
      ? this.q('SELECT * FROM networks WHERE job_id = ? ORDER BY created_ms, id').all(filter.jobId)
      : this.q('SELECT * FROM networks ORDER BY created_ms, id').all()) as NetworkRow[];
    return rows.map(networkOf);
  }

  deleteNetwork(id: string): boolean {
    this.networks.drop(id);
    return this.transaction(() => {
      this.q('DELETE FROM attachments WHERE network_id = ?').run(id);
      return this.q('DELETE FROM networks WHERE id = ?').run(id).changes > 0;
    });
  }

  addAttachments(list: AttachmentRecord[]): void {
    const ins = this.q('INSERT INTO attachments (instance_id, network_id, idx, address, mac) VALUES (?, ?, ?, ?, ?)');
    this.transaction(() => {
      for (const a of list) {
        try {
          ins.run(a.instanceId, a.networkId, a.index, a.address, a.mac);
        } catch (err) {
          if (isUniqueViolation(err)) throw new AlreadyExistsError(`address ${a.address} is taken in network ${a.networkId}`, { cause: err });
          throw err;
        }
      }
    });
  }

  listAttachments(filter: { instanceId?: string; networkId?: string }): AttachmentRecord[] {
    const rows = (filter.instanceId !== undefined
      ? this.q('SELECT * FROM attachments WHERE instance_id = ? ORDER BY idx').all(filter.instanceId)
      : this.q('SELECT * FROM attachments WHERE network_id = ? ORDER BY address').all(filter.networkId ?? '')) as AttachmentRow[];
    return rows.map((r) => ({ instanceId: r.instance_id, networkId: r.network_id, index: r.idx, address: r.address, mac: r.mac }));
  }

  networkNodes(networkId: string): string[] {
    const rows = this.q("SELECT DISTINCT i.node AS node FROM attachments a JOIN instances i ON i.id = a.instance_id WHERE a.network_id = ? AND i.desired != 'deleted' ORDER BY i.node").all(networkId) as Array<{ node: string }>;
    return rows.map((r) => r.node);
  }

  deleteAttachments(instanceId: string): number {
    return this.q('DELETE FROM attachments WHERE instance_id = ?').run(instanceId).changes;
  }

  putLayer(l: LayerRecord): void {
    this.q('INSERT OR IGNORE INTO layers (digest, size, stored_size, created_ms) VALUES (?, ?, ?, ?)').run(l.digest, l.size, l.storedSize, l.createdAtMs);
  }

  getLayer(digest: string): LayerRecord | undefined {
    const r = this.q('SELECT * FROM layers WHERE digest = ?').get(digest) as LayerRow | undefined;
    return r && { digest: r.digest, size: r.size, storedSize: r.stored_size, createdAtMs: r.created_ms };
  }

  deleteLayer(digest: string): boolean {
    return this.q('DELETE FROM layers WHERE digest = ?').run(digest).changes > 0;
  }

  addImage(img: ImageRecord): void {
    this.images.drop(img.name);
    try {
      this
        .q('INSERT INTO images (name, owner, public, parent, layers, size, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)')
        .run(img.name, img.owner, img.public ? 1 : 0, img.parent, JSON.stringify(img.layers), img.sizeBytes, img.createdAtMs);
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError(`image ${img.name} already exists`, { cause: err });
      throw err;
    }
  }

  getImage(name: string): ImageRecord | undefined {
    return this.images.get(name, () => {
      const r = this.q('SELECT * FROM images WHERE name = ?').get(name) as ImageRow | undefined;
      return r && imageOf(r);
    });
  }

  listImages(): ImageRecord[] {
    return (this.q('SELECT * FROM images ORDER BY name').all() as ImageRow[]).map(imageOf);
  }

  deleteImage(name: string): boolean {
    this.images.drop(name);
    return this.q('DELETE FROM images WHERE name = ?').run(name).changes > 0;
  }

  addVolume(v: VolumeRecord): void {
    try {
      this.q('INSERT INTO volumes (id, owner, name, created_ms) VALUES (?, ?, ?, ?)').run(v.id, v.owner, v.name, v.createdAtMs);
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError(`volume ${v.name} already exists`, { cause: err });
      throw err;
    }
  }

  getVolume(id: string): VolumeRecord | undefined {
    const r = this.q('SELECT * FROM volumes WHERE id = ?').get(id) as VolumeRow | undefined;
    return r && volumeOf(r);
  }

  listVolumes(filter: { owner?: string } = {}): VolumeRecord[] {
    const rows = (filter.owner !== undefined
      ? this.q('SELECT * FROM volumes WHERE owner = ? ORDER BY name').all(filter.owner)
      : this.q('SELECT * FROM volumes ORDER BY owner, name').all()) as VolumeRow[];
    return rows.map(volumeOf);
  }

  deleteVolume(id: string): boolean {
    return this.q('DELETE FROM volumes WHERE id = ?').run(id).changes > 0;
  }

  getCursor(): number | undefined {
    const r = this.q('SELECT log_id FROM oar_cursor WHERE one = 1').get() as { log_id: number } | undefined;
    return r?.log_id;
  }

  setCursor(logId: number): void {
    this.batched();
    this.q('INSERT INTO oar_cursor (one, log_id) VALUES (1, ?) ON CONFLICT (one) DO UPDATE SET log_id = MAX(log_id, excluded.log_id)').run(logId);
  }

  getIdempotent(owner: string, key: string): string | undefined {
    const r = this.q('SELECT result FROM idempotency WHERE owner = ? AND key = ?').get(owner, key) as { result: string } | undefined;
    return r?.result;
  }

  putIdempotent(owner: string, key: string, resultJson: string, nowMs: number): void {
    this.q('INSERT OR IGNORE INTO idempotency (owner, key, result, created_ms) VALUES (?, ?, ?, ?)').run(owner, key, resultJson, nowMs);
  }

  /** All or nothing (nested: a savepoint, so an inner failure undoes only its own writes). */
  transaction<T>(fn: () => T): T {
    this.depth++;
    try {
      return this.db.transaction(fn)();
    } finally {
      this.depth--;
    }
  }

  /**
   * Group commit for the writes that come in bursts, one per instance event (reported
   * states, the OAR cursor): they join one transaction committed on the next turn of the
   * event loop, instead of one commit each (20,000 instances started at once make ~60,000
   * of them). Reads on this connection see them at once; a crash loses at most that turn's
   * reports, which the next relist of the agents brings back.
   */
  private batched(): void {
    if (this.db.inTransaction) return;
    this.q('BEGIN').run();
    this.batchOpen = true;
    setImmediate(() => this.commitBatch());
  }

  private commitBatch(): void {
    if (!this.batchOpen) return;
    this.batchOpen = false;
    try {
      this.q('COMMIT').run();
    } catch (err) {
      // Nothing of that turn was kept: forget what the caches may hold of it.
      if (this.db.inTransaction) this.q('ROLLBACK').run();
      this.jobs.clear();
      this.networks.clear();
      this.images.clear();
      this.onBatchError(err);
    }
  }

  /** Called when a group commit fails (the daemon logs it); its writes are lost. */
  onBatchError: (err: unknown) => void = () => undefined;

  close(): void {
    this.commitBatch();
    this.db.close();
  }
}
