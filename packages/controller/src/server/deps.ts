import type { GrpcServer, Logger } from '@oarcloud/common';
import type { Agents } from '../agents/agents.js';
import type { ImageStore } from '../images/catalog.js';
import type { Volumes } from '../images/volumes.js';
import type { ImageCatalog } from '../jobs/images.js';
import type { JobManager } from '../jobs/manager.js';
import type { NetworkManager } from '../networks/manager.js';
import type { OarCommands } from '../oar/types.js';
import type { Store } from '../store/store.js';
import type { Auth } from './auth.js';

/** What the gRPC services need. */
export interface ServiceDeps {
  grpc: GrpcServer;
  store: Store;
  jobs: JobManager;
  networks: NetworkManager;
  oarCommands: OarCommands;
  agents: Agents;
  images: ImageCatalog;
  /** The image store behind `images` (ImageService). */
  imageStore: ImageStore;
  volumes: Volumes;
  auth: Auth;
  log: Logger;
  now: () => number;
}
