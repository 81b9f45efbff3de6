/**
 * One vitest configuration for the whole repository, with five projects:
 * - unit: `packages/*\/src/**\/*.test.ts`, fast, against fakes, no root needed;
 * - integration: `test/integration/**`, against the real libvirtd, OVS, cgroups, NATS, OAR;
 * - e2e: `test/e2e/**`, whole scenarios on the local cluster;
 * - faults: `test/faults/**`, rounds of kill -9 at random points of job start and end on the
 *   local cluster, then the invariants (OARCLOUD_FAULT_ROUNDS, OARCLOUD_FAULT_SEED);
 * - fuzz: `test/fuzz/**`, bad input (fast-check) against the live servers and the CLI.
 * Workspace packages resolve to their TypeScript sources, so tests need no build.
 * Integration, e2e, faults and fuzz files share real host resources (libvirtd, OVS, cgroups, OAR): run
 * them one file at a time (`--no-file-parallelism`, as scripts/test.sh does).
 */
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

const root = fileURLToPath(new URL('.', import.meta.url));
const alias = [{ find: /^@oarcloud\/([a-z]+)$/, replacement: `${root}packages/$1/src/index.ts` }];

export default defineConfig({
  resolve: { alias },
  test: {
    projects: [
      {
        resolve: { alias },
        test: { name: 'unit', include: ['packages/*/src/**/*.test.ts', 'tools/**/*.test.ts'], environment: 'node', testTimeout: 10_000 },
      },
      {
        resolve: { alias },
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          environment: 'node',
          testTimeout: 120_000,
          hookTimeout: 180_000,
        },
      },
      {
        resolve: { alias },
        test: {
          name: 'e2e',
          include: ['test/e2e/**/*.test.ts'],
          environment: 'node',
          testTimeout: 300_000,
          hookTimeout: 300_000,
        },
      },
      {
        resolve: { alias },
        test: {
          name: 'faults',
          include: ['test/faults/**/*.test.ts'],
          environment: 'node',
          testTimeout: 600_000,
          hookTimeout: 300_000,
        },
      },
      {
        resolve: { alias },
        test: {
          name: 'fuzz',
          include: ['test/fuzz/**/*.test.ts'],
          environment: 'node',
          testTimeout: 300_000,
          hookTimeout: 120_000,
        },
      },
    ],
  },
});
