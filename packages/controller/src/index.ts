/** The controller as a library (tools, benchmarks): start it in-process. */
export { startController, type ControllerDeps, type RunningController } from './controller.js';
export { loadControllerConfig, ControllerConfigSchema, type ControllerConfig } from './config.js';
export { placeInstances } from './placement/placement.js';
