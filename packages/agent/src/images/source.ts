/**
 * Layers from the controller: ImageService.FetchLayer over gRPC, authenticated with the
 * node token (read from its file at each fetch, so a rotated token needs no restart).
 */
import { readFileSync } from 'node:fs';
import { Transform } from 'node:stream';
import { credentials, type ChannelCredentials } from '@grpc/grpc-js';
import { ImageServiceClient, type LayerChunk } from '@oarcloud/api';
import { bearer, fromGrpcError, tlsChannelOptions, UnauthenticatedError } from '@oarcloud/common';
import type { LayerSource } from './cache.js';

export class GrpcLayerSource implements LayerSource {
  private readonly client: ImageServiceClient;

  constructor(
    address: string,
    private readonly tokenFile: string,
    creds: ChannelCredentials = credentials.createInsecure(),
  ) {
    this.client = new ImageServiceClient(address, creds, { 'grpc.max_receive_message_length': 16 * 1024 * 1024, ...(creds._isSecure() ? tlsChannelOptions(address) : {}) });
  }

  private token(): string {
    try {
      return readFileSync(this.tokenFile, 'utf8').trim();
    } catch (err) {
      throw new UnauthenticatedError(`cannot read the node token ${this.tokenFile}`, { cause: err });
    }
  }

  fetch(digest: string): { stream: Transform; total(): number } {
    let total = -1;
    const call = this.client.fetchLayer({ digest, offset: 0 }, bearer(this.token()), { deadline: Date.now() + 30 * 60_000 });
    const out = new Transform({
      writableObjectMode: true,
      transform(msg: LayerChunk, _enc, cb) {
        total = msg.totalSize;
        cb(null, Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength));
      },
      destroy(err, cb) {
        call.cancel();
        cb(err);
      },
    });
    call.on('error', (err: unknown) => out.destroy(fromGrpcError(err)));
    call.pipe(out);
    return { stream: out, total: () => total };
  }

  close(): void {
    this.client.close();
  }
}
