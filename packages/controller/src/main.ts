#!/usr/bin/env node
/**
 * The controller daemon: `node dist/main.js --config /etc/oarcloud/controller.yaml`.
 */
import { configPathFromArgv, createLogger, createRegistry, runDaemon, startMetricsServer } from '@oarcloud/common';
import { loadControllerConfig } from './config.js';
import { startController } from './controller.js';

const config = loadControllerConfig(configPathFromArgv(process.argv));
const log = createLogger({ name: 'oarcloud-controller', level: config.logLevel });
const registry = createRegistry('controller');

await runDaemon(log, async () => {
  const controller = await startController(config, { log, registry });
  const metrics = await startMetricsServer(config.metricsListen, registry, () => controller.serving);
  log.info('controller ready', { listen: config.listen, port: controller.port, tlsListen: config.tlsListen, tlsPort: controller.tlsPort, metrics: metrics.port });
  return {
    close: async () => {
      await controller.close();
      await metrics.close();
    },
  };
});
