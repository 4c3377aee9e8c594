/** vfio-user codec: round trips for every command and reply, property tests, and exact errors on bad input. */

import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  decodeHeader,
  decodeMessage,
  encodeErrorReply,
  encodeMessage,
  peekMessageSize,
  versionBody,
  type VfioUserMessage,
} from '../../lib/vfio-user/codec';
import { ERRNO } from '../../lib/errno';
import { VfioUserProtocolError } from '../../lib/vfio-user/errors';
import type { VfioUserCommand, VfioUserReply } from '../../lib/vfio-user/messages';
import {
  COMMANDS,
  DEVICE_FEATURE_FLAGS,
  DEVICE_FEATURE_LAYOUT,
  DEVICE_INFO_LAYOUT,
  DMA_MAP_LAYOUT,
  DMA_UNMAP_FLAGS,
  DMA_UNMAP_LAYOUT,
  HEADER_FLAGS,
  HEADER_SIZE,
  IRQ_INFO_LAYOUT,
  MESSAGE_TYPES,
  REGION_ACCESS_LAYOUT,
  REGION_INFO_FLAGS,
  REGION_INFO_LAYOUT,
  REGION_WRITE_MULTI_LAYOUT,
  REGION_WRITE_ONE_LAYOUT,
  SET_IRQS_FLAGS,
  SET_IRQS_LAYOUT,
} from '../../lib/vfio-user/protocol';
import { anyCommand, anyMessage, commandBodies, replyBodies } from './arbitraries';
import { expectProtocolError, patchHeader, patchPayload, plain, rawMessage } from './helpers';

const { REPLY } = MESSAGE_TYPES.values;
const { NO_REPLY, ERROR } = HEADER_FLAGS.bits;
const EINVAL = ERRNO.EINVAL;
const bytesOf = (...values: number[]) => new Uint8Array(values);

function roundTrip(message: VfioUserMessage, context = {}): Uint8Array {
  const encoded = encodeMessage(message);
  assert.equal(decodeHeader(encoded).messageSize, encoded.length);
  const decoded = decodeMessage(encoded, context);
  assert.deepStrictEqual(decoded, plain(message));
  assert.deepStrictEqual(encodeMessage(decoded), encoded);
  return encoded;
}

const command = (body: VfioUserCommand, msgId = 7): VfioUserMessage => ({ type: 'command', msgId, noReply: false, body });
const reply = (body: VfioUserReply, msgId = 7): VfioUserMessage => ({ type: 'reply', msgId, body });

/** One hand-written example per command, with its reply. */
const EXAMPLES: [VfioUserCommand, VfioUserReply][] = [
  [
    { command: 'VERSION', ...versionBody(0, 2, { maxMsgFds: 8, maxDataXferSize: 1048576, twinSocket: { supported: true } }) },
    { command: 'VERSION', ...versionBody(0, 2, { maxMsgFds: 8, migration: { pgsize: 4096 }, twinSocket: { supported: true, fdIndex: 0 } }) },
  ],
  [{ command: 'DMA_MAP', argsz: 32, flags: 3, offset: 0x1000n, address: 0xffff_ffff_ffff_f000n, size: 0x1000n }, { command: 'DMA_MAP' }],
  [
    { command: 'DMA_UNMAP', argsz: 24, flags: 0, address: 0x1_0000_0000n, size: 0x2000n },
    { command: 'DMA_UNMAP', unmapped: { argsz: 24, flags: 0, address: 0x1_0000_0000n, size: 0x2000n } },
  ],
  [
    { command: 'DEVICE_GET_INFO', argsz: 16 },
    { command: 'DEVICE_GET_INFO', argsz: 16, flags: 3, numRegions: 9, numIrqs: 5 },
  ],
  [
    { command: 'DEVICE_GET_REGION_INFO', argsz: 80, index: 1 },
    {
      command: 'DEVICE_GET_REGION_INFO',
      argsz: 80,
      flags: 15,
      index: 1,
      size: 0x4000n,
      offset: 0n,
      capabilities: [
        {
          kind: 'sparse-mmap',
          areas: [
            { offset: 0n, size: 0x1000n },
            { offset: 0x2000n, size: 0x1000n },
          ],
        },
      ],
    },
  ],
  [
    { command: 'DEVICE_GET_REGION_IO_FDS', argsz: 56, index: 2 },
    {
      command: 'DEVICE_GET_REGION_IO_FDS',
      argsz: 56,
      index: 2,
      count: 1,
      subRegions: [{ offset: 0x40n, size: 4n, fdIndex: 0, type: 0, flags: 1, datamatchOrUserData: 0x1234n }],
    },
  ],
  [
    { command: 'DEVICE_GET_IRQ_INFO', argsz: 16, index: 2 },
    { command: 'DEVICE_GET_IRQ_INFO', argsz: 16, flags: 9, index: 2, count: 32 },
  ],
  [{ command: 'DEVICE_SET_IRQS', argsz: 24, flags: 0x22, index: 2, start: 0, count: 4, data: bytesOf(1, 0, 1, 1) }, { command: 'DEVICE_SET_IRQS' }],
  [
    { command: 'REGION_READ', offset: 0x10n, region: 7, count: 4 },
    { command: 'REGION_READ', offset: 0x10n, region: 7, data: bytesOf(0xef, 0xbe, 0xad, 0xde) },
  ],
  [
    { command: 'REGION_WRITE', offset: 0n, region: 2, data: bytesOf(0xff) },
    { command: 'REGION_WRITE', offset: 0n, region: 2, count: 1 },
  ],
  [
    { command: 'DMA_READ', address: 0x800n, count: 3n },
    { command: 'DMA_READ', address: 0x800n, data: bytesOf(1, 2, 3) },
  ],
  [
    { command: 'DMA_WRITE', address: 0xc00n, data: bytesOf(0x44, 0x44) },
    { command: 'DMA_WRITE', transfer: { address: 0xc00n, count: 2n } },
  ],
  [{ command: 'DEVICE_RESET' }, { command: 'DEVICE_RESET' }],
  [
    {
      command: 'REGION_WRITE_MULTI',
      writes: [
        { offset: 0n, region: 0, data: bytesOf(1, 2, 3, 4, 5, 6, 7, 8) },
        { offset: 8n, region: 1, data: bytesOf(9) },
      ],
    },
    { command: 'REGION_WRITE_MULTI', count: 2n },
  ],
  [
    { command: 'DEVICE_FEATURE', argsz: 40, feature: 8, get: true, set: false, probe: false, data: new Uint8Array(24) },
    { command: 'DEVICE_FEATURE', argsz: 40, feature: 8, get: true, set: false, probe: false, data: new Uint8Array(32) },
  ],
  [
    { command: 'MIG_DATA_READ', argsz: 1032, size: 1024 },
    { command: 'MIG_DATA_READ', argsz: 16, data: bytesOf(1, 2, 3, 4, 5, 6, 7, 8) },
  ],
  [{ command: 'MIG_DATA_WRITE', argsz: 16, data: bytesOf(8, 7, 6, 5, 4, 3, 2, 1) }, { command: 'MIG_DATA_WRITE' }],
];

describe('vfio-user codec', () => {
  describe('round trips', () => {
    it('has an example for every command', () => {
      assert.deepStrictEqual(EXAMPLES.map(([c]) => c.command).sort(), Object.keys(COMMANDS.values).sort());
    });

    for (const [commandBody, replyBody] of EXAMPLES) {
      it(`${commandBody.command}: command and reply`, () => {
        const sent = roundTrip(command(commandBody));
        assert.equal(decodeHeader(sent).command, COMMANDS.values[commandBody.command]);
        const answered = roundTrip(reply(replyBody), { command: commandBody });
        assert.equal(decodeHeader(answered).flags, REPLY);
      });
    }

    it('carries NO_REPLY on commands', () => {
      const bytes = roundTrip({ type: 'command', msgId: 65535, noReply: true, body: EXAMPLES[9]![0] });
      assert.equal(decodeHeader(bytes).flags, NO_REPLY);
    });

    it('encodes an error reply as the header alone with REPLY|ERROR', () => {
      const bytes = encodeErrorReply(0xf00f, 0x7777, EINVAL);
      assert.equal(bytes.length, HEADER_SIZE);
      assert.deepStrictEqual(decodeHeader(bytes), { msgId: 0xf00f, command: 0x7777, messageSize: HEADER_SIZE, flags: REPLY | ERROR, error: EINVAL });
      assert.deepStrictEqual(decodeMessage(bytes), { type: 'error', msgId: 0xf00f, command: 0x7777, errno: EINVAL });
    });

    it('accepts an error reply with errno 0, as the spec allows', () => {
      assert.deepStrictEqual(decodeMessage(encodeErrorReply(1, 2, 0)), { type: 'error', msgId: 1, command: 2, errno: 0 });
    });
  });

  describe('properties', () => {
    for (const [name, arbitrary] of Object.entries(commandBodies)) {
      it(`${name} command: encode then decode is the identity`, () => {
        fc.assert(
          fc.property(arbitrary, fc.integer({ min: 0, max: 65535 }), (body, msgId) => void roundTrip(command(body as VfioUserCommand, msgId))),
          { numRuns: 150 },
        );
      });
    }
    for (const [name, arbitrary] of Object.entries(replyBodies)) {
      it(`${name} reply: encode then decode is the identity`, () => {
        fc.assert(
          fc.property(arbitrary, (body) => void roundTrip(reply(body as VfioUserReply))),
          { numRuns: 150 },
        );
      });
    }

    it('any message: decode(encode(m)) equals m', () => {
      fc.assert(
        fc.property(anyMessage, (message) => void roundTrip(message)),
        { numRuns: 500 },
      );
    });

    const onlyProtocolErrors = (bytes: Uint8Array, context = {}) => {
      try {
        decodeMessage(bytes, context);
      } catch (error) {
        if (!(error instanceof VfioUserProtocolError)) throw error;
        assert.ok(error.errno > 0);
      }
    };

    it('random bytes only ever throw VfioUserProtocolError', () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 96 }), (bytes) => onlyProtocolErrors(bytes)),
        { numRuns: 2000 },
      );
    });

    it('a valid header over random payload bytes only ever throws VfioUserProtocolError', () => {
      const header = fc.record({
        command: fc.integer({ min: 0, max: 20 }),
        flags: fc.constantFrom(0, REPLY, NO_REPLY, REPLY | ERROR),
        payload: fc.uint8Array({ maxLength: 120 }),
      });
      fc.assert(
        fc.property(header, anyCommand, (message, context) => onlyProtocolErrors(rawMessage(message), { command: context })),
        { numRuns: 3000 },
      );
    });

    it('mutated valid messages only ever throw VfioUserProtocolError', () => {
      const mutation = fc.oneof(
        fc.record({ kind: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
        fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
        fc.record({ kind: fc.constant('append' as const), extra: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
      );
      fc.assert(
        fc.property(anyMessage, fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.option(anyCommand), (message, mutations, context) => {
          let bytes = encodeMessage(message);
          for (const change of mutations) {
            if (change.kind === 'set' && bytes.length > 0) {
              bytes = bytes.slice();
              bytes[change.at % bytes.length] = change.value;
            } else if (change.kind === 'truncate') bytes = bytes.slice(0, change.at % (bytes.length + 1));
            else if (change.kind === 'append') bytes = Uint8Array.from([...bytes, ...change.extra]);
          }
          onlyProtocolErrors(bytes, context === null ? {} : { command: context });
        }),
        { numRuns: 3000 },
      );
    });
  });

  describe('header validation', () => {
    const reset = () => rawMessage({ command: COMMANDS.values.DEVICE_RESET });

    it('rejects a truncated header', () => {
      expectProtocolError(() => decodeMessage(reset().subarray(0, HEADER_SIZE - 1)), 'ERR_VFIO_USER_TRUNCATED', EINVAL);
      expectProtocolError(() => decodeMessage(new Uint8Array(0)), 'ERR_VFIO_USER_TRUNCATED', EINVAL);
    });

    it('rejects msg_size below 16', () => {
      const error = expectProtocolError(() => decodeMessage(patchHeader(reset(), 'messageSize', 15)), 'ERR_VFIO_USER_BAD_SIZE', EINVAL);
      assert.deepStrictEqual(error.header, { msgId: 1, command: COMMANDS.values.DEVICE_RESET, isReply: false });
      expectProtocolError(() => peekMessageSize(patchHeader(reset(), 'messageSize', 0)), 'ERR_VFIO_USER_BAD_SIZE', EINVAL);
    });

    it('rejects msg_size that does not match the bytes', () => {
      expectProtocolError(() => decodeMessage(patchHeader(reset(), 'messageSize', 17)), 'ERR_VFIO_USER_TRUNCATED', EINVAL);
      const longer = rawMessage({ command: COMMANDS.values.DEVICE_RESET, payload: new Uint8Array(4), messageSize: HEADER_SIZE });
      expectProtocolError(() => decodeMessage(longer), 'ERR_VFIO_USER_BAD_SIZE', EINVAL);
    });

    it('frames a stream by msg_size', () => {
      assert.equal(peekMessageSize(reset().subarray(0, 8)), undefined);
      assert.equal(peekMessageSize(encodeMessage(command(EXAMPLES[1]![0]))), HEADER_SIZE + DMA_MAP_LAYOUT.size);
    });

    it('rejects unknown commands with EINVAL, as libvfio-user does, keeping msg_id for the error reply', () => {
      for (const unknown of [0, 14, 19, 0x7777]) {
        const error = expectProtocolError(
          () => decodeMessage(rawMessage({ command: unknown, msgId: 23, payload: new Uint8Array(8) })),
          'ERR_VFIO_USER_UNKNOWN_COMMAND',
          EINVAL,
        );
        assert.deepStrictEqual(error.header, { msgId: 23, command: unknown, isReply: false });
      }
    });

    it('still decodes an error reply to an unknown command', () => {
      const bytes = rawMessage({ command: 0x7777, msgId: 23, flags: REPLY | ERROR, error: EINVAL });
      assert.deepStrictEqual(decodeMessage(bytes), { type: 'error', msgId: 23, command: 0x7777, errno: EINVAL });
    });

    it('rejects unknown header flags, unknown types and meaningless combinations', () => {
      const id = COMMANDS.values.DEVICE_RESET;
      expectProtocolError(() => decodeMessage(rawMessage({ command: id, flags: 0x40 })), 'ERR_VFIO_USER_UNKNOWN_FLAGS', EINVAL);
      expectProtocolError(() => decodeMessage(rawMessage({ command: id, flags: 2 })), 'ERR_VFIO_USER_BAD_HEADER', EINVAL);
      expectProtocolError(() => decodeMessage(rawMessage({ command: id, flags: ERROR })), 'ERR_VFIO_USER_BAD_HEADER', EINVAL);
      expectProtocolError(() => decodeMessage(rawMessage({ command: id, flags: REPLY | NO_REPLY })), 'ERR_VFIO_USER_BAD_HEADER', EINVAL);
    });

    it('rejects a non-zero error field where it is reserved', () => {
      const id = COMMANDS.values.DEVICE_RESET;
      expectProtocolError(() => decodeMessage(rawMessage({ command: id, error: 5 })), 'ERR_VFIO_USER_RESERVED', EINVAL);
      expectProtocolError(() => decodeMessage(rawMessage({ command: id, flags: REPLY, error: 5 })), 'ERR_VFIO_USER_RESERVED', EINVAL);
    });

    it('rejects an error reply that carries a payload', () => {
      const bytes = rawMessage({ command: COMMANDS.values.REGION_READ, flags: REPLY | ERROR, error: EINVAL, payload: new Uint8Array(4) });
      expectProtocolError(() => decodeMessage(bytes), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
    });
  });

  describe('payload validation', () => {
    /** Every command whose payload has one fixed size, with that size. */
    const FIXED_COMMAND_SIZES: [VfioUserCommand, number][] = [
      [EXAMPLES[1]![0], 32],
      [EXAMPLES[2]![0], 24],
      [EXAMPLES[3]![0], 16],
      [EXAMPLES[5]![0], 16],
      [EXAMPLES[6]![0], 16],
      [EXAMPLES[8]![0], 16],
      [EXAMPLES[10]![0], 16],
      [EXAMPLES[12]![0], 0],
      [EXAMPLES[15]![0], 8],
    ];
    for (const [body, size] of FIXED_COMMAND_SIZES) {
      it(`${body.command} command must be exactly ${size} bytes`, () => {
        const good = encodeMessage(command(body));
        assert.equal(good.length, HEADER_SIZE + size);
        const longer = rawMessage({ command: COMMANDS.values[body.command], payload: Uint8Array.from([...good.subarray(HEADER_SIZE), 0]) });
        expectProtocolError(() => decodeMessage(longer), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
        if (size > 0) {
          const shorter = rawMessage({ command: COMMANDS.values[body.command], payload: good.subarray(HEADER_SIZE, good.length - 1) });
          expectProtocolError(() => decodeMessage(shorter), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
        }
      });
    }

    it('rejects payloads too short for their struct or their count', () => {
      const short = (name: keyof typeof COMMANDS.values, size: number, flags = 0) =>
        expectProtocolError(
          () => decodeMessage(rawMessage({ command: COMMANDS.values[name], flags, payload: new Uint8Array(size) })),
          'ERR_VFIO_USER_PAYLOAD_SIZE',
          EINVAL,
        );
      short('VERSION', 3);
      short('DEVICE_SET_IRQS', 19);
      short('REGION_WRITE', 15);
      short('DMA_WRITE', 15);
      short('REGION_WRITE_MULTI', 7);
      short('DEVICE_FEATURE', 7);
      short('MIG_DATA_WRITE', 7);
      short('DEVICE_GET_REGION_INFO', 16);
      short('DEVICE_GET_REGION_INFO', 31, REPLY);
      short('DEVICE_GET_INFO', 12, REPLY);
      short('DMA_MAP', 4, REPLY);
      short('DMA_READ', 11, REPLY);
      const write = encodeMessage(command(EXAMPLES[9]![0]));
      expectProtocolError(() => decodeMessage(patchPayload(write, REGION_ACCESS_LAYOUT, 'count', 2)), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
      const irqs = encodeMessage(command(EXAMPLES[7]![0]));
      expectProtocolError(() => decodeMessage(patchPayload(irqs, SET_IRQS_LAYOUT, 'count', 5)), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
    });

    it('rejects argsz below the struct', () => {
      const map = encodeMessage(command(EXAMPLES[1]![0]));
      expectProtocolError(() => decodeMessage(patchPayload(map, DMA_MAP_LAYOUT, 'argsz', 31)), 'ERR_VFIO_USER_ARGSZ', EINVAL);
      // libvfio-user answers a region-info request with argsz 16 with EINVAL (probe captures).
      const info = encodeMessage(command(EXAMPLES[4]![0]));
      expectProtocolError(() => decodeMessage(patchPayload(info, REGION_INFO_LAYOUT, 'argsz', 16)), 'ERR_VFIO_USER_ARGSZ', EINVAL);
    });

    it('rejects unknown flags in every flag field', () => {
      const cases: [Uint8Array, Parameters<typeof patchPayload>[1], number][] = [
        [encodeMessage(command(EXAMPLES[1]![0])), DMA_MAP_LAYOUT, 4],
        [encodeMessage(command(EXAMPLES[2]![0])), DMA_UNMAP_LAYOUT, 1],
        [encodeMessage(reply(EXAMPLES[3]![1])), DEVICE_INFO_LAYOUT, 4],
        [encodeMessage(reply(EXAMPLES[4]![1])), REGION_INFO_LAYOUT, REGION_INFO_FLAGS.known + 1],
        [encodeMessage(reply(EXAMPLES[6]![1])), IRQ_INFO_LAYOUT, 16],
        [encodeMessage(command(EXAMPLES[7]![0])), SET_IRQS_LAYOUT, SET_IRQS_FLAGS.known + 1],
      ];
      for (const [bytes, layout, flags] of cases) {
        expectProtocolError(() => decodeMessage(patchPayload(bytes, layout, 'flags', flags)), 'ERR_VFIO_USER_UNKNOWN_FLAGS', EINVAL);
      }
      const feature = encodeMessage(command(EXAMPLES[14]![0]));
      const unknownFeatureBit = (DEVICE_FEATURE_FLAGS.known + 1) >>> 0;
      expectProtocolError(
        () => decodeMessage(patchPayload(feature, DEVICE_FEATURE_LAYOUT, 'flags', unknownFeatureBit)),
        'ERR_VFIO_USER_UNKNOWN_FLAGS',
        EINVAL,
      );
    });

    it('rejects non-zero fields that the spec zeroes in GET_*_INFO requests', () => {
      const info = encodeMessage(command(EXAMPLES[3]![0]));
      expectProtocolError(() => decodeMessage(patchPayload(info, DEVICE_INFO_LAYOUT, 'numIrqs', 1)), 'ERR_VFIO_USER_RESERVED', EINVAL);
      const region = encodeMessage(command(EXAMPLES[4]![0]));
      expectProtocolError(() => decodeMessage(patchPayload(region, REGION_INFO_LAYOUT, 'size', 1n)), 'ERR_VFIO_USER_RESERVED', EINVAL);
      const irq = encodeMessage(command(EXAMPLES[6]![0]));
      expectProtocolError(() => decodeMessage(patchPayload(irq, IRQ_INFO_LAYOUT, 'count', 1)), 'ERR_VFIO_USER_RESERVED', EINVAL);
    });

    it('rejects SET_IRQS without exactly one data and one action flag', () => {
      const irqs = encodeMessage(
        command({ command: 'DEVICE_SET_IRQS', argsz: 20, flags: 0x21, index: 0, start: 0, count: 0, data: new Uint8Array(0) }),
      );
      const { DATA_NONE, DATA_EVENTFD, ACTION_TRIGGER, ACTION_MASK } = SET_IRQS_FLAGS.bits;
      for (const flags of [DATA_NONE, ACTION_TRIGGER, DATA_NONE | DATA_EVENTFD | ACTION_TRIGGER, DATA_NONE | ACTION_MASK | ACTION_TRIGGER]) {
        expectProtocolError(() => decodeMessage(patchPayload(irqs, SET_IRQS_LAYOUT, 'flags', flags)), 'ERR_VFIO_USER_BAD_FIELD', EINVAL);
      }
    });

    it('rejects unmap-all with an address or size', () => {
      const all = encodeMessage(command({ command: 'DMA_UNMAP', argsz: 24, flags: DMA_UNMAP_FLAGS.bits.ALL, address: 0n, size: 0n }));
      expectProtocolError(() => decodeMessage(patchPayload(all, DMA_UNMAP_LAYOUT, 'size', 4096n)), 'ERR_VFIO_USER_BAD_FIELD', EINVAL);
    });

    it('rejects a multi-write entry longer than its 8-byte slot', () => {
      const multi = encodeMessage(command(EXAMPLES[13]![0]));
      const bad = patchPayload(multi, REGION_WRITE_ONE_LAYOUT, 'count', 9, REGION_WRITE_MULTI_LAYOUT.size);
      expectProtocolError(() => decodeMessage(bad), 'ERR_VFIO_USER_BAD_FIELD', EINVAL);
    });
  });

  describe('replies checked against their command', () => {
    it('REGION_READ reply must name the same region and carry no more than asked', () => {
      const request = EXAMPLES[8]![0];
      const answer = encodeMessage(reply(EXAMPLES[8]![1]));
      expectProtocolError(
        () => decodeMessage(answer, { command: { ...request, region: 2 } as VfioUserCommand }),
        'ERR_VFIO_USER_REPLY_MISMATCH',
        EINVAL,
      );
      expectProtocolError(
        () => decodeMessage(answer, { command: { ...request, count: 2 } as VfioUserCommand }),
        'ERR_VFIO_USER_REPLY_MISMATCH',
        EINVAL,
      );
      assert.equal(decodeMessage(answer, { command: request }).type, 'reply');
    });

    it('MIG_DATA_READ reply may not carry more than asked', () => {
      const answer = encodeMessage(reply(EXAMPLES[15]![1]));
      expectProtocolError(
        () => decodeMessage(answer, { command: { command: 'MIG_DATA_READ', argsz: 12, size: 4 } }),
        'ERR_VFIO_USER_REPLY_MISMATCH',
        EINVAL,
      );
    });

    it('DMA_READ reply must answer the same address', () => {
      const answer = encodeMessage(reply(EXAMPLES[10]![1]));
      expectProtocolError(
        () => decodeMessage(answer, { command: { command: 'DMA_READ', address: 0n, count: 3n } }),
        'ERR_VFIO_USER_REPLY_MISMATCH',
        EINVAL,
      );
    });
  });
});
