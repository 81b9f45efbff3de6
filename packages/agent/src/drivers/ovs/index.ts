export * from './vswitch.js';
export { OvsVSwitch, type OvsOptions } from './ovs.js';
export { FakeVSwitch } from './fake.js';
