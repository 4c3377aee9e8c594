/** Hostile and broken input at the server: each gets the spec's errno or a clean close, the server keeps serving, nothing leaks. */

import assert from 'node:assert/strict';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import fc from 'fast-check';
import type { FileDescriptor } from '../../../lib/native';
import { EventFd, MessageSocket } from '../../../lib/os';
import { decodeHeader, encodeCommand, encodeReply, versionBody } from '../../../lib/vfio-user/codec';
import { ERRNO } from '../../../lib/errno';
import type { VfioUserCommand } from '../../../lib/vfio-user/messages';
import {
  COMMANDS,
  DEVICE_INFO_LAYOUT,
  DMA_MAP_LAYOUT,
  HEADER_FLAGS,
  HEADER_SIZE,
  MESSAGE_TYPES,
  PROTOCOL_VERSION,
  REGION_ACCESS_LAYOUT,
  SET_IRQS_FLAGS,
} from '../../../lib/vfio-user/protocol';
import { CAPTURES } from '../../captures';
import { openFdCount, waitFor } from '../../helpers';
import { patchHeader, patchPayload, rawMessage } from '../helpers';
import { BAR0, Cleanup, cleanupAfterEachTest, CONFIG, serveEngine, serverIdle, type Served } from './harness';

const FUZZ_RUNS = Number(process.env.VIOMMU_FUZZ_RUNS ?? 60);
const REPLY = MESSAGE_TYPES.values.REPLY;
const ERROR_REPLY = REPLY | HEADER_FLAGS.bits.ERROR;

interface Answer {
  readonly msgId: number;
  readonly command: number;
  readonly flags: number;
  readonly error: number;
  readonly size: number;
  readonly fds: number;
}

/** Speaks raw bytes to the server over a real socket; collects replies by msg_id and ignores the server's own commands. */
class RawClient {
  readonly answers: Answer[] = [];
  readonly serverCommands: number[] = [];
  closed = false;
  closeError: Error | undefined;

  constructor(readonly socket: MessageSocket) {
    socket.on('message', (bytes, fds) => {
      const header = decodeHeader(bytes);
      if ((header.flags & HEADER_FLAGS.bits.TYPE) !== REPLY) {
        this.serverCommands.push(header.command);
        return;
      }
      this.answers.push({
        msgId: header.msgId,
        command: header.command,
        flags: header.flags,
        error: header.error,
        size: header.messageSize,
        fds: fds.count,
      });
    });
    socket.on('close', (error) => {
      this.closed = true;
      this.closeError = error;
    });
  }

  static async connect(served: Served, cleanup: Cleanup, negotiate = true): Promise<RawClient> {
    const client = new RawClient(MessageSocket.connect(served.path));
    cleanup.add(() => client.socket.close());
    if (negotiate) {
      const answer = await client.exchange(
        encodeCommand(0xfff0, { command: 'VERSION', ...versionBody(0, PROTOCOL_VERSION.minor, { maxMsgFds: 8 }) }),
      );
      assert.equal(answer.flags, REPLY);
    }
    return client;
  }

  send(bytes: Uint8Array, fds: FileDescriptor[] = []): void {
    this.socket.send(bytes, fds);
  }

  /** Sends one command and waits for the answer carrying its msg_id. */
  async exchange(bytes: Uint8Array, fds: FileDescriptor[] = []): Promise<Answer> {
    const msgId = decodeHeader(bytes).msgId;
    const before = this.answers.length;
    this.send(bytes, fds);
    await waitFor(() => this.closed || this.answers.slice(before).some((answer) => answer.msgId === msgId), `the answer to msg_id ${msgId}`);
    const answer = this.answers.slice(before).find((candidate) => candidate.msgId === msgId);
    assert.ok(answer, `the server closed the connection instead of answering (${this.closeError?.message ?? 'clean close'})`);
    return answer;
  }

  /** DEVICE_GET_INFO with a fresh id: the server still serves. */
  async stillServing(msgId = 0xeeee): Promise<void> {
    const answer = await this.exchange(encodeCommand(msgId, { command: 'DEVICE_GET_INFO', argsz: 16 }));
    assert.deepEqual([answer.flags, answer.size], [REPLY, HEADER_SIZE + DEVICE_INFO_LAYOUT.size]);
  }
}

function command(msgId: number, body: VfioUserCommand, options: { noReply?: boolean } = {}): Uint8Array {
  return encodeCommand(msgId, body, options);
}

async function expectErrno(client: RawClient, bytes: Uint8Array, errno: number, fds: FileDescriptor[] = []): Promise<void> {
  const header = decodeHeader(bytes);
  const answer = await client.exchange(bytes, fds);
  assert.deepEqual(
    { command: answer.command, flags: answer.flags, error: answer.error, size: answer.size, fds: answer.fds },
    { command: header.command, flags: ERROR_REPLY, error: errno, size: HEADER_SIZE, fds: 0 },
  );
}

describe('vfio-user server: bad input', () => {
  const cleanup = cleanupAfterEachTest();

  it('answers commands before VERSION, and a second VERSION, with EINVAL', async () => {
    const served = serveEngine(cleanup);
    const client = await RawClient.connect(served, cleanup, false);
    await expectErrno(client, command(1, { command: 'DEVICE_GET_INFO', argsz: 16 }), ERRNO.EINVAL);
    await client.exchange(command(2, { command: 'VERSION', ...versionBody(0, 2, {}) }));
    await expectErrno(client, command(3, { command: 'VERSION', ...versionBody(0, 2, {}) }), ERRNO.EINVAL);
    await expectErrno(client, command(4, { command: 'VERSION', ...versionBody(1, 0, {}) }), ERRNO.EINVAL);
    await client.stillServing();
  });

  it('answers unknown commands, wrong payload sizes, bad argsz and unknown flags with EINVAL, echoing msg_id and command', async () => {
    const served = serveEngine(cleanup);
    const client = await RawClient.connect(served, cleanup);
    await expectErrno(client, rawMessage({ command: 0x7777, msgId: 10, payload: new Uint8Array(8) }), ERRNO.EINVAL);
    await expectErrno(client, rawMessage({ command: 14, msgId: 11 }), ERRNO.EINVAL);
    const map = command(12, { command: 'DMA_MAP', argsz: 32, flags: 3, offset: 0n, address: 0n, size: 0x1000n });
    await expectErrno(
      client,
      rawMessage({ command: COMMANDS.values.DMA_MAP, msgId: 12, payload: map.subarray(HEADER_SIZE, HEADER_SIZE + 24) }),
      ERRNO.EINVAL,
    );
    await expectErrno(client, patchPayload(map, DMA_MAP_LAYOUT, 'argsz', 8), ERRNO.EINVAL);
    await expectErrno(client, patchPayload(map, DMA_MAP_LAYOUT, 'flags', 0x80), ERRNO.EINVAL);
    await expectErrno(client, rawMessage({ command: COMMANDS.values.DEVICE_GET_INFO, msgId: 13, payload: new Uint8Array(8) }), ERRNO.EINVAL);
    await expectErrno(client, rawMessage({ command: COMMANDS.values.DEVICE_RESET, msgId: 14, payload: new Uint8Array(4) }), ERRNO.EINVAL);
    const write = command(15, { command: 'REGION_WRITE', offset: 0n, region: BAR0, data: new Uint8Array(4) });
    await expectErrno(client, patchPayload(write, REGION_ACCESS_LAYOUT, 'count', 8), ERRNO.EINVAL);
    await expectErrno(client, patchHeader(command(16, { command: 'DEVICE_GET_INFO', argsz: 16 }), 'flags', 0x100), ERRNO.EINVAL);
    // A transfer above our max_data_xfer_size (1 MiB) is refused, however well-formed.
    await expectErrno(client, command(18, { command: 'REGION_READ', offset: 0n, region: BAR0, count: 2 << 20 }), ERRNO.EINVAL);
    // DMA_READ/DMA_WRITE go from server to client; a client sending them gets EINVAL.
    await expectErrno(client, command(17, { command: 'DMA_READ', address: 0n, count: 4n }), ERRNO.EINVAL);
    await client.stillServing();
  });

  it('answers region accesses out of range, overlapping maps, unknown unmaps and SET_IRQS outside an index with their errnos', async () => {
    const served = serveEngine(cleanup);
    const client = await RawClient.connect(served, cleanup);
    await expectErrno(client, command(20, { command: 'REGION_READ', offset: (1n << 20n) - 2n, region: BAR0, count: 4 }), ERRNO.EINVAL);
    await expectErrno(client, command(21, { command: 'REGION_READ', offset: (1n << 64n) - 1n, region: CONFIG, count: 4 }), ERRNO.EINVAL);
    await expectErrno(client, command(22, { command: 'REGION_WRITE', offset: 0n, region: 9, data: new Uint8Array(1) }), ERRNO.EINVAL);
    await expectErrno(client, command(23, { command: 'REGION_READ', offset: 0n, region: 2, count: 1 }), ERRNO.EINVAL);
    await client.exchange(command(24, { command: 'DMA_MAP', argsz: 32, flags: 3, offset: 0n, address: 0x1000n, size: 0x2000n }));
    await expectErrno(client, command(25, { command: 'DMA_MAP', argsz: 32, flags: 3, offset: 0n, address: 0x2000n, size: 0x1000n }), ERRNO.EEXIST);
    await expectErrno(client, command(26, { command: 'DMA_UNMAP', argsz: 24, flags: 0, address: 0x1000n, size: 0x1000n }), ERRNO.ENOENT);
    await expectErrno(client, command(27, { command: 'DMA_UNMAP', argsz: 24, flags: 0, address: 0x9000n, size: 0x1000n }), ERRNO.ENOENT);
    const { DATA_NONE, ACTION_TRIGGER } = SET_IRQS_FLAGS.bits;
    const irqs = (index: number, start: number, count: number) =>
      command(28, { command: 'DEVICE_SET_IRQS', argsz: 20, flags: DATA_NONE | ACTION_TRIGGER, index, start, count, data: new Uint8Array(0) });
    await expectErrno(client, irqs(0, 1, 1), ERRNO.EINVAL);
    await expectErrno(client, irqs(2, 0, 1), ERRNO.EINVAL);
    await expectErrno(client, irqs(7, 0, 1), ERRNO.EINVAL);
    await expectErrno(client, irqs(0, 0xffffffff, 2), ERRNO.EINVAL);
    await client.stillServing();
  });

  it('closes fds that arrive on messages that take none, and refuses more fds than max_msg_fds with EINVAL', async () => {
    const served = serveEngine(cleanup);
    const client = await RawClient.connect(served, cleanup);
    const efd = EventFd.create();
    cleanup.add(() => efd.close());
    const connected = openFdCount();
    const withFd = await client.exchange(command(30, { command: 'DEVICE_GET_INFO', argsz: 16 }), [efd.fd]);
    assert.equal(withFd.flags, REPLY);
    await expectErrno(
      client,
      command(31, { command: 'DMA_UNMAP', argsz: 24, flags: 2, address: 0n, size: 0n }).slice(),
      ERRNO.EINVAL,
      Array(9).fill(efd.fd),
    );
    await waitFor(() => openFdCount() === connected, 'the server to close every fd it was sent');
    await client.stillServing();
  });

  it('drops replies to ids it never used, and gives no answer to a failing NO_REPLY command', async () => {
    const served = serveEngine(cleanup);
    const client = await RawClient.connect(served, cleanup);
    client.send(encodeReply(0x4242, { command: 'DMA_WRITE', transfer: { address: 0n, count: 4n } }));
    client.send(command(40, { command: 'REGION_READ', offset: 0n, region: 99, count: 4 }, { noReply: true }));
    await client.stillServing(41);
    assert.equal(client.answers.filter((answer) => answer.msgId === 40 || answer.msgId === 0x4242).length, 0);
  });

  it('closes the connection cleanly when framing breaks (msg_size below 16 or above the limit), then serves the next client', async () => {
    const served = serveEngine(cleanup);
    const disconnects: (Error | undefined)[] = [];
    served.server.on('clientDisconnected', (_client, error) => disconnects.push(error));
    for (const messageSize of [8, 64 << 20]) {
      // A byte stream (node:net), since MessageSocket itself refuses to send a header that lies about its size.
      const raw = net.connect(served.path);
      await once(raw, 'connect');
      const header = Buffer.alloc(HEADER_SIZE);
      header.writeUInt16LE(COMMANDS.values.DEVICE_GET_INFO, 2);
      header.writeUInt32LE(messageSize, 4);
      raw.write(header);
      raw.resume();
      await once(raw, 'close');
      await serverIdle(served);
    }
    assert.equal(disconnects.length, 2);
    assert.ok(
      disconnects.every((error) => error !== undefined),
      'each close says why',
    );
    const next = await RawClient.connect(served, cleanup);
    await next.stillServing();
  });

  it('survives fuzzing: random and mutated capture messages, then still answers, without closing or leaking', async function () {
    this.timeout(Math.max(20000, FUZZ_RUNS * 500));
    const served = serveEngine(cleanup);
    const bugs: string[] = [];
    served.server.on('warning', (_client, message) => {
      if (/failed inside the device/.test(message)) bugs.push(message);
    });
    const client = await RawClient.connect(served, cleanup);
    const recorded = captureCommands();
    const efd = EventFd.create();
    cleanup.add(() => efd.close());
    const randomMessage = fc
      .record({
        command: fc.oneof(fc.integer({ min: 0, max: 20 }), fc.constant(0x7777), fc.integer({ min: 0, max: 0xffff })),
        flags: fc.oneof(fc.constantFrom(0, HEADER_FLAGS.bits.NO_REPLY, REPLY, ERROR_REPLY), fc.integer({ min: 0, max: 0xffffffff })),
        error: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffffffff })),
        // Sentinels use 0xf000 and up, so no fuzz message can be mistaken for one.
        msgId: fc.integer({ min: 0, max: 0xefff }),
        payload: fc.uint8Array({ maxLength: 80 }),
      })
      .map((message) => rawMessage(message));
    const mutated =
      recorded.length === 0
        ? randomMessage
        : fc
            .record({
              base: fc.constantFrom(...recorded),
              edits: fc.array(fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 6 }),
              cut: fc.option(fc.nat(), { nil: undefined }),
              msgId: fc.integer({ min: 0, max: 0xefff }),
            })
            .map(({ base, edits, cut, msgId }) => {
              let payload = base.subarray(HEADER_SIZE).slice();
              if (cut !== undefined) payload = payload.subarray(0, cut % (payload.length + 1));
              for (const edit of edits) if (payload.length > 0) payload[edit.at % payload.length] = edit.value;
              const header = decodeHeader(base);
              return rawMessage({ command: header.command, flags: header.flags, msgId, payload });
            });
    const message = fc.record({ bytes: fc.oneof(randomMessage, mutated), withFd: fc.boolean() });
    let sentinel = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 8 }), async (batch) => {
        for (const { bytes, withFd } of batch) client.send(bytes, withFd ? [efd.fd] : []);
        await client.stillServing(0xf000 + (sentinel++ % 0x0fff));
        assert.equal(client.closed, false, 'well-framed messages never close the connection');
        assert.deepEqual(bugs, [], 'every failure is a typed errno, never an unexpected exception (EIO)');
      }),
      { numRuns: FUZZ_RUNS },
    );
    client.socket.close();
    await serverIdle(served);
  });
});

/** The client commands of every capture (not VERSION), as seeds for mutation. */
function captureCommands(): Uint8Array[] {
  if (!fs.existsSync(CAPTURES)) return [];
  const out: Uint8Array[] = [];
  for (const file of fs.readdirSync(CAPTURES).filter((name) => name.endsWith('.jsonl'))) {
    for (const line of fs.readFileSync(path.join(CAPTURES, file), 'utf8').split('\n')) {
      if (line.trim() === '') continue;
      const record = JSON.parse(line) as { dir: string; flags: number; cmd: number; hex: string };
      if (record.dir === 'c2s' && (record.flags & 0xf) === 0 && record.cmd !== COMMANDS.values.VERSION)
        out.push(new Uint8Array(Buffer.from(record.hex, 'hex')));
    }
  }
  return out;
}
