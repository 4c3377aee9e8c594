/** VfioUserServer's life: clients one after another, a client vanishing mid-request, close, and `viommu serve` as a process. */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { EDU_BUFFER_ADDRESS, EDU_IDENTIFICATION } from '../../../lib/devices/edu';
import { SharedRegion } from '../../../lib/memory';
import { MessageSocket } from '../../../lib/os';
import { encodeCommand, versionBody } from '../../../lib/vfio-user/codec';
import { VfioUserConnection } from '../../../lib/vfio-user/connection';
import { negotiateVersion } from '../../../lib/vfio-user/negotiation';
import { PROTOCOL_VERSION } from '../../../lib/vfio-user/protocol';
import { socketTransport } from '../../../lib/vfio-user/transport';
import { waitFor } from '../../helpers';
import { ServeProcess } from '../cli-process';
import {
  BAR0,
  cleanupAfterEachTest,
  connect,
  dmaMapBody,
  readU32,
  serveEngine,
  serverIdle,
  socketGone,
  startEduDma,
  waitForEduIdle,
} from './harness';

describe('VfioUserServer', () => {
  const cleanup = cleanupAfterEachTest();

  it('serves clients one after another: a second client waits, and is answered when the first leaves', async () => {
    const served = serveEngine(cleanup);
    const first = await connect(cleanup, served.path);
    const second = await connect(cleanup, served.path, { negotiate: false });
    let negotiated = false;
    const version = negotiateVersion(second).then(() => (negotiated = true));
    await waitFor(() => served.server.waitingClients === 1, 'the second client to wait');
    assert.equal(await readU32(first, BAR0, 0), EDU_IDENTIFICATION);
    assert.equal(negotiated, false, 'the waiting client is not answered yet');
    first.close();
    await version;
    assert.equal(await readU32(second, BAR0, 0), EDU_IDENTIFICATION);
    assert.equal(served.server.waitingClients, 0);
  });

  it('closes clients beyond maxWaitingClients at once', async () => {
    const served = serveEngine(cleanup, {}, { maxWaitingClients: 1 });
    const refused: string[] = [];
    served.server.on('clientRefused', (_client, reason) => refused.push(reason));
    await connect(cleanup, served.path);
    await connect(cleanup, served.path, { negotiate: false });
    const third = await connect(cleanup, served.path, { negotiate: false });
    await waitFor(() => third.closed, 'the third client to be closed');
    assert.match(refused[0]!, /already waiting/);
  });

  it('survives a client vanishing while the device waits for its DMA_READ reply; the next client is served normally', async () => {
    const outcomes: { error?: Error }[] = [];
    const served = serveEngine(cleanup, { onDma: (outcome) => outcomes.push(outcome) });
    const first = await connect(cleanup, served.path);
    const ram = SharedRegion.create('vanishing', 0x1000);
    cleanup.add(() => ram.close());
    await first.request('DMA_MAP', dmaMapBody(0x1000n, 0x1000n), { fds: [ram.fd] });
    await first.request('DMA_MAP', dmaMapBody(0x0n, 0x1000n));
    let asked = false;
    first.onCommand('DMA_READ', () => {
      asked = true;
      return new Promise(() => undefined); // never answered: the client dies first
    });
    await startEduDma(first, { source: 0x0n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 64, toRam: false });
    await waitFor(() => asked, 'the DMA_READ');
    first.close();
    await serverIdle(served);
    // The client's departure resets the device: the transfer in flight is forgotten, not completed.
    assert.equal(served.engine.edu.dmaRunning, false);
    await new Promise((resolve) => setTimeout(resolve, 5));
    assert.deepEqual(outcomes, []);

    const second = await connect(cleanup, served.path);
    assert.equal(served.server.session?.dmaMaps.size, 0, 'no mapping of the first client is left');
    assert.equal(await readU32(second, BAR0, 0), EDU_IDENTIFICATION);
    second.onCommand('DMA_READ', (command) => ({ address: command.address, data: new Uint8Array(Number(command.count)) }));
    await second.request('DMA_MAP', dmaMapBody(0x0n, 0x1000n));
    await startEduDma(second, { source: 0x0n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 64, toRam: false });
    await waitForEduIdle(second);
  });

  it('closes a client that vanishes in the middle of a message, and keeps listening', async () => {
    const served = serveEngine(cleanup);
    const disconnected: (Error | undefined)[] = [];
    served.server.on('clientDisconnected', (_client, error) => disconnected.push(error));
    const raw = net.connect(served.path);
    await once(raw, 'connect');
    const version = Buffer.from(encodeCommand(1, { command: 'VERSION', ...versionBody(0, 2, {}) }));
    raw.end(version.subarray(0, 20));
    await waitFor(() => disconnected.length === 1, 'the server to drop the half-sent message');
    raw.destroy();
    const client = await connect(cleanup, served.path);
    assert.equal(await readU32(client, BAR0, 0), EDU_IDENTIFICATION);
  });

  it('close() disconnects the client and waiting ones, removes the socket file and releases the device', async () => {
    const served = serveEngine(cleanup);
    const first = await connect(cleanup, served.path);
    const second = await connect(cleanup, served.path, { negotiate: false });
    await waitFor(() => served.server.waitingClients === 1, 'the second client to wait');
    await served.server.close();
    await waitFor(() => first.closed && second.closed, 'both clients to see the close');
    assert.ok(socketGone(served.path));
    assert.equal(served.device.dma.attached, false);
  });
});

// ---- `viommu serve` as a separate process ------------------------------------------------------------------

describe('viommu serve (a separate process)', () => {
  it('prints where it listens, serves a client in this process (mapped and message DMA), logs it, and exits cleanly on SIGTERM', async () => {
    const served = await ServeProcess.start();
    const socketPath = served.socketPath;
    try {
      assert.equal(served.stdout, `viommu serve: dma-engine listening on ${socketPath}\n`);
      const connection = new VfioUserConnection(socketTransport(MessageSocket.connect(socketPath)), { role: 'client', requestTimeoutMs: 10000 });
      try {
        const version = await negotiateVersion(connection, { twinSocket: true });
        assert.deepEqual([version.major, version.minor, version.twinSocket], [PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor, true]);
        const info = await connection.request('DEVICE_GET_INFO', { argsz: 16 });
        assert.equal(info.body.numRegions, 9);
        assert.equal(await readU32(connection, BAR0, 0), EDU_IDENTIFICATION);
        const ram = SharedRegion.create('serve-test', 0x2000);
        try {
          Buffer.from(ram.buffer).write('across processes', 0x10);
          await connection.request('DMA_MAP', dmaMapBody(0x10000n, 0x1000n), { fds: [ram.fd] });
          await startEduDma(connection, { source: 0x10010n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 16, toRam: false });
          await waitForEduIdle(connection);
          const guest = new Uint8Array(0x1000);
          connection.onCommand('DMA_WRITE', (command) => {
            guest.set(command.data, Number(command.address - 0x20000n));
            return { transfer: { address: command.address, count: BigInt(command.data.length) } };
          });
          await connection.request('DMA_MAP', dmaMapBody(0x20000n, 0x1000n));
          await startEduDma(connection, { source: BigInt(EDU_BUFFER_ADDRESS), destination: 0x20000n, count: 16, toRam: true });
          await waitForEduIdle(connection);
          assert.equal(Buffer.from(guest.subarray(0, 16)).toString(), 'across processes');
        } finally {
          ram.close();
        }
      } finally {
        connection.close();
      }
      await waitFor(() => /client 1 disconnected/.test(served.stderr), `the disconnect log line (stderr: ${served.stderr})`);
      assert.match(served.stderr, /client 1 connected/);
      assert.deepEqual(await served.stop(), [0, null], served.stderr);
      assert.ok(!fs.existsSync(socketPath), 'the socket file is removed');
    } finally {
      served.kill();
    }
  });
});
