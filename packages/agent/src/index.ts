/**
 * The agent's public surface: start it, and the host drivers that tools (benchmarks, the
 * image importer) reuse.
 */
export { startAgent, layerStoreRoot, type AgentDrivers, type RunningAgent } from './agent.js';
export { fakeDrivers, type FakeDriverOptions } from './drivers/fake/drivers.js';
export { loadAgentConfig, AgentConfigSchema, type AgentConfig } from './config.js';
export { domainName, OARCLOUD_METADATA_NS, type ContainerRuntime, type DomainSpec } from './drivers/runtime.js';
export { domainXml } from './drivers/libvirt/domain-xml.js';
export { DirLayerStore, OverlayRootfs, type LayerStore, type RootfsManager } from './drivers/images/index.js';
export { HostCgroups, type CgroupManager } from './drivers/cgroups/index.js';
export { InstanceManager, type ReconcileReport } from './instances/manager.js';
export type { InstanceSpec, InstanceRecord, InstanceState } from './instances/model.js';
