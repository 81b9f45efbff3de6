/**
 * The main job, end to end, on the local cluster (run by `npm run demo` after bring-up):
 * a user reserves 2 hosts in OAR with 4 instances, the instances come up inside the job's
 * cpus, the user logs in over SSH, releases the job, and every host is clean.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import {
  InstanceServiceClient,
  InstanceState,
  JobServiceClient,
  JobState,
  Role,
  UserServiceClient,
  type Instance,
} from '@oarcloud/api';
import { bearer, callUnary, parseCpuset } from '@oarcloud/common';
import { agentClient, localStateDir, waitFor } from '@oarcloud/testkit';

const STATE = localStateDir();
const CONTROLLER = '127.0.0.1:17000';
const AGENTS: Record<string, string> = { localhost: '127.0.0.1:17110', 'node-1': '127.0.0.1:17101', 'node-2': '127.0.0.1:17102' };
const t0 = performance.now();
const elapsed = (): string => `${((performance.now() - t0) / 1000).toFixed(1).padStart(5)} s`;
const say = (msg: string): void => console.log(`[${elapsed()}] ${msg}`);

const creds = credentials.createInsecure();
const users = new UserServiceClient(CONTROLLER, creds);
const jobs = new JobServiceClient(CONTROLLER, creds);
const instances = new InstanceServiceClient(CONTROLLER, creds);

const admin = { metadata: bearer(readFileSync(join(STATE, 'controller/admin.token'), 'utf8').trim()) };
const known = (await callUnary(users.listUsers.bind(users), {}, admin)).users.some((u) => u.name === 'alice');
const issued = known
  ? await callUnary(users.issueToken.bind(users), { name: 'alice' }, admin)
  : await callUnary(users.addUser.bind(users), { name: 'alice', role: Role.ROLE_USER }, admin);
const alice = { metadata: bearer(issued.token), timeoutMs: 30_000 };
say(`admin issued a token for user ${issued.user?.name}`);

const keyDir = mkdtempSync('/tmp/oarcloud-demo-');
execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(keyDir, 'id')]);
const pubKey = readFileSync(join(keyDir, 'id.pub'), 'utf8').trim();

const job = await callUnary(
  jobs.reserve.bind(jobs),
  { nodes: 2, coresPerNode: 2, walltimeS: 600, spec: { image: 'tiny:latest', count: 4, vcpus: 1, memoryMib: 128, sshAuthorizedKeys: [pubKey], namePrefix: 'demo' }, idempotencyKey: '' },
  alice,
);
say(`alice reserved OAR job ${job.id}: 2 hosts × 2 cores, 10 min, 4 × tiny:latest (oarsub -t cloud=${job.specId})`);

try {
  const running = await waitFor(
    async () => {
      const j = await callUnary(jobs.getJob.bind(jobs), { id: job.id }, alice);
      if (j.state === JobState.JOB_STATE_ENDED) throw new Error(`job ${job.id} ended (${j.oarState}) before its instances ran`);
      const list = (await callUnary(instances.listInstances.bind(instances), { jobId: job.id, allUsers: false }, alice)).instances;
      return j.state === JobState.JOB_STATE_RUNNING && list.length === 4 && list.every((i) => i.state === InstanceState.INSTANCE_STATE_RUNNING) ? { j, list } : undefined;
    },
    { timeoutMs: 90_000, intervalMs: 200, what: 'the job and its 4 instances to run' },
  );
  say(`job ${job.id} is Running on ${running.j.hosts.map((h) => `${h.node} (cpus ${h.cpuset})`).join(', ')}; all 4 instances RUNNING`);
  const byId = new Map<string, Instance>();
  for (const [node, address] of Object.entries(AGENTS)) {
    const agent = agentClient(address);
    for (const i of (await callUnary(agent.listInstances.bind(agent), { jobId: job.id })).instances) byId.set(i.spec!.id, { ...i, node });
    agent.close();
  }
  console.log('\n  INSTANCE          NAME     NODE     STATE    INIT PID  CPUS ALLOWED  JOB CPUS');
  for (const inst of running.list) {
    const seen = byId.get(inst.spec!.id)!;
    const allowed = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${seen.initPid}/status`, 'utf8'))?.[1] ?? '?';
    const jobCpus = running.j.hosts.find((h) => h.node === inst.node)?.cpuset ?? '?';
    const inside = parseCpuset(allowed).every((c) => parseCpuset(jobCpus).includes(c));
    console.log(`  ${inst.spec!.id}  ${inst.spec!.name.padEnd(7)}  ${inst.node.padEnd(7)}  RUNNING  ${String(seen.initPid).padEnd(8)}  ${allowed.padEnd(12)}  ${jobCpus}${inside ? '' : '  OUTSIDE THE JOB!'}`);
  }
  console.log('');
  const first = byId.get(running.list[0]!.spec!.id)!;
  const out = execFileSync(
    'ssh',
    ['-i', join(keyDir, 'id'), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-o', `ProxyCommand=nsenter -t ${first.initPid} -n nc 127.0.0.1 22`, 'root@instance', 'echo "$(hostname): $(uname -sr), $(cat /proc/self/status | grep Cpus_allowed_list)"'],
    { encoding: 'utf8' },
  );
  say(`ssh root@${first.spec!.name}: ${out.trim()}`);
} finally {
  await callUnary(jobs.release.bind(jobs), { id: job.id }, alice);
  say(`alice released job ${job.id} (oardel)`);
  const clean = await waitFor(
    async () => {
      let left = 0;
      for (const address of Object.values(AGENTS)) {
        const agent = agentClient(address);
        left += (await callUnary(agent.listInstances.bind(agent), { jobId: job.id })).instances.length;
        agent.close();
      }
      const domains = execFileSync('virsh', ['-c', 'lxc:///system', 'list', '--name'], { encoding: 'utf8' });
      const cgroups = execFileSync('bash', ['-c', `ls -d /sys/fs/cgroup/cpuset/machine/oc-*-j${job.id}.job 2>/dev/null || true`], { encoding: 'utf8' }).trim();
      return left === 0 && !cgroups && domains.split('\n').filter((d) => d.startsWith('oc-i-')).length === 0 ? true : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 200, what: 'every host to be clean' },
  );
  if (clean) say(`every host is clean: no instance, domain or job cgroup of job ${job.id} left`);
  rmSync(keyDir, { recursive: true, force: true });
  for (const c of [users, jobs, instances]) c.close();
}
