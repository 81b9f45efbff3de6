/** Image drivers: the layer store and instance root filesystems (real and fake of each). */
export * from './layers.js';
export * from './rootfs.js';
export { parseMountinfo, readMountinfo, type MountEntry } from './mountinfo.js';
export { FakeRecorder, type RecordedCall } from './fake-recorder.js';
