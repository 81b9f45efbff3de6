#!/usr/bin/env node
/**
 * The node agent:
 *   node dist/main.js --config /etc/oarcloud/agent.yaml                  the daemon
 *   node dist/main.js import-image DIR --config /etc/oarcloud/agent.yaml put an image's layers in the cache
 */
import { configPathFromArgv, createLogger, createRegistry, errFields, runDaemon, startMetricsServer } from '@oarcloud/common';
import { loadAgentConfig } from './config.js';
import { startAgent } from './agent.js';
import { importImage } from './import-image.js';

const config = loadAgentConfig(configPathFromArgv(process.argv), process.env);
// The import command keeps stdout for its result: its log lines go to stderr.
const importing = process.argv[2] === 'import-image';
const log = createLogger({ name: 'oarcloud-agent', level: config.logLevel, destination: importing ? 2 : 1 }).child({ node: config.nodeName });

if (importing) {
  const dir = process.argv[3];
  if (!dir || dir.startsWith('--')) {
    console.error('usage: main.js import-image DIR --config FILE');
    process.exit(2);
  }
  try {
    const r = await importImage(config, dir, log);
    console.log(`${r.name}: ${r.imported ? 'imported' : 'already present'} on ${config.nodeName}`);
  } catch (err) {
    log.error('import failed', errFields(err));
    console.error(`import failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
} else {
  const registry = createRegistry('agent');
  await runDaemon(log, async () => {
    const agent = await startAgent(config, { log, registry });
    const metrics = await startMetricsServer(config.metricsListen, registry, () => agent.serving);
    log.info('agent ready', { listen: config.listen, port: agent.port, metrics: metrics.port });
    return {
      close: async () => {
        await agent.close();
        await metrics.close();
      },
    };
  });
}
