/**
 * Child process of fd-limit.test.ts, run under a low RLIMIT_NOFILE: fills its own fd table, then reports as one JSON
 * line how a UnixServer behaves with a connection it cannot accept and how a MessageSocket reports fds it could not
 * receive. Usage: node fd-limit-child.js SOCKET_PATH
 */

import * as fs from 'node:fs';
import { native } from '../../lib/native';
import { MessageSocket, UnixServer } from '../../lib/os';
import { frame, tick } from '../helpers';

export interface FdLimitReport {
  /** CPU time used in the second after a connection arrived that could not be accepted. */
  readonly cpuMs: number;
  readonly measuredMs: number;
  /** The first few of the UnixServer's 'error' events, as "CODE: message". */
  readonly errors: string[];
  readonly errorCount: number;
  /** How the receiving MessageSocket closed when a message's fd could not be installed. */
  readonly receiverClose: { code?: string; message?: string } | 'clean' | 'still open';
  /** Connections accepted once the fd table had room again. */
  readonly accepted: number;
}

const MEASURE_MS = 1000;

async function until(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition() && Date.now() < deadline) await tick(5);
}

async function main(socketPath: string): Promise<FdLimitReport> {
  const server = UnixServer.listen(socketPath);
  const errors: string[] = [];
  let accepted = 0;
  server.on('error', (error) => errors.push(`${error.code}: ${error.message}`));
  server.on('connection', (socket) => {
    accepted++;
    socket.close();
  });
  const [receiver, sender] = MessageSocket.pair();
  let receiverClose: FdLimitReport['receiverClose'] = 'still open';
  receiver.on('close', (error) => (receiverClose = error === undefined ? 'clean' : { code: error.code, message: error.message }));
  const passed = native.memfdCreate('passed', 4096);

  const fillers: number[] = [];
  for (;;) {
    try {
      fillers.push(fs.openSync('/dev/null', 'r'));
    } catch {
      break;
    }
  }
  // The last free slot goes to a client socket, so the listener finds a connection and no fd to accept it with.
  fs.closeSync(fillers.pop()!);
  const client = MessageSocket.connect(socketPath);

  const started = performance.now();
  const cpuBefore = process.cpuUsage();
  await tick(MEASURE_MS);
  const cpu = process.cpuUsage(cpuBefore);
  const measuredMs = performance.now() - started;

  sender.send(frame('with an fd the receiver has no slot for'), [passed]);
  await until(() => receiverClose !== 'still open', 2000);

  for (const fd of fillers) fs.closeSync(fd);
  await until(() => accepted > 0, 3000);

  client.close();
  sender.close();
  passed.close();
  server.close();
  return { cpuMs: (cpu.user + cpu.system) / 1000, measuredMs, errors: errors.slice(0, 3), errorCount: errors.length, receiverClose, accepted };
}

main(process.argv[2]!).then(
  (report) => {
    process.stdout.write(`${JSON.stringify(report)}\n`);
    process.exit(0);
  },
  (error: unknown) => {
    process.stderr.write(`${String((error as Error).stack ?? error)}\n`);
    process.exit(1);
  },
);
