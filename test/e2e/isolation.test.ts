/**
 * Isolation between users, through the gRPC API directly, on the local cluster: alice holds
 * a job with instances, a network of her own, a volume and a private image; bob calls EVERY
 * method of every cloud service on her ids and gets NOT_FOUND (PERMISSION_DENIED for
 * admin-only calls), never sees her objects in a listing, and nothing of hers changes.
 * Missing, garbage and revoked tokens are UNAUTHENTICATED on every method.
 *
 * The methods come from the generated service definitions: a method without a case here
 * fails the test, so a new one cannot be forgotten.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CONTROLLER_SERVICES,
  HookKind,
  HookServiceService,
  ImageServiceService,
  InstanceServiceService,
  InstanceState,
  JobServiceService,
  JobState,
  LaunchSpec,
  NetworkServiceService,
  NodeServiceService,
  Role,
  UserServiceService,
  VolumeServiceService,
  type Image,
  type Instance,
  type Job,
  type Network,
  type Volume,
} from '@oarcloud/api';
import { bearer } from '@oarcloud/common';
import { CLUSTER_IMAGE, CONTROLLER_ADDRESS, localStateDir, needPath, needRoot, prerequisites, userToken, waitFor } from '@oarcloud/testkit';

const p = prerequisites('isolation e2e', [needRoot, needPath(join(localStateDir(), 'controller/admin.token')), needPath(join(localStateDir(), 'controller.yaml'))]);

/** Every cloud service the controller serves, by its short name. */
const SERVICES: Record<string, grpc.ServiceDefinition> = {
  JobService: JobServiceService,
  InstanceService: InstanceServiceService,
  ImageService: ImageServiceService,
  VolumeService: VolumeServiceService,
  NetworkService: NetworkServiceService,
  UserService: UserServiceService,
  NodeService: NodeServiceService,
  HookService: HookServiceService,
};

type AnyDef = grpc.MethodDefinition<unknown, unknown>;

interface Outcome {
  code: grpc.status;
  details: string;
  responses: unknown[];
}

/** A request message: the method's defaults (decoded from zero bytes) with `fields` on top. */
function message(def: AnyDef, fields: object): unknown {
  return { ...(def.requestDeserialize(Buffer.alloc(0)) as object), ...fields };
}

/**
 * Calls any method generically (unary, server, client or bidi streaming) with `msgs` and
 * returns its final status. A bidi stream that sends data back (a connection that should
 * never have opened) is cancelled after its first message, with the data kept.
 */
function invoke(client: grpc.Client, def: AnyDef, msgs: object[], md: grpc.Metadata, timeoutMs = 20_000): Promise<Outcome> {
  const deadline = Date.now() + timeoutMs;
  const reqs = msgs.map((m) => message(def, m));
  const ser = def.requestSerialize as (v: unknown) => Buffer;
  const de = def.responseDeserialize as (b: Buffer) => unknown;
  return new Promise((resolve) => {
    const responses: unknown[] = [];
    const done = (err: grpc.ServiceError | null | Partial<grpc.StatusObject>): void =>
      resolve({ code: err?.code ?? grpc.status.OK, details: err && 'details' in err ? String(err.details ?? '') : '', responses });
    if (!def.requestStream && !def.responseStream) {
      client.makeUnaryRequest(def.path, ser, de, reqs[0], md, { deadline }, (err, res) => {
        if (res !== undefined) responses.push(res);
        done(err);
      });
    } else if (!def.requestStream) {
      const call = client.makeServerStreamRequest(def.path, ser, de, reqs[0], md, { deadline });
      call.on('data', (d) => responses.push(d));
      call.on('error', () => undefined);
      call.on('status', (st) => done(st));
    } else if (!def.responseStream) {
      const call = client.makeClientStreamRequest(def.path, ser, de, md, { deadline }, (err, res) => {
        if (res !== undefined) responses.push(res);
        done(err);
      });
      for (const r of reqs) call.write(r);
      call.end();
    } else {
      const call = client.makeBidiStreamRequest(def.path, ser, de, md, { deadline });
      call.on('data', (d) => {
        responses.push(d);
        call.cancel();
      });
      call.on('error', () => undefined);
      call.on('status', (st) => done(st));
      for (const r of reqs) call.write(r);
    }
  });
}

const ids = (xs: Array<{ id?: unknown; spec?: { id: string } }>): string[] => xs.map((x) => String(x.spec?.id ?? x.id)).sort();

interface Alice {
  job: Job;
  instances: Instance[];
  network: Network;
  volume: Volume;
  image: Image;
  reserveKey: string;
  runKey: string;
}

/** What bob sends to a method, and what must come back. */
interface BobCase {
  msgs: object[];
  /** The status bob must get (any of them). */
  code: grpc.status | grpc.status[];
  /** For OK answers (listings, whoami): nothing of alice's may be in them. */
  check?: (responses: unknown[]) => void;
}

describe.skipIf(!p.ok)('isolation e2e - one user cannot see or touch another\'s work through any gRPC method', () => {
  const client = new grpc.Client(CONTROLLER_ADDRESS, grpc.credentials.createInsecure());
  const run = (service: string, method: string, msgs: object[], md: grpc.Metadata, timeoutMs?: number): Promise<Outcome> =>
    invoke(client, SERVICES[service]![method] as AnyDef, msgs, md, timeoutMs);
  /** A unary call that must succeed; its answer. */
  const ok = async <T>(service: string, method: string, req: object, md: grpc.Metadata, timeoutMs?: number): Promise<T> => {
    const o = await run(service, method, [req], md, timeoutMs);
    if (o.code !== grpc.status.OK) throw new Error(`${service}.${method}: ${grpc.status[o.code]} ${o.details}`);
    return o.responses[0] as T;
  };
  let aliceMd: grpc.Metadata;
  let bobToken = '';
  let bobMd: grpc.Metadata;
  let adminMd: grpc.Metadata;
  let alice: Alice;
  const suffix = randomBytes(3).toString('hex');
  const removable = `isox${suffix}`;

  /** Everything of alice's that bob could have changed, as alice sees it. */
  const aliceState = async (): Promise<unknown> => {
    const job = await ok<Job>('JobService', 'getJob', { id: alice.job.id }, aliceMd);
    const insts = await ok<{ instances: Instance[] }>('InstanceService', 'listInstances', { jobId: alice.job.id }, aliceMd);
    const nets = await ok<{ networks: Network[] }>('NetworkService', 'listNetworks', { jobId: alice.job.id }, aliceMd);
    const vols = await ok<{ volumes: Volume[] }>('VolumeService', 'listVolumes', {}, aliceMd);
    const img = await ok<Image>('ImageService', 'getImage', { name: alice.image.name }, aliceMd);
    const who = await ok<{ name: string; role: Role }>('UserService', 'whoAmI', {}, aliceMd);
    return {
      job: { id: job.id, owner: job.owner, state: job.state, oarState: job.oarState, instanceCount: job.instanceCount },
      instances: insts.instances.map((i) => ({ id: i.spec?.id, name: i.spec?.name, node: i.node, state: i.state })).sort((a, b) => String(a.id).localeCompare(String(b.id))),
      networks: nets.networks.map((n) => ({ id: n.id, name: n.name, subnet: n.subnet, vni: n.vni })).sort((a, b) => a.id.localeCompare(b.id)),
      volumes: vols.volumes.map((v) => ({ id: v.id, name: v.name })).sort((a, b) => a.id.localeCompare(b.id)),
      image: { name: img.name, layers: img.layers, owner: img.owner, public: img.public },
      who: { name: who.name, role: who.role },
    };
  };

  beforeAll(async () => {
    adminMd = bearer(readFileSync(join(localStateDir(), 'controller/admin.token'), 'utf8').trim());
    aliceMd = bearer(await userToken('alice'));
    bobToken = await userToken('bob');
    bobMd = bearer(bobToken);
    const reserveKey = `iso-reserve-${suffix}`;
    const runKey = `iso-run-${suffix}`;
    const spec = LaunchSpec.fromPartial({ image: CLUSTER_IMAGE, count: 1, vcpus: 1, memoryMib: 64, namePrefix: `iso${suffix}` });
    const job = await ok<Job>('JobService', 'reserve', { nodes: 1, coresPerNode: 2, walltimeS: 900, spec, idempotencyKey: reserveKey }, aliceMd, 60_000);
    await waitFor(async () => (await ok<Job>('JobService', 'getJob', { id: job.id }, aliceMd)).state === JobState.JOB_STATE_RUNNING, { timeoutMs: 60_000, intervalMs: 300, what: 'alice\'s job RUNNING' });
    const network = await ok<Network>('NetworkService', 'createNetwork', { jobId: job.id, name: `iso${suffix}` }, aliceMd, 60_000);
    await ok('InstanceService', 'runInstances', { jobId: job.id, spec: LaunchSpec.fromPartial({ ...spec, namePrefix: `iso${suffix}b` }), idempotencyKey: runKey }, aliceMd, 120_000);
    const instances = await waitFor(
      async () => {
        const l = await ok<{ instances: Instance[] }>('InstanceService', 'listInstances', { jobId: job.id }, aliceMd);
        return l.instances.length === 2 && l.instances.every((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING) ? l.instances : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 500, what: 'alice\'s 2 instances RUNNING' },
    );
    const volume = await ok<Volume>('VolumeService', 'createVolume', { name: `iso${suffix}` }, aliceMd);
    const image = await ok<Image>('ImageService', 'saveInstance', { instanceId: instances[0]!.spec!.id, name: `iso${suffix}:v1` }, aliceMd, 120_000);
    expect(image.public).toBe(false);
    alice = { job, instances, network, volume, image, reserveKey, runKey };
  }, 300_000);

  afterAll(async () => {
    if (alice) {
      await run('JobService', 'release', [{ id: alice.job.id }], aliceMd);
      await waitFor(async () => (await ok<Job>('JobService', 'getJob', { id: alice.job.id }, aliceMd)).state === JobState.JOB_STATE_ENDED, { timeoutMs: 60_000, intervalMs: 500, what: 'alice\'s job ENDED' }).catch(() => undefined);
      await run('ImageService', 'deleteImage', [{ name: alice.image.name }], aliceMd);
      await run('VolumeService', 'deleteVolume', [{ id: alice.volume.id }], aliceMd);
    }
    await run('UserService', 'removeUser', [{ name: removable }], adminMd);
    client.close();
  }, 120_000);

  /** Bob's case for every method, on alice's ids. */
  const bobCases = (): Record<string, BobCase> => {
    const a = alice;
    const inst = a.instances[0]!;
    const instId = inst.spec!.id;
    const spec = LaunchSpec.fromPartial({ image: CLUSTER_IMAGE, count: 1, vcpus: 1, memoryMib: 64 });
    const notAlices = (rs: unknown[]): void => {
      const text = JSON.stringify(rs);
      for (const secret of [String(a.job.id), instId, a.instances[1]!.spec!.id, a.network.id, a.volume.id, a.image.name]) {
        // Job ids are short numbers: look for them as ids, not as substrings of anything.
        if (secret === String(a.job.id)) expect(text).not.toMatch(new RegExp(`"(id|jobId)":${secret}[,}]`));
        else expect(text).not.toContain(secret);
      }
    };
    const NF = grpc.status.NOT_FOUND;
    const PD = grpc.status.PERMISSION_DENIED;
    return {
      // Bob's reserve may not reuse alice's private image, volume or idempotency key.
      'JobService.reserve': { msgs: [{ nodes: 1, coresPerNode: 1, walltimeS: 60, spec: { ...spec, image: a.image.name }, idempotencyKey: a.reserveKey }], code: NF },
      'JobService.getJob': { msgs: [{ id: a.job.id }], code: NF },
      'JobService.listJobs': { msgs: [{ allUsers: true }], code: [grpc.status.OK, PD], check: notAlices },
      'JobService.release': { msgs: [{ id: a.job.id }], code: NF },
      'InstanceService.runInstances': { msgs: [{ jobId: a.job.id, spec, idempotencyKey: a.runKey }], code: NF },
      'InstanceService.getInstance': { msgs: [{ id: instId }], code: NF },
      'InstanceService.listInstances': { msgs: [{ jobId: a.job.id, allUsers: true }], code: [grpc.status.OK, NF, PD], check: notAlices },
      'InstanceService.stopInstance': { msgs: [{ id: instId }], code: NF },
      'InstanceService.startInstance': { msgs: [{ id: inst.spec!.name }], code: NF },
      'InstanceService.deleteInstance': { msgs: [{ id: instId }], code: NF },
      'InstanceService.getConsoleLog': { msgs: [{ id: instId, maxBytes: 4096 }], code: NF },
      'InstanceService.connect': { msgs: [{ frame: { $case: 'open', value: { instanceId: instId, port: 22 } } }], code: NF },
      'ImageService.listImages': { msgs: [{}], code: grpc.status.OK, check: notAlices },
      'ImageService.getImage': { msgs: [{ name: a.image.name }], code: NF },
      'ImageService.saveInstance': { msgs: [{ instanceId: instId, name: `bob${suffix}:v1` }], code: NF },
      'ImageService.deleteImage': { msgs: [{ name: a.image.name }], code: NF },
      // Agents (node token) and admins only.
      'ImageService.fetchLayer': { msgs: [{ digest: a.image.layers[a.image.layers.length - 1]! }], code: PD },
      'ImageService.importImage': { msgs: [{ part: { $case: 'header', value: { name: a.image.name, public: true } } }, { part: { $case: 'data', value: Buffer.alloc(512) } }], code: PD },
      'VolumeService.createVolume': { msgs: [{ name: `bob${suffix}`, idempotencyKey: '' }], code: grpc.status.OK, check: notAlices },
      'VolumeService.listVolumes': { msgs: [{ allUsers: true }], code: [grpc.status.OK, PD], check: notAlices },
      'VolumeService.getVolume': { msgs: [{ id: a.volume.id }], code: NF },
      'VolumeService.deleteVolume': { msgs: [{ id: a.volume.id }], code: NF },
      'NetworkService.createNetwork': { msgs: [{ jobId: a.job.id, name: `bob${suffix}` }], code: NF },
      'NetworkService.listNetworks': { msgs: [{ jobId: a.job.id }], code: [grpc.status.OK, NF], check: notAlices },
      'NetworkService.deleteNetwork': { msgs: [{ id: a.network.id }], code: NF },
      'UserService.whoAmI': { msgs: [{}], code: grpc.status.OK, check: (rs) => expect(rs[0]).toMatchObject({ name: 'bob', role: Role.ROLE_USER }) },
      'UserService.addUser': { msgs: [{ name: `bob${suffix}`, role: Role.ROLE_ADMIN }], code: PD },
      'UserService.removeUser': { msgs: [{ name: 'alice' }], code: PD },
      'UserService.listUsers': { msgs: [{}], code: PD },
      'UserService.issueToken': { msgs: [{ name: 'alice' }], code: PD },
      'NodeService.listNodes': { msgs: [{}], code: PD },
      // The hook token's calls: a user token may not end (or wait for) anyone's job.
      'HookService.jobEvent': { msgs: [{ kind: HookKind.HOOK_KIND_SERVER_EPILOGUE, jobId: a.job.id }], code: PD },
      'HookService.waitJobReady': { msgs: [{ jobId: a.job.id, timeoutMs: 100 }], code: PD },
    };
  };

  /** Every method of every cloud service, as `Service.method`. */
  const allMethods = (): string[] => Object.entries(SERVICES).flatMap(([s, def]) => Object.keys(def).map((m) => `${s}.${m}`));

  it('isolation - the cases cover every method of every service the controller serves', () => {
    expect(Object.keys(SERVICES).map((s) => `oarcloud.v1.${s}`).sort()).toEqual([...CONTROLLER_SERVICES].sort());
    expect(Object.keys(bobCases()).sort()).toEqual(allMethods().sort());
  });

  it('isolation - bob gets NOT_FOUND (PERMISSION_DENIED for admin-only calls) on every method with alice\'s ids; nothing of hers changes', async () => {
    const before = await aliceState();
    const got: Record<string, string> = {};
    const want: Record<string, string> = {};
    for (const [name, c] of Object.entries(bobCases())) {
      const [service, method] = name.split('.') as [string, string];
      const o = await run(service, method, c.msgs, bobMd, 60_000);
      const codes = Array.isArray(c.code) ? c.code : [c.code];
      got[name] = codes.includes(o.code) ? codes.map((x) => grpc.status[x]).join('|') : `${grpc.status[o.code]} (${o.details})`;
      want[name] = codes.map((x) => grpc.status[x]).join('|');
      if (o.code === grpc.status.OK) c.check?.(o.responses);
      // An error may echo the id bob gave, never tell him whose it is.
      expect(o.details).not.toMatch(/alice/);
    }
    expect(got).toEqual(want);
    // Alice still sees exactly what she had, and can still use it.
    expect(await aliceState()).toEqual(before);
    const listed = await ok<{ instances: Instance[] }>('InstanceService', 'listInstances', { jobId: 0 }, aliceMd);
    expect(ids(listed.instances)).toEqual(expect.arrayContaining(ids(alice.instances)));
    // Bob's own volume (same kind of name as alice's) is his only.
    const bobVols = await ok<{ volumes: Volume[] }>('VolumeService', 'listVolumes', {}, bobMd);
    expect(bobVols.volumes.map((v) => v.owner)).toEqual(bobVols.volumes.map(() => 'bob'));
    for (const v of bobVols.volumes.filter((x) => x.name === `bob${suffix}`)) await ok('VolumeService', 'deleteVolume', { id: v.id }, bobMd);
  }, 300_000);

  it('isolation - an admin sees alice\'s objects (the ids bob was refused are real)', async () => {
    const jobs = await ok<{ jobs: Job[] }>('JobService', 'listJobs', { allUsers: true }, adminMd);
    expect(jobs.jobs.map((j) => j.id)).toContain(alice.job.id);
    const insts = await ok<{ instances: Instance[] }>('InstanceService', 'listInstances', { allUsers: true }, adminMd);
    expect(ids(insts.instances)).toEqual(expect.arrayContaining(ids(alice.instances)));
    await ok('InstanceService', 'getInstance', { id: alice.instances[0]!.spec!.id }, adminMd);
  });

  it('auth - no token and a garbage token are UNAUTHENTICATED on every method, and change nothing', async () => {
    const before = await aliceState();
    const garbage = bearer(randomBytes(32).toString('base64url'));
    const malformed = new grpc.Metadata();
    malformed.set('authorization', 'Basic YWxpY2U6YWxpY2U=');
    const got: Record<string, string> = {};
    for (const [name, c] of Object.entries(bobCases())) {
      const [service, method] = name.split('.') as [string, string];
      for (const [what, md] of [['none', new grpc.Metadata()], ['garbage', garbage], ['basic', malformed]] as const) {
        const o = await run(service, method, c.msgs, md);
        got[`${name} ${what}`] = grpc.status[o.code]!;
      }
    }
    expect(Object.entries(got).filter(([, code]) => code !== 'UNAUTHENTICATED')).toEqual([]);
    expect(Object.keys(got)).toHaveLength(allMethods().length * 3);
    expect(await aliceState()).toEqual(before);
  }, 300_000);

  it('auth - a reissued token and a removed user\'s token are UNAUTHENTICATED on the very next call', async () => {
    // Reissue: bob's previous token stops at once, on unary and streaming methods alike.
    expect((await run('UserService', 'whoAmI', [{}], bobMd)).code).toBe(grpc.status.OK);
    const fresh = await ok<{ token: string }>('UserService', 'issueToken', { name: 'bob' }, adminMd);
    expect((await run('UserService', 'whoAmI', [{}], bobMd)).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await run('InstanceService', 'connect', [{ frame: { $case: 'open', value: { instanceId: 'i-000000000000', port: 22 } } }], bobMd)).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await run('UserService', 'whoAmI', [{}], bearer(fresh.token))).responses[0]).toMatchObject({ name: 'bob' });
    bobToken = fresh.token;
    bobMd = bearer(bobToken);
    // Removal: the user's token stops at once.
    const added = await ok<{ token: string }>('UserService', 'addUser', { name: removable, role: Role.ROLE_USER }, adminMd);
    const md = bearer(added.token);
    expect((await run('JobService', 'listJobs', [{}], md)).code).toBe(grpc.status.OK);
    await ok('UserService', 'removeUser', { name: removable }, adminMd);
    expect((await run('JobService', 'listJobs', [{}], md)).code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await run('UserService', 'whoAmI', [{}], md)).code).toBe(grpc.status.UNAUTHENTICATED);
    // An admin removed is no admin any more either.
    const admin2 = await ok<{ token: string }>('UserService', 'addUser', { name: removable, role: Role.ROLE_ADMIN }, adminMd);
    expect((await run('UserService', 'listUsers', [{}], bearer(admin2.token))).code).toBe(grpc.status.OK);
    await ok('UserService', 'removeUser', { name: removable }, adminMd);
    expect((await run('UserService', 'listUsers', [{}], bearer(admin2.token))).code).toBe(grpc.status.UNAUTHENTICATED);
  });
});
