/**
 * Images through the built `oarcloud` command on the local cluster, as users and the admin
 * type it: `save` of a running instance (human and --json), `images` listing it with its
 * size and owner, `run` of the saved image (the change is there), `rmi` refused for the
 * parent of another image and for an image a running instance uses (exit 5, one clear
 * line, nothing changed), and the admin side: `admin image build tiny`, `admin image import
 * rootfs.tar.gz --name x:1 [--public]`, `admin image rm`, with bad tarballs and bad names
 * refused and nothing created.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { grpcHealth, needCommand, needPath, needRoot, prerequisites, tinyImage, waitFor } from '@oarcloud/testkit';
import { bytes } from '../../packages/cli/src/output.js';
import { ADMIN_TOKEN, CLI, CONTROLLER, cliUser, expectRefused, login, ok, parse, root, STATE, type CliUser } from './cli-harness.js';

const BLOBS = `${STATE}/controller/layers`;
const p = prerequisites('cli images e2e', [needRoot, needPath(CLI), needPath(ADMIN_TOKEN), needPath(BLOBS), needPath(`${STATE}/controller.yaml`), needCommand('ssh', '-V'), needCommand('tar', '--version')]);

interface ImageJson {
  name: string;
  owner: string;
  public: boolean;
  sizeBytes: number;
  layers: number;
  parent: string;
  createdAtMs: number;
}
interface InstanceJson {
  id: string;
  name: string;
  jobId: number;
  state: string;
  image: string;
}

const tag = randomBytes(3).toString('hex');
/** The controller's blobs (leftovers of a failed import would show here). */
const blobs = (): string[] => readdirSync(BLOBS).sort();

describe.skipIf(!p.ok)('cli images e2e - save, list, run and delete images with the oarcloud command', () => {
  let alice: CliUser;
  let bob: CliUser;
  let jobId = 0;
  const made: string[] = [];

  beforeAll(async () => {
    await waitFor(async () => (await grpcHealth(CONTROLLER)) === 'SERVING', { timeoutMs: 20_000, what: 'controller serving' });
    alice = cliUser('alice');
    bob = cliUser('bob');
    login(alice);
    login(bob);
  });

  afterAll(() => {
    if (jobId) root(['release', String(jobId), '--wait', '--timeout', '2m']);
    // Children before parents.
    // A refused import that was not refused would have left this one.
    for (const name of [...made.reverse(), `bad-${tag}:1`]) root(['admin', 'image', 'rm', name]);
    alice?.cleanup();
    bob?.cleanup();
  });

  it('cli images - save a running instance, list it, run it; rmi of a parent or of an image in use is refused and changes nothing', async () => {
    const v1 = `mytiny-${tag}:v1`;
    const v1j = `mytiny-${tag}:v1-json`;
    const v2 = `mytiny-${tag}:v2`;
    const blobsBefore = blobs();
    const reserved = parse<{ job: { id: number }; instances: InstanceJson[] }>(
      alice.run(['reserve', '--nodes', '1', '--cores', '2', '--walltime', '15m', '--image', 'tiny:latest', '--memory', '64M', '--name', 'src', '--wait', '--timeout', '5m', '--json']),
    );
    jobId = reserved.job.id;
    expect(reserved.instances.map((i) => [i.name, i.state])).toEqual([['src-1', 'running']]);
    expect(ok(alice.run(['ssh', 'src-1', '--', `echo saved-${tag} > /root/marker`])).stderr).toBe('');

    // ---- save: human, then --json; refusals change nothing
    const t0 = Date.now();
    expect(ok(alice.run(['save', 'src-1', v1]))).toMatchObject({ stdout: `saved src-1 as ${v1}\n`, stderr: '' });
    console.log(`e2e cli images: oarcloud save of a running instance took ${Date.now() - t0} ms`);
    made.push(v1);
    const savedJson = parse<ImageJson>(alice.run(['save', 'src-1', v1j, '--json']));
    made.push(v1j);
    expect(savedJson).toEqual({ name: v1j, owner: 'alice', public: false, sizeBytes: expect.any(Number), layers: 2, parent: 'tiny:latest', createdAtMs: expect.any(Number) });
    expect(Math.abs(savedJson.createdAtMs - Date.now())).toBeLessThan(120_000);
    expectRefused(alice.run(['save', 'src-1', v1]), 5, `image ${v1} already exists`, 'save over an existing name');
    expectRefused(alice.run(['save', 'src-1', v1, '--json']), 5, `image ${v1} already exists`, 'save --json over an existing name');
    expectRefused(alice.run(['save', 'src-1', '../x']), 2, /^oarcloud: invalid image "\.\.\/x": expected name:tag/, 'save to a bad name');
    expectRefused(alice.run(['save', 'nope-1', `x-${tag}:1`]), 3, 'no instance nope-1', 'save of an unknown instance');
    expectRefused(bob.run(['save', 'src-1', `bobs-${tag}:1`]), 3, 'no instance src-1', "save of another user's instance");
    // Still running after being frozen for the copy.
    expect(parse<InstanceJson>(alice.run(['show', 'src-1', '--json'])).state).toBe('running');

    // ---- images: the saved ones, with size, owner, layers; others do not see them
    const list = parse<ImageJson[]>(alice.run(['images', '--json']));
    const base = list.find((i) => i.name === 'tiny:latest')!;
    const saved = list.find((i) => i.name === v1)!;
    expect(saved).toEqual({ name: v1, owner: 'alice', public: false, sizeBytes: expect.any(Number), layers: 2, parent: 'tiny:latest', createdAtMs: expect.any(Number) });
    // Its size is the base's and the saved layer's (a tar of at least the marker file).
    expect(saved.sizeBytes).toBeGreaterThan(base.sizeBytes);
    const human = ok(alice.run(['images']));
    const rows = human.stdout.trimEnd().split('\n');
    expect(rows[0]).toMatch(/^NAME +OWNER +SIZE +LAYERS +CREATED$/);
    const day = new Date(saved.createdAtMs).toISOString().slice(0, 10);
    expect(rows.find((r) => r.startsWith(`${v1} `))).toMatch(new RegExp(`^${v1.replace('.', '\\.')} +alice +${bytes(saved.sizeBytes).replace('.', '\\.')} +2  ${day}$`));
    expect(rows.find((r) => r.startsWith('tiny:latest '))).toMatch(new RegExp(`^tiny:latest +public +${bytes(base.sizeBytes).replace('.', '\\.')} +1  \\d{4}-\\d\\d-\\d\\d$`));
    expect(parse<ImageJson[]>(bob.run(['images', '--json'])).map((i) => i.name)).not.toContain(v1);
    expect(ok(bob.run(['images'])).stdout).not.toContain(v1);

    // ---- run the saved image in the same job: the change is there
    const run = ok(alice.run(['run', '--job', String(jobId), '--name', 'copy', '--memory', '64M', '--wait', '--timeout', '3m', v1]));
    const runRows = run.stdout.trimEnd().split('\n');
    expect(runRows[0]).toMatch(/^ID +NAME +JOB +NODE +STATE +IMAGE +CPUS +MEMORY +AGE$/);
    expect(runRows.slice(1)).toEqual([expect.stringMatching(new RegExp(`^i-[0-9a-f]{12}  copy-1 +${jobId}  \\S+ +running +${v1.replace('.', '\\.')} +1 +64M +\\S+$`))]);
    expect(run.stderr).toMatch(new RegExp(`job ${jobId}: running on \\S+, 1/1 instances running`));
    expect(ok(alice.run(['ssh', 'copy-1', '--', 'cat /root/marker'])).stdout).toBe(`saved-${tag}\n`);
    expectRefused(bob.run(['run', '--job', String(jobId), v1]), 3, `no job ${jobId}`, "bob runs in alice's job");

    // ---- an image over the saved one: v1 becomes a parent
    expect(ok(alice.run(['save', 'copy-1', v2])).stdout).toBe(`saved copy-1 as ${v2}\n`);
    made.push(v2);
    expect(parse<ImageJson[]>(alice.run(['images', '--json'])).find((i) => i.name === v2)).toMatchObject({ parent: v1, layers: 3, owner: 'alice' });
    expect(ok(alice.run(['rm', 'copy-1'])).stdout).toMatch(/^removed copy-1 \(i-[0-9a-f]{12}\)\n$/);

    // v2 in use by a running instance.
    const user2 = parse<InstanceJson[]>(alice.run(['run', '--job', String(jobId), '--name', 'user2', '--memory', '64M', '--wait', '--timeout', '3m', '--json', v2]));
    expect(user2.map((i) => [i.name, i.state, i.image])).toEqual([['user2-1', 'running', v2]]);

    const imagesBefore = ok(alice.run(['images', '--json'])).stdout;
    const psBefore = parse<InstanceJson[]>(alice.run(['ps', '--json'])).map((i) => `${i.id} ${i.state} ${i.image}`).sort();
    // The parent of another image (no instance uses v1 any more): refused, exit 5.
    expectRefused(alice.run(['rmi', v1]), 5, `image ${v1} is the parent of ${v2}`, 'rmi of a parent');
    expectRefused(alice.run(['rmi', v1, '--json']), 5, `image ${v1} is the parent of ${v2}`, 'rmi --json of a parent');
    // Used by a running instance.
    expectRefused(alice.run(['rmi', v2]), 5, `image ${v2} is used by 1 instance(s): ${user2[0]!.id}`, 'rmi of an image in use');
    // The base image, as the admin: in use and the parent of alice's.
    expectRefused(root(['admin', 'image', 'rm', 'tiny:latest']), 5, /^oarcloud: image tiny:latest is (used by \d+ instance\(s\)|the parent of )/, 'admin image rm of the base');
    // Another user's private image does not exist for bob; a public one is not his to remove.
    expectRefused(bob.run(['rmi', v1]), 3, `no image ${v1}`, "bob's rmi of alice's image");
    expectRefused(bob.run(['rmi', 'tiny:latest']), 4, 'image tiny:latest belongs to root', "bob's rmi of a public image");
    expectRefused(alice.run(['rmi', 'Bad Name']), 2, /^oarcloud: invalid image "Bad Name": expected name:tag/, 'rmi of a bad name');
    // Nothing changed.
    expect(ok(alice.run(['images', '--json'])).stdout).toBe(imagesBefore);
    expect(parse<InstanceJson[]>(alice.run(['ps', '--json'])).map((i) => `${i.id} ${i.state} ${i.image}`).sort()).toEqual(psBefore);
    expect(ok(alice.run(['ssh', 'user2-1', '--', 'cat /root/marker'])).stdout).toBe(`saved-${tag}\n`);

    // ---- the job released, children first: every image goes, and so do their layers
    expect(ok(alice.run(['release', String(jobId), '--wait', '--timeout', '3m'])).stdout).toMatch(new RegExp(`^job ${jobId} released: ended`));
    jobId = 0;
    expect(ok(alice.run(['rmi', v2])).stdout).toBe(`removed image ${v2}\n`);
    expect(parse<{ removed: string }>(alice.run(['rmi', v1, '--json']))).toEqual({ removed: v1 });
    expect(ok(alice.run(['rmi', v1j])).stdout).toBe(`removed image ${v1j}\n`);
    made.length = 0;
    expectRefused(alice.run(['rmi', v1]), 3, `no image ${v1}`, 'rmi of a removed image');
    expect(parse<ImageJson[]>(alice.run(['images', '--json'])).map((i) => i.name).filter((n) => n.startsWith(`mytiny-${tag}`))).toEqual([]);
    expect(blobs()).toEqual(blobsBefore);
  }, 600_000);

  it('cli images - admin image build and import: outputs checked, listed to whom it should be, removed with admin image rm; bad tarballs and names are refused, nothing created', () => {
    const dir = mkdtempSync(join(STATE, 'e2e-cli-images-'));
    try {
      const tiny = tinyImage();
      const built = `cli-build-${tag}:1`;
      const builtJson = `cli-build-${tag}:2`;
      const imported = `cli-import-${tag}:1`;
      const importedPrivate = `cli-import-${tag}:2`;

      // ---- build tiny: the same layer as the cluster's tiny (the build is reproducible)
      const b = ok(root(['admin', 'image', 'build', 'tiny', '--out', join(dir, 'tiny'), '--name', built], { timeoutMs: 300_000 }));
      made.push(built);
      expect(b.stderr).toMatch(new RegExp(`^building tiny in ${join(dir, 'tiny')}…\\n`));
      expect(b.stdout).toBe(`built and uploaded ${built} (${bytes(tiny.size)}, 1 layer, public)\n`);
      const bj = parse<ImageJson>(root(['admin', 'image', 'build', 'tiny', '--out', join(dir, 'tiny'), '--name', builtJson, '--private', '--json'], { timeoutMs: 300_000 }));
      made.push(builtJson);
      expect(bj).toEqual({ name: builtJson, owner: 'root', public: false, sizeBytes: tiny.size, layers: 1, parent: '', createdAtMs: expect.any(Number) });
      expect(readFileSync(join(dir, 'tiny', 'image.json'), 'utf8')).toContain(tiny.layers[0]!);

      // ---- import a rootfs tarball (its own layer): public, then private with --json
      const rootfs = join(dir, 'rootfs');
      mkdirSync(join(rootfs, 'etc'), { recursive: true });
      writeFileSync(join(rootfs, 'etc', 'os-release'), `NAME="cli e2e ${tag}"\n`);
      const tarball = join(dir, 'rootfs.tar.gz');
      execFileSync('tar', ['-C', rootfs, '--numeric-owner', '--owner=0', '--group=0', '-czf', tarball, '.']);
      const size = execFileSync('tar', ['-C', rootfs, '--numeric-owner', '--owner=0', '--group=0', '-cf', '-', '.']).length;
      const blobsBefore = blobs();
      expect(ok(root(['admin', 'image', 'import', tarball, '--name', imported, '--public']))).toMatchObject({ stdout: `imported ${imported} (${bytes(size)}, 1 layer, public)\n`, stderr: '' });
      made.push(imported);
      expect(blobs().length).toBe(blobsBefore.length + 1);
      const ij = parse<ImageJson>(root(['admin', 'image', 'import', tarball, '--name', importedPrivate, '--json']));
      made.push(importedPrivate);
      expect(ij).toEqual({ name: importedPrivate, owner: 'root', public: false, sizeBytes: size, layers: 1, parent: '', createdAtMs: expect.any(Number) });
      // The same tar: the same layer, stored once.
      expect(blobs().length).toBe(blobsBefore.length + 1);

      // ---- listed: public ones for alice, private ones for root only
      const aliceSees = parse<ImageJson[]>(alice.run(['images', '--json'])).map((i) => i.name);
      expect(aliceSees).toEqual(expect.arrayContaining([built, imported]));
      expect(aliceSees).not.toContain(builtJson);
      expect(aliceSees).not.toContain(importedPrivate);
      expect(parse<ImageJson[]>(root(['images', '--json'])).map((i) => i.name)).toEqual(expect.arrayContaining([built, builtJson, imported, importedPrivate]));
      expect(ok(alice.run(['images'])).stdout).toMatch(new RegExp(`^${imported} +public +${bytes(size).replace('.', '\\.')} +1  \\d{4}-\\d\\d-\\d\\d$`, 'm'));

      // ---- refused, nothing created
      const listBefore = ok(root(['images', '--json'])).stdout;
      const blobsNow = blobs();
      const text = join(dir, 'notes.txt');
      writeFileSync(text, 'these are not the droids\n');
      const random = join(dir, 'random.tar');
      writeFileSync(random, randomBytes(8192));
      const full = readFileSync(tarball);
      const cutGz = join(dir, 'cut.tar.gz');
      writeFileSync(cutGz, full.subarray(0, Math.floor(full.length / 2)));
      // A plain tar cut in the middle of a member, on a 512-byte boundary.
      const big = join(dir, 'big');
      mkdirSync(big);
      writeFileSync(join(big, 'data'), randomBytes(64 * 1024));
      const bigTar = execFileSync('tar', ['-C', big, '--numeric-owner', '-cf', '-', '.']);
      const cutTar = join(dir, 'cut.tar');
      writeFileSync(cutTar, bigTar.subarray(0, 512 * 40));
      const gzNotTar = join(dir, 'text.tar.gz');
      writeFileSync(gzNotTar, gzipSync(Buffer.alloc(4096, 'x')));
      const cases: Array<[string[], number, RegExp]> = [
        [['admin', 'image', 'import', join(dir, 'missing.tar.gz'), '--name', `bad-${tag}:1`], 2, /^oarcloud: no such file or folder: .*missing\.tar\.gz\n$/],
        [['admin', 'image', 'import', text, '--name', `bad-${tag}:1`], 2, /^oarcloud: .*not a tar archive/],
        [['admin', 'image', 'import', random, '--name', `bad-${tag}:1`], 2, /^oarcloud: .*not a tar archive/],
        [['admin', 'image', 'import', gzNotTar, '--name', `bad-${tag}:1`], 2, /^oarcloud: .*not a tar archive/],
        [['admin', 'image', 'import', cutGz, '--name', `bad-${tag}:1`], 2, /^oarcloud: .*cut\.tar\.gz.*(truncated|unexpected end)/],
        [['admin', 'image', 'import', cutTar, '--name', `bad-${tag}:1`], 2, /^oarcloud: .*not a tar archive.*(truncated|ends)/],
        [['admin', 'image', 'import', dir, '--name', `bad-${tag}:1`], 2, /^oarcloud: .*a folder must hold image\.json and layer\.tar/],
        [['admin', 'image', 'import', tarball], 2, /^oarcloud: --name is required for a tarball\n$/],
        [['admin', 'image', 'import', tarball, '--name', 'Bad Name'], 2, /^oarcloud: invalid --name "Bad Name": expected name:tag/],
        [['admin', 'image', 'import', tarball, '--name', 'a:b:c'], 2, /^oarcloud: invalid --name "a:b:c"|image name must be name:tag/],
        [['admin', 'image', 'import', tarball, '--name', '../etc:1'], 2, /^oarcloud: invalid --name "\.\.\/etc:1"|image name must be name:tag/],
        [['admin', 'image', 'import', tarball, '--name', imported], 5, new RegExp(`^oarcloud: image ${imported} already exists\\n$`)],
        [['admin', 'image', 'import', tarball, '--name', imported, '--json'], 5, new RegExp(`^oarcloud: image ${imported} already exists\\n$`)],
        [['admin', 'image', 'build', 'alpine', '--out', join(dir, 'x')], 2, /^oarcloud: invalid kind "alpine": expected tiny or debian\n$/],
        // Refused before building: nothing built either.
        [['admin', 'image', 'build', 'tiny', '--out', join(dir, 'never'), '--name', 'Bad Name'], 2, /^oarcloud: invalid --name "Bad Name"/],
      ];
      for (const [args, code, message] of cases) {
        const r = root(args, { timeoutMs: 300_000 });
        expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(code);
        expect(r.stdout, args.join(' ')).toBe('');
        expect(r.stderr, args.join(' ')).toMatch(/^oarcloud: [^\n]+\n$/);
        expect(r.stderr, args.join(' ')).toMatch(message);
      }
      // Users may not import at all.
      expectRefused(alice.run(['admin', 'image', 'import', '/etc/hostname', '--name', `alices-${tag}:1`]), 4, /^oarcloud: (this call is for admins|alice is not an admin)\n$/, 'alice imports');
      expect(ok(root(['images', '--json'])).stdout).toBe(listBefore);
      expect(blobs()).toEqual(blobsNow);
      expect(blobs().filter((n) => n.startsWith('.tmp-'))).toEqual([]);
      expect(existsSync(join(dir, 'never'))).toBe(false);

      // ---- removed with admin image rm; the imported layer goes with the last image using it
      for (const name of [built, builtJson, imported]) expect(ok(root(['admin', 'image', 'rm', name])).stdout).toBe(`removed image ${name}\n`);
      expect(parse<{ removed: string }>(root(['admin', 'image', 'rm', importedPrivate, '--json']))).toEqual({ removed: importedPrivate });
      made.length = 0;
      expectRefused(root(['admin', 'image', 'rm', imported]), 3, `no image ${imported}`, 'rm of a removed image');
      expect(parse<ImageJson[]>(root(['images', '--json'])).map((i) => i.name).filter((n) => n.includes(tag))).toEqual([]);
      expect(blobs()).toEqual(blobsBefore);
      // tiny:latest keeps its (shared) layer.
      expect(existsSync(join(BLOBS, `${tiny.layers[0]!.slice(7)}.tar.gz`))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 600_000);
});
