/**
 * `oarcloud-agent import-image DIR --config FILE`: puts the layers of a built image
 * (DIR/image.json + DIR/layer.tar, as tools/images makes them) into this node's layer cache.
 * Safe while the agent runs: imports are atomic and idempotent.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, type Logger } from '@oarcloud/common';
import { layerStoreRoot } from './agent.js';
import type { AgentConfig } from './config.js';
import { DirLayerStore } from './drivers/images/index.js';

export async function importImage(config: AgentConfig, dir: string, log: Logger): Promise<{ name: string; imported: number; present: number }> {
  const manifest = JSON.parse(await readFile(join(dir, 'image.json'), 'utf8')) as { name?: string; layers?: string[] };
  if (!manifest.name || !Array.isArray(manifest.layers) || manifest.layers.length !== 1) {
    throw new InvalidArgumentError(`${dir}/image.json: expected a name and exactly one layer (layer.tar)`);
  }
  const store = new DirLayerStore({ root: layerStoreRoot(config), idmapBase: config.idmapBase, log });
  const { imported } = await store.importLayer(manifest.layers[0]!, join(dir, 'layer.tar'));
  return { name: manifest.name, imported: imported ? 1 : 0, present: imported ? 0 : 1 };
}
