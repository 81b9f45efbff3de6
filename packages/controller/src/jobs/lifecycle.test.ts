import { describe, expect, it } from 'vitest';
import { actionFor, cloudTypeOf, jobHoldsResources, jobStateOf } from './lifecycle.js';

describe('lifecycle - OAR states', () => {
  it.each([
    ['Waiting', 'pending'],
    ['Hold', 'pending'],
    ['toLaunch', 'pending'],
    ['Launching', 'pending'],
    ['Running', 'running'],
    ['Suspended', 'running'],
    ['Finishing', 'ended'],
    ['Terminated', 'ended'],
    ['Error', 'ended'],
    ['SomethingNew', 'pending'],
  ])('%s is %s', (oar, ours) => {
    expect(jobStateOf(oar)).toBe(ours);
  });

  it('starts instances from Launching on (the server prologue runs then), tears down on the end states', () => {
    expect(actionFor('Waiting')).toBe('none');
    expect(actionFor('toLaunch')).toBe('none');
    expect(actionFor('Launching')).toBe('start');
    expect(actionFor('Running')).toBe('start');
    expect(actionFor('Finishing')).toBe('teardown');
    expect(actionFor('Error')).toBe('teardown');
    expect(jobHoldsResources('Terminated')).toBe(false);
  });

  it('finds the cloud type and its spec id', () => {
    expect(cloudTypeOf(['besteffort', 'cloud'])).toEqual({ specId: '' });
    expect(cloudTypeOf(['cloud=s-0123456789ab'])).toEqual({ specId: 's-0123456789ab' });
    expect(cloudTypeOf(['cloudy', 'deploy'])).toBeUndefined();
    expect(cloudTypeOf([])).toBeUndefined();
  });
});
