/**
 * One error class per condition, each with a stable `name` and an optional `cause`.
 * One table (`GRPC_CODE_OF`) maps them to gRPC status codes; anything else is INTERNAL.
 * Code never matches on message text: it checks `instanceof` or `name`.
 */
import { Metadata, status as GrpcStatus, type ServiceError, type StatusObject } from '@grpc/grpc-js';

export abstract class OarcloudError extends Error {
  abstract override readonly name: string;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export class InvalidArgumentError extends OarcloudError {
  override readonly name = 'InvalidArgumentError';
}
export class NotFoundError extends OarcloudError {
  override readonly name = 'NotFoundError';
}
export class AlreadyExistsError extends OarcloudError {
  override readonly name = 'AlreadyExistsError';
}
export class PermissionDeniedError extends OarcloudError {
  override readonly name = 'PermissionDeniedError';
}
export class UnauthenticatedError extends OarcloudError {
  override readonly name = 'UnauthenticatedError';
}
export class FailedPreconditionError extends OarcloudError {
  override readonly name = 'FailedPreconditionError';
}
export class ResourceExhaustedError extends OarcloudError {
  override readonly name = 'ResourceExhaustedError';
}
export class UnavailableError extends OarcloudError {
  override readonly name = 'UnavailableError';
}
export class DeadlineExceededError extends OarcloudError {
  override readonly name = 'DeadlineExceededError';
}
export class AbortedError extends OarcloudError {
  override readonly name = 'AbortedError';
}
export class UnimplementedError extends OarcloudError {
  override readonly name = 'UnimplementedError';
}
export class InternalError extends OarcloudError {
  override readonly name = 'InternalError';
}

type ErrorClass = new (message: string, options?: { cause?: unknown }) => OarcloudError;

/** The one table from error class to gRPC status code. */
const GRPC_CODE_OF: ReadonlyArray<readonly [ErrorClass, GrpcStatus]> = [
  [InvalidArgumentError, GrpcStatus.INVALID_ARGUMENT],
  [NotFoundError, GrpcStatus.NOT_FOUND],
  [AlreadyExistsError, GrpcStatus.ALREADY_EXISTS],
  [PermissionDeniedError, GrpcStatus.PERMISSION_DENIED],
  [UnauthenticatedError, GrpcStatus.UNAUTHENTICATED],
  [FailedPreconditionError, GrpcStatus.FAILED_PRECONDITION],
  [ResourceExhaustedError, GrpcStatus.RESOURCE_EXHAUSTED],
  [UnavailableError, GrpcStatus.UNAVAILABLE],
  [DeadlineExceededError, GrpcStatus.DEADLINE_EXCEEDED],
  [AbortedError, GrpcStatus.ABORTED],
  [UnimplementedError, GrpcStatus.UNIMPLEMENTED],
  [InternalError, GrpcStatus.INTERNAL],
];

/** The gRPC status code for an error; INTERNAL for anything that is not ours. */
export function grpcCodeOf(err: unknown): GrpcStatus {
  for (const [cls, code] of GRPC_CODE_OF) if (err instanceof cls) return code;
  return GrpcStatus.INTERNAL;
}

/**
 * Turns a thrown error into the status a gRPC handler returns. Our own errors keep their
 * message; any other error is reported as INTERNAL with a generic message (its details go
 * to the log, not to the caller).
 */
/**
 * Longest status message sent. The message travels in an HTTP/2 trailer: one that echoes a
 * huge client string (a 300 kB "id") overflows the peer's header list limit, and the call
 * then never ends for the client (seen with grpc-js: DEADLINE_EXCEEDED instead of the status).
 */
export const MAX_STATUS_DETAILS = 1024;

export function toGrpcStatus(err: unknown): Partial<StatusObject> {
  const code = grpcCodeOf(err);
  const full = err instanceof OarcloudError ? err.message : 'internal error';
  const details = full.length > MAX_STATUS_DETAILS ? `${full.slice(0, MAX_STATUS_DETAILS - 20)}… (${full.length} chars)` : full;
  const metadata = new Metadata();
  if (err instanceof OarcloudError) metadata.set('oarcloud-error', err.name);
  return { code, details, metadata };
}

/** The reverse mapping, used by clients: a gRPC error becomes one of our classes. */
export function fromGrpcError(err: unknown): Error {
  if (!isServiceError(err)) return err instanceof Error ? err : new InternalError(String(err));
  const cls = GRPC_CODE_OF.find(([, code]) => code === err.code)?.[0];
  const message = err.details || err.message;
  if (cls) return new cls(message, { cause: err });
  if (err.code === GrpcStatus.CANCELLED) return new AbortedError(message, { cause: err });
  return new UnavailableError(message, { cause: err });
}

export function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && 'metadata' in err;
}

/** A short human name for a status code (`NOT_FOUND`). */
export function grpcCodeName(code: number): string {
  return GrpcStatus[code] ?? `CODE_${code}`;
}
