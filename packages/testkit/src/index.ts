/**
 * Shared helpers for tests: prerequisites of integration tests, launchers of real daemons
 * on random ports, polling. Private to the repository.
 */
export { waitFor } from './wait.js';
export * from './prereq.js';
export * from './grpc.js';
export * from './fake-agent.js';
export * from './images.js';
export * from './processes.js';
export * from './cluster.js';
