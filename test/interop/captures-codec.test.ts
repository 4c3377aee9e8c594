/** Golden vfio-user captures of real libvfio-user sessions, replayed through our codec byte for byte. */

import assert from 'node:assert/strict';
import { ERRNO } from '../../lib/errno';
import { decodeMessage, encodeMessage, type VfioUserMessage } from '../../lib/vfio-user/codec';
import { decodeDmaLoggingReport, decodeMigrationStateFeature } from '../../lib/vfio-user/device-feature';
import { VfioUserProtocolError } from '../../lib/vfio-user/errors';
import type { ReplyOf, VfioUserCommand } from '../../lib/vfio-user/messages';
import { DEVICE_FEATURES, HEADER_FLAGS, HEADER_SIZE, MESSAGE_TYPES, MIGRATION_STATES, REGION_INDEXES } from '../../lib/vfio-user/protocol';
import { captureFiles, CAPTURES, readCapture, type CaptureRecord } from '../captures';

interface Replayed {
  record: CaptureRecord;
  bytes: Uint8Array;
  /** The decoded message, or the error our decoder raised. */
  decoded: VfioUserMessage | VfioUserProtocolError;
  /** For replies: the decoded command they answer. */
  request?: VfioUserCommand;
  /** Why re-encoding cannot give the recorded bytes back, when it cannot. */
  nonCanonical?: string;
}

const isReply = (record: CaptureRecord) => (record.flags & HEADER_FLAGS.bits.TYPE) === MESSAGE_TYPES.values.REPLY;

/**
 * Peers pad in two places where the padding carries no meaning, so our canonical encoding is shorter:
 * libvfio-user's sample client sends `argsz` bytes of region-info request (zeros after the 32-byte struct), and
 * libvfio-user's server sizes the last MIG_DATA_READ reply by the request's argsz (zeros after `size` bytes).
 */
function nonCanonicalReason(bytes: Uint8Array, message: VfioUserMessage): string | undefined {
  const payloadSize = bytes.length - HEADER_SIZE;
  if (message.type === 'command' && message.body.command === 'DEVICE_GET_REGION_INFO' && payloadSize > 32) {
    return 'region-info request padded to argsz';
  }
  if (message.type === 'reply' && message.body.command === 'MIG_DATA_READ' && payloadSize > 8 + message.body.data.length) {
    return 'MIG_DATA_READ reply padded past size';
  }
  return undefined;
}

/** Decodes a capture in order, pairing each reply with its command by channel, msg_id and command number. */
function replay(records: CaptureRecord[]): Replayed[] {
  const pending = new Map<string, Replayed[]>();
  const out: Replayed[] = [];
  for (const record of records) {
    const bytes = new Uint8Array(Buffer.from(record.hex, 'hex'));
    const key = `${record.chan}/${record.msg_id}/${record.cmd}`;
    let request: VfioUserCommand | undefined;
    if (isReply(record)) {
      const answered = pending.get(key)?.shift();
      assert.ok(answered, `seq ${record.seq}: reply without a command`);
      if (!(answered.decoded instanceof VfioUserProtocolError) && answered.decoded.type === 'command') request = answered.decoded.body;
    }
    let decoded: VfioUserMessage | VfioUserProtocolError;
    try {
      decoded = decodeMessage(bytes, request === undefined ? {} : { command: request });
    } catch (error) {
      if (!(error instanceof VfioUserProtocolError)) throw error;
      decoded = error;
    }
    const replayed: Replayed = { record, bytes, decoded, ...(request === undefined ? {} : { request }) };
    if (!(decoded instanceof VfioUserProtocolError)) {
      const reason = nonCanonicalReason(bytes, decoded);
      if (reason !== undefined) replayed.nonCanonical = reason;
    }
    if (!isReply(record)) pending.set(key, [...(pending.get(key) ?? []), replayed]);
    out.push(replayed);
  }
  const unanswered = [...pending.values()].flat();
  assert.equal(unanswered.length, 0, `commands without replies: ${unanswered.map((r) => r.record.seq).join(', ')}`);
  return out;
}

const files = captureFiles();

function messages(file: string): Replayed[] {
  return replay(readCapture(file));
}

function decodedOnly(replayed: Replayed[]): { record: CaptureRecord; message: VfioUserMessage }[] {
  return replayed.flatMap((r) => (r.decoded instanceof VfioUserProtocolError ? [] : [{ record: r.record, message: r.decoded }]));
}

function repliesTo<N extends VfioUserCommand['command']>(file: string, name: N): { record: CaptureRecord; body: ReplyOf<N> }[] {
  return decodedOnly(messages(file)).flatMap(({ record, message }) =>
    message.type === 'reply' && message.body.command === name ? [{ record, body: message.body as ReplyOf<N> }] : [],
  );
}

function commandsOf<N extends VfioUserCommand['command']>(file: string, name: N) {
  return decodedOnly(messages(file)).flatMap(({ record, message }) =>
    message.type === 'command' && message.body.command === name ? [{ record, body: message.body as Extract<VfioUserCommand, { command: N }> }] : [],
  );
}

describe('interop: golden captures through the codec', function () {
  it('finds the capture files', () => {
    assert.ok(files.length >= 8, `expected the 8 capture files in ${CAPTURES}, found ${files.length}`);
  });

  for (const file of files) {
    describe(file, () => {
      const replayed = messages(file);

      it('decodes every message whose command the peer accepted; header fields match the record', () => {
        for (const { record, bytes, decoded } of replayed) {
          assert.equal(bytes.length, record.size, `seq ${record.seq}: hex length`);
          if (decoded instanceof VfioUserProtocolError) continue; // checked against the peer's answer below
          const context = `seq ${record.seq} ${record.cmd_name}`;
          assert.equal(decoded.msgId, record.msg_id, context);
          if (decoded.type === 'error') {
            assert.equal(decoded.command, record.cmd, context);
            assert.equal(decoded.errno, record.error, context);
            assert.equal(record.flags, MESSAGE_TYPES.values.REPLY | HEADER_FLAGS.bits.ERROR, context);
          } else {
            assert.equal(decoded.type, isReply(record) ? 'reply' : 'command', context);
            assert.equal(decoded.body.command, record.cmd_name.replace(/^VFIO_USER_/, ''), context);
            assert.equal(record.error, 0, context);
          }
        }
      });

      it('rejects exactly the commands that libvfio-user rejected, with the same errno', () => {
        const bySeq = new Map(replayed.map((r) => [r.record.seq, r]));
        const pendingCommands = new Map<string, Replayed[]>();
        for (const r of replayed) {
          const key = `${r.record.chan}/${r.record.msg_id}/${r.record.cmd}`;
          if (!isReply(r.record)) {
            pendingCommands.set(key, [...(pendingCommands.get(key) ?? []), r]);
            continue;
          }
          const command = pendingCommands.get(key)!.shift()!;
          assert.ok(!(r.decoded instanceof VfioUserProtocolError), `seq ${r.record.seq}: replies must decode`);
          if (command.decoded instanceof VfioUserProtocolError) {
            assert.equal(r.decoded.type, 'error', `seq ${command.record.seq}: we reject a command the peer accepted: ${command.decoded.message}`);
            assert.equal(command.decoded.errno, r.record.error, `seq ${command.record.seq}: errno`);
            assert.equal(command.decoded.header?.msgId, command.record.msg_id);
          }
        }
        assert.ok(bySeq.size === replayed.length);
      });

      it('re-encodes every decoded message to exactly the recorded bytes, except documented padding', () => {
        for (const { record, bytes, decoded, nonCanonical } of replayed) {
          if (decoded instanceof VfioUserProtocolError) continue;
          const encoded = encodeMessage(decoded);
          if (nonCanonical === undefined) {
            assert.deepStrictEqual(Buffer.from(encoded).toString('hex'), record.hex, `seq ${record.seq} ${record.cmd_name}`);
            continue;
          }
          // Same meaning: the canonical bytes are the recorded ones minus zero padding, with msg_size adjusted.
          const recordedPayload = bytes.subarray(HEADER_SIZE);
          const canonicalPayload = encoded.subarray(HEADER_SIZE);
          assert.deepStrictEqual(recordedPayload.subarray(0, canonicalPayload.length), canonicalPayload, `seq ${record.seq}: ${nonCanonical}`);
          assert.ok(
            recordedPayload.subarray(canonicalPayload.length).every((byte) => byte === 0),
            `seq ${record.seq}: padding is zero`,
          );
          assert.deepStrictEqual(decodeMessage(encoded), decoded, `seq ${record.seq}: canonical form decodes the same`);
        }
      });
    });
  }

  describe('facts from the captures README', () => {
    /** `it` for a test that reads `file` (readCapture fails the test, saying where it looked, when the file is missing). */
    const fromCapture = (file: string) => (title: string, test: () => void | PromiseLike<unknown>) => it(`${file}: ${title}`, () => test());

    fromCapture('client-server.src.jsonl')('VERSION capabilities of the sample client and server', () => {
      const [clientVersion] = commandsOf('client-server.src.jsonl', 'VERSION');
      assert.deepStrictEqual(clientVersion!.body.capabilities, { maxMsgFds: 32, maxDataXferSize: 1024 });
      assert.equal(clientVersion!.body.json, '{"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}}');
      const [serverVersion] = repliesTo('client-server.src.jsonl', 'VERSION');
      assert.deepStrictEqual(
        { major: serverVersion!.body.major, minor: serverVersion!.body.minor, capabilities: serverVersion!.body.capabilities },
        { major: 0, minor: 2, capabilities: { maxMsgFds: 8, maxDataXferSize: 1048576, migration: { pgsize: 4096 } } },
      );
    });

    fromCapture('probe-server.jsonl')('VERSION with a twin socket at fd_index 0', () => {
      const [probe] = commandsOf('probe-server.jsonl', 'VERSION');
      assert.deepStrictEqual(probe!.body.capabilities, {
        maxMsgFds: 8,
        maxDataXferSize: 1048576,
        pgsizes: 4096n,
        twinSocket: { supported: true },
      });
      const [server] = repliesTo('probe-server.jsonl', 'VERSION');
      assert.deepStrictEqual(server!.body.capabilities.twinSocket, { supported: true, fdIndex: 0 });
      assert.equal(server!.record.nfds, 1);
    });

    fromCapture('client-server.src.jsonl')('the sparse-mmap capability of BAR1, and its truncated form', () => {
      const bar1 = repliesTo('client-server.src.jsonl', 'DEVICE_GET_REGION_INFO').filter((r) => r.body.index === REGION_INDEXES.values.BAR1);
      assert.equal(bar1.length, 2);
      const [truncated, full] = bar1;
      assert.deepStrictEqual(
        { argsz: truncated!.body.argsz, flags: truncated!.body.flags, capabilities: truncated!.body.capabilities, nfds: truncated!.record.nfds },
        { argsz: 80, flags: 0x7, capabilities: [], nfds: 0 },
      );
      assert.deepStrictEqual(
        { argsz: full!.body.argsz, flags: full!.body.flags, size: full!.body.size, nfds: full!.record.nfds },
        { argsz: 80, flags: 0xf, size: 0x4000n, nfds: 1 },
      );
      assert.deepStrictEqual(full!.body.capabilities, [
        {
          kind: 'sparse-mmap',
          areas: [
            { offset: 0x0n, size: 0x1000n },
            { offset: 0x2000n, size: 0x1000n },
          ],
        },
      ]);
    });

    fromCapture('client-server.src.jsonl')('device info, the EINVAL for region 0xdeadbeef, and 16 R|W DMA maps', () => {
      const [info] = repliesTo('client-server.src.jsonl', 'DEVICE_GET_INFO');
      assert.deepStrictEqual(info!.body, { command: 'DEVICE_GET_INFO', argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 });
      const replayed = decodedOnly(messages('client-server.src.jsonl'));
      const error = replayed.find(({ message }) => message.type === 'error');
      assert.deepStrictEqual(error!.message, { type: 'error', msgId: 0xf00f, command: 9, errno: ERRNO.EINVAL });
      const maps = commandsOf('client-server.src.jsonl', 'DMA_MAP');
      assert.equal(maps.length, 16);
      maps.forEach(({ body, record }, i) => {
        assert.deepStrictEqual(body, {
          command: 'DMA_MAP',
          argsz: 32,
          flags: 3,
          offset: BigInt(i * 0x1000),
          address: BigInt(i * 0x1000),
          size: 0x1000n,
        });
        assert.equal(record.nfds, 1);
      });
    });

    fromCapture('client-server.src.jsonl')('DEVICE_FEATURE data: migration states and a dirty-page report bitmap', () => {
      const states = commandsOf('client-server.src.jsonl', 'DEVICE_FEATURE')
        .filter(({ body }) => body.feature === DEVICE_FEATURES.values.MIG_DEVICE_STATE)
        .map(({ body }) => decodeMigrationStateFeature(body.data));
      const { PRE_COPY, STOP_COPY, STOP } = MIGRATION_STATES.values;
      assert.deepStrictEqual(
        states,
        [PRE_COPY, STOP_COPY, STOP].map((deviceState) => ({ deviceState, dataFd: 0xffffffff })),
      );
      const reports = repliesTo('client-server.src.jsonl', 'DEVICE_FEATURE').filter(
        ({ body }) => body.feature === DEVICE_FEATURES.values.DMA_LOGGING_REPORT,
      );
      assert.equal(reports.length, 16);
      for (const { body } of reports) {
        assert.equal(body.get, true);
        const report = decodeDmaLoggingReport(body.data);
        assert.equal(report.pageSize, 4096n);
        assert.equal(report.bitmap.length, 8);
      }
    });

    fromCapture('client-server.src.jsonl')('the last MIG_DATA_READ reply: 8 data bytes in a zero-padded 1048-byte message', () => {
      const reads = repliesTo('client-server.src.jsonl', 'MIG_DATA_READ');
      assert.equal(reads.length, 33);
      const last = reads[reads.length - 1]!;
      assert.equal(last.record.size, 1048);
      assert.equal(last.body.argsz, 16);
      assert.equal(last.body.data.length, 8);
      assert.ok(reads.slice(0, -1).every(({ body }) => body.argsz === 1032 && body.data.length === 1024));
    });

    fromCapture('client-server.dst.jsonl')('DMA_UNMAP flag 2 (unmap all) with address and size 0, echoed', () => {
      const [unmap] = commandsOf('client-server.dst.jsonl', 'DMA_UNMAP');
      assert.deepStrictEqual(unmap!.body, { command: 'DMA_UNMAP', argsz: 24, flags: 2, address: 0n, size: 0n });
      const [echo] = repliesTo('client-server.dst.jsonl', 'DMA_UNMAP');
      assert.deepStrictEqual(echo!.body.unmapped, { argsz: 24, flags: 2, address: 0n, size: 0n });
      const writes = commandsOf('client-server.dst.jsonl', 'MIG_DATA_WRITE');
      assert.equal(writes.length, 17);
      assert.deepStrictEqual(
        { argsz: writes[16]!.body.argsz, size: writes[16]!.body.data.length, msgSize: writes[16]!.record.size },
        { argsz: 16, size: 8, msgSize: 32 },
      );
    });

    fromCapture('client-server.src.jsonl')('only the two documented paddings are non-canonical', () => {
      for (const file of files) {
        const reasons = messages(file).flatMap((r) => (r.nonCanonical === undefined ? [] : [r.nonCanonical]));
        const expected = file.endsWith('client-server.src.jsonl')
          ? ['region-info request padded to argsz', 'MIG_DATA_READ reply padded past size']
          : [];
        assert.deepStrictEqual(reasons, expected, file);
      }
    });

    fromCapture('probe-null.jsonl')('the null sample answers DMA_UNMAP with no payload', () => {
      const [echo] = repliesTo('probe-null.jsonl', 'DMA_UNMAP');
      assert.equal(echo!.body.unmapped, null);
    });

    fromCapture('probe-gpio.jsonl')('config space of the GPIO sample starts with vendor 0x494f, device 0x0dc8', () => {
      const config = repliesTo('probe-gpio.jsonl', 'REGION_READ').find(({ body }) => body.region === REGION_INDEXES.values.CONFIG);
      const view = new DataView(config!.body.data.buffer, config!.body.data.byteOffset);
      assert.equal(config!.body.data.length, 64);
      assert.deepStrictEqual([view.getUint16(0, true), view.getUint16(2, true)], [0x494f, 0x0dc8]);
    });

    fromCapture('probetwin-server.jsonl')('server DMA on the twin channel: 4 x 1024-byte writes, 2 x 2048-byte reads', () => {
      const writes = commandsOf('probetwin-server.jsonl', 'DMA_WRITE');
      assert.deepStrictEqual(
        writes.map(({ record }) => record.chan),
        ['twin', 'twin', 'twin', 'twin'],
      );
      writes.forEach(({ body, record }, i) => {
        assert.equal(record.msg_id, i + 1);
        assert.equal(body.address, BigInt(i * 0x400));
        assert.ok(body.data.length === 1024 && body.data.every((byte) => byte === 0x41 + i));
      });
      const reads = repliesTo('probetwin-server.jsonl', 'DMA_READ');
      assert.deepStrictEqual(
        reads.map(({ body }) => [body.address, body.data.length]),
        [
          [0n, 2048],
          [0x800n, 2048],
        ],
      );
      const written = Buffer.concat(writes.map(({ body }) => body.data));
      assert.deepStrictEqual(Buffer.concat(reads.map(({ body }) => body.data)), written);
    });
  });
});
