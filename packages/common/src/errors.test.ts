import { Metadata, status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { AlreadyExistsError, fromGrpcError, grpcCodeOf, InvalidArgumentError, NotFoundError, toGrpcStatus } from './errors.js';

describe('errors - gRPC status table', () => {
  it('maps our classes to their codes and anything else to INTERNAL', () => {
    expect(grpcCodeOf(new NotFoundError('x'))).toBe(status.NOT_FOUND);
    expect(grpcCodeOf(new AlreadyExistsError('x'))).toBe(status.ALREADY_EXISTS);
    expect(grpcCodeOf(new TypeError('boom'))).toBe(status.INTERNAL);
  });
  it('hides the message of foreign errors from callers', () => {
    expect(toGrpcStatus(new Error('secret path /etc/x')).details).toBe('internal error');
    expect(toGrpcStatus(new InvalidArgumentError('bad vcpus')).details).toBe('bad vcpus');
    const long = toGrpcStatus(new NotFoundError(`no instance ${'x'.repeat(300_000)}`)).details!;
    expect(long.length).toBeLessThanOrEqual(1024);
    expect(long).toMatch(/^no instance x+… \(300012 chars\)$/);
  });
  it('maps a status back to our class, keeping the cause', () => {
    const se = Object.assign(new Error('5 NOT_FOUND: no such instance'), { code: status.NOT_FOUND, details: 'no such instance', metadata: new Metadata() });
    const back = fromGrpcError(se);
    expect(back).toBeInstanceOf(NotFoundError);
    expect(back.message).toBe('no such instance');
    expect(back.cause).toBe(se);
  });
});
