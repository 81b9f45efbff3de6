import { describe, expect, it } from 'vitest';
import { formatCpuset, parseCpuset } from './cpuset.js';
import { InvalidArgumentError } from './errors.js';

describe('cpuset - parse and format', () => {
  it('parses ranges and singles, sorted and deduplicated', () => {
    expect(parseCpuset('4,0-2,2')).toEqual([0, 1, 2, 4]);
    expect(parseCpuset('')).toEqual([]);
  });
  it('formats back to the shortest list', () => {
    expect(formatCpuset([0, 1, 2, 4, 6, 7])).toBe('0-2,4,6-7');
    expect(formatCpuset(parseCpuset('3-5,1'))).toBe('1,3-5');
  });
  it.each(['a', '1-', '3-1', '0,,1', '99999', '-1', '1;2'])('refuses %j', (bad) => {
    expect(() => parseCpuset(bad)).toThrow(InvalidArgumentError);
  });
});
