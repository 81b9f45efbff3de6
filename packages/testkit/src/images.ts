/**
 * Test images, built once from Debian packages by tools/images and cached across runs
 * under the local cluster's state folder (never in the git tree).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { localStateDir } from './prereq.js';

export interface BuiltImage {
  name: string;
  layers: string[];
  size: number;
  /** Folder holding layer.tar and image.json. */
  dir: string;
  /** The layer tarball (single-layer images). */
  layerTar: string;
}

const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));

export function imageCacheDir(): string {
  return join(localStateDir(), 'images');
}

/** Builds (or reuses) `tiny:latest`: busybox + dropbear, boots in ~0.3 s. */
export function tinyImage(): BuiltImage {
  return build('build-tiny.sh', 'tiny');
}

/** Builds (or reuses) `debian:12`: debootstrap minbase + OpenSSH (~40 s the first time). */
export function debianImage(): BuiltImage {
  return build('build-debian.sh', 'debian');
}

function build(script: string, dirName: string): BuiltImage {
  const dir = join(imageCacheDir(), dirName);
  execFileSync('bash', [join(repoRoot, 'tools/images', script), dir], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 300_000 });
  const manifest = JSON.parse(readFileSync(join(dir, 'image.json'), 'utf8')) as { name: string; layers: string[]; size: number };
  return { ...manifest, dir, layerTar: join(dir, 'layer.tar') };
}
