/**
 * Wires the controller together: store, OAR event sources, job manager, agents, reconcile
 * loop, NATS events, gRPC services. Every source of change is optional-by-injection so unit
 * tests run the whole controller against fakes.
 */
import { dirname, join } from 'node:path';
import type { Registry } from 'prom-client';
import {
  CONTROLLER_SERVICES,
  HookServiceService,
  ImageServiceService,
  InstanceServiceService,
  JobServiceService,
  NetworkServiceService,
  NodeServiceService,
  UserServiceService,
  VolumeServiceService,
} from '@oarcloud/api';
import { errFields, GrpcServer, InvalidArgumentError, loadTlsMaterial, mtlsChannelCredentials, tlsServerCredentials, type Logger } from '@oarcloud/common';
import type { Agents } from './agents/agents.js';
import { GrpcAgents } from './agents/grpc-pool.js';
import type { ControllerConfig } from './config.js';
import { LayerBlobs } from './images/blobs.js';
import { ImageStore } from './images/catalog.js';
import { Volumes } from './images/volumes.js';
import { JobManager } from './jobs/manager.js';
import { NetworkManager } from './networks/manager.js';
import { CliOarCommands } from './oar/commands.js';
import { PgOarFacts } from './oar/facts.js';
import { startOarListener, type OarListener } from './oar/listener.js';
import type { OarCommands, OarFacts } from './oar/types.js';
import { startEventConsumer, type EventConsumer } from './reconcile/events.js';
import { Reconciler } from './reconcile/loop.js';
import { Auth, bootstrapNodeToken, bootstrapTokens } from './server/auth.js';
import type { ServiceDeps } from './server/deps.js';
import { hookServiceImpl } from './server/hook-service.js';
import { imageServiceImpl, volumeServiceImpl } from './server/image-service.js';
import { instanceServiceImpl } from './server/instance-service.js';
import { jobServiceImpl } from './server/job-service.js';
import { networkServiceImpl } from './server/network-service.js';
import { nodeServiceImpl, userServiceImpl } from './server/user-service.js';
import { SqliteStore } from './store/sqlite.js';
import type { Store } from './store/store.js';

export interface ControllerDeps {
  log: Logger;
  registry?: Registry;
  /** Injected for tests; real ones are built from the config otherwise. */
  store?: Store;
  oar?: OarFacts;
  oarCommands?: OarCommands;
  agents?: Agents;
  /** Off in unit tests: no LISTEN on OAR's database, no NATS. */
  oarEvents?: boolean;
  natsEvents?: boolean;
  now?: () => number;
}

export interface RunningController {
  port: number;
  /** The TLS listener's port (tlsListen), if any. */
  tlsPort?: number;
  readonly serving: boolean;
  readonly jobs: JobManager;
  readonly store: Store;
  readonly reconciler: Reconciler;
  readonly hookToken: string;
  close(): Promise<void>;
}

function openStore(path: string, log: Logger): SqliteStore {
  const store = new SqliteStore(path);
  store.onBatchError = (err) => log.error('state reports not saved (the next relist of the agents restores them)', errFields(err));
  return store;
}

export async function startController(config: ControllerConfig, deps: ControllerDeps): Promise<RunningController> {
  const { log } = deps;
  // Refused before anything is opened or written.
  if (config.tlsListen && !config.tls) throw new InvalidArgumentError('tlsListen needs tls: the controller certificate it serves');
  const now = deps.now ?? Date.now;
  const store = deps.store ?? openStore(config.dbPath, log);
  const stateDir = dirname(config.dbPath);
  const hookToken = bootstrapTokens(
    store,
    {
      adminTokenFile: config.adminTokenFile ?? join(stateDir, 'admin.token'),
      hookTokenFile: config.hookTokenFile ?? join(stateDir, 'hook.token'),
    },
    log,
    now(),
  );
  const oar = deps.oar ?? new PgOarFacts(config.oarDatabaseUrl);
  const oarCommands = deps.oarCommands ?? new CliOarCommands();
  // Mutual TLS to the agents (config `tls`): each agent must show an agent certificate for its node.
  const tls = config.tls ? loadTlsMaterial(config.tls) : undefined;
  const agentCredentials = tls ? (node: string) => mtlsChannelCredentials(tls, { role: 'agent', name: node }) : undefined;
  const agents =
    deps.agents ??
    new GrpcAgents(config.agents, { log: log.child({ component: 'agents' }), createTimeoutMs: config.agentCreateTimeoutMs, callTimeoutMs: config.agentCallTimeoutMs, credentials: agentCredentials });
  const nodeToken = bootstrapNodeToken(config.nodeTokenFile ?? join(stateDir, 'node.token'), log);
  const blobs = new LayerBlobs(config.layersDir ?? join(stateDir, 'layers'));
  await blobs.sweep();
  const images = new ImageStore({ store, blobs, log: log.child({ component: 'images' }), now });
  await images.importConfigured(config.images);
  const volumes = new Volumes({ store, dir: config.volumesDir ?? join(stateDir, 'volumes'), log: log.child({ component: 'volumes' }), now });
  const networks = new NetworkManager({
    store,
    agents,
    log: log.child({ component: 'networks' }),
    now,
    settings: { pool: config.networkPool, subnetPrefix: config.networkSubnetPrefix, vniMin: config.vniMin, vniMax: config.vniMax },
  });
  const jobs = new JobManager({ store, oar, agents, images, networks, volumes, log: log.child({ component: 'jobs' }), now });
  const reconciler = new Reconciler({ store, oar, agents, jobs, networks, log: log.child({ component: 'reconcile' }), intervalMs: config.reconcileMs });

  const grpc = new GrpcServer({ log, services: CONTROLLER_SERVICES, registry: deps.registry });
  const d: ServiceDeps = { grpc, store, jobs, networks, oarCommands, agents, images, imageStore: images, volumes, auth: new Auth(store, hookToken, nodeToken), log, now };
  grpc.addService(JobServiceService, jobServiceImpl(d));
  grpc.addService(InstanceServiceService, instanceServiceImpl(d));
  grpc.addService(HookServiceService, hookServiceImpl(d));
  grpc.addService(UserServiceService, userServiceImpl(d));
  grpc.addService(NodeServiceService, nodeServiceImpl(d));
  grpc.addService(NetworkServiceService, networkServiceImpl(d));
  grpc.addService(ImageServiceService, imageServiceImpl(d));
  grpc.addService(VolumeServiceService, volumeServiceImpl(d));
  const port = await grpc.listen(config.listen);
  const tlsPort = config.tlsListen && tls ? await grpc.listen(config.tlsListen, tlsServerCredentials(tls)) : undefined;
  grpc.setServing(true);

  let listener: OarListener | undefined;
  if (deps.oarEvents !== false) {
    // First start: begin at OAR's present; the reconcile pass picks up cloud jobs already running.
    if (store.getCursor() === undefined) {
      try {
        store.setCursor(await oar.maxLogId());
      } catch (err) {
        log.warn('oar cursor not initialised (replaying from the start)', errFields(err));
      }
    }
    listener = startOarListener({
      url: config.oarDatabaseUrl,
      log: log.child({ component: 'oar-events' }),
      cursor: () => store.getCursor() ?? 0,
      onEvent: (ev) => jobs.onOarEvent(ev),
      // oardel/walltime: tear down now rather than when OAR gets to the epilogue, seconds later.
      onFrag: (jobId) => void jobs.end(jobId, 'OAR is killing the job (frag_jobs)').catch((err: unknown) => log.warn('early teardown failed (the job end retries)', { jobId, ...errFields(err) })),
    });
  }
  let nats: EventConsumer | undefined;
  if (deps.natsEvents !== false) nats = startEventConsumer({ url: config.natsUrl, log: log.child({ component: 'nats' }), jobs, agents });
  reconciler.start();

  let serving = true;
  return {
    port,
    tlsPort,
    jobs,
    store,
    reconciler,
    hookToken,
    get serving() {
      return serving;
    },
    close: async () => {
      serving = false;
      await grpc.close();
      await reconciler.stop();
      await listener?.close();
      await nats?.close();
      agents.close();
      if (!deps.oar) await oar.close();
      if (!deps.store) store.close();
    },
  };
}
