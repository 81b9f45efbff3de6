/**
 * Generic gRPC probes, the way `grpcurl` would do them: the standard health check and
 * server reflection's service list. They only use the public protos, nothing of ours, so
 * they prove that a third-party client would work.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { isIP } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

const require = createRequire(import.meta.url);

type Ctor = new (address: string, creds: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => grpc.Client;

/** Over TLS, an IP address is no valid server name (RFC 6066): send a plain name instead. */
function channelOptions(address: string, creds: grpc.ChannelCredentials): grpc.ChannelOptions {
  const host = address.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return creds._isSecure() && isIP(host) ? { 'grpc.ssl_target_name_override': 'oarcloud', 'grpc.default_authority': address } : {};
}

function loadService(protoFile: string, pkgPath: string[], service: string): Ctor {
  const def = protoLoader.loadSync(protoFile, { keepCase: true, longs: String, enums: String, defaults: true });
  let obj: unknown = grpc.loadPackageDefinition(def);
  for (const p of pkgPath) obj = (obj as Record<string, unknown>)[p];
  return (obj as Record<string, Ctor>)[service]!;
}

/** `grpc.health.v1.Health/Check` for `service` ('' = the whole server). */
export function grpcHealth(address: string, service = '', timeoutMs = 3000, creds = grpc.credentials.createInsecure()): Promise<string> {
  const Health = loadService(healthProtoPath, ['grpc', 'health', 'v1'], 'Health');
  const client = new Health(address, creds, channelOptions(address, creds)) as grpc.Client & {
    Check(req: object, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: { status: string }) => void): void;
  };
  return new Promise((resolve, reject) => {
    client.Check({ service }, { deadline: Date.now() + timeoutMs }, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve(res.status);
    });
  });
}

/** The services a server lists through reflection (`grpcurl list`). */
export function grpcListServices(address: string, timeoutMs = 3000, creds = grpc.credentials.createInsecure()): Promise<string[]> {
  const reflectionDir = dirname(require.resolve('@grpc/reflection/package.json'));
  const protoFile = join(reflectionDir, 'build/proto/grpc/reflection/v1/reflection.proto');
  const Reflection = loadService(protoFile, ['grpc', 'reflection', 'v1'], 'ServerReflection');
  const client = new Reflection(address, creds, channelOptions(address, creds)) as grpc.Client & {
    ServerReflectionInfo(opts: grpc.CallOptions): grpc.ClientDuplexStream<object, { list_services_response?: { service: Array<{ name: string }> } }>;
  };
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo({ deadline: Date.now() + timeoutMs });
    call.on('data', (res: { list_services_response?: { service: Array<{ name: string }> } }) => {
      resolve((res.list_services_response?.service ?? []).map((s: { name: string }) => s.name).sort());
      call.end();
      client.close();
    });
    call.on('error', (err) => {
      client.close();
      reject(err);
    });
    call.write({ list_services: '' });
  });
}
