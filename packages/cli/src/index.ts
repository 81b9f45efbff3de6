export { buildProgram, CLI_VERSION, runCli, type CliRuntime } from './program.js';
export { EXIT, exitCodeOf } from './exit-codes.js';
