import { describe, expect, it } from 'vitest';
import { transportReason } from './program.js';

describe('cli messages', () => {
  it('transportReason - keeps what went wrong from grpc-js connection errors, nothing else', () => {
    expect(transportReason('No connection established. Last error: Error: unable to verify the first certificate. Resolution note: ')).toBe('unable to verify the first certificate');
    expect(transportReason('No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:17000. Resolution note: ')).toBe('connect ECONNREFUSED 127.0.0.1:17000');
    expect(transportReason('No connection established. Last error: read ECONNRESET')).toBe('read ECONNRESET');
    expect(transportReason('Deadline exceeded after 30.001s')).toBe('Deadline exceeded after 30.001s');
  });
});
