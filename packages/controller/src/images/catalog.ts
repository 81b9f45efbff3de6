/**
 * The image store of the controller: images (`name:tag`, owner, public or private,
 * parent) over content-addressed layers kept as gzip blobs (`blobs.ts`), with metadata in
 * the Store. Visibility: public images and the caller's own private ones; admins see all;
 * anything else is NOT_FOUND, exactly as if it did not exist.
 *
 * Images come from: the config (`images:` with `dir`, imported at start, public, owner
 * root), `ImportImage` (admins), `SaveInstance` (a user's private image on top of their
 * instance's image). Config entries with `layers` instead of `dir` are declared only (no
 * blob): the nodes must have those layers already (tests and simulations).
 */
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  AlreadyExistsError,
  errFields,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  type Logger,
} from '@oarcloud/common';
import type { Caller, ImageRecord } from '../domain.js';
import type { ImageCatalog } from '../jobs/images.js';
import type { Store } from '../store/store.js';
import { checkDigest, type LayerBlobs } from './blobs.js';
import { parseImageName } from './names.js';

/** A layer source from the agent of an instance (AgentService.ExportLayer). */
export type LayerExporter = (node: string, instanceId: string) => Readable;

export interface ImageStoreOptions {
  store: Store;
  blobs: LayerBlobs;
  log: Logger;
  now: () => number;
  /** Biggest layer accepted (uncompressed), default 64 GiB. */
  maxLayerBytes?: number;
}

/** Images declared or imported from the configuration at start. */
export type ConfiguredImage = { name: string; layers: string[] } | { dir: string; name?: string };

export class ImageStore implements ImageCatalog {
  constructor(private readonly o: ImageStoreOptions) {}

  private visible(img: ImageRecord | undefined, caller: Caller | undefined): img is ImageRecord {
    return !!img && (img.public || !caller || caller.role === 'admin' || img.owner === caller.name);
  }

  /** ImageCatalog: the layers of an image `owner` may use (any image without owner). */
  resolve(name: string, owner?: string): { name: string; layers: string[] } | undefined {
    let canon: string;
    try {
      canon = parseImageName(name);
    } catch {
      return undefined;
    }
    const img = this.o.store.getImage(canon);
    if (!img || (owner !== undefined && !img.public && img.owner !== owner && !this.isAdmin(owner))) return undefined;
    return { name: img.name, layers: [...img.layers] };
  }

  private isAdmin(user: string): boolean {
    return this.o.store.getUser(user)?.role === 'admin';
  }

  list(caller: Caller): ImageRecord[] {
    return this.o.store.listImages().filter((i) => this.visible(i, caller));
  }

  get(caller: Caller, name: string): ImageRecord {
    const canon = parseImageName(name);
    const img = this.o.store.getImage(canon);
    if (!this.visible(img, caller)) throw new NotFoundError(`no image ${canon}`);
    return img;
  }

  /** Imports one uncompressed layer tar as a new image. */
  async importImage(caller: Caller, header: { name: string; public: boolean }, source: Readable): Promise<ImageRecord> {
    const name = parseImageName(header.name);
    if (this.o.store.getImage(name)) {
      source.destroy();
      throw new AlreadyExistsError(`image ${name} already exists`);
    }
    const blob = await this.o.blobs.put(source, { maxBytes: this.o.maxLayerBytes });
    return this.register({ name, owner: caller.name, public: header.public, parent: '', layers: [blob.digest], blobs: [blob] });
  }

  /**
   * Saves an instance's writable layer (streamed by `exporter`) as `name`, the caller's
   * private image on top of the instance's image.
   */
  async save(caller: Caller, inst: { id: string; node: string; image: string; owner: string }, name: string, exporter: LayerExporter): Promise<ImageRecord> {
    const canon = parseImageName(name);
    if (this.o.store.getImage(canon)) throw new AlreadyExistsError(`image ${canon} already exists`);
    const base = this.o.store.getImage(parseImageName(inst.image));
    if (!base) throw new FailedPreconditionError(`the image of instance ${inst.id} (${inst.image}) no longer exists`);
    if (base.layers.length >= 63) throw new FailedPreconditionError(`image ${base.name} has ${base.layers.length} layers: no more can be added`);
    const t0 = performance.now();
    const blob = await this.o.blobs.put(exporter(inst.node, inst.id), { maxBytes: this.o.maxLayerBytes });
    const img = this.register({ name: canon, owner: caller.name, public: false, parent: base.name, layers: [...base.layers, blob.digest], blobs: [blob] });
    this.o.log.info('instance saved', { instanceId: inst.id, image: canon, layer: blob.digest, bytes: blob.size, ms: Math.round(performance.now() - t0) });
    return img;
  }

  /** Records layers then the image, in one transaction; a failure removes blobs nobody uses. */
  private register(r: { name: string; owner: string; public: boolean; parent: string; layers: string[]; blobs: Array<{ digest: string; size: number; storedSize: number }> }): ImageRecord {
    const now = this.o.now();
    const sizeOf = (d: string): number => r.blobs.find((b) => b.digest === d)?.size ?? this.o.store.getLayer(d)?.size ?? 0;
    const img: ImageRecord = {
      name: r.name,
      owner: r.owner,
      public: r.public,
      parent: r.parent,
      layers: r.layers,
      sizeBytes: r.layers.reduce((a, d) => a + sizeOf(d), 0),
      createdAtMs: now,
    };
    try {
      this.o.store.transaction(() => {
        for (const b of r.blobs) this.o.store.putLayer({ digest: b.digest, size: b.size, storedSize: b.storedSize, createdAtMs: now });
        this.o.store.addImage(img);
      });
    } catch (err) {
      void this.collect(r.blobs.map((b) => b.digest));
      throw err;
    }
    return img;
  }

  /**
   * Deletes an image: its owner or an admin; a public image of someone else is
   * PERMISSION_DENIED, a private one NOT_FOUND. In use by a live instance or the parent of
   * another image: FAILED_PRECONDITION, nothing changed.
   */
  async delete(caller: Caller, name: string): Promise<void> {
    const img = this.get(caller, name);
    if (img.owner !== caller.name && caller.role !== 'admin') throw new PermissionDeniedError(`image ${img.name} belongs to ${img.owner}`);
    const layers = this.o.store.transaction(() => {
      const users = this.o.store.listInstances({ liveOnly: true }).filter((i) => i.desired !== 'deleted' && sameImage(i.image, img.name));
      if (users.length > 0) throw new FailedPreconditionError(`image ${img.name} is used by ${users.length} instance(s): ${users.slice(0, 5).map((i) => i.id).join(', ')}`);
      const children = this.o.store.listImages().filter((i) => i.parent === img.name);
      if (children.length > 0) throw new FailedPreconditionError(`image ${img.name} is the parent of ${children.map((i) => i.name).join(', ')}`);
      this.o.store.deleteImage(img.name);
      return img.layers;
    });
    await this.collect(layers);
    this.o.log.info('image deleted', { image: img.name, by: caller.name });
  }

  /** Removes the blobs and records of these layers that no image refers to any more. */
  private async collect(digests: string[]): Promise<void> {
    const used = new Set(this.o.store.listImages().flatMap((i) => i.layers));
    for (const d of new Set(digests)) {
      if (used.has(d)) continue;
      try {
        this.o.store.deleteLayer(d);
        await this.o.blobs.remove(d);
        this.o.log.info('layer removed', { digest: d });
      } catch (err) {
        this.o.log.warn('layer not removed', { digest: d, ...errFields(err) });
      }
    }
  }

  /** FetchLayer: the compressed blob from `offset`, and its total size. */
  async open(digest: string, offset: number): Promise<{ total: number; stream: Readable }> {
    checkDigest(digest);
    if (!this.o.store.getLayer(digest)) throw new NotFoundError(`no layer ${digest}`);
    const total = await this.o.blobs.storedSize(digest);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > total) throw new InvalidArgumentError(`offset ${offset} is outside the layer (${total} bytes)`);
    return { total, stream: this.o.blobs.open(digest, offset) };
  }

  /**
   * Start-up: imports the configured images. `dir` entries (image.json + layer.tar, as
   * tools/images makes them) become public images owned by root; a name already present
   * with the same layers is kept, with other layers it is replaced when nothing uses it.
   * `layers` entries are declared (no blob). Failures are logged, never fatal.
   */
  async importConfigured(list: readonly ConfiguredImage[]): Promise<void> {
    for (const entry of list) {
      try {
        if ('layers' in entry) await this.declare(entry.name, entry.layers);
        else await this.importDir(entry.dir, entry.name);
      } catch (err) {
        this.o.log.warn('configured image not imported', { entry: JSON.stringify(entry), ...errFields(err) });
      }
    }
  }

  private async declare(rawName: string, layers: string[]): Promise<void> {
    const name = parseImageName(rawName);
    for (const l of layers) checkDigest(l);
    const cur = this.o.store.getImage(name);
    if (cur && cur.layers.join() === layers.join()) return;
    if (cur) await this.delete({ name: 'root', role: 'admin' }, name);
    const now = this.o.now();
    this.o.store.transaction(() => {
      for (const l of layers) this.o.store.putLayer({ digest: l, size: 0, storedSize: 0, createdAtMs: now });
      this.o.store.addImage({ name, owner: 'root', public: true, parent: '', layers: [...layers], sizeBytes: 0, createdAtMs: now });
    });
  }

  private async importDir(dir: string, nameOverride?: string): Promise<void> {
    const manifest = JSON.parse(await readFile(join(dir, 'image.json'), 'utf8')) as { name?: string; layers?: string[] };
    if (!manifest.name || !Array.isArray(manifest.layers) || manifest.layers.length !== 1) {
      throw new InvalidArgumentError(`${dir}/image.json: expected a name and exactly one layer`);
    }
    const name = parseImageName(nameOverride ?? manifest.name);
    const digest = manifest.layers[0]!;
    checkDigest(digest);
    const cur = this.o.store.getImage(name);
    if (cur && cur.layers.length === 1 && cur.layers[0] === digest && (await this.o.blobs.has(digest))) return;
    const t0 = performance.now();
    const blob = (await this.o.blobs.has(digest)) && this.o.store.getLayer(digest)?.storedSize
      ? this.o.store.getLayer(digest)!
      : await this.o.blobs.put(createReadStream(join(dir, 'layer.tar')), { expect: digest });
    if (cur) await this.delete({ name: 'root', role: 'admin' }, name);
    const now = this.o.now();
    this.o.store.transaction(() => {
      this.o.store.deleteLayer(digest);
      this.o.store.putLayer({ digest, size: blob.size, storedSize: blob.storedSize, createdAtMs: now });
      this.o.store.addImage({ name, owner: 'root', public: true, parent: '', layers: [digest], sizeBytes: blob.size, createdAtMs: now });
    });
    this.o.log.info('image imported', { image: name, digest, bytes: blob.size, storedBytes: blob.storedSize, ms: Math.round(performance.now() - t0) });
  }
}

/** Instances record the name as asked (`tiny` or `tiny:latest`). */
function sameImage(asked: string, name: string): boolean {
  try {
    return parseImageName(asked) === name;
  } catch {
    return false;
  }
}
