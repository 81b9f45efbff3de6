/**
 * Images and volumes on the real local cluster: an instance of the tiny image on node-1 is
 * changed (a file written, a program installed, a file deleted) and saved while running;
 * its job is released; in a new job the saved image runs on node-2, whose agent fetches the
 * layers it lacks from the controller; the changes are there, and so is what the first job
 * wrote to a volume. Another user can neither see nor run the private image, nor mount the
 * volume (NOT_FOUND). In-use images and volumes cannot be deleted; bad names are refused.
 * A Debian package (built here with dpkg-deb) installed with dpkg in a debian:12 instance
 * is installed in the image saved from it, run on the other node.
 *
 * Changes inside instances are made from the host with `nsenter -t <init pid> -a` (every
 * namespace of the instance, its user namespace too, so files belong to the container's root).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { credentials, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ImageServiceClient, InstanceServiceClient, InstanceState, JobServiceClient, JobState, VolumeServiceClient, type Instance } from '@oarcloud/api';
import { bearer, callUnary } from '@oarcloud/common';
import { agentClient, AGENT_ADDRESSES, CLUSTER_IMAGE, CONTROLLER_ADDRESS, localStateDir, needCommand, needPath, needRoot, oarsub, prerequisites, userToken, waitFor } from '@oarcloud/testkit';

const STATE = localStateDir();
const p = prerequisites('images e2e', [
  needRoot,
  needPath(`${STATE}/controller.yaml`),
  needPath(`${STATE}/controller/admin.token`),
  needPath(`${STATE}/images/tiny/image.json`),
  needCommand('nsenter', '--version'),
]);

const codeOf = (pr: Promise<unknown>): Promise<number> => pr.then(() => status.OK, (e: Error) => (e.cause as { code: number }).code);
/** A shell command inside the instance whose init is `pid`, as its root. */
const inInstance = (pid: number, script: string) => spawnSync('nsenter', ['-t', String(pid), '-a', '--', '/bin/sh', '-c', script], { encoding: 'utf8', timeout: 20_000 });

describe.skipIf(!p.ok)('images e2e - save, distribute and run images; volumes across jobs; access rights', () => {
  const c = credentials.createInsecure();
  const jobs = new JobServiceClient(CONTROLLER_ADDRESS, c);
  const inst = new InstanceServiceClient(CONTROLLER_ADDRESS, c);
  const images = new ImageServiceClient(CONTROLLER_ADDRESS, c);
  const volumes = new VolumeServiceClient(CONTROLLER_ADDRESS, c);
  const agents = Object.fromEntries(Object.entries(AGENT_ADDRESSES).map(([n, a]) => [n, agentClient(a, n)]));
  const tag = randomBytes(3).toString('hex');
  const savedName = `mytiny:${tag}`;
  const volName = `data-${tag}`;
  const marker = `saved-${tag}`;
  const debName = `mydebian:${tag}`;
  const debDir = mkdtempSync(join(tmpdir(), 'oc-e2e-deb-'));
  let alice = '';
  let bob = '';
  const as = (token: string) => ({ metadata: bearer(token), timeoutMs: 60_000 });
  const jobIds: Array<{ id: number; user: string }> = [];

  const runningJob = async (user: string, token: string, node: string): Promise<number> => {
    const id = oarsub(user, ['-t', 'cloud', '-l', 'host=1/core=1,walltime=0:10:00', '-p', `network_address='${node}'`, 'sleep 600']);
    jobIds.push({ id, user });
    await waitFor(async () => (await callUnary(jobs.getJob.bind(jobs), { id }, as(token))).state === JobState.JOB_STATE_RUNNING, {
      timeoutMs: 60_000,
      intervalMs: 300,
      what: `job ${id} running on ${node}`,
    });
    return id;
  };
  const runOne = async (token: string, jobId: number, image: string, name: string, withVolume = true): Promise<Instance> => {
    const mounts = withVolume ? [{ volumeId: volName, path: '/data', readOnly: false }] : [];
    const res = await callUnary(
      inst.runInstances.bind(inst),
      { jobId, spec: { image, count: 1, vcpus: 1, memoryMib: 256, sshAuthorizedKeys: [], namePrefix: name, volumes: { mounts } }, networks: [], idempotencyKey: '' },
      as(token),
    );
    const id = res.instances[0]!.spec!.id;
    return waitFor(
      async () => {
        const i = await callUnary(inst.getInstance.bind(inst), { id }, as(token));
        if (i.state === InstanceState.INSTANCE_STATE_FAILED) throw new Error(`instance failed: ${i.reason}`);
        return i.state === InstanceState.INSTANCE_STATE_RUNNING ? i : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 300, what: `instance ${id} running` },
    );
  };
  const initPid = async (node: string, id: string): Promise<number> => {
    const a = agents[node]!;
    return (await callUnary(a.getInstance.bind(a), { id }, { timeoutMs: 5000 })).initPid;
  };
  const release = async (jobId: number, token: string): Promise<void> => {
    await callUnary(jobs.release.bind(jobs), { id: jobId }, as(token));
    await waitFor(async () => (await callUnary(jobs.getJob.bind(jobs), { id: jobId }, as(token))).state === JobState.JOB_STATE_ENDED, { timeoutMs: 60_000, intervalMs: 300, what: `job ${jobId} ended` });
  };

  beforeAll(async () => {
    alice = await userToken('alice');
    bob = await userToken('bob');
  });

  afterAll(async () => {
    for (const j of jobIds) spawnSync('oardel', [String(j.id)], { timeout: 20_000 });
    await new Promise((r) => setTimeout(r, 3000));
    for (const name of [savedName, debName]) await callUnary(images.deleteImage.bind(images), { name }, as(alice)).catch(() => undefined);
    rmSync(debDir, { recursive: true, force: true });
    await callUnary(volumes.deleteVolume.bind(volumes), { id: volName }, as(alice)).catch(() => undefined);
    for (const x of [jobs, inst, images, volumes, ...Object.values(agents)]) x.close();
  });

  it('images - an instance changed and saved while running on node-1 runs changed on node-2 (layers fetched there); a volume outlives its job; others get NOT_FOUND', async () => {
    // ---- a volume, and the image list as each user sees it
    const vol = await callUnary(volumes.createVolume.bind(volumes), { name: volName, idempotencyKey: '' }, as(alice));
    expect(vol).toMatchObject({ name: volName, owner: 'alice' });
    expect(await codeOf(callUnary(volumes.createVolume.bind(volumes), { name: volName, idempotencyKey: '' }, as(alice)))).toBe(status.ALREADY_EXISTS);
    expect(await codeOf(callUnary(volumes.createVolume.bind(volumes), { name: '../x', idempotencyKey: '' }, as(alice)))).toBe(status.INVALID_ARGUMENT);
    expect(await codeOf(callUnary(volumes.getVolume.bind(volumes), { id: vol.id }, as(bob)))).toBe(status.NOT_FOUND);
    const base = await callUnary(images.getImage.bind(images), { name: CLUSTER_IMAGE }, as(alice));
    expect(base.public).toBe(true);

    // ---- job 1 on node-1: change the instance, write to the volume, save it running
    const job1 = await runningJob('alice', alice, 'node-1');
    const i1 = await runOne(alice, job1, CLUSTER_IMAGE, 'src');
    expect(i1.node).toBe('node-1');
    const pid1 = await initPid('node-1', i1.spec!.id);
    const change = inInstance(
      pid1,
      `set -e; echo ${marker} > /root/marker; mkdir -p /usr/local/bin; printf '#!/bin/sh\\necho hello from ${tag}\\n' > /usr/local/bin/hello; chmod 755 /usr/local/bin/hello; rm /etc/shells; echo vol-${tag} > /data/from-job1; ls -ln /data/from-job1`,
    );
    expect(change.status, change.stderr).toBe(0);
    // Written as the container's root, so owned by root in the volume as the instance sees it.
    expect(change.stdout).toMatch(/ 0 +0 /);

    expect(await codeOf(callUnary(images.saveInstance.bind(images), { instanceId: i1.spec!.id, name: '../x' }, as(alice)))).toBe(status.INVALID_ARGUMENT);
    expect(await codeOf(callUnary(images.saveInstance.bind(images), { instanceId: i1.spec!.id, name: 'a:b:c' }, as(alice)))).toBe(status.INVALID_ARGUMENT);
    expect(await codeOf(callUnary(images.saveInstance.bind(images), { instanceId: i1.spec!.id, name: `bobs:${tag}` }, as(bob)))).toBe(status.NOT_FOUND);
    const t0 = Date.now();
    const saved = await callUnary(images.saveInstance.bind(images), { instanceId: i1.spec!.id, name: savedName }, as(alice));
    console.log(`e2e images: save of a running instance took ${Date.now() - t0} ms`);
    expect(saved).toMatchObject({ name: savedName, owner: 'alice', public: false, parent: CLUSTER_IMAGE });
    expect(saved.layers.slice(0, -1)).toEqual(base.layers);
    expect(saved.layers).toHaveLength(base.layers.length + 1);
    expect(await codeOf(callUnary(images.saveInstance.bind(images), { instanceId: i1.spec!.id, name: savedName }, as(alice)))).toBe(status.ALREADY_EXISTS);
    // Still running after the save (it was frozen, then thawed).
    expect((await callUnary(inst.getInstance.bind(inst), { id: i1.spec!.id }, as(alice))).state).toBe(InstanceState.INSTANCE_STATE_RUNNING);
    expect(inInstance(pid1, 'cat /root/marker').stdout.trim()).toBe(marker);

    // ---- visibility: the private image is alice's only
    expect((await callUnary(images.listImages.bind(images), {}, as(alice))).images.map((i) => i.name)).toContain(savedName);
    expect((await callUnary(images.listImages.bind(images), {}, as(bob))).images.map((i) => i.name)).not.toContain(savedName);
    expect(await codeOf(callUnary(images.getImage.bind(images), { name: savedName }, as(bob)))).toBe(status.NOT_FOUND);
    expect(await codeOf(callUnary(images.deleteImage.bind(images), { name: savedName }, as(bob)))).toBe(status.NOT_FOUND);
    // In use: neither the base image nor the volume can go.
    expect(await codeOf(callUnary(images.deleteImage.bind(images), { name: CLUSTER_IMAGE }, as(readFileSync(`${STATE}/controller/admin.token`, 'utf8').trim())))).toBe(status.FAILED_PRECONDITION);
    expect(await codeOf(callUnary(volumes.deleteVolume.bind(volumes), { id: volName }, as(alice)))).toBe(status.FAILED_PRECONDITION);

    await release(job1, alice);

    // ---- node-2 must fetch: drop the base layer from its cache when nothing there uses it
    const n2 = agents['node-2']!;
    const n2Instances = (await callUnary(n2.listInstances.bind(n2), { jobId: 0 }, { timeoutMs: 5000 })).instances;
    const layerDir = (d: string) => `${STATE}/agents/node-2/layers/sha256/${d.slice(7)}`;
    if (n2Instances.length === 0 && existsSync(layerDir(base.layers[0]!))) {
      const trash = `${STATE}/agents/node-2/layers/tmp/${base.layers[0]!.slice(7)}.rm-e2e`;
      renameSync(layerDir(base.layers[0]!), trash);
      rmSync(trash, { recursive: true, force: true });
    }
    expect(existsSync(layerDir(saved.layers.at(-1)!))).toBe(false);

    // ---- job 2 on node-2: the saved image, with the volume
    const job2 = await runningJob('alice', alice, 'node-2');
    const t1 = Date.now();
    const i2 = await runOne(alice, job2, savedName, 'copy');
    console.log(`e2e images: cold launch of the saved image on node-2 took ${Date.now() - t1} ms`);
    expect(i2.node).toBe('node-2');
    for (const l of saved.layers) expect(existsSync(layerDir(l)), `layer ${l} on node-2`).toBe(true);
    const pid2 = await initPid('node-2', i2.spec!.id);
    const check = inInstance(pid2, 'cat /root/marker; /usr/local/bin/hello; test ! -e /etc/shells && echo no-shells; cat /data/from-job1; cat /etc/hostname; ls /etc/dropbear');
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout.split('\n')).toEqual([marker, `hello from ${tag}`, 'no-shells', `vol-${tag}`, i2.spec!.name, '']);

    // ---- another user: no private image, no volume
    const bobJob = await runningJob('bob', bob, 'localhost');
    const run = (image: string, volumeId?: string) =>
      codeOf(
        callUnary(
          inst.runInstances.bind(inst),
          { jobId: bobJob, spec: { image, count: 1, vcpus: 1, memoryMib: 64, sshAuthorizedKeys: [], namePrefix: 'b', volumes: volumeId ? { mounts: [{ volumeId, path: '/data', readOnly: false }] } : undefined }, networks: [], idempotencyKey: '' },
          as(bob),
        ),
      );
    expect(await run(savedName)).toBe(status.NOT_FOUND);
    expect(await run(CLUSTER_IMAGE, volName)).toBe(status.NOT_FOUND);
    expect(await run(CLUSTER_IMAGE, vol.id)).toBe(status.NOT_FOUND);
    expect((await callUnary(inst.listInstances.bind(inst), { jobId: bobJob, allUsers: false }, as(bob))).instances).toEqual([]);

    // ---- the saved image is in use by job 2's instance; after release it can be deleted
    expect(await codeOf(callUnary(images.deleteImage.bind(images), { name: savedName }, as(alice)))).toBe(status.FAILED_PRECONDITION);
    await release(job2, alice);
    await release(bobJob, bob);
    await callUnary(images.deleteImage.bind(images), { name: savedName }, as(alice));
    await callUnary(volumes.deleteVolume.bind(volumes), { id: volName }, as(alice));
    expect(existsSync(`${STATE}/volumes/${vol.id}`)).toBe(false);
  });

  it('images - a Debian package installed with dpkg in a debian:12 instance is in the image saved from it, run on another node', async () => {
    // A real package, built here with dpkg-deb (no network needed), installed inside with dpkg.
    const pkg = `oarcloud-e2e-${tag}`;
    const root = join(debDir, 'pkg');
    mkdirSync(join(root, 'DEBIAN'), { recursive: true });
    mkdirSync(join(root, 'usr', 'bin'), { recursive: true });
    writeFileSync(join(root, 'DEBIAN', 'control'), `Package: ${pkg}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: oarcloud tests <tests@oarcloud.invalid>\nDescription: oarcloud e2e test package\n`);
    writeFileSync(join(root, 'usr', 'bin', pkg), `#!/bin/sh\necho installed ${tag}\n`, { mode: 0o755 });
    const deb = join(debDir, `${pkg}.deb`);
    const built = spawnSync('dpkg-deb', ['--root-owner-group', '--build', root, deb], { encoding: 'utf8', timeout: 30_000 });
    expect(built.status, built.stderr).toBe(0);

    const job1 = await runningJob('alice', alice, 'node-1');
    const i1 = await runOne(alice, job1, 'debian:12', 'deb', false);
    const pid1 = await initPid('node-1', i1.spec!.id);
    const copy = spawnSync('nsenter', ['-t', String(pid1), '-a', '--', '/bin/sh', '-c', `cat > /tmp/${pkg}.deb`], { input: readFileSync(deb), timeout: 20_000 });
    expect(copy.status, String(copy.stderr)).toBe(0);
    const install = inInstance(pid1, `set -e; dpkg -i /tmp/${pkg}.deb >/dev/null; rm /tmp/${pkg}.deb; ${pkg}`);
    expect(install.status, install.stderr).toBe(0);
    expect(install.stdout.trim()).toBe(`installed ${tag}`);
    const saved = await callUnary(images.saveInstance.bind(images), { instanceId: i1.spec!.id, name: debName }, as(alice));
    expect(saved).toMatchObject({ name: debName, owner: 'alice', public: false, parent: 'debian:12' });
    await release(job1, alice);

    const job2 = await runningJob('alice', alice, 'node-2');
    const i2 = await runOne(alice, job2, debName, 'deb2', false);
    expect(i2.node).toBe('node-2');
    const check = inInstance(await initPid('node-2', i2.spec!.id), `dpkg-query -W -f '\${Status} \${Version}\\n' ${pkg}; ${pkg}; test -e /tmp/${pkg}.deb || echo no-deb`);
    expect(check.status, check.stderr).toBe(0);
    expect(check.stdout.split('\n')).toEqual(['install ok installed 1.0-1', `installed ${tag}`, 'no-deb', '']);
    await release(job2, alice);
    await callUnary(images.deleteImage.bind(images), { name: debName }, as(alice));
  }, 240_000);
});
