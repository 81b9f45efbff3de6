/**
 * Exit codes scripts can rely on, mapped from our error classes in this one table (the
 * controller's gRPC status comes back as one of these classes through `fromGrpcError`).
 *
 *   0 ok
 *   1 any other error
 *   2 usage: bad flag or argument value (nothing was sent), or INVALID_ARGUMENT
 *   3 not found (another user's job or instance is not found either)
 *   4 not authenticated (no/bad/revoked token) or permission denied (admin-only call)
 *   5 refused in the current state: resource exhausted, precondition, already exists, aborted
 *   6 controller unavailable or deadline exceeded (retrying may work)
 *   7 not implemented by this controller yet
 */
import {
  AbortedError,
  AlreadyExistsError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  OarcloudError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
} from '@oarcloud/common';

export const EXIT = {
  ok: 0,
  error: 1,
  usage: 2,
  notFound: 3,
  auth: 4,
  refused: 5,
  unavailable: 6,
  unimplemented: 7,
} as const;

type ErrorClass = abstract new (...args: never[]) => OarcloudError;

const EXIT_CODE_OF: ReadonlyArray<readonly [ErrorClass, number]> = [
  [InvalidArgumentError, EXIT.usage],
  [NotFoundError, EXIT.notFound],
  [UnauthenticatedError, EXIT.auth],
  [PermissionDeniedError, EXIT.auth],
  [ResourceExhaustedError, EXIT.refused],
  [FailedPreconditionError, EXIT.refused],
  [AlreadyExistsError, EXIT.refused],
  [AbortedError, EXIT.refused],
  [UnavailableError, EXIT.unavailable],
  [DeadlineExceededError, EXIT.unavailable],
  [UnimplementedError, EXIT.unimplemented],
];

export function exitCodeOf(err: unknown): number {
  for (const [cls, code] of EXIT_CODE_OF) if (err instanceof cls) return code;
  return EXIT.error;
}

/** The exit-code section of `oarcloud --help`. */
export const EXIT_CODES_HELP = `Exit codes:
  0  ok
  1  other error
  2  bad usage or invalid value (nothing was sent)
  3  not found
  4  not authenticated, or permission denied
  5  refused in the current state (no room, wrong state, already exists)
  6  controller unavailable or timed out
  7  not implemented by this controller yet`;
