/**
 * Calling a ts-proto grpc-js client as a promise, with a deadline, and errors mapped back
 * to our classes (`fromGrpcError`), so callers `catch (e) { if (e instanceof NotFoundError) }`.
 */
import { Metadata, type CallOptions, type ClientUnaryCall, type ServiceError } from '@grpc/grpc-js';
import { fromGrpcError } from './errors.js';

type UnaryMethod<Req, Res> = (
  req: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (err: ServiceError | null, res: Res) => void,
) => ClientUnaryCall;

export interface CallOpts {
  /** Deadline in milliseconds from now (default 30 s). */
  timeoutMs?: number;
  metadata?: Metadata;
  signal?: AbortSignal;
}

export function callUnary<Req, Res>(method: UnaryMethod<Req, Res>, req: Req, opts: CallOpts = {}): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    const call = method(req, opts.metadata ?? new Metadata(), { deadline: Date.now() + (opts.timeoutMs ?? 30_000) }, (err, res) => {
      opts.signal?.removeEventListener('abort', onAbort);
      if (err) reject(fromGrpcError(err));
      else resolve(res);
    });
    const onAbort = (): void => call.cancel();
    opts.signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Metadata carrying a bearer token. */
export function bearer(token: string): Metadata {
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}
