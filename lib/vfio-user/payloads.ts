/** Payload codecs for every vfio-user command and reply, one entry per command name, validated before decoding. */

import { invalid } from './errors';
import type {
  CommandBodies,
  DecodeContext,
  DmaAccessBody,
  DmaDataBody,
  DmaUnmapBody,
  EmptyBody,
  IndexedInfoRequestBody,
  RegionWriteOne,
  ReplyBodies,
  SubRegionIoFd,
  VersionBody,
} from './messages';
import { encodeError, PayloadReader, PayloadWriter, requireU32Length } from './payload-io';
import {
  DEVICE_FEATURE_FLAGS,
  DEVICE_FEATURE_LAYOUT,
  DEVICE_INFO_FLAGS,
  DEVICE_INFO_LAYOUT,
  DMA_ACCESS_LAYOUT,
  DMA_ACCESS_NARROW_LAYOUT,
  DMA_MAP_FLAGS,
  DMA_MAP_LAYOUT,
  DMA_UNMAP_FLAGS,
  DMA_UNMAP_LAYOUT,
  IRQ_INFO_FLAGS,
  IRQ_INFO_LAYOUT,
  MIG_DATA_LAYOUT,
  QEMU_DMA_STRUCT_SIZE,
  REGION_ACCESS_LAYOUT,
  REGION_IO_FDS_FLAGS,
  REGION_IO_FDS_LAYOUT,
  REGION_WRITE_MULTI_LAYOUT,
  REGION_WRITE_ONE_LAYOUT,
  SET_IRQS_FLAG_GROUPS,
  SET_IRQS_FLAGS,
  SET_IRQS_LAYOUT,
  SUB_REGION_IO_FD_LAYOUT,
  VERSION_LAYOUT,
  type CommandName,
} from './protocol';
import { decodeRegionInfoReply, decodeRegionInfoRequest, encodeRegionInfoReply, encodeRegionInfoRequest } from './region-info';
import { parseVersionCapabilities } from './version';

export interface PayloadCodec<C, R> {
  decodeCommand(payload: PayloadReader): C;
  encodeCommand(body: C): Uint8Array;
  decodeReply(payload: PayloadReader, context: DecodeContext): R;
  encodeReply(body: R): Uint8Array;
}

const EMPTY = new Uint8Array(0);

const emptyPayload = {
  decode(payload: PayloadReader): EmptyBody {
    payload.requireExactly(0, 'a payload-less message');
    return {};
  },
  encode(): Uint8Array {
    return EMPTY;
  },
};

function mismatch(payload: PayloadReader, message: string) {
  return invalid('ERR_VFIO_USER_REPLY_MISMATCH', `${payload.what}: ${message}`);
}

// ---- VERSION ------------------------------------------------------------------------------------------------

const utf8 = new TextDecoder('utf-8', { fatal: true });
const NUL = 0;

/** The JSON is NUL-terminated and optional: no bytes after major/minor means no capabilities. */
function decodeVersion(payload: PayloadReader): VersionBody {
  payload.requireAtLeast(VERSION_LAYOUT.size);
  const { major, minor } = payload.read(VERSION_LAYOUT);
  const data = payload.bytes.subarray(VERSION_LAYOUT.size);
  let json = '';
  if (data.length > 0) {
    const nul = data.indexOf(NUL);
    if (nul !== data.length - 1) {
      throw invalid(
        'ERR_VFIO_USER_BAD_VERSION_DATA',
        nul < 0 ? `${payload.what}: version data lacks its terminating NUL` : `${payload.what}: NUL inside the version data`,
      );
    }
    try {
      json = utf8.decode(data.subarray(0, nul));
    } catch {
      throw invalid('ERR_VFIO_USER_BAD_VERSION_DATA', `${payload.what}: version data is not UTF-8`);
    }
  }
  return { major, minor, json, capabilities: parseVersionCapabilities(json) };
}

function encodeVersion(body: VersionBody): Uint8Array {
  const text = Buffer.from(body.json, 'utf8');
  if (text.includes(NUL)) throw encodeError('VERSION', 'the JSON text must not contain NUL');
  const dataSize = text.length === 0 ? 0 : text.length + 1;
  const writer = new PayloadWriter(VERSION_LAYOUT.size + dataSize);
  writer.write(VERSION_LAYOUT, { major: body.major, minor: body.minor }).put(text, VERSION_LAYOUT.size);
  return writer.bytes;
}

// ---- DMA_MAP / DMA_UNMAP ------------------------------------------------------------------------------------

function decodeDmaUnmap(payload: PayloadReader): DmaUnmapBody {
  payload.requireExactly(DMA_UNMAP_LAYOUT.size);
  const unmap = payload.read(DMA_UNMAP_LAYOUT);
  payload.requireArgszAtLeast(unmap.argsz, DMA_UNMAP_LAYOUT.size);
  payload.requireKnownFlags(unmap.flags, DMA_UNMAP_FLAGS);
  if ((unmap.flags & DMA_UNMAP_FLAGS.bits.ALL) !== 0 && (unmap.address !== 0n || unmap.size !== 0n)) {
    throw invalid('ERR_VFIO_USER_BAD_FIELD', `${payload.what}: unmap-all needs address 0 and size 0`);
  }
  return unmap;
}

const encodeDmaUnmap = (body: DmaUnmapBody) => new PayloadWriter(DMA_UNMAP_LAYOUT.size).write(DMA_UNMAP_LAYOUT, body).bytes;

// ---- GET_INFO requests (the spec zeroes every field but argsz and index) -------------------------------------

function decodeIndexedRequest(payload: PayloadReader, layout: typeof IRQ_INFO_LAYOUT | typeof REGION_IO_FDS_LAYOUT): IndexedInfoRequestBody {
  payload.requireExactly(layout.size);
  const request = payload.read(layout);
  payload.requireArgszAtLeast(request.argsz, layout.size);
  payload.requireZero(request.flags, 'flags');
  payload.requireZero(request.count, 'count');
  return { argsz: request.argsz, index: request.index };
}

const encodeIndexedRequest = (layout: typeof IRQ_INFO_LAYOUT | typeof REGION_IO_FDS_LAYOUT) => (body: IndexedInfoRequestBody) =>
  new PayloadWriter(layout.size).write(layout, { argsz: body.argsz, flags: 0, index: body.index, count: 0 }).bytes;

// ---- REGION_IO_FDS reply ------------------------------------------------------------------------------------

/** Sub-region records follow the struct; a reply cut short by a small argsz carries the struct alone. */
function decodeRegionIoFdsReply(payload: PayloadReader): ReplyBodies['DEVICE_GET_REGION_IO_FDS'] {
  payload.requireAtLeast(REGION_IO_FDS_LAYOUT.size);
  const info = payload.read(REGION_IO_FDS_LAYOUT);
  payload.requireArgszAtLeast(info.argsz, REGION_IO_FDS_LAYOUT.size);
  payload.requireKnownFlags(info.flags, REGION_IO_FDS_FLAGS);
  const full = REGION_IO_FDS_LAYOUT.size + info.count * SUB_REGION_IO_FD_LAYOUT.size;
  if (payload.length !== REGION_IO_FDS_LAYOUT.size) payload.requireExactly(full, `${info.count} sub-regions`);
  if (info.argsz < payload.length) {
    throw invalid('ERR_VFIO_USER_ARGSZ', `${payload.what}: argsz ${info.argsz} is below the ${payload.length} bytes sent`);
  }
  const subRegions: SubRegionIoFd[] = [];
  for (let at = REGION_IO_FDS_LAYOUT.size; at < payload.length; at += SUB_REGION_IO_FD_LAYOUT.size) {
    subRegions.push(payload.read(SUB_REGION_IO_FD_LAYOUT, at));
  }
  return { argsz: info.argsz, index: info.index, count: info.count, subRegions };
}

function encodeRegionIoFdsReply(body: ReplyBodies['DEVICE_GET_REGION_IO_FDS']): Uint8Array {
  if (body.subRegions.length !== 0 && body.subRegions.length !== body.count) {
    throw encodeError('DEVICE_GET_REGION_IO_FDS reply', 'send all `count` sub-regions, or none when argsz was too small');
  }
  const writer = new PayloadWriter(REGION_IO_FDS_LAYOUT.size + body.subRegions.length * SUB_REGION_IO_FD_LAYOUT.size);
  writer.write(REGION_IO_FDS_LAYOUT, { argsz: body.argsz, flags: 0, index: body.index, count: body.count });
  body.subRegions.forEach((sub, i) => writer.write(SUB_REGION_IO_FD_LAYOUT, sub, REGION_IO_FDS_LAYOUT.size + i * SUB_REGION_IO_FD_LAYOUT.size));
  return writer.bytes;
}

// ---- SET_IRQS -----------------------------------------------------------------------------------------------

function exactlyOneOf(flags: number, group: readonly (keyof typeof SET_IRQS_FLAGS.bits)[]): boolean {
  return group.filter((name) => (flags & SET_IRQS_FLAGS.bits[name]) !== 0).length === 1;
}

/** Only DATA_BOOL carries bytes (one per interrupt); eventfds travel as fds. */
function decodeSetIrqs(payload: PayloadReader): CommandBodies['DEVICE_SET_IRQS'] {
  payload.requireAtLeast(SET_IRQS_LAYOUT.size);
  const set = payload.read(SET_IRQS_LAYOUT);
  payload.requireArgszAtLeast(set.argsz, SET_IRQS_LAYOUT.size);
  payload.requireKnownFlags(set.flags, SET_IRQS_FLAGS);
  if (!exactlyOneOf(set.flags, SET_IRQS_FLAG_GROUPS.data) || !exactlyOneOf(set.flags, SET_IRQS_FLAG_GROUPS.action)) {
    throw invalid('ERR_VFIO_USER_BAD_FIELD', `${payload.what}: flags 0x${set.flags.toString(16)} need exactly one DATA_ and one ACTION_ flag`);
  }
  const dataSize = (set.flags & SET_IRQS_FLAGS.bits.DATA_BOOL) !== 0 ? set.count : 0;
  payload.requireExactly(SET_IRQS_LAYOUT.size + dataSize, `flags 0x${set.flags.toString(16)} with count ${set.count}`);
  return { ...set, data: payload.copy(SET_IRQS_LAYOUT.size) };
}

function encodeSetIrqs(body: CommandBodies['DEVICE_SET_IRQS']): Uint8Array {
  return new PayloadWriter(SET_IRQS_LAYOUT.size + body.data.length).write(SET_IRQS_LAYOUT, body).put(body.data, SET_IRQS_LAYOUT.size).bytes;
}

// ---- region access ------------------------------------------------------------------------------------------

function decodeRegionData(payload: PayloadReader) {
  payload.requireAtLeast(REGION_ACCESS_LAYOUT.size);
  const access = payload.read(REGION_ACCESS_LAYOUT);
  payload.requireExactly(REGION_ACCESS_LAYOUT.size + access.count, `count ${access.count}`);
  return { offset: access.offset, region: access.region, data: payload.copy(REGION_ACCESS_LAYOUT.size) };
}

function encodeRegionData(body: { offset: bigint; region: number; data: Uint8Array }): Uint8Array {
  const count = requireU32Length('region access', body.data);
  return new PayloadWriter(REGION_ACCESS_LAYOUT.size + count)
    .write(REGION_ACCESS_LAYOUT, { offset: body.offset, region: body.region, count })
    .put(body.data, REGION_ACCESS_LAYOUT.size).bytes;
}

function decodeRegionAccess(payload: PayloadReader) {
  payload.requireExactly(REGION_ACCESS_LAYOUT.size);
  return payload.read(REGION_ACCESS_LAYOUT);
}

const encodeRegionAccess = (body: CommandBodies['REGION_READ']) =>
  new PayloadWriter(REGION_ACCESS_LAYOUT.size).write(REGION_ACCESS_LAYOUT, body).bytes;

/** A reply may report fewer bytes than asked (a short access), never more, and must name the same place. */
function checkRegionReply(
  payload: PayloadReader,
  request: { offset: bigint; region: number },
  reply: { offset: bigint; region: number },
  asked: number,
  got: number,
): void {
  if (reply.offset !== request.offset || reply.region !== request.region) {
    throw mismatch(payload, `reply names region ${reply.region} at ${reply.offset}, the command region ${request.region} at ${request.offset}`);
  }
  if (got > asked) throw mismatch(payload, `reply carries ${got} bytes, the command asked for ${asked}`);
}

// ---- DMA access ---------------------------------------------------------------------------------------------

function decodeDmaAccess(payload: PayloadReader): DmaAccessBody {
  payload.requireExactly(DMA_ACCESS_LAYOUT.size);
  return payload.read(DMA_ACCESS_LAYOUT);
}

const encodeDmaAccess = (body: DmaAccessBody) => new PayloadWriter(DMA_ACCESS_LAYOUT.size).write(DMA_ACCESS_LAYOUT, body).bytes;

function decodeDmaWriteCommand(payload: PayloadReader): DmaDataBody {
  payload.requireAtLeast(DMA_ACCESS_LAYOUT.size);
  const access = payload.read(DMA_ACCESS_LAYOUT);
  if (access.count !== BigInt(payload.length - DMA_ACCESS_LAYOUT.size)) {
    throw invalid(
      'ERR_VFIO_USER_PAYLOAD_SIZE',
      `${payload.what}: count ${access.count} does not match ${payload.length - DMA_ACCESS_LAYOUT.size} data bytes`,
    );
  }
  return { address: access.address, data: payload.copy(DMA_ACCESS_LAYOUT.size) };
}

function encodeDmaData(body: DmaDataBody): Uint8Array {
  return new PayloadWriter(DMA_ACCESS_LAYOUT.size + body.data.length)
    .write(DMA_ACCESS_LAYOUT, { address: body.address, count: BigInt(body.data.length) })
    .put(body.data, DMA_ACCESS_LAYOUT.size).bytes;
}

/**
 * DMA_READ reply. Leniency: QEMU's client answers with its VFIOUserDMARW struct, {u64 offset, u32 count, data[]},
 * so the data starts at 12, and it sizes the message with the padded sizeof (16) + count, leaving 4 zero bytes
 * after the data; a packed sender would send 12 + count. 'auto' takes the spec layout when it is consistent and
 * QEMU's when only that is. Both are consistent only when the first 4 data bytes are zero; 'auto' then reads the
 * spec layout, so a connection that knows its peer is QEMU should ask for 'qemu'.
 */
export function decodeDmaReadReply(payload: PayloadReader, context: DecodeContext): DmaDataBody {
  payload.requireAtLeast(DMA_ACCESS_NARROW_LAYOUT.size);
  const layout = context.dmaReadReplyLayout ?? 'auto';
  const narrow = payload.read(DMA_ACCESS_NARROW_LAYOUT);
  const spec = payload.length >= DMA_ACCESS_LAYOUT.size ? payload.read(DMA_ACCESS_LAYOUT) : undefined;
  const specFits = spec !== undefined && spec.count === BigInt(payload.length - DMA_ACCESS_LAYOUT.size);
  const qemuFits = narrow.count + QEMU_DMA_STRUCT_SIZE === payload.length || narrow.count + DMA_ACCESS_NARROW_LAYOUT.size === payload.length;
  let body: DmaDataBody;
  if (specFits && layout !== 'qemu') {
    body = { address: spec.address, data: payload.copy(DMA_ACCESS_LAYOUT.size) };
  } else if (qemuFits && layout !== 'spec') {
    const start = DMA_ACCESS_NARROW_LAYOUT.size;
    body = { address: narrow.address, data: payload.copy(start, start + narrow.count) };
  } else {
    throw invalid(
      'ERR_VFIO_USER_PAYLOAD_SIZE',
      `${payload.what}: ${payload.length} bytes fit no ${layout === 'auto' ? 'known' : layout} DMA_READ reply layout`,
    );
  }
  const request = context.command;
  if (request?.command === 'DMA_READ') {
    if (request.address !== body.address) throw mismatch(payload, `reply address ${body.address}, command address ${request.address}`);
    if (BigInt(body.data.length) > request.count)
      throw mismatch(payload, `reply carries ${body.data.length} bytes, the command asked for ${request.count}`);
  }
  return body;
}

/**
 * DMA_WRITE reply. Leniency: libvfio-user sends {u64 address, u64 count} (16 bytes), the spec's table draws a u32
 * count (12 bytes), and QEMU's client sends the header alone. All three are accepted; we send the 16-byte form.
 */
function decodeDmaWriteReply(payload: PayloadReader, context: DecodeContext): ReplyBodies['DMA_WRITE'] {
  let transfer: DmaAccessBody | null;
  if (payload.length === 0) transfer = null;
  else if (payload.length === DMA_ACCESS_NARROW_LAYOUT.size) {
    const narrow = payload.read(DMA_ACCESS_NARROW_LAYOUT);
    transfer = { address: narrow.address, count: BigInt(narrow.count) };
  } else {
    payload.requireExactly(DMA_ACCESS_LAYOUT.size, 'a DMA_WRITE reply (or 0 or 12 bytes)');
    transfer = payload.read(DMA_ACCESS_LAYOUT);
  }
  const request = context.command;
  if (transfer !== null && request?.command === 'DMA_WRITE') {
    if (transfer.address !== request.address) throw mismatch(payload, `reply address ${transfer.address}, command address ${request.address}`);
    if (transfer.count > BigInt(request.data.length))
      throw mismatch(payload, `reply counts ${transfer.count} bytes, the command wrote ${request.data.length}`);
  }
  return { transfer };
}

function encodeDmaWriteReply(body: ReplyBodies['DMA_WRITE']): Uint8Array {
  return body.transfer === null ? EMPTY : encodeDmaAccess(body.transfer);
}

// ---- REGION_WRITE_MULTI -------------------------------------------------------------------------------------

const MULTI_DATA_SLOT = REGION_WRITE_ONE_LAYOUT.fields.find((field) => field.key === 'data')!.width;

function decodeRegionWriteMulti(payload: PayloadReader): CommandBodies['REGION_WRITE_MULTI'] {
  payload.requireAtLeast(REGION_WRITE_MULTI_LAYOUT.size);
  const { count } = payload.read(REGION_WRITE_MULTI_LAYOUT);
  const expected = BigInt(REGION_WRITE_MULTI_LAYOUT.size) + count * BigInt(REGION_WRITE_ONE_LAYOUT.size);
  if (BigInt(payload.length) !== expected) {
    throw invalid('ERR_VFIO_USER_PAYLOAD_SIZE', `${payload.what}: payload is ${payload.length} bytes, wr_cnt ${count} needs exactly ${expected}`);
  }
  const writes: RegionWriteOne[] = [];
  for (let i = 0; i < Number(count); i++) {
    const one = payload.read(REGION_WRITE_ONE_LAYOUT, REGION_WRITE_MULTI_LAYOUT.size + i * REGION_WRITE_ONE_LAYOUT.size);
    if (one.count > MULTI_DATA_SLOT) {
      throw invalid('ERR_VFIO_USER_BAD_FIELD', `${payload.what}: write ${i} has count ${one.count}, the slot holds ${MULTI_DATA_SLOT}`);
    }
    writes.push({ offset: one.offset, region: one.region, data: one.data.slice(0, one.count) });
  }
  return { writes };
}

function encodeRegionWriteMulti(body: CommandBodies['REGION_WRITE_MULTI']): Uint8Array {
  const writer = new PayloadWriter(REGION_WRITE_MULTI_LAYOUT.size + body.writes.length * REGION_WRITE_ONE_LAYOUT.size);
  writer.write(REGION_WRITE_MULTI_LAYOUT, { count: BigInt(body.writes.length) });
  body.writes.forEach((one, i) => {
    if (one.data.length > MULTI_DATA_SLOT) throw encodeError('REGION_WRITE_MULTI', `write ${i} has more than ${MULTI_DATA_SLOT} bytes`);
    writer.write(
      REGION_WRITE_ONE_LAYOUT,
      { offset: one.offset, region: one.region, count: one.data.length, data: one.data },
      REGION_WRITE_MULTI_LAYOUT.size + i * REGION_WRITE_ONE_LAYOUT.size,
    );
  });
  return writer.bytes;
}

// ---- DEVICE_FEATURE -----------------------------------------------------------------------------------------

const FEATURE_BITS = DEVICE_FEATURE_FLAGS.bits;

function decodeDeviceFeature(payload: PayloadReader): CommandBodies['DEVICE_FEATURE'] {
  payload.requireAtLeast(DEVICE_FEATURE_LAYOUT.size);
  const { argsz, flags } = payload.read(DEVICE_FEATURE_LAYOUT);
  payload.requireArgszAtLeast(argsz, DEVICE_FEATURE_LAYOUT.size);
  payload.requireKnownFlags(flags, DEVICE_FEATURE_FLAGS);
  return {
    argsz,
    feature: flags & FEATURE_BITS.FEATURE,
    get: (flags & FEATURE_BITS.GET) !== 0,
    set: (flags & FEATURE_BITS.SET) !== 0,
    probe: (flags & FEATURE_BITS.PROBE) !== 0,
    data: payload.copy(DEVICE_FEATURE_LAYOUT.size),
  };
}

function encodeDeviceFeature(body: CommandBodies['DEVICE_FEATURE']): Uint8Array {
  if (!Number.isInteger(body.feature) || (body.feature & FEATURE_BITS.FEATURE) !== body.feature) {
    throw encodeError('DEVICE_FEATURE', `feature ${body.feature} does not fit the 16-bit feature field`);
  }
  const flags = (body.feature | (body.get ? FEATURE_BITS.GET : 0) | (body.set ? FEATURE_BITS.SET : 0) | (body.probe ? FEATURE_BITS.PROBE : 0)) >>> 0;
  return new PayloadWriter(DEVICE_FEATURE_LAYOUT.size + body.data.length)
    .write(DEVICE_FEATURE_LAYOUT, { argsz: body.argsz, flags })
    .put(body.data, DEVICE_FEATURE_LAYOUT.size).bytes;
}

// ---- migration data -----------------------------------------------------------------------------------------

function encodeMigData(body: { argsz: number; data: Uint8Array }): Uint8Array {
  const size = requireU32Length('migration data', body.data);
  return new PayloadWriter(MIG_DATA_LAYOUT.size + size).write(MIG_DATA_LAYOUT, { argsz: body.argsz, size }).put(body.data, MIG_DATA_LAYOUT.size)
    .bytes;
}

/**
 * MIG_DATA_READ reply. Leniency: libvfio-user sizes the reply by the request's argsz, so a short last chunk
 * (size 8) arrives with zero padding after the data (1016 bytes in the captures). The data is the first `size`
 * bytes; the rest is ignored. With the command at hand, the reply may hold no more than it asked for.
 */
function decodeMigDataReadReply(payload: PayloadReader, context: DecodeContext): ReplyBodies['MIG_DATA_READ'] {
  payload.requireAtLeast(MIG_DATA_LAYOUT.size);
  const { argsz, size } = payload.read(MIG_DATA_LAYOUT);
  payload.requireAtLeast(MIG_DATA_LAYOUT.size + size, `size ${size}`);
  const request = context.command;
  if (request?.command === 'MIG_DATA_READ') {
    if (size > request.size) throw mismatch(payload, `reply carries ${size} bytes, the command asked for ${request.size}`);
    if (payload.length > Math.max(request.argsz, MIG_DATA_LAYOUT.size + size)) {
      throw mismatch(payload, `reply payload of ${payload.length} bytes exceeds the command's argsz ${request.argsz}`);
    }
  }
  return { argsz, data: payload.copy(MIG_DATA_LAYOUT.size, MIG_DATA_LAYOUT.size + size) };
}

/**
 * MIG_DATA_WRITE command. Leniency: the spec calls argsz "the maximum size of the reply payload" (there is none)
 * while libvfio-user's client sends 8 + size; argsz is therefore not checked.
 */
function decodeMigDataWrite(payload: PayloadReader): CommandBodies['MIG_DATA_WRITE'] {
  payload.requireAtLeast(MIG_DATA_LAYOUT.size);
  const { argsz, size } = payload.read(MIG_DATA_LAYOUT);
  payload.requireExactly(MIG_DATA_LAYOUT.size + size, `size ${size}`);
  return { argsz, data: payload.copy(MIG_DATA_LAYOUT.size) };
}

// ---- the table ----------------------------------------------------------------------------------------------

type CodecTable = { [N in CommandName]: PayloadCodec<CommandBodies[N], ReplyBodies[N]> };

export const PAYLOAD_CODECS: CodecTable = {
  VERSION: { decodeCommand: decodeVersion, encodeCommand: encodeVersion, decodeReply: decodeVersion, encodeReply: encodeVersion },
  DMA_MAP: {
    decodeCommand(payload) {
      payload.requireExactly(DMA_MAP_LAYOUT.size);
      const map = payload.read(DMA_MAP_LAYOUT);
      payload.requireArgszAtLeast(map.argsz, DMA_MAP_LAYOUT.size);
      payload.requireKnownFlags(map.flags, DMA_MAP_FLAGS);
      return map;
    },
    encodeCommand: (body) => new PayloadWriter(DMA_MAP_LAYOUT.size).write(DMA_MAP_LAYOUT, body).bytes,
    decodeReply: emptyPayload.decode,
    encodeReply: emptyPayload.encode,
  },
  DMA_UNMAP: {
    decodeCommand: decodeDmaUnmap,
    encodeCommand: encodeDmaUnmap,
    // Leniency: the spec says the reply echoes the request, but libvfio-user sends no payload when the device has
    // no DMA controller (the `null` sample); both are accepted.
    decodeReply: (payload) => ({ unmapped: payload.length === 0 ? null : decodeDmaUnmap(payload) }),
    encodeReply: (body) => (body.unmapped === null ? EMPTY : encodeDmaUnmap(body.unmapped)),
  },
  DEVICE_GET_INFO: {
    decodeCommand(payload) {
      payload.requireExactly(DEVICE_INFO_LAYOUT.size);
      const info = payload.read(DEVICE_INFO_LAYOUT);
      payload.requireArgszAtLeast(info.argsz, DEVICE_INFO_LAYOUT.size);
      payload.requireZero(info.flags, 'flags');
      payload.requireZero(info.numRegions, 'num_regions');
      payload.requireZero(info.numIrqs, 'num_irqs');
      return { argsz: info.argsz };
    },
    encodeCommand: (body) =>
      new PayloadWriter(DEVICE_INFO_LAYOUT.size).write(DEVICE_INFO_LAYOUT, { argsz: body.argsz, flags: 0, numRegions: 0, numIrqs: 0 }).bytes,
    decodeReply(payload) {
      payload.requireExactly(DEVICE_INFO_LAYOUT.size);
      const info = payload.read(DEVICE_INFO_LAYOUT);
      payload.requireArgszAtLeast(info.argsz, DEVICE_INFO_LAYOUT.size);
      payload.requireKnownFlags(info.flags, DEVICE_INFO_FLAGS);
      return info;
    },
    encodeReply: (body) => new PayloadWriter(DEVICE_INFO_LAYOUT.size).write(DEVICE_INFO_LAYOUT, body).bytes,
  },
  DEVICE_GET_REGION_INFO: {
    decodeCommand: decodeRegionInfoRequest,
    encodeCommand: encodeRegionInfoRequest,
    decodeReply: decodeRegionInfoReply,
    encodeReply: encodeRegionInfoReply,
  },
  DEVICE_GET_REGION_IO_FDS: {
    decodeCommand: (payload) => decodeIndexedRequest(payload, REGION_IO_FDS_LAYOUT),
    encodeCommand: encodeIndexedRequest(REGION_IO_FDS_LAYOUT),
    decodeReply: decodeRegionIoFdsReply,
    encodeReply: encodeRegionIoFdsReply,
  },
  DEVICE_GET_IRQ_INFO: {
    decodeCommand: (payload) => decodeIndexedRequest(payload, IRQ_INFO_LAYOUT),
    encodeCommand: encodeIndexedRequest(IRQ_INFO_LAYOUT),
    decodeReply(payload) {
      payload.requireExactly(IRQ_INFO_LAYOUT.size);
      const info = payload.read(IRQ_INFO_LAYOUT);
      payload.requireArgszAtLeast(info.argsz, IRQ_INFO_LAYOUT.size);
      payload.requireKnownFlags(info.flags, IRQ_INFO_FLAGS);
      return info;
    },
    encodeReply: (body) => new PayloadWriter(IRQ_INFO_LAYOUT.size).write(IRQ_INFO_LAYOUT, body).bytes,
  },
  DEVICE_SET_IRQS: {
    decodeCommand: decodeSetIrqs,
    encodeCommand: encodeSetIrqs,
    decodeReply: emptyPayload.decode,
    encodeReply: emptyPayload.encode,
  },
  REGION_READ: {
    decodeCommand: decodeRegionAccess,
    encodeCommand: encodeRegionAccess,
    decodeReply(payload, context) {
      const body = decodeRegionData(payload);
      const request = context.command;
      if (request?.command === 'REGION_READ') checkRegionReply(payload, request, body, request.count, body.data.length);
      return body;
    },
    encodeReply: encodeRegionData,
  },
  REGION_WRITE: {
    decodeCommand: decodeRegionData,
    encodeCommand: encodeRegionData,
    decodeReply(payload, context) {
      const body = decodeRegionAccess(payload);
      const request = context.command;
      if (request?.command === 'REGION_WRITE') checkRegionReply(payload, request, body, request.data.length, body.count);
      return body;
    },
    encodeReply: encodeRegionAccess,
  },
  DMA_READ: {
    decodeCommand: decodeDmaAccess,
    encodeCommand: encodeDmaAccess,
    decodeReply: decodeDmaReadReply,
    encodeReply: encodeDmaData,
  },
  DMA_WRITE: {
    decodeCommand: decodeDmaWriteCommand,
    encodeCommand: encodeDmaData,
    decodeReply: decodeDmaWriteReply,
    encodeReply: encodeDmaWriteReply,
  },
  DEVICE_RESET: {
    decodeCommand: emptyPayload.decode,
    encodeCommand: emptyPayload.encode,
    decodeReply: emptyPayload.decode,
    encodeReply: emptyPayload.encode,
  },
  REGION_WRITE_MULTI: {
    decodeCommand: decodeRegionWriteMulti,
    encodeCommand: encodeRegionWriteMulti,
    decodeReply(payload) {
      payload.requireExactly(REGION_WRITE_MULTI_LAYOUT.size);
      return payload.read(REGION_WRITE_MULTI_LAYOUT);
    },
    encodeReply: (body) => new PayloadWriter(REGION_WRITE_MULTI_LAYOUT.size).write(REGION_WRITE_MULTI_LAYOUT, body).bytes,
  },
  DEVICE_FEATURE: {
    decodeCommand: decodeDeviceFeature,
    encodeCommand: encodeDeviceFeature,
    decodeReply: decodeDeviceFeature,
    encodeReply: encodeDeviceFeature,
  },
  MIG_DATA_READ: {
    decodeCommand(payload) {
      payload.requireExactly(MIG_DATA_LAYOUT.size);
      const read = payload.read(MIG_DATA_LAYOUT);
      payload.requireArgszAtLeast(read.argsz, MIG_DATA_LAYOUT.size);
      return read;
    },
    encodeCommand: (body) => new PayloadWriter(MIG_DATA_LAYOUT.size).write(MIG_DATA_LAYOUT, body).bytes,
    decodeReply: decodeMigDataReadReply,
    encodeReply: encodeMigData,
  },
  MIG_DATA_WRITE: {
    decodeCommand: decodeMigDataWrite,
    encodeCommand: encodeMigData,
    decodeReply: emptyPayload.decode,
    encodeReply: emptyPayload.encode,
  },
};
