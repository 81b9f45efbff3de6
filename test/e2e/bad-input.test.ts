/**
 * Bad input against the live controller and agents of the local cluster (fast-check):
 * every unary method of every cloud service, called as a plain user with requests whose
 * strings are malformed ids, path tricks, huge or odd text and whose numbers are negative,
 * enormous or unknown enum values, and raw garbage bytes on the wire. Each call must end
 * with a clean status (never UNKNOWN, INTERNAL or a dropped server), the servers must still
 * be SERVING afterwards, and nothing anyone owns may have changed.
 *
 * Methods that would legitimately create something from a well-formed request (Reserve,
 * CreateVolume, streams) are left out; the hook service needs the hook token and is called
 * with the user's. The agents get malformed ids on the calls that take one.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AgentServiceService,
  HookServiceService,
  ImageServiceService,
  InstanceServiceService,
  JobServiceService,
  JobState,
  NetworkServiceService,
  NodeServiceService,
  UserServiceService,
  VolumeServiceService,
} from '@oarcloud/api';
import { bearer, callUnary, isId, tlsChannelOptions } from '@oarcloud/common';
import { AGENT_ADDRESSES, agentClient, agentCredentials, CONTROLLER_ADDRESS, grpcHealth, localStateDir, needPath, needRoot, prerequisites, userToken, waitServing } from '@oarcloud/testkit';

const STATE = localStateDir();
const p = prerequisites('bad input e2e', [needRoot, needPath(`${STATE}/controller/admin.token`)]);

/** Any method of a generated service (its request type is what the fuzzer builds). */
interface AnyMethod {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  requestSerialize(v: never): Buffer;
  requestDeserialize(b: Buffer): unknown;
  responseDeserialize(b: Buffer): unknown;
}

const CLEAN = new Set([
  grpc.status.OK,
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
const SKIP = new Set(['Reserve', 'CreateVolume', 'WaitJobReady']);
const RUNS = Number(process.env.OARCLOUD_FUZZ_RUNS ?? 25);

/** Strings a careless or hostile client sends. */
const nasty = fc.oneof(
  fc.constantFrom('', ' ', '../../etc/passwd', '..', '/', 'i-../../../x', 'n-000000000000/..', 'a:b:c', 'tiny:latest\u0000', 'i-0123456789ab', 'i-ZZZZZZZZZZZZ', '%s%n', '\u202e', "'; DROP TABLE jobs; --"),
  fc.string({ maxLength: 64 }),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.integer({ min: 1, max: 3 }).map((k) => 'x'.repeat(k * 300_000)),
);
const number = fc.oneof(fc.constantFrom(0, -1, 1, 2 ** 31 - 1, -(2 ** 31), 4_294_967_295, 999_999_999), fc.integer({ min: -1000, max: 100_000 }));

/** A request of the method's type with every string and number field replaced. */
function fuzzRequest(def: AnyMethod): fc.Arbitrary<Record<string, unknown>> {
  const base = def.requestDeserialize(Buffer.alloc(0)) as Record<string, unknown>;
  const fields: Record<string, fc.Arbitrary<unknown>> = {};
  for (const [k, v] of Object.entries(base)) {
    if (typeof v === 'string') fields[k] = nasty;
    else if (typeof v === 'number') fields[k] = number;
    else if (typeof v === 'boolean') fields[k] = fc.boolean();
    else if (Array.isArray(v)) fields[k] = fc.array(nasty, { maxLength: 20 });
    else fields[k] = fc.constant(v);
  }
  return fc.record(fields).map((f) => ({ ...base, ...f }));
}

interface Outcome {
  code: grpc.status;
  details: string;
  clientSide: boolean;
}

function call(client: grpc.Client, def: AnyMethod, req: unknown, md: grpc.Metadata, raw = false): Promise<Outcome> {
  return new Promise((resolve) => {
    const serialize = (raw ? (b: unknown) => b as Buffer : def.requestSerialize) as (v: unknown) => Buffer;
    client.makeUnaryRequest(def.path, serialize, def.responseDeserialize, req, md, { deadline: Date.now() + 20_000 }, (err, _res) => {
      if (!err) resolve({ code: grpc.status.OK, details: '', clientSide: false });
      else resolve({ code: err.code, details: err.details, clientSide: /serialization failure/.test(err.details) });
    });
  });
}

const SERVICES = { JobServiceService, InstanceServiceService, ImageServiceService, VolumeServiceService, NetworkServiceService, UserServiceService, NodeServiceService, HookServiceService };

describe.skipIf(!p.ok)('bad input - the live servers answer every malformed call cleanly and change nothing', () => {
  let alice = '';
  let admin = '';
  const controller = new grpc.Client(CONTROLLER_ADDRESS, grpc.credentials.createInsecure());
  const agents = Object.values(AGENT_ADDRESSES).map((a) => new grpc.Client(a, agentCredentials(), tlsChannelOptions(a)));
  const md = (token: string): grpc.Metadata => bearer(token);

  /** What exists, as the admin sees it: ids of jobs, instances, networks, images, volumes, users. */
  async function world(): Promise<string> {
    const ask = (def: AnyMethod, req: unknown) =>
      new Promise<unknown>((resolve, reject) =>
        controller.makeUnaryRequest(def.path, def.requestSerialize as (v: unknown) => Buffer, def.responseDeserialize, req, md(admin), { deadline: Date.now() + 20_000 }, (err, res) => (err ? reject(err) : resolve(res))),
      );
    // Ids only: a job of an earlier test may still end meanwhile (its state changes by itself).
    const ids = (x: unknown, key: string) => ((x as Record<string, Array<{ id?: string | number; name?: string }>>)[key] ?? []).map((o) => String(o.id ?? o.name)).sort();
    return JSON.stringify({
      // Live jobs only: GetJob of an id the controller never saw looks it up in OAR and keeps
      // a record of it when it is a cloud job (an ended one, here): a cache of OAR, not a change.
      jobs: ids({ jobs: ((await ask(JobServiceService.listJobs, { allUsers: true })) as { jobs: Array<{ id: number; state: number }> }).jobs.filter((j) => j.state !== JobState.JOB_STATE_ENDED) }, 'jobs'),
      instances: ids(await ask(InstanceServiceService.listInstances, { jobId: 0, allUsers: true }), 'instances'),
      networks: ids(await ask(NetworkServiceService.listNetworks, { jobId: 0 }), 'networks'),
      images: ids(await ask(ImageServiceService.listImages, {}), 'images'),
      volumes: ids(await ask(VolumeServiceService.listVolumes, { allUsers: true }), 'volumes'),
      users: ids(await ask(UserServiceService.listUsers, {}), 'users'),
    });
  }

  beforeAll(async () => {
    await waitServing(CONTROLLER_ADDRESS);
    admin = readFileSync(join(STATE, 'controller/admin.token'), 'utf8').trim();
    alice = await userToken('alice');
  });

  afterAll(() => {
    controller.close();
    for (const a of agents) a.close();
  });

  it('every unary cloud method: fuzzed fields get a clean status; the controller stays up; nothing changed', async () => {
    const before = await world();
    const seen = new Map<string, Set<string>>();
    for (const [svc, def] of Object.entries(SERVICES)) {
      for (const [name, m] of Object.entries(def as unknown as Record<string, AnyMethod>)) {
        const method = m.path.split('/').pop()!;
        if (m.requestStream || m.responseStream || SKIP.has(method)) continue;
        await fc.assert(
          fc.asyncProperty(fuzzRequest(m), async (req) => {
            const r = await call(controller, m, req, md(alice));
            if (r.clientSide) return; // the client refused to encode it (e.g. a lone surrogate): never sent
            seen.set(`${svc}.${name}`, (seen.get(`${svc}.${name}`) ?? new Set()).add(grpc.status[r.code]!));
            expect(CLEAN.has(r.code), `${m.path}: ${grpc.status[r.code]} ${r.details.slice(0, 300)}`).toBe(true);
          }),
          { numRuns: RUNS },
        );
      }
    }
    console.log(`bad input: statuses by method: ${[...seen].map(([k, v]) => `${k}=${[...v].join('|')}`).join(', ')}`);
    expect(seen.size).toBeGreaterThan(20);
    expect(await grpcHealth(CONTROLLER_ADDRESS)).toBe('SERVING');
    expect(JSON.parse(await world())).toEqual(JSON.parse(before));
  });

  it('garbage and truncated bytes on the wire: INVALID_ARGUMENT, and the servers stay up', async () => {
    const valid = InstanceServiceService.getInstance.requestSerialize({ id: 'i-0123456789ab' });
    const targets: Array<[grpc.Client, AnyMethod]> = [
      [controller, InstanceServiceService.getInstance as AnyMethod],
      [controller, JobServiceService.getJob as AnyMethod],
      ...agents.map((a) => [a, AgentServiceService.getInstance as AnyMethod] as [grpc.Client, AnyMethod]),
    ];
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 256 }), fc.integer({ min: 1, max: valid.length - 1 }).map((n) => valid.subarray(0, n))), async (bytes) => {
        for (const [client, m] of targets) {
          const r = await call(client, m, Buffer.from(bytes), md(alice), true);
          // Some random bytes are a valid message (unknown fields are skipped): then any clean answer.
          expect(CLEAN.has(r.code), `${m.path}: ${grpc.status[r.code]} ${r.details.slice(0, 200)}`).toBe(true);
        }
      }),
      { numRuns: RUNS * 2 },
    );
    // A field with a wrong wire type (id as a varint) cannot parse: INVALID_ARGUMENT.
    const r = await call(controller, InstanceServiceService.getInstance as AnyMethod, Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), md(alice), true);
    expect(r.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(await grpcHealth(CONTROLLER_ADDRESS)).toBe('SERVING');
    for (const a of Object.values(AGENT_ADDRESSES)) expect(await grpcHealth(a, '', 3000, agentCredentials())).toBe('SERVING');
  });

  it('agents: malformed instance and job ids get a clean error (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED for an oversized message), nothing is created', async () => {
    const typed = Object.values(AGENT_ADDRESSES).map((a) => agentClient(a));
    const listAll = async (): Promise<string[]> => {
      const ids: string[] = [];
      for (const a of typed) ids.push(...(await callUnary(a.listInstances.bind(a), { jobId: 0 })).instances.map((i) => i.spec?.id ?? '?'));
      return ids.sort();
    };
    try {
      const before = await listAll();
      await fc.assert(
        fc.asyncProperty(nasty, fc.integer({ min: -5, max: 2 ** 31 - 1 }), async (id, jobId) => {
          for (const a of typed) {
            for (const [m, req] of [
              [AgentServiceService.getInstance, { id }],
              [AgentServiceService.destroyInstance, { id }],
              [AgentServiceService.stopInstance, { id }],
              [AgentServiceService.createInstance, { spec: { id, name: id, jobId, owner: id, image: { name: id, layers: [id] }, vcpus: jobId, memoryMib: jobId, cpuset: id, sshAuthorizedKeys: [id], hostname: id, networks: [] } }],
            ] as Array<[AnyMethod, unknown]>) {
              const r = await call(a, m, req, new grpc.Metadata());
              if (r.clientSide) continue;
              // DestroyInstance of a well-formed id the agent does not know is OK by contract (idempotent).
              const okAllowed = m.path.endsWith('/DestroyInstance') && isId(id, 'i');
              expect((okAllowed || r.code !== grpc.status.OK) && CLEAN.has(r.code), `${m.path}: ${grpc.status[r.code]} ${r.details.slice(0, 200)}`).toBe(true);
            }
          }
        }),
        { numRuns: RUNS },
      );
      expect(await listAll()).toEqual(before);
    } finally {
      for (const a of typed) a.close();
    }
  });
});
