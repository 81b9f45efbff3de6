/**
 * Fault rounds on the local cluster (issue 8): each round runs a cloud job with one
 * instance on each of node-1 and node-2 (with its job network: OVS ports and a VXLAN
 * tunnel), and at a random point of its start or of its end SIGKILLs one part — an agent,
 * the controller, libvirtd, a node's ovs-vswitchd or nats-server — by the pid the local
 * cluster recorded (never by name), then brings it back with infra/local/up.sh. After each
 * phase, once the parts are back, every source of truth is read again (test/faults/world.ts)
 * until: the live job's instances are all RUNNING, no instance lives outside a live job, and
 * nothing of ours is orphaned (domain, overlay mount, instance folder, job cgroup, veth,
 * OVS port or tunnel). A killed nats-server stays down until the job has started or ended
 * and that phase was checked: NATS carries hints, it must never block a start or a teardown.
 *
 * Seeded: the seed is printed; OARCLOUD_FAULT_SEED replays a run, OARCLOUD_FAULT_ROUNDS
 * sets the number of rounds (default 7: every part killed once, ~1.5 min; the soak, `npm run bench -- faults`: 42, each part six times). The
 * victims come in turn from a random start; the phase and the moment are random.
 * A JSON summary of the run goes to OARCLOUD_FAULT_REPORT when set (tools/bench/faults.ts).
 */
import { writeFileSync } from 'node:fs';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobServiceClient } from '@oarcloud/api';
import { bearer, callUnary } from '@oarcloud/common';
import { CLUSTER_IMAGE, clusterUp, CONTROLLER_ADDRESS, grpcHealth, killDaemon, localStateDir, needCommand, needPath, needRoot, oarJob, oarsub, prerequisites, sh, userToken, waitFor, waitServing } from '@oarcloud/testkit';
import { adminToken, audit } from './world.js';

const STATE = localStateDir();
const p = prerequisites('fault rounds', [
  needRoot,
  needPath(`${STATE}/controller/admin.token`),
  needPath(`${STATE}/run/nats.pid`),
  needCommand('virsh', '-c', 'lxc:///system', 'version'),
]);

const ROUNDS = Number(process.env.OARCLOUD_FAULT_ROUNDS ?? 7);
const SEED = Number(process.env.OARCLOUD_FAULT_SEED ?? Math.floor(Math.random() * 2 ** 31));
const NODES = ['node-1', 'node-2'] as const;
/** Pid-file names under $STATE/run of the parts that may die. */
const VICTIMS = ['agent-node-1', 'agent-node-2', 'controller', 'libvirtd', 'vswitchd-node-1', 'vswitchd-node-2', 'nats'] as const;
type Victim = (typeof VICTIMS)[number];
/** Time for everything to converge once the parts are back (reconcile passes are a few seconds apart). */
const CONVERGE_MS = 90_000;

/** mulberry32: a small seeded generator, so that a failing run can be replayed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface RoundResult {
  round: number;
  victim: Victim;
  phase: 'start' | 'end';
  delayMs: number;
  job: number;
  ok: boolean;
  /** Kill → everything consistent again (that phase's checks passed). */
  convergeMs?: number;
  ms: number;
  error?: string;
}

describe.skipIf(!p.ok)('fault rounds - kill -9 of a part at a random point of job start or end, then everything converges', () => {
  const jobs = new JobServiceClient(CONTROLLER_ADDRESS, credentials.createInsecure());
  let alice = '';
  let admin = '';
  const submitted: number[] = [];
  const results: RoundResult[] = [];

  beforeAll(async () => {
    clusterUp();
    await waitServing(CONTROLLER_ADDRESS);
    admin = adminToken();
    alice = await userToken('alice');
    // Start from a consistent cluster, or a failure would be blamed on the first round.
    const w = await waitFor(async () => {
      const a = await audit(admin);
      return a.problems.length === 0 ? a : undefined;
    }, { timeoutMs: CONVERGE_MS, intervalMs: 1000, what: 'a consistent cluster before the first round' }).catch(async (err: Error) => {
      throw new Error(`${err.message}: ${(await audit(admin)).problems.join('; ')}`);
    });
    expect(w.problems).toEqual([]);
  });

  afterAll(async () => {
    for (const id of submitted) {
      try {
        sh('oardel', [String(id)], 'alice');
      } catch {
        // ended already
      }
    }
    clusterUp();
    jobs.close();
    if (process.env.OARCLOUD_FAULT_REPORT) writeFileSync(process.env.OARCLOUD_FAULT_REPORT, JSON.stringify({ seed: SEED, rounds: ROUNDS, results }, null, 1));
  });

  /** Waits until `audit` finds nothing wrong; the last problems are in the error. */
  async function converged(what: string, mustRun: Map<number, number>): Promise<void> {
    let last: string[] = [];
    try {
      await waitFor(
        async () => {
          last = (await audit(admin, mustRun)).problems;
          return last.length === 0;
        },
        { timeoutMs: CONVERGE_MS, intervalMs: 500, what },
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}; still wrong: ${last.join('; ')}`);
    }
  }

  /** Back up: for a killed part other than NATS at once; NATS only when the phase was checked. */
  function bringBack(victim: Victim, now: 'now' | 'after-check'): void {
    if ((victim === 'nats') === (now === 'after-check')) clusterUp();
  }

  it(`${ROUNDS} rounds, seed ${SEED}`, { timeout: ROUNDS * 6 * 60_000 }, async () => {
    console.log(`fault rounds: seed ${SEED}, ${ROUNDS} rounds (replay: OARCLOUD_FAULT_SEED=${SEED} OARCLOUD_FAULT_ROUNDS=${ROUNDS})`);
    const random = rng(SEED);
    const spec = await callUnary(
      jobs.reserve.bind(jobs),
      { nodes: 2, coresPerNode: 1, walltimeS: 60, spec: { image: CLUSTER_IMAGE, count: 2, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: 'fault' }, idempotencyKey: '' },
      { metadata: bearer(alice), timeoutMs: 30_000 },
    );
    // Only the launch spec is wanted: the job Reserve submitted goes at once.
    await callUnary(jobs.release.bind(jobs), { id: spec.id }, { metadata: bearer(alice), timeoutMs: 30_000 });
    submitted.push(spec.id);

    // Victims in turn from a random start, so that any 7 rounds in a row kill every part once.
    const first = Math.floor(random() * VICTIMS.length);
    for (let round = 1; round <= ROUNDS; round++) {
      const victim = VICTIMS[(first + round - 1) % VICTIMS.length]!;
      const phase = random() < 0.5 ? 'start' : 'end';
      // Start: OAR takes 2.5-4 s from oarsub to Running and the instances start at Launching.
      // End: teardown takes well under a second from oardel.
      const delayMs = Math.floor(random() * (phase === 'start' ? 4000 : 1500));
      const t0 = Date.now();
      const r: RoundResult = { round, victim, phase, delayMs, job: 0, ok: false, ms: 0 };
      results.push(r);
      try {
        const prop = `network_address in ('${NODES.join("','")}')`;
        const id = oarsub('alice', ['-t', `cloud=${spec.specId}`, '-p', prop, '-l', 'host=2/core=1,walltime=0:10:00', 'sleep 600']);
        r.job = id;
        submitted.push(id);
        let killedAt = 0;
        if (phase === 'start') {
          await sleep(delayMs);
          killDaemon(victim);
          killedAt = Date.now();
          bringBack(victim, 'now');
        }
        await waitFor(() => oarJob(id).state === 'Running', { timeoutMs: 90_000, intervalMs: 300, what: `job ${id} Running` });
        await waitServing(CONTROLLER_ADDRESS);
        await converged(`job ${id}: 2 instances RUNNING, nothing orphaned`, new Map([[id, 2]]));
        if (phase === 'start') {
          r.convergeMs = Date.now() - killedAt;
          bringBack(victim, 'after-check');
          await waitServing(CONTROLLER_ADDRESS);
          await converged(`job ${id}: still consistent with every part back`, new Map([[id, 2]]));
        }

        sh('oardel', [String(id)], 'alice');
        if (phase === 'end') {
          await sleep(delayMs);
          killDaemon(victim);
          killedAt = Date.now();
          bringBack(victim, 'now');
        }
        await waitFor(() => ['Terminated', 'Error'].includes(oarJob(id).state), { timeoutMs: 90_000, intervalMs: 300, what: `job ${id} ended` });
        await converged(`job ${id} ended: nothing of it left`, new Map());
        if (phase === 'end') {
          r.convergeMs = Date.now() - killedAt;
          bringBack(victim, 'after-check');
          await waitServing(CONTROLLER_ADDRESS);
          await converged('still consistent with every part back', new Map());
        }
        r.ok = true;
      } catch (err) {
        r.error = (err as Error).message;
        throw new Error(`round ${round} (${victim} killed ${delayMs} ms into the job's ${phase}, job ${r.job}, seed ${SEED}): ${r.error}`);
      } finally {
        r.ms = Date.now() - t0;
        console.log(`fault round ${round}: ${victim} killed ${delayMs} ms into the ${phase} of job ${r.job}: ${r.ok ? `converged in ${((r.convergeMs ?? 0) / 1000).toFixed(1)} s` : 'FAILED'} (round ${(r.ms / 1000).toFixed(1)} s)`);
      }
    }
    // Every part is back and answering.
    expect(await grpcHealth(CONTROLLER_ADDRESS)).toBe('SERVING');
    expect(sh('bash', ['infra/local/status.sh'])).not.toMatch(/\bstopped\b/);
  });
});
