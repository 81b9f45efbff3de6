/**
 * Wires the agent together: drivers, instance manager, event publisher, gRPC server, and the
 * reconcile loop (at start, every `reconcileMs`, and soon after any libvirt event).
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import { AgentServiceService, AGENT_SERVICES } from '@oarcloud/api';
import { controllerChannelCredentials, errFields, GrpcServer, InvalidArgumentError, loadTlsMaterial, mtlsServerCredentials, requirePeerRole, startEventPublisher, type Logger, type TlsMaterial } from '@oarcloud/common';
import type { AgentConfig } from './config.js';
import { cgroupUsageOf, HostCgroups, type CgroupManager, type CgroupUsage } from './drivers/cgroups/index.js';
import { DirLayerStore, OverlayRootfs, type LayerStore, type RootfsManager } from './drivers/images/index.js';
import { LibvirtRuntime } from './drivers/libvirt/runtime.js';
import type { ContainerRuntime } from './drivers/runtime.js';
import { NatsInstanceEvents, startHeartbeat } from './events.js';
import { OvsVSwitch } from './drivers/ovs/ovs.js';
import type { VSwitch } from './drivers/ovs/vswitch.js';
import { InstanceManager, type ReconcileReport } from './instances/manager.js';
import { NftGatewayHost, type GatewayHost } from './network/gateway.js';
import { IpLinks, type HostLinks } from './network/links.js';
import { FileNetworkStateStore, NodeNetworks, type NetworkStateStore } from './network/node-networks.js';
import { FileRecordStore, type RecordStore } from './instances/records.js';
import { ImageCache, type LayerSource } from './images/cache.js';
import { GrpcLayerSource } from './images/source.js';
import { agentServiceImpl, AGENT_VERSION } from './server/agent-service.js';
import { exportInstanceLayer } from './images/export.js';
import { ConsoleLogs } from './instances/console.js';

export interface RunningAgent {
  port: number;
  manager: InstanceManager;
  readonly serving: boolean;
  /** Runs one reconcile pass now. */
  reconcile(): Promise<ReconcileReport>;
  close(): Promise<void>;
}

/** Where the agent keeps image layers for a given config. */
export function layerStoreRoot(config: AgentConfig): string {
  return join(config.stateDir, 'layers');
}

/**
 * The host drivers an agent runs on. startAgent builds the real ones (libvirt, cgroupfs,
 * overlayfs, Open vSwitch, nftables, files under stateDir) unless it is given these: the
 * scale simulator runs real agents on the fakes of `fakeDrivers`.
 */
export interface AgentDrivers {
  records: RecordStore;
  layers: LayerStore;
  rootfs: RootfsManager;
  cgroups: CgroupManager;
  runtime: ContainerRuntime;
  network: { sw: VSwitch; links: HostLinks; nat: GatewayHost; store: NetworkStateStore };
  /** Where missing layers come from (absent: none are fetched). */
  layerSource?: LayerSource & { close(): void };
  /** The node's size, when not this machine's (os.cpus(), os.totalmem()). */
  host?: { cpus: number; memoryMib: number };
  /** CPU and memory use of a running instance, from its init's pid (absent: not reported). */
  usage?: (initPid: number) => Promise<CgroupUsage>;
}

async function realDrivers(config: AgentConfig, tls: TlsMaterial | undefined, log: Logger): Promise<AgentDrivers> {
  const idmapBase = config.idmapBase;
  const records = new FileRecordStore(config.stateDir, log);
  const layers = new DirLayerStore({ root: layerStoreRoot(config), idmapBase, log });
  // Layer exports a crash interrupted (nothing else is ever in there).
  await rm(join(config.stateDir, 'exports'), { recursive: true, force: true });
  const swept = await layers.sweep();
  if (swept.length > 0) log.info('half-imported layers removed', { count: swept.length });
  const rootfs = new OverlayRootfs({ instancesDir: config.instancesDir, layers, idmapBase, log });
  const layerSource = config.controllerAddress
    ? new GrpcLayerSource(config.controllerAddress, config.controllerTokenFile, config.controllerTls && tls ? controllerChannelCredentials(tls.ca) : undefined)
    : undefined;
  return {
    records,
    layers,
    rootfs,
    cgroups: await HostCgroups.create({ log }),
    runtime: await LibvirtRuntime.open(config.libvirtUri, config.nodeName, log),
    network: {
      sw: new OvsVSwitch({ db: config.ovsdb, bridge: config.bridge, datapath: config.datapath }),
      links: new IpLinks(config.netns),
      nat: new NftGatewayHost({ netns: config.netns, uplink: config.natUplink, underlayIp: config.underlayIp, stateFile: join(config.stateDir, 'nat-forwarding.json') }),
      store: new FileNetworkStateStore(config.stateDir),
    },
    layerSource,
    usage: cgroupUsageOf,
  };
}

export async function startAgent(config: AgentConfig, deps: { log: Logger; registry?: Registry; drivers?: AgentDrivers }): Promise<RunningAgent> {
  const { log } = deps;
  // Mutual TLS (config `tls`): read first, so a bad path fails before anything starts.
  const tls = config.tls ? loadTlsMaterial(config.tls) : undefined;
  if (config.controllerTls && !tls) throw new InvalidArgumentError('controllerTls needs tls: its CA checks the controller certificate');
  const idmapBase = config.idmapBase;
  const { records, layers, rootfs, cgroups, runtime, layerSource, network: nd, host, usage } = deps.drivers ?? (await realDrivers(config, tls, log));
  const images = new ImageCache({
    layers,
    source: layerSource,
    inUse: () => records.list().flatMap((r) => r.spec.image.layers),
    budgetBytes: config.layerCacheBytes,
    log: log.child({ component: 'images' }),
  });
  const libvirtVersion = await runtime.version();
  const network = new NodeNetworks({ ...nd, underlayIp: config.underlayIp, log: log.child({ component: 'network' }) });
  // Not fatal: instances without networks still work, and every network call retries it.
  await network.init().catch((err: unknown) => log.warn('integration bridge not ready (retried later)', errFields(err)));
  const publisher = startEventPublisher(config.natsUrl, log, { name: `oarcloud-agent-${config.nodeName}` });
  const manager = new InstanceManager({
    ...(host ? { nodeCpus: host.cpus, nodeMemoryMib: host.memoryMib } : {}),
    node: config.nodeName,
    runtime,
    layers,
    rootfs,
    cgroups,
    records,
    events: new NatsInstanceEvents(config.nodeName, publisher),
    log,
    network,
    images,
    volumesDir: config.volumesDir,
    idmap: idmapBase > 0 ? { base: idmapBase, count: config.idmapCount } : undefined,
  });

  // Console output of running instances, read from their ptys into bounded logs.
  const consoles = new ConsoleLogs({
    logPath: (id) => join(config.instancesDir, id, 'console.log'),
    ptyOf: (id) => runtime.consolePty(id),
    log: log.child({ component: 'console' }),
  });

  // Reconcile passes never overlap; a request during a pass queues exactly one more.
  let passing: Promise<ReconcileReport> | undefined;
  let again = false;
  const reconcile = async (): Promise<ReconcileReport> => {
    if (passing) {
      again = true;
      return passing;
    }
    passing = (async () => {
      const t0 = performance.now();
      const report = await manager.reconcile();
      await consoles.sync(manager.list().filter((r) => r.state === 'running').map((r) => r.spec.id)).catch((err: unknown) => log.warn('console sync failed', errFields(err)));
      const changed = report.orphanDomains.length + report.orphanRootfs.length + report.orphanPartitions.length + report.rolledBack.length + report.networkRemoved.length + report.stateChanges.length;
      if (changed > 0 || report.errors.length > 0) log.info('reconciled', { ms: Math.round(performance.now() - t0), ...report });
      return report;
    })();
    try {
      return await passing;
    } finally {
      passing = undefined;
      if (again) {
        again = false;
        void reconcile().catch((err: unknown) => log.error('reconcile failed', errFields(err)));
      }
    }
  };

  const first = await reconcile();
  void images.evict().catch((err: unknown) => log.warn('layer eviction failed', errFields(err)));
  log.info('re-attached', { running: first.adopted.length, orphansRemoved: first.orphanDomains.length + first.orphanRootfs.length });

  let soon: NodeJS.Timeout | undefined;
  const unsubscribe = runtime.onEvent((ev) => {
    log.debug('domain event', { ...ev });
    clearTimeout(soon);
    soon = setTimeout(() => void reconcile().catch((err: unknown) => log.error('reconcile failed', errFields(err))), 100);
  });
  const timer = setInterval(() => void reconcile().catch((err: unknown) => log.error('reconcile failed', errFields(err))), config.reconcileMs);
  const stopHeartbeat = startHeartbeat(
    { node: config.nodeName, datapath: config.datapath, underlayIp: config.underlayIp, agentVersion: AGENT_VERSION, libvirtVersion, instances: () => manager.list(), usage },
    publisher,
    config.heartbeatMs,
  );

  // Under mutual TLS only the controller's certificate may call (an agent's may not).
  const grpc = new GrpcServer({ log, services: AGENT_SERVICES, registry: deps.registry, interceptors: tls ? [requirePeerRole('controller')] : undefined });
  grpc.addService(
    AgentServiceService,
    agentServiceImpl({
      grpc,
      manager,
      log,
      datapath: config.datapath,
      underlayIp: config.underlayIp,
      network,
      libvirtVersion,
      consoleLog: (id, maxBytes) => consoles.read(id, maxBytes),
      exportLayer: (id) => exportInstanceLayer(manager, rootfs, { tmpDir: join(config.stateDir, 'exports'), idmap: idmapBase > 0 ? { base: idmapBase, count: config.idmapCount } : undefined, log }, id),
    }),
  );
  const port = await grpc.listen(config.listen, tls ? mtlsServerCredentials(tls) : undefined);
  grpc.setServing(true);
  let serving = true;
  return {
    port,
    manager,
    reconcile,
    get serving() {
      return serving;
    },
    close: async () => {
      // Instances keep running: they belong to libvirt, and the next start re-attaches.
      serving = false;
      clearInterval(timer);
      clearTimeout(soon);
      stopHeartbeat();
      unsubscribe();
      await grpc.close();
      await passing?.catch(() => undefined);
      consoles.close();
      await publisher.close();
      layerSource?.close();
      await runtime.close();
    },
  };
}
