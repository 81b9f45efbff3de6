/**
 * The controller as the command sees it: one client per service on one channel, every
 * call with the caller's bearer token and a deadline; errors come back as our classes.
 */
import { credentials, type ChannelCredentials, type Metadata } from '@grpc/grpc-js';
import { ImageServiceClient, InstanceServiceClient, JobServiceClient, NetworkServiceClient, NodeServiceClient, UserServiceClient, VolumeServiceClient } from '@oarcloud/api';
import { bearer, callUnary, tlsChannelOptions } from '@oarcloud/common';

type Unary<Req, Res> = Parameters<typeof callUnary<Req, Res>>[0];

export class Api {
  readonly jobs: JobServiceClient;
  readonly instances: InstanceServiceClient;
  readonly images: ImageServiceClient;
  readonly users: UserServiceClient;
  readonly nodes: NodeServiceClient;
  readonly volumes: VolumeServiceClient;
  readonly networks: NetworkServiceClient;
  readonly metadata: Metadata;

  constructor(
    readonly address: string,
    token: string,
    private readonly timeoutMs = 30_000,
    creds: ChannelCredentials = credentials.createInsecure(),
  ) {
    this.jobs = new JobServiceClient(address, creds, creds._isSecure() ? tlsChannelOptions(address) : {});
    // The other clients share the first one's channel.
    const channel = { channelOverride: this.jobs.getChannel() };
    this.instances = new InstanceServiceClient(address, creds, channel);
    this.images = new ImageServiceClient(address, creds, channel);
    this.users = new UserServiceClient(address, creds, channel);
    this.nodes = new NodeServiceClient(address, creds, channel);
    this.volumes = new VolumeServiceClient(address, creds, channel);
    this.networks = new NetworkServiceClient(address, creds, channel);
    this.metadata = bearer(token);
  }

  /** `api.call(api.jobs, api.jobs.getJob, { id })`. */
  call<C, Req, Res>(client: C, method: Unary<Req, Res>, req: Req, timeoutMs = this.timeoutMs): Promise<Res> {
    return callUnary(method.bind(client), req, { metadata: this.metadata, timeoutMs });
  }

  close(): void {
    this.jobs.close();
  }
}
