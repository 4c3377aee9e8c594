/** `viommu serve`: runs a sample vfio-user device on a UNIX socket until SIGINT or SIGTERM. */
import type { Command } from 'commander';
import { SAMPLE_DEVICES } from '../vfio-user/server/dma-engine';
import { VfioUserServer } from '../vfio-user/server/server';

export interface ServeCommandOptions {
  socket: string;
  device: string;
  twinSocket: boolean;
  allowUnsealedDmaFds?: boolean;
}

export interface ServeIo {
  /** The one line saying where the device listens. */
  stdout: NodeJS.WritableStream;
  /** Clients arriving and leaving, warnings. */
  stderr: NodeJS.WritableStream;
  /** Resolves when the server should stop (SIGINT/SIGTERM for the CLI). */
  stop: Promise<unknown>;
}

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('serve a sample vfio-user device on a UNIX socket, one client after another, until SIGINT or SIGTERM')
    .requiredOption('--socket <path>', 'UNIX socket path to listen on (a stale socket file is replaced)')
    .option('--device <name>', `the device to serve: ${Object.keys(SAMPLE_DEVICES).join(', ')}`, 'dma-engine')
    .option('--no-twin-socket', "do not offer a twin socket for the device's DMA messages")
    .option(
      '--allow-unsealed-dma-fds',
      'accept DMA_MAP fds not sealed against shrinking (regular files, unsealed memfds): reached by pread/pwrite, not mapped (default: refused with EPERM)',
    )
    .action(async (options: ServeCommandOptions) => {
      await runServe(options, { stdout: process.stdout, stderr: process.stderr, stop: untilSignal() });
    });
}

/** Resolves on the first SIGINT or SIGTERM and removes both handlers, so a second signal has its default effect. */
function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve(signal);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

export async function runServe(options: ServeCommandOptions, io: ServeIo): Promise<void> {
  const sample = SAMPLE_DEVICES[options.device];
  if (sample === undefined) {
    throw new Error(`--device ${options.device}: unknown device; known: ${Object.keys(SAMPLE_DEVICES).join(', ')}`);
  }
  const log = (line: string) => io.stderr.write(`viommu serve: ${line}\n`);
  const { device } = sample.create({ log: (message) => log(`${options.device}: ${message}`) });
  let server: VfioUserServer;
  try {
    server = VfioUserServer.listen(options.socket, device, {
      twinSocket: options.twinSocket,
      allowUnsealedDmaFds: options.allowUnsealedDmaFds ?? false,
    });
  } catch (error) {
    device.close();
    throw error;
  }
  server.on('clientConnected', (client) => log(`client ${client.id} connected`));
  server.on('clientDisconnected', (client, error) => log(`client ${client.id} disconnected${error ? ` (${error.message})` : ''}`));
  server.on('clientWaiting', (client, waiting) => log(`client ${client.id} waits for its turn (${waiting} waiting)`));
  server.on('clientRefused', (client, reason) => log(`client ${client.id} closed without being served: ${reason}`));
  server.on('warning', (client, message) => log(`client ${client.id}: ${message}`));
  server.on('error', (error) => log(`accept failed: ${error.message}`));
  io.stdout.write(`viommu serve: ${options.device} listening on ${options.socket}\n`);
  await io.stop;
  await server.close();
  device.close();
  log('stopped');
}
