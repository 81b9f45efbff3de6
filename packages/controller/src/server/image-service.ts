/**
 * ImageService and VolumeService: the gRPC edge of the image store (images/catalog.ts)
 * and of volumes (images/volumes.ts). Proto in, domain calls, proto out.
 */
import * as grpc from '@grpc/grpc-js';
import { PassThrough } from 'node:stream';
import {
  ImageServiceService,
  VolumeServiceService,
  type FetchLayerRequest,
  type Image,
  type ImageServiceServer,
  type ImportImageChunk,
  type LayerChunk,
  type Volume,
  type VolumeServiceServer,
} from '@oarcloud/api';
import { errFields, InvalidArgumentError, streamContext, toGrpcStatus, withUnimplemented, type CallContext } from '@oarcloud/common';
import type { ImageRecord } from '../domain.js';
import type { VolumeInfo } from '../images/volumes.js';
import type { ServiceDeps } from './deps.js';
import { visibleInstance } from './instance-service.js';

export function imageToProto(i: ImageRecord): Image {
  return { name: i.name, layers: [...i.layers], sizeBytes: i.sizeBytes, owner: i.owner, public: i.public, parent: i.parent, createdAtMs: i.createdAtMs };
}

export function volumeToProto(v: VolumeInfo): Volume {
  return { id: v.id, name: v.name, owner: v.owner, createdAtMs: v.createdAtMs, usedBy: [...v.usedBy], sizeBytes: v.sizeBytes };
}

export function imageServiceImpl(d: ServiceDeps): ImageServiceServer {
  const images = d.imageStore;
  return withUnimplemented<ImageServiceServer>(ImageServiceService, {
    listImages: d.grpc.unary('ListImages', async (_req, ctx) => ({ images: images.list(d.auth.caller(ctx)).map(imageToProto) })),
    getImage: d.grpc.unary('GetImage', async (req, ctx) => imageToProto(images.get(d.auth.caller(ctx), req.name))),
    deleteImage: d.grpc.unary('DeleteImage', async (req, ctx) => {
      await images.delete(d.auth.caller(ctx), req.name);
      return {};
    }),
    saveInstance: d.grpc.unary('SaveInstance', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const inst = visibleInstance(d, caller, req.instanceId);
      const img = await images.save(caller, inst, req.name, (node, id) => {
        const agent = d.agents.get(node);
        if (!agent) throw new InvalidArgumentError(`no agent for node ${node}`);
        return agent.exportLayer(id);
      });
      return imageToProto(img);
    }),
    fetchLayer: (call) => fetchLayer(d, call),
    importImage: (call, callback) => importImage(d, call, callback),
  });
}

/** Streams a compressed layer to an agent (node token) or an admin. */
function fetchLayer(d: ServiceDeps, call: grpc.ServerWritableStream<FetchLayerRequest, LayerChunk>): void {
  const started = performance.now();
  const ctx = streamContext('FetchLayer', call);
  const fail = (err: unknown): void => {
    const st = toGrpcStatus(err);
    d.grpc.record('FetchLayer', st.code!, started);
    call.emit('error', st);
  };
  void (async () => {
    d.auth.node(ctx);
    const { total, stream } = await d.imageStore.open(call.request.digest, call.request.offset);
    ctx.signal.addEventListener('abort', () => stream.destroy());
    for await (const chunk of stream) {
      if (!call.write({ data: chunk as Buffer, totalSize: total })) await new Promise((r) => call.once('drain', r));
    }
    d.grpc.record('FetchLayer', grpc.status.OK, started);
    call.end();
  })().catch((err: unknown) => {
    if (!ctx.signal.aborted) d.log.warn('layer not sent', { digest: call.request.digest, ...errFields(err) });
    fail(err);
  });
}

/** Admin: header first, then the uncompressed layer tar as data chunks. */
function importImage(d: ServiceDeps, call: grpc.ServerReadableStream<ImportImageChunk, Image>, callback: grpc.sendUnaryData<Image>): void {
  const started = performance.now();
  const ac = new AbortController();
  call.on('cancelled', () => ac.abort());
  const ctx: CallContext = { method: 'ImportImage', metadata: call.metadata, peer: call.getPeer(), signal: ac.signal };
  const body = new PassThrough({ highWaterMark: 1024 * 1024 });
  // A failed client stream destroys `body` with its error (below): the import's pipeline
  // gets it when there is an import; when there is none (no header yet, or a refused one)
  // nobody else listens, and an unheard 'error' would crash the controller.
  body.on('error', () => undefined);
  let header: { name: string; public: boolean } | undefined;
  let result: Promise<ImageRecord> | undefined;
  const done = (err: unknown, img?: ImageRecord): void => {
    if (err) {
      const st = toGrpcStatus(err);
      d.grpc.record('ImportImage', st.code!, started);
      callback(st);
    } else {
      d.grpc.record('ImportImage', grpc.status.OK, started);
      callback(null, imageToProto(img!));
    }
  };
  let caller;
  try {
    caller = d.auth.admin(ctx);
  } catch (err) {
    return done(err);
  }
  const who = caller;
  call.on('data', (m: ImportImageChunk) => {
    if (!header) {
      if (m.part?.$case !== 'header') {
        call.removeAllListeners('data');
        body.destroy();
        return done(new InvalidArgumentError('the first message must carry the header'));
      }
      header = { name: m.part.value.name, public: m.part.value.public };
      result = d.imageStore.importImage(who, header, body);
      result.then(
        (img) => done(null, img),
        (err: unknown) => {
          call.removeAllListeners('data');
          call.resume();
          done(err);
        },
      );
      return;
    }
    if (m.part?.$case === 'data' && !body.write(m.part.value)) {
      call.pause();
      body.once('drain', () => call.resume());
    }
  });
  call.on('end', () => {
    if (!header) return done(new InvalidArgumentError('no header'));
    body.end();
  });
  call.on('error', (err) => body.destroy(err));
}

export function volumeServiceImpl(d: ServiceDeps): VolumeServiceServer {
  const vols = d.volumes;
  return withUnimplemented<VolumeServiceServer>(VolumeServiceService, {
    createVolume: d.grpc.unary('CreateVolume', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      const key = req.idempotencyKey ? `volume:${req.idempotencyKey}` : '';
      if (key) {
        const prev = d.store.getIdempotent(caller.name, key);
        if (prev) return volumeToProto(await vols.info(vols.get(caller, prev)));
      }
      const v = await vols.create(caller, req.name);
      if (key) d.store.putIdempotent(caller.name, key, v.id, d.now());
      return volumeToProto(await vols.info(v));
    }),
    getVolume: d.grpc.unary('GetVolume', async (req, ctx) => volumeToProto(await vols.info(vols.get(d.auth.caller(ctx), req.id)))),
    listVolumes: d.grpc.unary('ListVolumes', async (req, ctx) => {
      const caller = d.auth.caller(ctx);
      return { volumes: await Promise.all(vols.list(caller, req.allUsers).map(async (v) => volumeToProto(await vols.info(v)))) };
    }),
    deleteVolume: d.grpc.unary('DeleteVolume', async (req, ctx) => {
      await vols.delete(d.auth.caller(ctx), req.id);
      return {};
    }),
  });
}
