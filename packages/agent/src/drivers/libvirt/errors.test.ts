import { describe, expect, it } from 'vitest';
import { AlreadyExistsError, FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError, UnavailableError } from '@oarcloud/common';
import { fromLibvirt, isConnectionLost, LibvirtError, VIR_ERR, VIR_FROM } from './errors.js';

describe('fromLibvirt', () => {
  it.each([
    [VIR_ERR.NO_DOMAIN, 0, NotFoundError],
    [VIR_ERR.DOM_EXIST, 0, AlreadyExistsError],
    [VIR_ERR.XML_ERROR, 0, InvalidArgumentError],
    [VIR_ERR.XML_DETAIL, 0, InvalidArgumentError],
    [VIR_ERR.INVALID_ARG, 0, InvalidArgumentError],
    [VIR_ERR.OPERATION_INVALID, 0, FailedPreconditionError],
    [VIR_ERR.NO_CONNECT, 0, UnavailableError],
    [VIR_ERR.RPC, 0, UnavailableError],
    [VIR_ERR.SYSTEM_ERROR, VIR_FROM.RPC, UnavailableError],
    [VIR_ERR.SYSTEM_ERROR, 0, InternalError],
    [VIR_ERR.INTERNAL_ERROR, 0, InternalError],
    [VIR_ERR.OPERATION_FAILED, 0, InternalError],
  ])('libvirt errors - code %i (domain %i) becomes its typed class, with the libvirt error as cause', (code, domain, cls) => {
    const err = fromLibvirt('virDomainX', { code, domain, message: 'boom' });
    expect(err).toBeInstanceOf(cls);
    expect(err.message).toBe('virDomainX: boom');
    expect(err.cause).toBeInstanceOf(LibvirtError);
    expect((err.cause as LibvirtError).code).toBe(code);
    expect((err.cause as LibvirtError).call).toBe('virDomainX');
  });

  it('libvirt errors - a failure without a libvirt error is an InternalError that says so', () => {
    const err = fromLibvirt('virDomainY', undefined);
    expect(err).toBeInstanceOf(InternalError);
    expect(err.message).toMatch(/without a libvirt error/);
  });

  it('libvirt errors - only connection failures count as a lost connection', () => {
    expect(isConnectionLost(fromLibvirt('c', { code: VIR_ERR.RPC, domain: 0, message: '' }))).toBe(true);
    expect(isConnectionLost(fromLibvirt('c', { code: VIR_ERR.SYSTEM_ERROR, domain: VIR_FROM.RPC, message: '' }))).toBe(true);
    expect(isConnectionLost(fromLibvirt('c', { code: VIR_ERR.NO_DOMAIN, domain: 0, message: '' }))).toBe(false);
    expect(isConnectionLost(new Error('x'))).toBe(false);
  });
});
