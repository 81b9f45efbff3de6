/**
 * What every oarcloud gRPC server shares: the standard health service, server reflection
 * (so `grpcurl list` works), one place that turns thrown errors into a status, and request
 * metrics. Handlers are plain async functions; `GrpcServer.unary` adapts them to grpc-js.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatus } from 'grpc-health-check';
import { Counter, Histogram, type Registry } from 'prom-client';
import { readDescriptorSet } from '@oarcloud/api';
import { grpcCodeName, grpcCodeOf, OarcloudError, toGrpcStatus, UnimplementedError } from './errors.js';
import { errFields, type Logger } from './logger.js';

/** Who is calling, and with what; handed to every handler. */

/** Marks a unary request whose bytes did not parse (see GrpcServer.addService). */
const MALFORMED = Symbol('oarcloud.malformedRequest');

export interface CallContext {
  method: string;
  metadata: grpc.Metadata;
  peer: string;
  /** The verified TLS client certificate's common name, when mutual TLS is on. */
  peerCertCommonName?: string;
  signal: AbortSignal;
}

export type UnaryHandler<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;

export interface GrpcServerOptions {
  log: Logger;
  /** Fully qualified names of the services this server exposes (health reports them). */
  services: readonly string[];
  registry?: Registry;
  /** Run before every handler (e.g. `requirePeerRole` under mutual TLS). */
  interceptors?: grpc.ServerInterceptor[];
}

export class GrpcServer {
  readonly server: grpc.Server;
  readonly health: HealthImplementation;
  private readonly log: Logger;
  private readonly handled?: Counter<'method' | 'code'>;
  private readonly duration?: Histogram<'method'>;
  private readonly services: readonly string[];

  constructor(opts: GrpcServerOptions) {
    this.log = opts.log;
    this.services = opts.services;
    this.server = new grpc.Server({ 'grpc.keepalive_permit_without_calls': 1, interceptors: opts.interceptors });
    const initial: Record<string, ServingStatus> = { '': 'NOT_SERVING' };
    for (const s of opts.services) initial[s] = 'NOT_SERVING';
    this.health = new HealthImplementation(initial);
    this.health.addToServer(this.server);
    const pkg = {
      ...protoLoader.loadFileDescriptorSetFromBuffer(readDescriptorSet()),
      ...protoLoader.loadSync(healthProtoPath),
    };
    new ReflectionService(pkg, {
      services: [...opts.services, 'grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'],
    }).addToServer(this.server);
    if (opts.registry) {
      this.handled = new Counter({
        name: 'oarcloud_grpc_server_handled_total',
        help: 'gRPC calls handled, by method and status code',
        labelNames: ['method', 'code'],
        registers: [opts.registry],
      });
      this.duration = new Histogram({
        name: 'oarcloud_grpc_server_handling_seconds',
        help: 'gRPC call handling time',
        labelNames: ['method'],
        buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
        registers: [opts.registry],
      });
    }
  }

  /** Adapts an async handler to grpc-js: errors become statuses through the one table. */
  unary<Req, Res>(method: string, handler: UnaryHandler<Req, Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      const started = performance.now();
      const malformed = (call.request as { [MALFORMED]?: string } | null)?.[MALFORMED];
      if (malformed !== undefined) {
        this.record(method, grpc.status.INVALID_ARGUMENT, started);
        callback({ code: grpc.status.INVALID_ARGUMENT, details: `malformed request message: ${malformed.slice(0, 200)}` });
        return;
      }
      const ac = new AbortController();
      call.on('cancelled', () => ac.abort());
      handler(call.request, contextOf(method, call, ac.signal)).then(
        (res) => {
          this.record(method, grpc.status.OK, started);
          callback(null, res);
        },
        (err: unknown) => {
          const st = toGrpcStatus(err);
          this.record(method, st.code ?? grpc.status.INTERNAL, started);
          if (!(err instanceof OarcloudError) || grpcCodeOf(err) === grpc.status.INTERNAL) {
            this.log.error('call failed', { method, ...errFields(err) });
          }
          callback(st);
        },
      );
    };
  }

  /** Records the end of a streaming call (streams handle their own errors). */
  record(method: string, code: grpc.status, started: number): void {
    this.handled?.inc({ method, code: grpcCodeName(code) });
    this.duration?.observe({ method }, (performance.now() - started) / 1000);
  }

  addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation): void {
    // A request message that does not parse becomes a marked object instead of grpc-js's
    // INTERNAL: a unary one reaches `unary`, which answers INVALID_ARGUMENT; the request of
    // a server stream, or one inside a client stream, ends the call with INVALID_ARGUMENT
    // before its handler sees it.
    const wrapped: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
    const handlers: grpc.UntypedServiceImplementation = { ...impl };
    for (const [name, m] of Object.entries(def)) {
      wrapped[name] = {
        ...m,
        requestDeserialize: (buf: Buffer) => {
          try {
            return m.requestDeserialize(buf);
          } catch (err) {
            return { [MALFORMED]: err instanceof Error ? err.message : String(err) };
          }
        },
      };
      const key = impl[name] ? name : m.originalName && impl[m.originalName] ? m.originalName : undefined;
      if (m.requestStream && key) handlers[key] = rejectMalformedMessages(impl[key] as StreamHandler);
      else if (m.responseStream && key) handlers[key] = rejectMalformedRequest(impl[key] as (call: grpc.ServerWritableStream<unknown, unknown>) => void);
    }
    this.server.addService(wrapped, handlers);
  }

  /** Binds `address` (`host:port`, port 0 for any) and returns the bound port. */
  async listen(address: string, creds: grpc.ServerCredentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
    const port = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(address, creds, (err, p) => (err ? reject(err) : resolve(p)));
    });
    return port;
  }

  setServing(serving: boolean): void {
    const st: ServingStatus = serving ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', st);
    for (const s of this.services) this.health.setStatus(s, st);
  }

  /** Graceful stop, bounded: calls still running after `graceMs` are cancelled. */
  async close(graceMs = 5000): Promise<void> {
    this.setServing(false);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/** A server-streaming handler that never sees a request that did not parse: INVALID_ARGUMENT instead. */
function rejectMalformedRequest(handler: (call: grpc.ServerWritableStream<unknown, unknown>) => void): (call: grpc.ServerWritableStream<unknown, unknown>) => void {
  return (call) => {
    const malformed = (call.request as { [MALFORMED]?: string } | null)?.[MALFORMED];
    if (malformed === undefined) return handler(call);
    // grpc-js sends the status of a writable stream's 'error' event (it listens for it itself).
    call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: `malformed request message: ${malformed.slice(0, 200)}` });
  };
}

type StreamHandler = (call: grpc.ServerReadableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => void;

/**
 * A client- or bidi-streaming handler whose call ends with INVALID_ARGUMENT at the first
 * message that did not parse: the handler never sees that message; it sees the stream fail
 * ('error' when it listens for it, else the stream is destroyed) and its own later answer
 * is dropped.
 */
function rejectMalformedMessages(handler: StreamHandler): StreamHandler {
  return (call, callback) => {
    let answered = false;
    const once: grpc.sendUnaryData<unknown> | undefined = callback
      ? (err, value, trailer, flags) => {
          if (answered) return;
          answered = true;
          callback(err, value, trailer, flags);
        }
      : undefined;
    const push = call.push.bind(call);
    call.push = (chunk: unknown, encoding?: BufferEncoding) => {
      const malformed = (chunk as { [MALFORMED]?: string } | null)?.[MALFORMED];
      if (malformed === undefined) return push(chunk, encoding);
      const st: Partial<grpc.StatusObject> = { code: grpc.status.INVALID_ARGUMENT, details: `malformed request message: ${malformed.slice(0, 200)}` };
      if (once) {
        once(st as grpc.ServiceError);
        if (call.listenerCount('error') > 0) call.emit('error', st);
        else call.destroy();
      } else {
        // A duplex call sends the status of an 'error' event (grpc-js listens for it itself).
        call.emit('error', st);
      }
      return false;
    };
    handler(call, once);
  };
}

function contextOf(
  method: string,
  call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
  signal: AbortSignal,
): CallContext {
  const auth = call.getAuthContext?.();
  const cn = auth?.sslPeerCertificate?.subject?.CN;
  return {
    method,
    metadata: call.metadata,
    peer: call.getPeer(),
    peerCertCommonName: typeof cn === 'string' ? cn : undefined,
    signal,
  };
}

/** The call context of a streaming call (for handlers that are not unary). */
export function streamContext(
  method: string,
  call: grpc.ServerDuplexStream<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>,
): CallContext {
  const ac = new AbortController();
  call.on('cancelled', () => ac.abort());
  call.on('close', () => ac.abort());
  return contextOf(method, call, ac.signal);
}

/**
 * A service implementation where every method not given in `impl` answers UNIMPLEMENTED,
 * so a server can expose the whole contract while it grows.
 */
export function withUnimplemented<T extends grpc.UntypedServiceImplementation>(
  def: grpc.ServiceDefinition,
  impl: Partial<T>,
): T {
  const full: grpc.UntypedServiceImplementation = {};
  for (const [name, method] of Object.entries(def)) {
    const given = (impl as grpc.UntypedServiceImplementation)[name];
    if (given) {
      full[name] = given;
    } else if (method.requestStream || method.responseStream) {
      full[name] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
        call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: `${method.path} is not implemented yet` });
      };
    } else {
      full[name] = (_call: unknown, callback: grpc.sendUnaryData<unknown>) => {
        callback(toGrpcStatus(new UnimplementedError(`${method.path} is not implemented yet`)));
      };
    }
  }
  return full as T;
}
