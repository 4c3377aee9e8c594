/** vfio-user codec details: layouts, VERSION JSON, region capabilities, peer leniencies and feature data. */

import assert from 'node:assert/strict';
import { ViommuError } from '../../lib/errors';
import { decodeMessage, encodeMessage, versionBody } from '../../lib/vfio-user/codec';
import {
  decodeDmaLoggingReport,
  decodeDmaLoggingStart,
  decodeMigrationFeature,
  decodeMigrationStateFeature,
  encodeDmaLoggingReport,
  encodeDmaLoggingStart,
  encodeMigrationFeature,
  encodeMigrationStateFeature,
} from '../../lib/vfio-user/device-feature';
import { ERRNO } from '../../lib/errno';
import type { ReplyMessage, VfioUserReply } from '../../lib/vfio-user/messages';
import {
  CAP_HEADER_LAYOUT,
  CAPABILITY_DEFAULTS,
  COMMANDS,
  DMA_ACCESS_LAYOUT,
  DMA_ACCESS_NARROW_LAYOUT,
  MESSAGE_TYPES,
  MIGRATION_FLAGS,
  REGION_INFO_LAYOUT,
  SPARSE_MMAP_LAYOUT,
  SUB_REGION_IO_FD_LAYOUT,
  REGION_IO_FDS_LAYOUT,
} from '../../lib/vfio-user/protocol';
import { parseVersionCapabilities, resolveCapabilities } from '../../lib/vfio-user/version';
import { expectProtocolError, patchField, patchPayload, rawMessage } from './helpers';

const EINVAL = ERRNO.EINVAL;
const { REPLY } = MESSAGE_TYPES.values;
const utf8 = (text: string) => new Uint8Array(Buffer.from(text, 'utf8'));

describe('vfio-user layouts', () => {
  it('names command numbers both ways', () => {
    assert.equal(COMMANDS.nameOf(COMMANDS.values.MIG_DATA_WRITE), 'MIG_DATA_WRITE');
    assert.equal(COMMANDS.nameOf(14), undefined);
  });

  it('decodes every message layout at the offsets the spec gives', () => {
    assert.deepStrictEqual(
      REGION_INFO_LAYOUT.fields.map((field) => [field.spec, field.offset, field.width]),
      [
        ['argsz', 0, 4],
        ['flags', 4, 4],
        ['index', 8, 4],
        ['cap_offset', 12, 4],
        ['size', 16, 8],
        ['offset', 24, 8],
      ],
    );
    assert.equal(SUB_REGION_IO_FD_LAYOUT.size, 40);
  });
});

describe('vfio-user VERSION data', () => {
  it('applies the spec defaults for absent capabilities', () => {
    assert.deepStrictEqual(resolveCapabilities({}), {
      maxMsgFds: 1,
      maxDataXferSize: 1048576,
      maxDmaMaps: 65535,
      pgsizes: 4096n,
      twinSocket: { supported: false },
      writeMultiple: false,
      migration: undefined,
    });
    assert.equal(CAPABILITY_DEFAULTS.maxDmaMaps, 65535);
    assert.equal(resolveCapabilities({ maxMsgFds: 8 }).maxMsgFds, 8);
  });

  it('parses json-c formatting, ignores unknown members, and treats empty data as no capabilities', () => {
    assert.deepStrictEqual(parseVersionCapabilities('{ "capabilities": { "max_msg_fds": 8, "future": [1] }, "other": 1 }'), { maxMsgFds: 8 });
    assert.deepStrictEqual(parseVersionCapabilities(''), {});
    assert.deepStrictEqual(parseVersionCapabilities('{}'), {});
    assert.deepStrictEqual(parseVersionCapabilities('{"capabilities":{"pgsizes":18446744073709547520}}'), { pgsizes: 0xfffffffffffff000n });
    const empty = rawMessage({ command: COMMANDS.values.VERSION, payload: new Uint8Array(4) });
    const decoded = decodeMessage(empty);
    assert.ok(decoded.type === 'command' && decoded.body.command === 'VERSION' && decoded.body.json === '');
  });

  it('rejects malformed VERSION data with EINVAL', () => {
    const version = (text: string, terminate = true) =>
      rawMessage({ command: COMMANDS.values.VERSION, payload: Uint8Array.from([0, 0, 2, 0, ...utf8(text), ...(terminate ? [0] : [])]) });
    const bad = [
      version('{"capabilities":{}}', false),
      version('{"capabilities":{}}\u0000x'),
      version('{"capabilities":'),
      version('[1,2]'),
      version('{"capabilities":[]}'),
      version('{"capabilities":{"max_msg_fds":"8"}}'),
      version('{"capabilities":{"max_msg_fds":0}}'),
      version('{"capabilities":{"max_data_xfer_size":1.5}}'),
      version('{"capabilities":{"twin_socket":{"supported":1}}}'),
      version('{"capabilities":{"twin_socket":{"supported":true,"fd_index":-1}}}'),
      version('{"capabilities":{"write_multiple":"yes"}}'),
      version('{"capabilities":{"migration":{}}}'),
      rawMessage({ command: COMMANDS.values.VERSION, payload: Uint8Array.from([0, 0, 2, 0, 0xff, 0xfe, 0]) }),
    ];
    for (const bytes of bad) expectProtocolError(() => decodeMessage(bytes), 'ERR_VFIO_USER_BAD_VERSION_DATA', EINVAL);
  });

  it('formats capabilities that parse back to themselves', () => {
    const body = versionBody(0, 2, { maxMsgFds: 8, pgsizes: 0x40201000n, writeMultiple: true, migration: { pgsize: 4096, maxBitmapSize: 1 } });
    assert.equal(
      body.json,
      '{"capabilities":{"max_msg_fds":8,"pgsizes":1075843072,"write_multiple":true,"migration":{"pgsize":4096,"max_bitmap_size":1}}}',
    );
    assert.deepStrictEqual(parseVersionCapabilities(body.json), body.capabilities);
  });
});

describe('vfio-user region info capabilities', () => {
  const full: VfioUserReply = {
    command: 'DEVICE_GET_REGION_INFO',
    argsz: 104,
    flags: 15,
    index: 1,
    size: 0x4000n,
    offset: 0n,
    capabilities: [
      { kind: 'sparse-mmap', areas: [{ offset: 0n, size: 0x1000n }] },
      { kind: 'type', type: 3, subtype: 1 },
      { kind: 'unknown', id: 9, version: 2, body: new Uint8Array([1, 2, 3, 4]) },
    ],
  };
  const bytes = encodeMessage({ type: 'reply', msgId: 1, body: full });
  const firstCap = REGION_INFO_LAYOUT.size;

  it('chains capabilities back to back from cap_offset 32', () => {
    const decoded = decodeMessage(bytes) as ReplyMessage;
    assert.deepStrictEqual(decoded.body, full);
  });

  it('rejects a chain that loops or points backwards', () => {
    expectProtocolError(
      () => decodeMessage(patchPayload(bytes, CAP_HEADER_LAYOUT, 'next', firstCap, firstCap)),
      'ERR_VFIO_USER_BAD_CAPABILITY',
      EINVAL,
    );
    expectProtocolError(() => decodeMessage(patchPayload(bytes, REGION_INFO_LAYOUT, 'capOffset', 8)), 'ERR_VFIO_USER_BAD_CAPABILITY', EINVAL);
    expectProtocolError(() => decodeMessage(patchPayload(bytes, CAP_HEADER_LAYOUT, 'next', 4096, firstCap)), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
  });

  it('rejects a sparse-mmap capability with more areas than bytes, or a non-zero reserved field', () => {
    const body = firstCap + CAP_HEADER_LAYOUT.size;
    expectProtocolError(() => decodeMessage(patchPayload(bytes, SPARSE_MMAP_LAYOUT, 'nrAreas', 5, body)), 'ERR_VFIO_USER_BAD_CAPABILITY', EINVAL);
    expectProtocolError(() => decodeMessage(patchPayload(bytes, SPARSE_MMAP_LAYOUT, 'reserved', 1, body)), 'ERR_VFIO_USER_RESERVED', EINVAL);
  });

  it('keeps CAPS and the chain together both ways', () => {
    expectProtocolError(() => decodeMessage(patchPayload(bytes, REGION_INFO_LAYOUT, 'flags', 7)), 'ERR_VFIO_USER_RESERVED', EINVAL);
    assert.throws(() => encodeMessage({ type: 'reply', msgId: 1, body: { ...full, flags: 7 } }), ViommuError);
    assert.throws(() => encodeMessage({ type: 'reply', msgId: 1, body: { ...full, capabilities: [] } }), ViommuError);
  });

  it('rejects a reply whose argsz is below what it sent', () => {
    expectProtocolError(() => decodeMessage(patchPayload(bytes, REGION_INFO_LAYOUT, 'argsz', 80)), 'ERR_VFIO_USER_ARGSZ', EINVAL);
  });

  it('rejects non-zero padding in an IO-fd sub-region', () => {
    const ioFds = encodeMessage({
      type: 'reply',
      msgId: 1,
      body: {
        command: 'DEVICE_GET_REGION_IO_FDS',
        argsz: 56,
        index: 0,
        count: 1,
        subRegions: [{ offset: 0n, size: 8n, fdIndex: 0, type: 1, flags: 0, datamatchOrUserData: 7n }],
      },
    });
    expectProtocolError(
      () => decodeMessage(patchPayload(ioFds, SUB_REGION_IO_FD_LAYOUT, 'padding', 1, REGION_IO_FDS_LAYOUT.size)),
      'ERR_VFIO_USER_RESERVED',
      EINVAL,
    );
  });
});

describe('vfio-user leniencies toward real peers', () => {
  const dmaReadReply = (payload: Uint8Array) => rawMessage({ command: COMMANDS.values.DMA_READ, flags: REPLY, payload });
  /** QEMU's reply: u32 count at 8, data at 12, and 4 zero bytes of struct padding after the data. */
  const qemuPayload = (address: bigint, data: number[]) => {
    const payload = new Uint8Array(DMA_ACCESS_NARROW_LAYOUT.size + data.length + 4);
    DMA_ACCESS_NARROW_LAYOUT.encode({ address, count: data.length }, payload);
    payload.set(data, DMA_ACCESS_NARROW_LAYOUT.size);
    return payload;
  };

  it("reads QEMU's DMA_READ reply layout with data at 12", () => {
    const decoded = decodeMessage(dmaReadReply(qemuPayload(0x1000n, [1, 2, 3, 4, 5])), {
      command: { command: 'DMA_READ', address: 0x1000n, count: 5n },
    });
    assert.ok(decoded.type === 'reply' && decoded.body.command === 'DMA_READ');
    assert.deepStrictEqual(decoded.body.data, new Uint8Array([1, 2, 3, 4, 5]));
  });

  it('reads the ambiguous case (data starting with 4 zero bytes) as the spec layout unless told it is QEMU', () => {
    const bytes = dmaReadReply(qemuPayload(0n, [0, 0, 0, 0, 9, 9, 9, 9]));
    const auto = decodeMessage(bytes) as ReplyMessage;
    const qemu = decodeMessage(bytes, { dmaReadReplyLayout: 'qemu' }) as ReplyMessage;
    assert.ok(auto.body.command === 'DMA_READ' && qemu.body.command === 'DMA_READ');
    assert.deepStrictEqual(auto.body.data, new Uint8Array([9, 9, 9, 9, 0, 0, 0, 0]));
    assert.deepStrictEqual(qemu.body.data, new Uint8Array([0, 0, 0, 0, 9, 9, 9, 9]));
    expectProtocolError(
      () => decodeMessage(dmaReadReply(qemuPayload(0n, [1, 2, 3])), { dmaReadReplyLayout: 'spec' }),
      'ERR_VFIO_USER_PAYLOAD_SIZE',
      EINVAL,
    );
  });

  it('accepts DMA_WRITE replies of 16 bytes (libvfio-user), 12 bytes (the spec table) and 0 bytes (QEMU)', () => {
    const reply = (size: number) => {
      const payload = new Uint8Array(size);
      if (size === DMA_ACCESS_LAYOUT.size) DMA_ACCESS_LAYOUT.encode({ address: 64n, count: 2n }, payload);
      if (size === DMA_ACCESS_NARROW_LAYOUT.size) DMA_ACCESS_NARROW_LAYOUT.encode({ address: 64n, count: 2 }, payload);
      return decodeMessage(rawMessage({ command: COMMANDS.values.DMA_WRITE, flags: REPLY, payload })) as ReplyMessage;
    };
    assert.deepStrictEqual((reply(16).body as { transfer: unknown }).transfer, { address: 64n, count: 2n });
    assert.deepStrictEqual((reply(12).body as { transfer: unknown }).transfer, { address: 64n, count: 2n });
    assert.equal((reply(0).body as { transfer: unknown }).transfer, null);
    expectProtocolError(() => reply(8), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
  });

  it('ignores zero padding after a region-info request and after a MIG_DATA_READ reply', () => {
    const request = rawMessage({
      command: COMMANDS.values.DEVICE_GET_REGION_INFO,
      payload: patchField(new Uint8Array(80), REGION_INFO_LAYOUT, 'argsz', 80, 0),
    });
    assert.deepStrictEqual((decodeMessage(request) as { body: unknown }).body, { command: 'DEVICE_GET_REGION_INFO', argsz: 80, index: 0 });
    const padded = new Uint8Array(8 + 1024);
    padded.set([16, 0, 0, 0, 8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    const decoded = decodeMessage(rawMessage({ command: COMMANDS.values.MIG_DATA_READ, flags: REPLY, payload: padded }), {
      command: { command: 'MIG_DATA_READ', argsz: 1032, size: 1024 },
    }) as ReplyMessage;
    assert.deepStrictEqual(decoded.body, { command: 'MIG_DATA_READ', argsz: 16, data: new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]) });
  });

  it('accepts any argsz in MIG_DATA_WRITE (the spec and libvfio-user disagree on its meaning)', () => {
    const write = encodeMessage({
      type: 'command',
      msgId: 1,
      noReply: false,
      body: { command: 'MIG_DATA_WRITE', argsz: 0, data: new Uint8Array(3) },
    });
    assert.equal(decodeMessage(write).type, 'command');
  });
});

describe('vfio-user DEVICE_FEATURE data', () => {
  it('round-trips the migration, device-state and DMA logging layouts', () => {
    const migration = { flags: BigInt(MIGRATION_FLAGS.bits.STOP_COPY | MIGRATION_FLAGS.bits.PRE_COPY) };
    assert.deepStrictEqual(decodeMigrationFeature(encodeMigrationFeature(migration)), migration);
    const state = { deviceState: 6, dataFd: 0xffffffff };
    assert.deepStrictEqual(decodeMigrationStateFeature(encodeMigrationStateFeature(state)), state);
    const start = { pageSize: 4096n, ranges: [{ iova: 0n, length: 0x10000n }] };
    assert.deepStrictEqual(decodeDmaLoggingStart(encodeDmaLoggingStart(start)), start);
    const report = { iova: 0n, length: 4096n * 64n, pageSize: 4096n, bitmap: new Uint8Array(8).fill(1) };
    assert.deepStrictEqual(decodeDmaLoggingReport(encodeDmaLoggingReport(report)), report);
  });

  it('rejects unknown migration flags and short feature data', () => {
    expectProtocolError(() => decodeMigrationFeature(encodeMigrationFeature({ flags: 8n })), 'ERR_VFIO_USER_UNKNOWN_FLAGS', EINVAL);
    expectProtocolError(() => decodeMigrationStateFeature(new Uint8Array(4)), 'ERR_VFIO_USER_PAYLOAD_SIZE', EINVAL);
    expectProtocolError(
      () => decodeDmaLoggingStart(encodeDmaLoggingStart({ pageSize: 1n, ranges: [] }).subarray(0, 8)),
      'ERR_VFIO_USER_PAYLOAD_SIZE',
      EINVAL,
    );
  });
});
