/** VfioUserConnection: one suite run over the in-memory and the socket transport (matching, errors, limits, VERSION, fds). */

import assert from 'node:assert/strict';
import sinon from 'sinon';
import { native, type FileDescriptor } from '../../lib/native';
import { MessageSocket, ReceivedFds } from '../../lib/os';
import { decodeMessage, encodeCommand, encodeReply, versionBody, type VfioUserMessage } from '../../lib/vfio-user/codec';
import { replyWithFds, VfioUserConnection, type ConnectionOptions, type DroppedReply } from '../../lib/vfio-user/connection';
import {
  VfioUserClosedError,
  VfioUserErrnoError,
  VfioUserLimitError,
  VfioUserRemoteError,
  VfioUserTimeoutError,
} from '../../lib/vfio-user/connection-errors';
import { ERRNO } from '../../lib/errno';
import { negotiateVersion, serveVersion } from '../../lib/vfio-user/negotiation';
import { COMMANDS, DMA_MAP_FLAGS, HEADER_FLAGS, MESSAGE_TYPES, REGION_INFO_FLAGS } from '../../lib/vfio-user/protocol';
import { dmaRead, dmaWrite, regionRead, regionWrite, splitTransfer } from '../../lib/vfio-user/transfers';
import { InMemoryTransport, socketTransport, type Transport } from '../../lib/vfio-user/transport';
import { openFdCount, tick, waitFor } from '../helpers';
import { rawMessage } from './helpers';
import { readCapture } from '../captures';

const KINDS: Record<string, () => [Transport, Transport]> = {
  'in-memory': () => InMemoryTransport.pair(),
  socket: () => MessageSocket.pair().map(socketTransport) as [Transport, Transport],
};

const ERROR_REPLY_FLAGS = MESSAGE_TYPES.values.REPLY | HEADER_FLAGS.bits.ERROR;
const UNKNOWN_COMMAND = 0x7777;

/** A peer that speaks raw bytes: records what arrives and answers by hand. */
/** Waits for `condition` on real event-loop turns (setImmediate), for tests that fake setTimeout. */
async function untilImmediate(condition: () => boolean): Promise<void> {
  for (let turns = 0; !condition(); turns++) {
    if (turns > 100000) throw new Error('the condition never became true');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

class RawPeer {
  readonly received: { bytes: Buffer; message: VfioUserMessage | undefined; fds: number }[] = [];
  constructor(readonly transport: Transport) {
    transport.on('message', (bytes, fds) => {
      let message: VfioUserMessage | undefined;
      try {
        message = decodeMessage(bytes);
      } catch {
        message = undefined;
      }
      this.received.push({ bytes: Buffer.from(bytes), message, fds: fds.count });
    });
  }
  async next(count = 1): Promise<void> {
    await waitFor(() => this.received.length >= count, `${count} messages at the raw peer`);
  }
}

function dmaMapBody(address: bigint) {
  return { argsz: 32, flags: DMA_MAP_FLAGS.bits.READ | DMA_MAP_FLAGS.bits.WRITE, offset: 0n, address, size: 4096n };
}

function versionReplyFromCapture(file: string): Buffer {
  const record = readCapture(file).find((r) => r.dir === 's2c' && r.cmd === COMMANDS.values.VERSION);
  assert.ok(record, `no VERSION reply in ${file}`);
  return Buffer.from(record.hex, 'hex');
}

describe('splitTransfer', () => {
  it('cuts a transfer into ordered pieces no larger than the limit', () => {
    assert.deepEqual(splitTransfer(200, 64), [
      { at: 0, length: 64 },
      { at: 64, length: 64 },
      { at: 128, length: 64 },
      { at: 192, length: 8 },
    ]);
    assert.deepEqual(splitTransfer(0, 64), []);
    assert.throws(() => splitTransfer(10, 0), /max_data_xfer_size/);
  });
});

for (const [kind, makePair] of Object.entries(KINDS)) {
  describe(`VfioUserConnection over ${kind}`, () => {
    const cleanup: (() => void)[] = [];
    afterEach(() => {
      for (const run of cleanup.splice(0)) run();
    });

    function connections(clientOptions: Partial<ConnectionOptions> = {}, serverOptions: Partial<ConnectionOptions> = {}) {
      const [a, b] = makePair();
      const client = new VfioUserConnection(a, { role: 'client', ...clientOptions });
      const server = new VfioUserConnection(b, { role: 'server', ...serverOptions });
      cleanup.push(
        () => client.close(),
        () => server.close(),
      );
      return { client, server };
    }

    function withRawPeer(role: 'client' | 'server', options: Partial<ConnectionOptions> = {}) {
      const [a, b] = makePair();
      const connection = new VfioUserConnection(a, { role, ...options });
      const raw = new RawPeer(b);
      cleanup.push(
        () => connection.close(),
        () => b.close(),
      );
      return { connection, raw };
    }

    it('matches replies to requests by msg_id when they come out of order', async () => {
      const { connection, raw } = withRawPeer('client');
      const first = connection.request('REGION_READ', { offset: 0n, region: 0, count: 1 });
      const second = connection.request('REGION_READ', { offset: 8n, region: 1, count: 1 });
      await raw.next(2);
      const [m1, m2] = raw.received.map((r) => r.message!);
      assert.ok(m1?.type === 'command' && m2?.type === 'command');
      assert.notEqual(m1.msgId, m2.msgId);
      raw.transport.send(encodeReply(m2.msgId, { command: 'REGION_READ', offset: 8n, region: 1, data: Uint8Array.of(2) }));
      raw.transport.send(encodeReply(m1.msgId, { command: 'REGION_READ', offset: 0n, region: 0, data: Uint8Array.of(1) }));
      const [r1, r2] = await Promise.all([first, second]);
      assert.deepEqual([...r1.body.data, ...r2.body.data], [1, 2]);
      assert.equal(r1.msgId, m1.msgId);
      assert.equal(connection.pendingRequests, 0);
    });

    it('allocates u16 msg_ids that wrap and skip ids still in flight', async () => {
      const { connection, raw } = withRawPeer('client');
      const ids = connection as unknown as { nextId: number };
      ids.nextId = 65535;
      const first = connection.request('DEVICE_RESET', {});
      const second = connection.request('DEVICE_RESET', {});
      ids.nextId = 65535;
      const third = connection.request('DEVICE_RESET', {});
      await raw.next(3);
      const sent = raw.received.map((r) => r.message!.msgId);
      assert.deepEqual(sent, [65535, 0, 1]);
      for (const id of sent) raw.transport.send(encodeReply(id, { command: 'DEVICE_RESET' }));
      assert.deepEqual(
        (await Promise.all([first, second, third])).map((r) => r.msgId),
        sent,
      );
    });

    it('reports a reply that cannot be encoded and answers EIO', async () => {
      const { client, server } = connections();
      const reported: unknown[] = [];
      server.on('handlerError', (error) => reported.push(error));
      const eventfds = [native.eventfdCreate(), native.eventfdCreate()];
      cleanup.push(() => eventfds.forEach((fd) => fd.close()));
      // Two fds in a reply to a peer that stated no max_msg_fds (default 1): refused before sending.
      server.onCommand('DEVICE_RESET', () => replyWithFds<'DEVICE_RESET'>({}, eventfds));
      await assert.rejects(client.request('DEVICE_RESET', {}), (e: unknown) => e instanceof VfioUserRemoteError && e.errno === ERRNO.EINVAL);
      assert.equal(reported.length, 1);
      assert.ok(
        eventfds.every((fd) => !fd.closed),
        'the handler keeps fds it did not transfer',
      );
    });

    it('rejects with VfioUserRemoteError carrying the errno of an error reply', async () => {
      const { client, server } = connections();
      server.onCommand('DMA_READ', () => {
        throw new VfioUserErrnoError('EFAULT', 'nothing mapped there');
      });
      const error = await client.request('DMA_READ', { address: 0n, count: 8n }).then(
        () => assert.fail('expected an error reply'),
        (e: unknown) => e,
      );
      assert.ok(error instanceof VfioUserRemoteError);
      assert.equal(error.errno, ERRNO.EFAULT);
      assert.equal(error.command, COMMANDS.values.DMA_READ);
    });

    it('answers an unexpected handler exception with EIO and reports it', async () => {
      const { client, server } = connections();
      const reported: unknown[] = [];
      server.on('handlerError', (error) => reported.push(error));
      server.onCommand('DEVICE_RESET', async () => {
        await tick();
        throw new Error('bug');
      });
      await assert.rejects(client.request('DEVICE_RESET', {}), (e: unknown) => e instanceof VfioUserRemoteError && e.errno === ERRNO.EIO);
      assert.equal(reported.length, 1);
    });

    it('times out, frees the request and drops the late reply', async () => {
      const { connection, raw } = withRawPeer('client');
      const dropped: DroppedReply[] = [];
      connection.on('droppedReply', (info) => dropped.push(info));
      await assert.rejects(connection.request('DEVICE_RESET', {}, { timeoutMs: 20 }), VfioUserTimeoutError);
      assert.equal(connection.pendingRequests, 0);
      const sent = raw.received[0]!.message!;
      raw.transport.send(encodeReply(sent.msgId, { command: 'DEVICE_RESET' }));
      await waitFor(() => dropped.length === 1, 'the late reply to be dropped');
      assert.equal(dropped[0]!.reason, 'late');
    });

    it('times each request out at its own limit, whatever order they were sent in, and answers the rest', async () => {
      // The connection's one timer and its performance.now() deadlines run on a fake clock, so the order below is
      // the deadlines' order however slow the machine is; message delivery (setImmediate, sockets) stays real.
      const clock = sinon.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
      cleanup.push(() => clock.restore());
      const { connection, raw } = withRawPeer('client');
      const order: string[] = [];
      const track = (name: string, request: Promise<unknown>) =>
        request.then(
          () => order.push(`${name} answered`),
          (error) => order.push(error instanceof VfioUserTimeoutError ? `${name} timed out` : `${name} ${error}`),
        );
      const long = track('long', connection.request('DEVICE_RESET', {}, { timeoutMs: 600 }));
      const answered = track('answered', connection.request('DEVICE_RESET', {}, { timeoutMs: 1000 }));
      const short = track('short', connection.request('DEVICE_RESET', {}, { timeoutMs: 150 }));
      await untilImmediate(() => raw.received.length >= 3);
      raw.transport.send(encodeReply(raw.received[1]!.message!.msgId, { command: 'DEVICE_RESET' }));
      await answered;
      assert.deepEqual(order, ['answered answered']);
      await clock.tickAsync(149);
      assert.deepEqual(order, ['answered answered'], 'nothing expires before its limit');
      await clock.tickAsync(1);
      await short;
      assert.deepEqual(order, ['answered answered', 'short timed out']);
      await clock.tickAsync(450);
      await long;
      assert.deepEqual(order, ['answered answered', 'short timed out', 'long timed out']);
      assert.equal(connection.pendingRequests, 0);
    });

    it('rejects every pending request when the connection closes, locally or by the peer', async () => {
      const { connection, raw } = withRawPeer('client', { requestTimeoutMs: 60000 });
      const pending = [connection.request('DEVICE_RESET', {}), connection.request('DEVICE_RESET', {})];
      await raw.next(2);
      connection.close();
      for (const request of pending) await assert.rejects(request, VfioUserClosedError);
      await assert.rejects(connection.request('DEVICE_RESET', {}), VfioUserClosedError);

      const other = withRawPeer('client');
      const closed = new Promise((resolve) => other.connection.once('close', resolve));
      const waiting = other.connection.request('DEVICE_RESET', {});
      await other.raw.next();
      other.raw.transport.close();
      await assert.rejects(waiting, VfioUserClosedError);
      await closed;
      assert.ok(other.connection.closed);
    });

    it('sends NO_REPLY commands without waiting and never answers them', async () => {
      const { client, server } = connections();
      const seen: boolean[] = [];
      server.onCommand('REGION_WRITE', (_command, _fds, info) => {
        seen.push(info.noReply);
        return { offset: 0n, region: 0, count: 1 };
      });
      server.onCommand('DEVICE_RESET', () => {
        throw new VfioUserErrnoError('EBUSY', 'not now');
      });
      const dropped: DroppedReply[] = [];
      client.on('droppedReply', (info) => dropped.push(info));
      await client.request('REGION_WRITE', { offset: 0n, region: 0, data: Uint8Array.of(1) }, { noReply: true });
      await client.request('DEVICE_RESET', {}, { noReply: true });
      await waitFor(() => seen.length === 1, 'the posted write');
      await tick(20);
      assert.deepEqual(seen, [true]);
      assert.equal(dropped.length, 0);
      assert.equal(client.pendingRequests, 0);
    });

    it('answers unknown and unhandled commands with EINVAL, echoing msg_id and command', async () => {
      const { raw } = withRawPeer('server');
      raw.transport.send(rawMessage({ command: UNKNOWN_COMMAND, msgId: 26, payload: new Uint8Array(8) }));
      raw.transport.send(encodeCommand(27, { command: 'DEVICE_RESET' }));
      // Undecodable but with a readable header: a DMA_MAP with a payload too short for its struct.
      raw.transport.send(rawMessage({ command: COMMANDS.values.DMA_MAP, msgId: 28, payload: new Uint8Array(4) }));
      await raw.next(3);
      const expected = [
        [26, UNKNOWN_COMMAND],
        [27, COMMANDS.values.DEVICE_RESET],
        [28, COMMANDS.values.DMA_MAP],
      ];
      raw.received.forEach(({ bytes }, index) => {
        assert.equal(bytes.length, 16);
        assert.equal(bytes.readUInt16LE(0), expected[index]![0]);
        assert.equal(bytes.readUInt16LE(2), expected[index]![1]);
        assert.equal(bytes.readUInt32LE(8), ERROR_REPLY_FLAGS);
        assert.equal(bytes.readUInt32LE(12), ERRNO.EINVAL);
      });
    });

    it('closes the connection with an error when a message has no readable header', async () => {
      const { connection } = withRawPeer('server');
      const closed = new Promise<Error | undefined>((resolve) => connection.once('close', resolve));
      (connection as unknown as { channels: { transport: Transport }[] }).channels[0]!.transport.emit(
        'message',
        Buffer.alloc(8),
        new ReceivedFds([]),
      );
      const error = await closed;
      assert.ok(error instanceof Error);
      assert.ok(connection.closed);
    });

    it('drops a reply to an unknown msg_id and closes its fds', async () => {
      const { connection, raw } = withRawPeer('client');
      const dropped: DroppedReply[] = [];
      connection.on('droppedReply', (info) => dropped.push(info));
      const before = openFdCount();
      const eventfd = native.eventfdCreate();
      raw.transport.send(encodeReply(999, { command: 'DEVICE_RESET' }), [eventfd]);
      eventfd.close();
      await waitFor(() => dropped.length === 1, 'the unknown reply to be dropped');
      await tick();
      assert.deepEqual(dropped[0], { msgId: 999, command: COMMANDS.values.DEVICE_RESET, reason: 'unknown-id', fds: 1, channel: 'main' });
      assert.equal(openFdCount(), before);
    });

    it('refuses to send more fds than the peer accepts, and answers EINVAL to too many incoming fds', async () => {
      const { connection, raw } = withRawPeer('server', { capabilities: { maxMsgFds: 1 } });
      const fds = [native.eventfdCreate(), native.eventfdCreate()];
      cleanup.push(() => fds.forEach((fd) => fd.close()));
      // Before VERSION the peer's max_msg_fds is the spec's default, 1.
      await assert.rejects(
        connection.request('DMA_WRITE', { address: 0n, data: new Uint8Array(1) }, { fds }),
        (e: unknown) => e instanceof VfioUserLimitError && e.code === 'ERR_VFIO_USER_TOO_MANY_FDS',
      );
      let handled = 0;
      connection.onCommand('DMA_MAP', () => {
        handled++;
        return {};
      });
      const before = openFdCount();
      raw.transport.send(encodeCommand(5, { command: 'DMA_MAP', ...dmaMapBody(0n) }), fds);
      await raw.next();
      const reply = raw.received[0]!;
      assert.equal(reply.bytes.readUInt16LE(0), 5);
      assert.equal(reply.bytes.readUInt32LE(8), ERROR_REPLY_FLAGS);
      assert.equal(reply.bytes.readUInt32LE(12), ERRNO.EINVAL);
      assert.equal(handled, 0);
      await tick();
      assert.equal(openFdCount(), before);
    });

    it("splits region and DMA transfers to the peer's max_data_xfer_size and refuses oversized ones", async () => {
      const { client, server } = connections({ capabilities: { maxDataXferSize: 48 } }, { capabilities: { maxDataXferSize: 64 } });
      serveVersion(server);
      await negotiateVersion(client);
      assert.equal(client.peerCapabilities.maxDataXferSize, 64);
      assert.equal(server.peerCapabilities.maxDataXferSize, 48);

      const bar = new Uint8Array(256);
      const writes: number[] = [];
      server.onCommand('REGION_WRITE', (command) => {
        writes.push(command.data.length);
        bar.set(command.data, Number(command.offset));
        return { offset: command.offset, region: command.region, count: command.data.length };
      });
      server.onCommand('REGION_READ', (command) => ({
        offset: command.offset,
        region: command.region,
        data: bar.slice(Number(command.offset), Number(command.offset) + command.count),
      }));
      const data = Uint8Array.from({ length: 200 }, (_, i) => i);
      await regionWrite(client, 1, 16n, data);
      assert.deepEqual(writes, [64, 64, 64, 8]);
      assert.deepEqual(await regionRead(client, 1, 16n, 200), data);

      const memory = new Uint8Array(256);
      const dmaSizes: number[] = [];
      client.onCommand('DMA_WRITE', (command) => {
        dmaSizes.push(command.data.length);
        memory.set(command.data, Number(command.address));
        return { transfer: { address: command.address, count: BigInt(command.data.length) } };
      });
      client.onCommand('DMA_READ', (command) => {
        dmaSizes.push(Number(command.count));
        return { address: command.address, data: memory.slice(Number(command.address), Number(command.address + command.count)) };
      });
      await dmaWrite(server, 0n, data.subarray(0, 100));
      assert.deepEqual(await dmaRead(server, 0n, 100), data.subarray(0, 100));
      assert.deepEqual(dmaSizes, [48, 48, 4, 48, 48, 4]);

      await assert.rejects(
        client.request('REGION_READ', { offset: 0n, region: 1, count: 65 }),
        (e: unknown) => e instanceof VfioUserLimitError && e.code === 'ERR_VFIO_USER_TRANSFER_TOO_BIG',
      );
    });

    it('answers an incoming transfer above our max_data_xfer_size with EINVAL', async () => {
      const { raw } = withRawPeer('server', { capabilities: { maxDataXferSize: 64 } });
      raw.transport.send(encodeCommand(3, { command: 'REGION_WRITE', offset: 0n, region: 0, data: new Uint8Array(65) }));
      await raw.next();
      assert.equal(raw.received[0]!.bytes.readUInt32LE(12), ERRNO.EINVAL);
    });

    it('negotiates VERSION: minor min(client, 2), capabilities both ways, wrong major refused', async () => {
      const { client, server } = connections({ capabilities: { maxMsgFds: 16, maxDataXferSize: 4096 } });
      serveVersion(server);
      const result = await negotiateVersion(client);
      assert.equal(result.minor, 2);
      assert.equal(result.twinSocket, false);
      assert.equal(client.peerCapabilities.maxMsgFds, 8);
      assert.equal(server.peerCapabilities.maxMsgFds, 16);
      assert.equal(server.peerCapabilities.maxDataXferSize, 4096);
      assert.equal(server.versionMinor, 2);

      const { connection, raw } = withRawPeer('server');
      serveVersion(connection);
      raw.transport.send(encodeCommand(1, { command: 'VERSION', ...versionBody(0, 0, {}) }));
      raw.transport.send(encodeCommand(2, { command: 'VERSION', ...versionBody(1, 0, {}) }));
      await raw.next(2);
      const old = decodeMessage(raw.received[0]!.bytes);
      assert.ok(old.type === 'reply' && old.body.command === 'VERSION');
      assert.equal(old.body.minor, 0);
      assert.equal(raw.received[1]!.bytes.readUInt32LE(12), ERRNO.EINVAL);
    });

    it("takes libvfio-user's captured VERSION reply and its twin socket fd", async () => {
      const { connection, raw } = withRawPeer('client');
      const captured = versionReplyFromCapture('probe-server.jsonl');
      const [mine, theirs] = native.unixSocketPair();
      cleanup.push(() => mine.close());
      raw.transport.on('message', (bytes) => {
        const reply = Buffer.from(captured);
        reply.writeUInt16LE(bytes.readUInt16LE(0), 0);
        raw.transport.send(reply, [theirs]);
        theirs.close();
      });
      const result = await negotiateVersion(connection, { twinSocket: true });
      assert.equal(result.minor, 2);
      assert.equal(result.twinSocket, true);
      assert.ok(connection.hasTwin);
      assert.equal(result.peer.maxMsgFds, 8);
      assert.equal(result.peer.maxDataXferSize, 1048576);
      assert.deepEqual(result.peer.migration, { pgsize: 4096 });
    });

    it('carries server-initiated DMA_READ/DMA_WRITE on the twin socket', async () => {
      const { client, server } = connections({ capabilities: { maxDataXferSize: 1024 } });
      serveVersion(server, { twinSocket: true });
      const result = await negotiateVersion(client, { twinSocket: true });
      assert.equal(result.twinSocket, true);
      assert.ok(server.hasTwin);
      const channels: string[] = [];
      const memory = new Uint8Array(4096);
      client.onCommand('DMA_WRITE', (command, _fds, info) => {
        channels.push(`write:${info.channel}`);
        memory.set(command.data, Number(command.address));
        return { transfer: { address: command.address, count: BigInt(command.data.length) } };
      });
      client.onCommand('DMA_READ', (command, _fds, info) => {
        channels.push(`read:${info.channel}`);
        return { address: command.address, data: memory.slice(Number(command.address), Number(command.address + command.count)) };
      });
      server.onCommand('DEVICE_RESET', (_command, _fds, info) => {
        channels.push(`reset:${info.channel}`);
        return {};
      });
      const data = Uint8Array.from({ length: 2048 }, (_, i) => i & 255);
      await Promise.all([dmaWrite(server, 0n, data), client.request('DEVICE_RESET', {})]);
      assert.deepEqual(await dmaRead(server, 0n, 2048), data);
      assert.deepEqual(
        channels.filter((c) => c.startsWith('write')),
        ['write:twin', 'write:twin'],
      );
      assert.deepEqual(
        channels.filter((c) => c.startsWith('read')),
        ['read:twin', 'read:twin'],
      );
      assert.deepEqual(
        channels.filter((c) => c.startsWith('reset')),
        ['reset:main'],
      );

      const closed = new Promise((resolve) => server.once('close', resolve));
      client.close();
      await closed;
    });

    it('leaks no fd over hundreds of exchanges with fds in both directions', async function () {
      this.timeout(20000);
      const before = openFdCount();
      const liveBefore = native.liveFileDescriptors();
      {
        const { client, server } = connections();
        serveVersion(server, { twinSocket: true });
        await negotiateVersion(client, { twinSocket: true });
        const regionFd: FileDescriptor = native.memfdCreate('bar', 4096);
        let mapped = 0;
        server.onCommand('DMA_MAP', (_command, fds) => {
          const fd = fds.take(0);
          mapped++;
          fd.close();
          return {};
        });
        server.onCommand('DEVICE_GET_REGION_INFO', (command) =>
          replyWithFds<'DEVICE_GET_REGION_INFO'>(
            {
              argsz: 32,
              flags: REGION_INFO_FLAGS.bits.READ | REGION_INFO_FLAGS.bits.WRITE | REGION_INFO_FLAGS.bits.MMAP,
              index: command.index,
              size: 4096n,
              offset: 0n,
              capabilities: [],
            },
            [regionFd],
          ),
        );
        for (let round = 0; round < 150; round++) {
          const memfd = native.memfdCreate('ram', 4096);
          try {
            await client.request('DMA_MAP', dmaMapBody(BigInt(round) * 4096n), { fds: [memfd] });
          } finally {
            memfd.close();
          }
          const info = await client.request('DEVICE_GET_REGION_INFO', { argsz: 32, index: 0 });
          assert.equal(info.fds.length, 1);
          info.fds.forEach((fd) => fd.close());
        }
        assert.equal(mapped, 150);
        regionFd.close();
        const closed = new Promise((resolve) => server.once('close', resolve));
        client.close();
        await closed;
      }
      await tick(10);
      assert.equal(openFdCount(), before);
      assert.equal(native.liveFileDescriptors(), liveBefore);
    });
  });
}
