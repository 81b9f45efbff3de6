/**
 * The controller's durable desired state. One interface, so a PostgreSQL store can follow
 * the SQLite one (`sqlite.ts`). All methods are synchronous and atomic on their own;
 * `transaction` groups several into one atomic unit.
 */
import type { AttachmentRecord, DesiredState, ImageRecord, InstanceRecord, LayerRecord, NetworkRecord, JobRecord, LaunchSpec, ReportedState, Role, UserRecord, VolumeRecord } from '../domain.js';

export interface InstanceFilter {
  jobId?: number;
  owner?: string;
  node?: string;
  /** Leave out instances whose desired state is `deleted` and that are reported deleted. */
  liveOnly?: boolean;
}

export interface Store {
  // ---- users and tokens (tokens are stored as sha256 hex of the token)
  /** AlreadyExistsError when the user exists. */
  addUser(name: string, role: Role, tokenHash: string, nowMs: number): UserRecord;
  getUser(name: string): UserRecord | undefined;
  listUsers(): UserRecord[];
  /** Removes the user and revokes their tokens; false when absent. */
  removeUser(name: string): boolean;
  /** Revokes the user's tokens and stores this one. NotFoundError when the user is absent. */
  replaceToken(name: string, tokenHash: string, nowMs: number): void;
  userByTokenHash(tokenHash: string): UserRecord | undefined;
  hasAdmin(): boolean;

  // ---- launch specs
  putSpec(spec: LaunchSpec): void;
  getSpec(id: string): LaunchSpec | undefined;

  // ---- jobs
  getJob(id: number): JobRecord | undefined;
  /** Jobs, newest first; `owner` narrows to one user, `notEnded` to live ones. */
  listJobs(filter?: { owner?: string; notEnded?: boolean }): JobRecord[];
  /** Inserts or replaces the whole record. */
  putJob(job: JobRecord): void;
  /** Updates some fields; NotFoundError when absent. Returns the new record. */
  updateJob(id: number, patch: Partial<Omit<JobRecord, 'id'>>): JobRecord;

  // ---- instances
  /** Inserts them all or none (AlreadyExistsError on a duplicate id or live name in a job). */
  addInstances(list: InstanceRecord[]): void;
  getInstance(id: string): InstanceRecord | undefined;
  listInstances(filter?: InstanceFilter): InstanceRecord[];
  setDesired(id: string, desired: DesiredState, nowMs: number): void;
  /**
   * Records what an agent reported; no-op for an unknown id. Returns the instance's job id
   * when the state or reason changed, undefined otherwise (unchanged or unknown).
   */
  setReported(id: string, reported: ReportedState, reason: string, nowMs: number): number | undefined;
  /** Marks every instance of the job desired deleted; returns how many changed. */
  deleteJobInstances(jobId: number, nowMs: number): number;

  // ---- networks and their addresses
  /** AlreadyExistsError on a duplicate id, vni, subnet or (job, name). */
  addNetwork(n: NetworkRecord): void;
  getNetwork(id: string): NetworkRecord | undefined;
  /** Live networks (a deleted network's row is gone, so its subnet and vni are free again). */
  listNetworks(filter?: { jobId?: number }): NetworkRecord[];
  /** Deletes the network and its attachments; false when absent. */
  deleteNetwork(id: string): boolean;
  /** All or none; AlreadyExistsError when an address is taken in its network. */
  addAttachments(list: AttachmentRecord[]): void;
  /** By instance (ordered by interface index) or by network. */
  listAttachments(filter: { instanceId?: string; networkId?: string }): AttachmentRecord[];
  /** Nodes hosting live (not deleted) instances attached to a network, sorted. */
  networkNodes(networkId: string): string[];
  /** Frees an instance's addresses; returns how many. */
  deleteAttachments(instanceId: string): number;

  // ---- image layers (blobs on disk, see images/blobs.ts) and images
  /** Inserts; a layer already recorded is kept. */
  putLayer(l: LayerRecord): void;
  getLayer(digest: string): LayerRecord | undefined;
  deleteLayer(digest: string): boolean;
  /** AlreadyExistsError when the name is taken. */
  addImage(img: ImageRecord): void;
  getImage(name: string): ImageRecord | undefined;
  /** Every image, by name (visibility is the caller's business). */
  listImages(): ImageRecord[];
  deleteImage(name: string): boolean;

  // ---- volumes
  /** AlreadyExistsError when the owner has a volume of that name. */
  addVolume(v: VolumeRecord): void;
  getVolume(id: string): VolumeRecord | undefined;
  listVolumes(filter?: { owner?: string }): VolumeRecord[];
  deleteVolume(id: string): boolean;

  // ---- OAR replay cursor: the last job_state_logs id applied
  getCursor(): number | undefined;
  setCursor(logId: number): void;

  // ---- idempotency keys: (owner, key) → the JSON result of the first call
  getIdempotent(owner: string, key: string): string | undefined;
  putIdempotent(owner: string, key: string, resultJson: string, nowMs: number): void;

  transaction<T>(fn: () => T): T;
  close(): void;
}
