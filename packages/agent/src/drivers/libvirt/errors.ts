/**
 * libvirt errors become our typed errors here, and only here (`fromLibvirt`). The original
 * libvirt error is kept as `cause` (a `LibvirtError` carrying libvirt's code and domain),
 * so logs keep the detail while callers only check our classes.
 */
import { AlreadyExistsError, FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError, UnavailableError, type OarcloudError } from '@oarcloud/common';
import type { NativeError } from './native.js';

/** libvirt's virErrorNumber values the driver distinguishes. */
export const VIR_ERR = {
  INTERNAL_ERROR: 1,
  NO_SUPPORT: 3,
  NO_CONNECT: 5,
  INVALID_CONN: 6,
  INVALID_DOMAIN: 7,
  INVALID_ARG: 8,
  OPERATION_FAILED: 9,
  XML_ERROR: 27,
  DOM_EXIST: 28,
  XML_DETAIL: 35,
  SYSTEM_ERROR: 38,
  RPC: 39,
  NO_DOMAIN: 42,
  OPERATION_INVALID: 55,
  CONFIG_UNSUPPORTED: 67,
  OPERATION_TIMEOUT: 68,
  ARGUMENT_UNSUPPORTED: 74,
  NO_DOMAIN_METADATA: 80,
  XML_INVALID_SCHEMA: 92,
} as const;

/** virErrorDomain values used below. */
export const VIR_FROM = { RPC: 7, REMOTE: 13 } as const;

/** A libvirt error as libvirt reported it. */
export class LibvirtError extends Error {
  override readonly name = 'LibvirtError';
  constructor(
    readonly code: number,
    readonly domain: number,
    message: string,
    /** The libvirt call that failed. */
    readonly call: string,
  ) {
    super(message);
  }
}

/** Does this error mean the connection to libvirtd is unusable (reconnect and retry)? */
export function isConnectionLost(err: unknown): boolean {
  const lv = err instanceof LibvirtError ? err : err instanceof Error && err.cause instanceof LibvirtError ? err.cause : undefined;
  if (!lv) return false;
  return lv.code === VIR_ERR.NO_CONNECT || lv.code === VIR_ERR.INVALID_CONN || lv.code === VIR_ERR.RPC || (lv.code === VIR_ERR.SYSTEM_ERROR && lv.domain === VIR_FROM.RPC);
}

/** The one mapping from a libvirt error to our error classes. */
export function fromLibvirt(call: string, native: NativeError | undefined): OarcloudError {
  const lv = new LibvirtError(native?.code ?? 0, native?.domain ?? 0, native?.message ?? `${call} failed without a libvirt error`, call);
  const message = `${call}: ${lv.message}`;
  switch (lv.code) {
    case VIR_ERR.NO_DOMAIN:
      return new NotFoundError(message, { cause: lv });
    case VIR_ERR.DOM_EXIST:
      return new AlreadyExistsError(message, { cause: lv });
    case VIR_ERR.XML_ERROR:
    case VIR_ERR.XML_DETAIL:
    case VIR_ERR.XML_INVALID_SCHEMA:
    case VIR_ERR.INVALID_ARG:
    case VIR_ERR.CONFIG_UNSUPPORTED:
    case VIR_ERR.ARGUMENT_UNSUPPORTED:
      return new InvalidArgumentError(message, { cause: lv });
    // Not valid in the domain's current state: not running, already running, transient.
    case VIR_ERR.OPERATION_INVALID:
      return new FailedPreconditionError(message, { cause: lv });
    case VIR_ERR.NO_CONNECT:
    case VIR_ERR.INVALID_CONN:
    case VIR_ERR.RPC:
    case VIR_ERR.OPERATION_TIMEOUT:
      return new UnavailableError(message, { cause: lv });
    case VIR_ERR.SYSTEM_ERROR:
      return lv.domain === VIR_FROM.RPC ? new UnavailableError(message, { cause: lv }) : new InternalError(message, { cause: lv });
    default:
      return new InternalError(message, { cause: lv });
  }
}
