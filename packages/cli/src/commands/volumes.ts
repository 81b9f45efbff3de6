/**
 * Images and volumes: `oarcloud volume create|ls|rm`, `oarcloud image rm`, and the admin
 * side `oarcloud admin image build|import|rm` (base images are built from Debian packages
 * by the builders in tools/images and uploaded to the controller with ImportImage).
 */
import { execFileSync } from 'node:child_process';
import { closeSync, createReadStream, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGunzip } from 'node:zlib';
import type { Readable } from 'node:stream';
import type { Command } from 'commander';
import type { Image, ImportImageChunk } from '@oarcloud/api';
import { fromGrpcError, InvalidArgumentError } from '@oarcloud/common';
import type { Ctx } from '../context.js';
import { bytes, json, table } from '../output.js';
import { parseImage } from '../parse.js';
import { imageView } from '../views.js';

const VOLUME_RE = /^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$/;

export function parseVolumeName(value: string): string {
  if (!VOLUME_RE.test(value) || value.includes('..')) {
    throw new InvalidArgumentError(`invalid volume name ${JSON.stringify(value)}: 1-64 of a-z 0-9 . _ -, starting and ending with a letter or digit`);
  }
  return value;
}

/** `--volume data:/data` or `data:/data:ro` → a VolumeMount. */
export function parseVolumeMount(value: string): { volumeId: string; path: string; readOnly: boolean } {
  const m = /^([^:]+):(\/[^:]*)(?::(ro|rw))?$/.exec(value);
  if (!m) throw new InvalidArgumentError(`invalid --volume ${JSON.stringify(value)}: expected name:/path or name:/path:ro, e.g. data:/data`);
  const name = /^v-[0-9a-f]{12}$/.test(m[1]!) ? m[1]! : parseVolumeName(m[1]!);
  if (m[2]!.split('/').some((p) => p === '..' || p === '.')) throw new InvalidArgumentError(`invalid --volume path ${JSON.stringify(m[2])}`);
  return { volumeId: name, path: m[2]!, readOnly: m[3] === 'ro' };
}

interface VolumeView {
  id: string;
  name: string;
  owner: string;
  sizeBytes: number;
  usedBy: string[];
  createdAtMs: number;
}

const volumeView = (v: { id: string; name: string; owner: string; sizeBytes: number; usedBy: string[]; createdAtMs: number }): VolumeView => ({
  id: v.id,
  name: v.name,
  owner: v.owner,
  sizeBytes: v.sizeBytes,
  usedBy: [...v.usedBy],
  createdAtMs: v.createdAtMs,
});

/** The image builders (tools/images of the oarcloud tree this command runs from). */
const BUILDERS = fileURLToPath(new URL('../../../../tools/images', import.meta.url));
const KINDS = { tiny: 'build-tiny.sh', debian: 'build-debian.sh' } as const;

/** Uploads an uncompressed layer tar with ImportImage (`from`: the file, for messages). */
function upload(ctx: Ctx, name: string, isPublic: boolean, tar: Readable, from: string): Promise<Image> {
  const api = ctx.api();
  return new Promise<Image>((resolvePromise, reject) => {
    const call = api.images.importImage(api.metadata, { deadline: Date.now() + 30 * 60_000 }, (err, res) => {
      if (err) reject(fromGrpcError(err));
      else resolvePromise(res);
    });
    const header: ImportImageChunk = { part: { $case: 'header', value: { name, public: isPublic } } };
    call.write(header);
    tar.on('data', (chunk: Buffer) => {
      if (!call.write({ part: { $case: 'data', value: chunk } })) {
        tar.pause();
        call.once('drain', () => tar.resume());
      }
    });
    tar.on('end', () => call.end());
    tar.on('error', (err: NodeJS.ErrnoException) => {
      call.cancel();
      // zlib's own words ("unexpected end of file") say neither which file nor that it is the gzip.
      reject(err.code?.startsWith('Z_') ? new InvalidArgumentError(`${from}: not a valid gzip file (${err.message}); nothing imported`, { cause: err }) : err);
    });
  });
}

/** A layer tar from a path: an image folder (image.json + layer.tar) or a tarball (.tar, .tar.gz). */
function tarSource(path: string): { tar: Readable; name?: string } {
  const p = resolve(path);
  if (!existsSync(p)) throw new InvalidArgumentError(`no such file or folder: ${path}`);
  if (statSync(p).isDirectory()) {
    const manifestPath = join(p, 'image.json');
    if (!existsSync(manifestPath)) throw new InvalidArgumentError(`${path}: a folder must hold image.json and layer.tar (tools/images/build-*.sh makes them)`);
    const m = JSON.parse(readFileSync(manifestPath, 'utf8')) as { name?: string };
    return { tar: createReadStream(join(p, 'layer.tar')), name: m.name };
  }
  const head = Buffer.alloc(2);
  const fd = openSync(p, 'r');
  try {
    readSync(fd, head, 0, 2, 0);
  } finally {
    closeSync(fd);
  }
  const raw = createReadStream(p);
  if (head[0] !== 0x1f || head[1] !== 0x8b) return { tar: raw };
  const gunzip = createGunzip();
  raw.on('error', (err) => gunzip.destroy(err));
  return { tar: raw.pipe(gunzip) };
}

function printImage(ctx: Ctx, verb: string, img: Image, asJson?: boolean): void {
  const v = imageView(img);
  ctx.out.out(asJson ? json(v) : `${verb} ${v.name} (${bytes(v.sizeBytes)}, ${v.layers} layer${v.layers === 1 ? '' : 's'}, ${v.public ? 'public' : `private to ${v.owner}`})\n`);
}

export function registerVolumeCommands(program: Command, ctx: Ctx): void {
  // ------------------------------------------------------------------ volumes
  const volume = program
    .command('volume')
    .description('Your persistent volumes: folders that outlive jobs, mounted into instances with `--volume name:/path`')
    .addHelpText('after', '\nExamples:\n  oarcloud volume create data\n  oarcloud run --job 1234 --volume data:/data tiny:latest\n  oarcloud volume ls\n  oarcloud volume rm data');
  volume
    .command('create')
    .description('Create a volume')
    .argument('<name>', 'volume name (a-z 0-9 . _ -)')
    .option('--json', 'print the volume as JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const api = ctx.api();
      const v = volumeView(await api.call(api.volumes, api.volumes.createVolume, { name: parseVolumeName(name), idempotencyKey: '' }));
      ctx.out.out(o.json ? json(v) : `created volume ${v.name} (${v.id})\n`);
    });
  volume
    .command('ls')
    .alias('list')
    .description('List your volumes')
    .option('--all', "admins: every user's volumes")
    .option('--json', 'print as JSON')
    .action(async (o: { all?: boolean; json?: boolean }) => {
      const api = ctx.api();
      const list = (await api.call(api.volumes, api.volumes.listVolumes, { allUsers: !!o.all })).volumes.map(volumeView);
      if (o.json) return ctx.out.out(json(list));
      if (list.length === 0) return ctx.out.err('no volumes\n');
      ctx.out.out(
        table(list, [
          { header: 'ID', value: (v) => v.id },
          { header: 'NAME', value: (v) => v.name },
          ...(o.all ? [{ header: 'OWNER', value: (v: VolumeView) => v.owner }] : []),
          { header: 'SIZE', value: (v) => bytes(v.sizeBytes), align: 'right' as const },
          { header: 'USED BY', value: (v) => v.usedBy.join(',') || '-' },
          { header: 'CREATED', value: (v) => new Date(v.createdAtMs).toISOString().slice(0, 10) },
        ]),
      );
    });
  volume
    .command('rm')
    .description('Delete a volume and its data (refused while an instance mounts it)')
    .argument('<volume>', 'volume name or id')
    .option('--json', 'print the result as JSON')
    .action(async (ref: string, o: { json?: boolean }) => {
      const id = /^v-[0-9a-f]{12}$/.test(ref) ? ref : parseVolumeName(ref);
      const api = ctx.api();
      await api.call(api.volumes, api.volumes.deleteVolume, { id });
      ctx.out.out(o.json ? json({ removed: ref }) : `removed volume ${ref}\n`);
    });

  // ------------------------------------------------------------------- images
  program
    .command('rmi')
    .description('Delete one of your images (refused while an instance or another image uses it)')
    .argument('<image>', 'image name:tag')
    .addHelpText('after', '\nExamples:\n  oarcloud rmi myweb:v2\n  oarcloud rmi myweb:v2 --json')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const api = ctx.api();
      await api.call(api.images, api.images.deleteImage, { name: parseImage(name) });
      ctx.out.out(o.json ? json({ removed: name }) : `removed image ${name}\n`);
    });
}

export function registerAdminImageCommands(admin: Command, ctx: Ctx): void {
  const image = admin
    .command('image')
    .description('Base images: build from Debian packages, import a root filesystem tarball, remove')
    .addHelpText(
      'after',
      `
Examples:
  oarcloud admin image build tiny                 # busybox + dropbear, seconds -> tiny:latest
  oarcloud admin image build debian               # debootstrap bookworm + OpenSSH (root, ~1 min) -> debian:12
  oarcloud admin image import rootfs.tar.gz --name mylab:1 --public
  oarcloud admin image rm mylab:1`,
    );
  image
    .command('build')
    .description('Build a base image (tiny or debian) on this machine and upload it as a public image')
    .argument('<kind>', Object.keys(KINDS).join(' or '))
    .option('--name <name:tag>', 'image name (default: tiny:latest, debian:12)')
    .option('--out <dir>', 'build folder, kept as a cache (default ~/.cache/oarcloud/images/<kind>)')
    .option('--private', 'private to you instead of public')
    .option('--json', 'print the image as JSON')
    .action(async (kind: string, o: { name?: string; out?: string; private?: boolean; json?: boolean }) => {
      if (!(kind in KINDS)) throw new InvalidArgumentError(`invalid kind ${JSON.stringify(kind)}: expected ${Object.keys(KINDS).join(' or ')}`);
      // Before the build, which takes up to a minute: a bad name must cost nothing.
      const name = o.name === undefined ? undefined : parseImage(o.name, '--name');
      const out = resolve(o.out ?? join(homedir(), '.cache/oarcloud/images', kind));
      ctx.out.err(`building ${kind} in ${out}…\n`);
      execFileSync('bash', [join(BUILDERS, KINDS[kind as keyof typeof KINDS]), out], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 15 * 60_000 });
      const src = tarSource(out);
      printImage(ctx, 'built and uploaded', await upload(ctx, name ?? parseImage(src.name ?? kind, '--name'), !o.private, src.tar, out), o.json);
    });
  image
    .command('import')
    .description('Upload a root filesystem (tarball .tar/.tar.gz, or an image folder) as an image')
    .argument('<path>', 'rootfs tarball or image folder (image.json + layer.tar)')
    .option('--name <name:tag>', 'image name (required for a tarball)')
    .option('--public', 'visible to every user (default: private to you)')
    .option('--json', 'print the image as JSON')
    .action(async (path: string, o: { name?: string; public?: boolean; json?: boolean }) => {
      const src = tarSource(path);
      const name = o.name ?? src.name;
      if (!name) throw new InvalidArgumentError('--name is required for a tarball');
      printImage(ctx, 'imported', await upload(ctx, parseImage(name, '--name'), !!o.public, src.tar, path), o.json);
    });
  image
    .command('rm')
    .description('Remove an image (refused while an instance or another image uses it)')
    .argument('<image>', 'image name:tag')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, o: { json?: boolean }) => {
      const api = ctx.api();
      await api.call(api.images, api.images.deleteImage, { name: parseImage(name) });
      ctx.out.out(o.json ? json({ removed: name }) : `removed image ${name}\n`);
    });
}
