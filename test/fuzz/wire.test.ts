/**
 * Bad input below and beside the typed clients (fast-check), against two sets of servers:
 * - in process: a real controller (fake OAR, SQLite in a temp folder) with two fake agents
 *   — always runs, no root needed;
 * - live: the local cluster's controller and its three agents (when it is up; required in CI).
 * What is sent:
 * - raw HTTP/2 gRPC requests: a message whose declared length is longer than what follows,
 *   a 4 GB declared length, a frame header cut short, two messages on a unary call, no
 *   message at all, a compressed flag with a corrupt gzip body, unknown encodings, wrong
 *   content types, unknown methods, a stream reset in the middle of a message;
 * - garbage and truncated messages inside streams (Connect, ImportImage, FetchLayer,
 *   ExportLayer) and streams cut short;
 * - the calls that would create something from a well-formed request (AddUser, Reserve,
 *   CreateVolume, CreateNetwork, RunInstances, SaveInstance, ImportImage), made as the admin
 *   with values that are always wrong: unknown enum values, negative or enormous sizes,
 *   `../` names, 1 MB strings.
 * Every call must end with a clean status (never UNKNOWN or INTERNAL, never a hang or a
 * dropped connection), the servers must stay SERVING, and nothing may change.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as http2 from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  AgentServiceService,
  ImageServiceService,
  InstanceServiceService,
  JobServiceService,
  NetworkServiceService,
  Role,
  UserServiceService,
  VolumeServiceService,
} from '@oarcloud/api';
import { bearer, nullLogger } from '@oarcloud/common';
import {
  AGENT_ADDRESSES,
  agentCredentials,
  CLUSTER_CONTROLLER_CERT_NAME,
  clusterPkiDir,
  CONTROLLER_ADDRESS,
  grpcHealth,
  localStateDir,
  startFakeAgent,
  userToken,
  type FakeAgent,
} from '@oarcloud/testkit';
import { ControllerConfigSchema, startController, type RunningController } from '../../packages/controller/src/index.js';
import { FakeOar } from '../../packages/controller/src/oar/fake.js';

const RUNS = Number(process.env.OARCLOUD_FUZZ_RUNS ?? 25);
const STATE = localStateDir();
const CLEAN = new Set([
  grpc.status.OK,
  grpc.status.CANCELLED,
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNAUTHENTICATED,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.OUT_OF_RANGE,
  grpc.status.UNIMPLEMENTED,
]);
const codeName = (c: number | undefined) => (c === undefined ? 'none' : (grpc.status[c] ?? String(c)));

interface AnyMethod {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize(v: never): Buffer;
  requestDeserialize(b: Buffer): unknown;
  responseDeserialize(b: Buffer): unknown;
}
const m = (x: unknown) => x as AnyMethod;

/** The servers under test and the tokens to call them with. */
interface Target {
  name: string;
  controller: string;
  /** Real agents to fuzz (none in process: the fake agents are not under test). */
  agents: string[];
  /** How to reach the agents (mutual TLS on the local cluster) and, for raw HTTP/2, the TLS material. */
  agentCreds: grpc.ChannelCredentials;
  agentTls?: { ca: Buffer; cert: Buffer; key: Buffer };
  admin: string;
  user: string;
  node: string;
  /** Ids of everything that exists (jobs, instances, networks, images, volumes, users, agents' instances). */
  world(): Promise<string>;
}

// ----- raw HTTP/2 --------------------------------------------------------------------------

interface RawOutcome {
  httpStatus?: number;
  grpcStatus?: number;
  message?: string;
  /** The stream was reset or the session failed before any status. */
  error?: string;
}

/** One gRPC request written by hand: `headers` over the defaults, `body` as given, then END_STREAM (or a reset). */
function raw(address: string, path: string, body: Buffer, opts: { headers?: Record<string, string>; token?: string; reset?: boolean; endStream?: boolean; tls?: { ca: Buffer; cert: Buffer; key: Buffer } } = {}): Promise<RawOutcome> {
  return new Promise((resolve) => {
    const session = opts.tls
      ? http2.connect(`https://${address}`, { ca: opts.tls.ca, cert: opts.tls.cert, key: opts.tls.key, servername: 'oarcloud', checkServerIdentity: () => undefined })
      : http2.connect(`http://${address}`);
    const out: RawOutcome = {};
    const timer = setTimeout(() => finish({ error: 'no answer in 15 s' }), 15_000);
    let done = false;
    function finish(extra: Partial<RawOutcome> = {}): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      session.close();
      session.destroy();
      resolve({ ...out, ...extra });
    }
    session.on('error', (e) => finish({ error: `session: ${e.message}` }));
    const req = session.request({
      ':method': 'POST',
      ':path': path,
      'content-type': 'application/grpc',
      te: 'trailers',
      ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
      ...opts.headers,
    });
    const take = (h: http2.IncomingHttpHeaders): void => {
      if (h[':status'] !== undefined) out.httpStatus = Number(h[':status']);
      if (h['grpc-status'] !== undefined) out.grpcStatus = Number(h['grpc-status']);
      if (h['grpc-message'] !== undefined) out.message = decodeURIComponent(String(h['grpc-message']));
    };
    req.on('response', take);
    req.on('trailers', take);
    req.on('data', () => undefined);
    req.on('end', () => finish());
    req.on('close', () => finish(out.grpcStatus === undefined && out.httpStatus === undefined ? { error: `stream closed (rst ${req.rstCode})` } : {}));
    req.on('error', (e) => finish({ error: `stream: ${e.message}` }));
    if (opts.reset) {
      req.write(body, () => setTimeout(() => req.close(http2.constants.NGHTTP2_CANCEL), 50));
      setTimeout(() => finish(), 500);
    } else if (opts.endStream === false) req.write(body);
    else req.end(body);
  });
}

/** A gRPC length-prefixed frame: flag byte, declared length (default: the real one), body. */
function frame(body: Buffer, declared = body.length, flag = 0): Buffer {
  const h = Buffer.alloc(5);
  h.writeUInt8(flag, 0);
  h.writeUInt32BE(declared >>> 0, 1);
  return Buffer.concat([h, body]);
}

/** A clean gRPC answer: a status from the clean set, or an HTTP refusal of a non-gRPC request. */
function expectClean(what: string, r: RawOutcome, opts: { httpRefusalOk?: boolean; resetOk?: boolean; corruptGzip?: boolean; badTimeout?: boolean } = {}): void {
  const desc = `${what}: http ${r.httpStatus} grpc ${codeName(r.grpcStatus)} ${r.message ?? ''} ${r.error ?? ''}`;
  // A stream the client reset itself may end with no status at all: only the server's survival matters.
  if (opts.resetOk && (r.error?.startsWith('stream closed') || (r.error === undefined && r.grpcStatus === undefined))) return;
  // Known limitation: grpc-js answers INTERNAL itself when a gzip-flagged message does not
  // inflate, before any code of ours runs (server-interceptors.js, decompressMessage).
  if (opts.corruptGzip && r.grpcStatus === grpc.status.INTERNAL && r.message === 'Failed to decompress message') return;
  // Same for a grpc-timeout header that does not parse (server-interceptors.js, handleTimeoutHeader).
  if (opts.badTimeout && r.grpcStatus === grpc.status.INTERNAL && r.message?.startsWith('Invalid grpc-timeout value')) return;
  if (opts.httpRefusalOk && r.httpStatus !== undefined && r.httpStatus >= 400 && r.httpStatus < 500 && r.grpcStatus === undefined) return;
  expect(r.error, desc).toBeUndefined();
  expect(r.grpcStatus, desc).toBeDefined();
  expect(CLEAN.has(r.grpcStatus!), desc).toBe(true);
}

// ----- typed calls with raw control ------------------------------------------------------

function unary(address: string, def: AnyMethod, req: unknown, token?: string, raw = false, creds = grpc.credentials.createInsecure()): Promise<{ code: number; details: string; clientSide: boolean }> {
  const client = new grpc.Client(address, creds);
  const md = token ? bearer(token) : new grpc.Metadata();
  return new Promise((resolve) => {
    const serialize = (raw ? (b: unknown) => b as Buffer : def.requestSerialize) as (v: unknown) => Buffer;
    client.makeUnaryRequest(def.path, serialize, def.responseDeserialize, req, md, { deadline: Date.now() + 30_000 }, (err) => {
      client.close();
      if (!err) resolve({ code: grpc.status.OK, details: '', clientSide: false });
      else resolve({ code: err.code, details: err.details, clientSide: /serialization failure/.test(err.details) });
    });
  });
}

/** A stream call sending `messages` (raw bytes when Buffers), then half-close or cancel; resolves with the status. */
function stream(address: string, def: AnyMethod, messages: Array<Buffer | object>, token: string | undefined, end: 'half-close' | 'cancel', creds = grpc.credentials.createInsecure()): Promise<{ code: number; details: string }> {
  const client = new grpc.Client(address, creds);
  const md = token ? bearer(token) : new grpc.Metadata();
  const serialize = (v: unknown) => (Buffer.isBuffer(v) ? v : def.requestSerialize(v as never));
  const opts = { deadline: Date.now() + 30_000 };
  return new Promise((resolve) => {
    let settled = false;
    const settle = (code: number, details: string) => {
      if (settled) return;
      settled = true;
      client.close();
      resolve({ code, details });
    };
    let call: grpc.ClientWritableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown> | grpc.ClientReadableStream<unknown>;
    if (def.requestStream && def.responseStream) {
      const c = client.makeBidiStreamRequest(def.path, serialize, def.responseDeserialize, md, opts);
      c.on('data', () => undefined);
      c.on('status', (s: grpc.StatusObject) => settle(s.code, s.details));
      c.on('error', () => undefined);
      call = c;
    } else if (def.requestStream) {
      call = client.makeClientStreamRequest(def.path, serialize, def.responseDeserialize, md, opts, (err) => settle(err ? err.code : grpc.status.OK, err?.details ?? ''));
    } else {
      const c = client.makeServerStreamRequest(def.path, serialize, def.responseDeserialize, messages[0], md, opts);
      c.on('data', () => undefined);
      c.on('status', (s: grpc.StatusObject) => settle(s.code, s.details));
      c.on('error', () => undefined);
      if (end === 'cancel') setTimeout(() => c.cancel(), 100);
      return;
    }
    const w = call as grpc.ClientWritableStream<unknown>;
    for (const msg of messages) w.write(msg);
    if (end === 'half-close') w.end();
    else setTimeout(() => (call as grpc.ClientWritableStream<unknown>).cancel(), 100);
  });
}

// ----- arbitraries -----------------------------------------------------------------------

const MB = 'm'.repeat(1024 * 1024);
const badString = fc.oneof(
  fc.constantFrom('', '..', '../../etc/passwd', '/etc/shadow', 'a/../../b', 'x\u0000y', ' ', 'A B', '%2e%2e%2f', '\u202e', MB, `${MB}:latest`, `../${'a'.repeat(300)}`),
  fc.string({ unit: 'binary', maxLength: 40 }).map((s) => `../${s}`),
);
const unknownEnum = fc.oneof(fc.integer({ min: 3, max: 2 ** 31 - 1 }), fc.integer({ min: -(2 ** 31), max: -1 }));
const badSize = fc.oneof(fc.constantFrom(0, -1, -(2 ** 31), 2 ** 31 - 1, 4_294_967_295, 999_999_999), fc.integer({ min: -(2 ** 31), max: 0 }));

/** Admin calls that create something when well formed, always with a wrong value. */
function creators(t: Target): Array<[string, fc.Arbitrary<() => Promise<{ code: number; details: string; clientSide: boolean }>>]> {
  return [
    ['AddUser unknown role', fc.tuple(fc.stringMatching(/^[a-z]{3,10}$/), unknownEnum).map(([name, role]) => () => unary(t.controller, m(UserServiceService.addUser), { name: `fz${name}`, role }, t.admin))],
    ['AddUser bad name', fc.tuple(badString, fc.constantFrom(Role.ROLE_USER, Role.ROLE_ADMIN)).map(([name, role]) => () => unary(t.controller, m(UserServiceService.addUser), { name, role }, t.admin))],
    ['IssueToken bad name', badString.map((name) => () => unary(t.controller, m(UserServiceService.issueToken), { name }, t.admin))],
    [
      'Reserve bad sizes',
      fc.record({ nodes: badSize, cores: fc.oneof(badSize, fc.constant(1)), walltime: fc.oneof(fc.constantFrom(-1, 0, 2 ** 53, -(2 ** 53)), fc.integer({ min: -1e9, max: 59 })), count: badSize, vcpus: badSize, memory: fc.constantFrom(0, -1, 2 ** 53, 2 ** 63) }).map(
        (r) => () =>
          unary(
            t.controller,
            m(JobServiceService.reserve),
            { nodes: r.nodes, coresPerNode: r.cores, walltimeS: r.walltime, spec: { image: 'tiny:latest', count: r.count, vcpus: r.vcpus, memoryMib: r.memory, sshAuthorizedKeys: [], namePrefix: 'fz' }, idempotencyKey: '' },
            t.user,
          ),
      ),
    ],
    [
      'Reserve bad names',
      fc.tuple(badString, badString, fc.array(badString, { maxLength: 3 })).map(
        ([image, prefix, keys]) => () =>
          unary(t.controller, m(JobServiceService.reserve), { nodes: 1, coresPerNode: 0, walltimeS: 600, spec: { image, count: 1, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: keys, namePrefix: prefix }, idempotencyKey: '' }, t.user),
      ),
    ],
    ['CreateVolume bad name', badString.map((name) => () => unary(t.controller, m(VolumeServiceService.createVolume), { name, idempotencyKey: '' }, t.user))],
    ['CreateNetwork bad job', fc.tuple(fc.oneof(badSize, fc.integer({ min: 1, max: 2 ** 31 })), badString).map(([jobId, name]) => () => unary(t.controller, m(NetworkServiceService.createNetwork), { jobId, name, subnet: name, nat: true }, t.user))],
    [
      'RunInstances bad spec',
      fc.tuple(fc.oneof(badSize, fc.integer({ min: 1, max: 2 ** 31 })), badString, badSize).map(
        ([jobId, s, n]) => () =>
          unary(t.controller, m(InstanceServiceService.runInstances), { jobId, spec: { image: s, count: n, vcpus: n, memoryMib: n, sshAuthorizedKeys: [s], namePrefix: s }, networks: [s], idempotencyKey: s }, t.user),
      ),
    ],
    ['SaveInstance bad ids', fc.tuple(badString, badString).map(([instanceId, name]) => () => unary(t.controller, m(ImageServiceService.saveInstance), { instanceId, name }, t.admin))],
    ...(t.agents.length === 0 ? [] : agentCreators(t)),
  ];
}

/** Agent calls that create something when well formed, always with a wrong value. */
function agentCreators(t: Target): Array<[string, fc.Arbitrary<() => Promise<{ code: number; details: string; clientSide: boolean }>>]> {
  return [
    [
      'agent CreateInstance bad spec',
      fc.tuple(fc.constantFrom(...t.agents), badString, badSize).map(
        ([a, s, n]) => () =>
          unary(a, m(AgentServiceService.createInstance), { spec: { id: s, name: s, jobId: n, owner: s, image: { name: s, layers: [s] }, vcpus: n, memoryMib: n, cpuset: s, sshAuthorizedKeys: [s], hostname: s, networks: [] } }, undefined, false, t.agentCreds),
      ),
    ],
    ['agent EnsureNetwork bad', fc.tuple(fc.constantFrom(...t.agents), badString, unknownEnum).map(([a, s, n]) => () => unary(a, m(AgentServiceService.ensureNetwork), { networkId: s, vni: n, peers: [s] }, undefined, false, t.agentCreds))],
  ];
}

/** The tests of one set of servers; `target()` undefined: each test is skipped with `skipReason()`. */
function suite(target: () => Target | undefined, skipReason: () => string) {
  return () => {
    const t = () => {
      const x = target();
      if (!x) throw new Error(skipReason());
      return x;
    };
    let before = '';

    beforeAll(async () => {
      if (target()) before = await t().world();
    });
    beforeEach((ctx) => {
      if (!target()) ctx.skip();
    });

    it('raw HTTP/2: broken framing, sizes, encodings and content types get a clean status or an HTTP refusal', async () => {
      const { controller, agents, user, agentTls } = t();
      const tlsOf = (address: string) => (agents.includes(address) ? agentTls : undefined);
      const valid = InstanceServiceService.getInstance.requestSerialize({ id: 'i-0123456789ab' });
      const paths: Array<[string, string]> = [
        [controller, InstanceServiceService.getInstance.path],
        [controller, JobServiceService.getJob.path],
        ...agents.map((a) => [a, AgentServiceService.getInstance.path] as [string, string]),
      ];
      const cases: Array<[string, Buffer, { headers?: Record<string, string>; reset?: boolean }?, { httpRefusalOk?: boolean; resetOk?: boolean; corruptGzip?: boolean; badTimeout?: boolean }?]> = [
        ['declared length longer than the body', frame(valid, valid.length + 100)],
        ['declared length 4 GB', frame(valid, 0xffffffff)],
        ['frame header cut short', frame(valid).subarray(0, 3)],
        ['message cut short', frame(valid).subarray(0, 8)],
        ['two messages on a unary call', Buffer.concat([frame(valid), frame(valid)])],
        ['no message', Buffer.alloc(0)],
        ['compressed flag, no encoding', frame(valid, valid.length, 1)],
        ['reserved flag bits', frame(valid, valid.length, 0x80)],
        ['gzip flag, corrupt gzip', frame(Buffer.from('not gzip at all'), 15, 1), { headers: { 'grpc-encoding': 'gzip' } }, { corruptGzip: true }],
        ['gzip flag, gzip of garbage', frame(gzipSync(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])), undefined, 1), { headers: { 'grpc-encoding': 'gzip' } }],
        ['unknown encoding', frame(valid, valid.length, 1), { headers: { 'grpc-encoding': 'zstd-fuzz' } }],
        ['wrong content type', frame(valid), { headers: { 'content-type': 'text/plain' } }, { httpRefusalOk: true }],
        ['grpc-web content type', frame(valid), { headers: { 'content-type': 'application/grpc-web+proto' } }, { httpRefusalOk: true }],
        ['bad timeout header', frame(valid), { headers: { 'grpc-timeout': '-5Q' } }, { badTimeout: true }],
        ['huge metadata value', frame(valid), { headers: { 'x-fuzz': 'h'.repeat(12_000) } }, { httpRefusalOk: true, resetOk: true }],
        ['reset in the middle of a message', frame(valid, valid.length + 10), { reset: true }, { resetOk: true }],
      ];
      for (const [address, path] of paths) {
        for (const [what, body, opts, ok] of cases) {
          const r = await raw(address, path, body, { ...opts, token: user, tls: tlsOf(address) });
          expectClean(`${address}${path} ${what}`, r, ok);
        }
        expectClean(`${address} unknown method`, await raw(address, '/oarcloud.v1.NoSuchService/Nothing', frame(valid), { token: user, tls: tlsOf(address) }));
        expectClean(`${address} unknown method of a service`, await raw(address, '/oarcloud.v1.InstanceService/Nothing', frame(valid), { token: user, tls: tlsOf(address) }));
      }
      // Random bytes as a whole request body.
      await fc.assert(
        fc.asyncProperty(fc.uint8Array({ maxLength: 64 }), fc.constantFrom(...paths), async (bytes, [address, path]) => {
          expectClean(`${address}${path} random body`, await raw(address, path, Buffer.from(bytes), { token: user, tls: tlsOf(address) }));
        }),
        { numRuns: RUNS * 2 },
      );
    });

    it('streams: garbage, truncated and cut-short messages get a clean status', async () => {
      const { controller, agents, user, admin, node, agentCreds } = t();
      const credsOf = (address: string) => (agents.includes(address) ? agentCreds : undefined);
      const garbage = fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => Buffer.from(b)), fc.constant(Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])), fc.constant(Buffer.from([0x12, 0x50, 0x01])));
      const targets: Array<[string, AnyMethod, string]> = [
        [controller, m(InstanceServiceService.connect), user],
        [controller, m(ImageServiceService.importImage), admin],
        [controller, m(ImageServiceService.fetchLayer), node],
        ...agents.flatMap((a) => [[a, m(AgentServiceService.connect), ''] as [string, AnyMethod, string], [a, m(AgentServiceService.exportLayer), ''] as [string, AnyMethod, string]]),
      ];
      const seen = new Map<string, Set<string>>();
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...targets), fc.array(garbage, { minLength: 1, maxLength: 3 }), fc.constantFrom('half-close', 'cancel') as fc.Arbitrary<'half-close' | 'cancel'>, async ([address, def, token], msgs, end) => {
          const r = await stream(address, def, def.requestStream ? msgs : [msgs[0]!], token, end, credsOf(address));
          seen.set(def.path, (seen.get(def.path) ?? new Set()).add(codeName(r.code)));
          expect(CLEAN.has(r.code), `${address}${def.path} ${end}: ${codeName(r.code)} ${r.details}`).toBe(true);
        }),
        { numRuns: RUNS * 2 },
      );
      // Well-formed first messages with hostile values, then the stream cut short.
      const hostile: Array<[string, AnyMethod, object[], string]> = [
        [controller, m(InstanceServiceService.connect), [{ frame: { $case: 'open', value: { instanceId: '../../x', port: 70000 } } }], user],
        [controller, m(InstanceServiceService.connect), [{ frame: { $case: 'data', value: Buffer.from('before open') } }], user],
        [controller, m(ImageServiceService.importImage), [{ part: { $case: 'header', value: { name: '../../etc:passwd', public: true } } }, { part: { $case: 'data', value: Buffer.from('not a tar') } }], admin],
        [controller, m(ImageServiceService.importImage), [{ part: { $case: 'header', value: { name: `${MB}:x`, public: true } } }], admin],
        [controller, m(ImageServiceService.importImage), [{ part: { $case: 'data', value: Buffer.from('no header') } }], admin],
        [controller, m(ImageServiceService.fetchLayer), [{ digest: '../../../etc/passwd', offset: 0 }], node],
        [controller, m(ImageServiceService.fetchLayer), [{ digest: `sha256:${'0'.repeat(64)}`, offset: 2 ** 53 }], node],
        ...agents.map((a) => [a, m(AgentServiceService.exportLayer), [{ instanceId: '../../x' }], ''] as [string, AnyMethod, object[], string]),
      ];
      for (const [address, def, msgs, token] of hostile) {
        for (const end of ['half-close', 'cancel'] as const) {
          const r = await stream(address, def, msgs, token, end, credsOf(address));
          expect(CLEAN.has(r.code), `${address}${def.path} ${JSON.stringify(msgs).slice(0, 120)} ${end}: ${codeName(r.code)} ${r.details}`).toBe(true);
          if (end === 'half-close') expect(r.code, `${def.path} ${JSON.stringify(msgs).slice(0, 120)}: ${r.details}`).not.toBe(grpc.status.OK);
        }
      }
      console.log(`wire fuzz: stream statuses: ${[...seen].map(([k, v]) => `${k.split('/').pop()}=${[...v].join('|')}`).join(', ')}`);
    });

    it('calls that create things, with values that are always wrong: refused with a clean status', async () => {
      for (const [what, arb] of creators(t())) {
        await fc.assert(
          fc.asyncProperty(arb, async (callIt) => {
            const r = await callIt();
            if (r.clientSide) return; // the client could not even encode it: never sent
            expect(r.code !== grpc.status.OK && CLEAN.has(r.code), `${what}: ${codeName(r.code)} ${r.details.slice(0, 300)}`).toBe(true);
          }),
          { numRuns: RUNS },
        );
      }
    });

    it('afterwards: every server SERVING, nothing created or removed', async () => {
      const { controller, agents, agentCreds } = t();
      expect(await grpcHealth(controller)).toBe('SERVING');
      for (const a of agents) expect(await grpcHealth(a, '', 3000, agentCreds)).toBe('SERVING');
      expect(JSON.parse(await t().world())).toEqual(JSON.parse(before));
    });
  };
}

/** Ids of what exists, as the admin and the agents see it. */
function worldOf(controller: string, agents: string[], admin: string, agentCreds: grpc.ChannelCredentials): () => Promise<string> {
  const ask = async (address: string, def: AnyMethod, req: unknown, token?: string): Promise<Record<string, unknown>> => {
    const client = new grpc.Client(address, agents.includes(address) ? agentCreds : grpc.credentials.createInsecure());
    try {
      return await new Promise((resolve, reject) =>
        client.makeUnaryRequest(def.path, def.requestSerialize as (v: unknown) => Buffer, def.responseDeserialize, req, token ? bearer(token) : new grpc.Metadata(), { deadline: Date.now() + 20_000 }, (err, res) =>
          err ? reject(err) : resolve(res as Record<string, unknown>),
        ),
      );
    } finally {
      client.close();
    }
  };
  const ids = (x: Record<string, unknown>, key: string) => ((x[key] ?? []) as Array<{ id?: string | number; name?: string; spec?: { id: string } }>).map((o) => String(o.id ?? o.spec?.id ?? o.name)).sort();
  return async () =>
    JSON.stringify({
      jobs: ids(await ask(controller, m(JobServiceService.listJobs), { allUsers: true }, admin), 'jobs'),
      instances: ids(await ask(controller, m(InstanceServiceService.listInstances), { jobId: 0, allUsers: true }, admin), 'instances'),
      networks: ids(await ask(controller, m(NetworkServiceService.listNetworks), { jobId: 0 }, admin), 'networks'),
      images: ids(await ask(controller, m(ImageServiceService.listImages), {}, admin), 'images'),
      volumes: ids(await ask(controller, m(VolumeServiceService.listVolumes), { allUsers: true }, admin), 'volumes'),
      users: ids(await ask(controller, m(UserServiceService.listUsers), {}, admin), 'users'),
      agents: await Promise.all(agents.map(async (a) => ids(await ask(a, m(AgentServiceService.listInstances), { jobId: 0 }), 'instances'))),
    });
}

// ----- in process --------------------------------------------------------------------------
let local: Target | undefined;
let localErr = '';
let ctl: RunningController | undefined;
const fakes: FakeAgent[] = [];
let dir = '';

describe('wire fuzz (in process) - a real controller with fake OAR and fake agents', () => {
  beforeAll(async () => {
    try {
      dir = mkdtempSync(join(tmpdir(), 'oc-fuzz-'));
      fakes.push(await startFakeAgent('node-1'), await startFakeAgent('node-2'));
      const config = ControllerConfigSchema.parse({
        listen: '127.0.0.1:0',
        dbPath: join(dir, 'state.db'),
        agents: fakes.map((a) => ({ name: a.node, address: a.address })),
        images: [{ name: 'tiny:latest', layers: [`sha256:${'1'.repeat(64)}`] }],
        reconcileMs: 60_000,
        agentCallTimeoutMs: 2000,
        agentCreateTimeoutMs: 5000,
      });
      const oar = new FakeOar();
      ctl = await startController(config, { log: nullLogger, oar, oarCommands: oar, oarEvents: false, natsEvents: false });
      const controller = `127.0.0.1:${ctl.port}`;
      const admin = readFileSync(join(dir, 'admin.token'), 'utf8').trim();
      const added = await unary(controller, m(UserServiceService.addUser), { name: 'alice', role: Role.ROLE_USER }, admin);
      if (added.code !== grpc.status.OK) throw new Error(`AddUser alice: ${added.details}`);
      // The token itself is needed: ask again through a typed call.
      const c = new grpc.Client(controller, grpc.credentials.createInsecure());
      const token = await new Promise<string>((resolve, reject) =>
        c.makeUnaryRequest(UserServiceService.issueToken.path, UserServiceService.issueToken.requestSerialize, UserServiceService.issueToken.responseDeserialize, { name: 'alice' }, bearer(admin), (err, res) => (err ? reject(err) : resolve(res!.token))),
      );
      c.close();
      // The fake agents are not under test (they accept anything): only the controller is fuzzed.
      const insecure = grpc.credentials.createInsecure();
      local = { name: 'in process', controller, agents: [], agentCreds: insecure, admin, user: token, node: readFileSync(join(dir, 'node.token'), 'utf8').trim(), world: worldOf(controller, fakes.map((a) => a.address), admin, insecure) };
    } catch (err) {
      localErr = (err as Error).stack ?? String(err);
      throw err;
    }
  });
  afterAll(async () => {
    await ctl?.close();
    for (const a of fakes) await a.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
  describe('servers', suite(() => local, () => `in-process servers did not start: ${localErr}`));
});

// ----- the live local cluster ----------------------------------------------------------------
let live: Target | undefined;
let liveWhy = '';

describe('wire fuzz (live) - the local cluster’s controller and agents', () => {
  beforeAll(async () => {
    try {
      const admin = readFileSync(join(STATE, 'controller/admin.token'), 'utf8').trim();
      const node = readFileSync(join(STATE, 'controller/node.token'), 'utf8').trim();
      if ((await grpcHealth(CONTROLLER_ADDRESS, '', 3000)) !== 'SERVING') throw new Error('controller not serving');
      const user = await userToken('fuzzer');
      const agents = Object.values(AGENT_ADDRESSES);
      // The agents speak mutual TLS on the local cluster: called as the controller calls them.
      const pki = clusterPkiDir();
      const cert = join(pki, `controller-${CLUSTER_CONTROLLER_CERT_NAME}.crt`);
      const agentTls = existsSync(cert) ? { ca: readFileSync(join(pki, 'ca.crt')), cert: readFileSync(cert), key: readFileSync(join(pki, `controller-${CLUSTER_CONTROLLER_CERT_NAME}.key`)) } : undefined;
      const agentCreds = agentCredentials();
      live = { name: 'live', controller: CONTROLLER_ADDRESS, agents, agentCreds, agentTls, admin, user, node, world: worldOf(CONTROLLER_ADDRESS, agents, admin, agentCreds) };
    } catch (err) {
      liveWhy = `the local cluster is not up (${(err as Error).message}): npm run cluster:up`;
      if (process.env.OARCLOUD_REQUIRE_INTEGRATION === '1') throw new Error(`${liveWhy} (OARCLOUD_REQUIRE_INTEGRATION=1: not skipping)`);
      console.warn(`SKIP wire fuzz (live): ${liveWhy}`);
    }
  });
  // Skipped test by test (the reason printed above) when the cluster is not up.
  describe('servers', suite(() => live, () => liveWhy));
});
