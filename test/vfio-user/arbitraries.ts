/** fast-check generators of valid vfio-user command and reply bodies and whole messages, for codec properties. */

import fc from 'fast-check';
import { versionBody } from '../../lib/vfio-user/codec';
import type { RegionCapability, SubRegionIoFd, VfioUserCommand, VfioUserMessage, VfioUserReply } from '../../lib/vfio-user/messages';
import {
  DEVICE_INFO_FLAGS,
  DMA_MAP_FLAGS,
  DMA_UNMAP_FLAGS,
  IRQ_INFO_FLAGS,
  REGION_INFO_FLAGS,
  SET_IRQS_FLAG_GROUPS,
  SET_IRQS_FLAGS,
} from '../../lib/vfio-user/protocol';
import type { VersionCapabilities } from '../../lib/vfio-user/version';

const U16 = 2 ** 16 - 1;
const U32 = 2 ** 32 - 1;
export const u16 = fc.integer({ min: 0, max: U16 });
export const u32 = fc.integer({ min: 0, max: U32 });
export const u64 = fc.bigInt({ min: 0n, max: 2n ** 64n - 1n });
export const bytes = (maxLength = 48) => fc.uint8Array({ maxLength });
const argszFrom = (min: number) => fc.integer({ min, max: U32 });

/** Any subset of a flag set's bits. */
function flagsOf(set: { bits: Readonly<Record<string, number>> }): fc.Arbitrary<number> {
  return fc.subarray(Object.values(set.bits)).map((bits) => bits.reduce((all, bit) => (all | bit) >>> 0, 0));
}

const capabilities: fc.Arbitrary<VersionCapabilities> = fc.record(
  {
    maxMsgFds: fc.integer({ min: 1, max: 253 }),
    maxDataXferSize: fc.integer({ min: 1, max: U32 }),
    maxDmaMaps: fc.integer({ min: 1, max: 1_000_000 }),
    // Page-size bitmaps use bits 12..63: at most 52 significant bits, exact in a JSON double.
    pgsizes: fc.bigInt({ min: 1n, max: 2n ** 52n - 1n }).map((bits) => bits << 12n),
    twinSocket: fc.record({ supported: fc.boolean(), fdIndex: fc.integer({ min: 0, max: 252 }) }, { requiredKeys: ['supported'] }),
    writeMultiple: fc.boolean(),
    migration: fc.record({ pgsize: fc.constantFrom(4096, 65536), maxBitmapSize: fc.integer({ min: 1, max: U32 }) }, { requiredKeys: ['pgsize'] }),
  },
  { requiredKeys: [] },
);
const version = fc.tuple(u16, u16, capabilities).map(([major, minor, caps]) => versionBody(major, minor, caps));

const dmaUnmap = fc.oneof(
  fc.record({ argsz: argszFrom(24), flags: fc.constant(0), address: u64, size: u64 }),
  fc.record({ argsz: argszFrom(24), flags: fc.constant(DMA_UNMAP_FLAGS.bits.ALL), address: fc.constant(0n), size: fc.constant(0n) }),
);

const setIrqs = fc
  .record({
    argsz: argszFrom(20),
    data: fc.constantFrom(...SET_IRQS_FLAG_GROUPS.data),
    action: fc.constantFrom(...SET_IRQS_FLAG_GROUPS.action),
    index: u32,
    start: u32,
    count: fc.integer({ min: 0, max: 40 }),
    bools: bytes(40),
  })
  .map(({ argsz, data, action, index, start, count, bools }) => {
    const withData = data === 'DATA_BOOL';
    return {
      argsz,
      flags: SET_IRQS_FLAGS.bits[data] | SET_IRQS_FLAGS.bits[action],
      index,
      start,
      count: withData ? bools.length : count,
      data: withData ? bools : new Uint8Array(0),
    };
  });

const regionCapability: fc.Arbitrary<RegionCapability> = fc.oneof(
  fc.record({ kind: fc.constant('sparse-mmap' as const), areas: fc.array(fc.record({ offset: u64, size: u64 }), { maxLength: 4 }) }),
  fc.record({ kind: fc.constant('type' as const), type: u32, subtype: u32 }),
  fc.record({ kind: fc.constant('unknown' as const), id: fc.integer({ min: 3, max: U16 }), version: u16, body: bytes(24) }),
);

const capabilitySize = (cap: RegionCapability) =>
  cap.kind === 'sparse-mmap' ? 16 + 16 * cap.areas.length : cap.kind === 'type' ? 16 : 8 + cap.body.length;

const regionInfoReply = fc
  .record({
    extra: fc.integer({ min: 0, max: 4096 }),
    flags: flagsOf({ bits: { READ: REGION_INFO_FLAGS.bits.READ, WRITE: REGION_INFO_FLAGS.bits.WRITE, MMAP: REGION_INFO_FLAGS.bits.MMAP } }),
    index: u32,
    size: u64,
    offset: u64,
    capabilities: fc.array(regionCapability, { maxLength: 3 }),
  })
  .map(({ extra, flags, capabilities: caps, ...rest }) => ({
    ...rest,
    argsz: 32 + caps.reduce((sum, cap) => sum + capabilitySize(cap), 0) + extra,
    flags: caps.length > 0 ? flags | REGION_INFO_FLAGS.bits.CAPS : flags,
    capabilities: caps,
  }));

const subRegion: fc.Arbitrary<SubRegionIoFd> = fc.record({
  offset: u64,
  size: u64,
  fdIndex: u32,
  type: fc.constantFrom(0, 1),
  flags: u32,
  datamatchOrUserData: u64,
});
const regionIoFdsReply = fc
  .record({ extra: fc.integer({ min: 0, max: 256 }), index: u32, subRegions: fc.array(subRegion, { maxLength: 3 }), truncated: fc.boolean() })
  .map(({ extra, index, subRegions, truncated }) => ({
    argsz: 16 + 40 * subRegions.length + extra,
    index,
    count: subRegions.length,
    subRegions: truncated ? [] : subRegions,
  }));

const deviceFeature = fc.record({
  argsz: argszFrom(8),
  feature: u16,
  get: fc.boolean(),
  set: fc.boolean(),
  probe: fc.boolean(),
  data: bytes(),
});

const tag =
  <N extends string>(command: N) =>
  <T extends object>(body: T) => ({ ...body, command });

/** One generator per command, each producing valid bodies. */
export const commandBodies: { [N in VfioUserCommand['command']]: fc.Arbitrary<Extract<VfioUserCommand, { command: N }>> } = {
  VERSION: version.map(tag('VERSION')),
  DMA_MAP: fc.record({ argsz: argszFrom(32), flags: flagsOf(DMA_MAP_FLAGS), offset: u64, address: u64, size: u64 }).map(tag('DMA_MAP')),
  DMA_UNMAP: dmaUnmap.map(tag('DMA_UNMAP')),
  DEVICE_GET_INFO: fc.record({ argsz: argszFrom(16) }).map(tag('DEVICE_GET_INFO')),
  DEVICE_GET_REGION_INFO: fc.record({ argsz: argszFrom(32), index: u32 }).map(tag('DEVICE_GET_REGION_INFO')),
  DEVICE_GET_REGION_IO_FDS: fc.record({ argsz: argszFrom(16), index: u32 }).map(tag('DEVICE_GET_REGION_IO_FDS')),
  DEVICE_GET_IRQ_INFO: fc.record({ argsz: argszFrom(16), index: u32 }).map(tag('DEVICE_GET_IRQ_INFO')),
  DEVICE_SET_IRQS: setIrqs.map(tag('DEVICE_SET_IRQS')),
  REGION_READ: fc.record({ offset: u64, region: u32, count: u32 }).map(tag('REGION_READ')),
  REGION_WRITE: fc.record({ offset: u64, region: u32, data: bytes() }).map(tag('REGION_WRITE')),
  DMA_READ: fc.record({ address: u64, count: u64 }).map(tag('DMA_READ')),
  DMA_WRITE: fc.record({ address: u64, data: bytes() }).map(tag('DMA_WRITE')),
  DEVICE_RESET: fc.constant({}).map(tag('DEVICE_RESET')),
  REGION_WRITE_MULTI: fc
    .record({ writes: fc.array(fc.record({ offset: u64, region: u32, data: bytes(8) }), { maxLength: 5 }) })
    .map(tag('REGION_WRITE_MULTI')),
  DEVICE_FEATURE: deviceFeature.map(tag('DEVICE_FEATURE')),
  MIG_DATA_READ: fc.record({ argsz: argszFrom(8), size: u32 }).map(tag('MIG_DATA_READ')),
  MIG_DATA_WRITE: fc.record({ argsz: u32, data: bytes() }).map(tag('MIG_DATA_WRITE')),
};

/** One generator per command, each producing valid reply bodies. */
export const replyBodies: { [N in VfioUserReply['command']]: fc.Arbitrary<Extract<VfioUserReply, { command: N }>> } = {
  VERSION: version.map(tag('VERSION')),
  DMA_MAP: fc.constant({}).map(tag('DMA_MAP')),
  DMA_UNMAP: fc.record({ unmapped: fc.option(dmaUnmap, { nil: null }) }).map(tag('DMA_UNMAP')),
  DEVICE_GET_INFO: fc.record({ argsz: argszFrom(16), flags: flagsOf(DEVICE_INFO_FLAGS), numRegions: u32, numIrqs: u32 }).map(tag('DEVICE_GET_INFO')),
  DEVICE_GET_REGION_INFO: regionInfoReply.map(tag('DEVICE_GET_REGION_INFO')),
  DEVICE_GET_REGION_IO_FDS: regionIoFdsReply.map(tag('DEVICE_GET_REGION_IO_FDS')),
  DEVICE_GET_IRQ_INFO: fc.record({ argsz: argszFrom(16), flags: flagsOf(IRQ_INFO_FLAGS), index: u32, count: u32 }).map(tag('DEVICE_GET_IRQ_INFO')),
  DEVICE_SET_IRQS: fc.constant({}).map(tag('DEVICE_SET_IRQS')),
  REGION_READ: fc.record({ offset: u64, region: u32, data: bytes() }).map(tag('REGION_READ')),
  REGION_WRITE: fc.record({ offset: u64, region: u32, count: u32 }).map(tag('REGION_WRITE')),
  DMA_READ: fc.record({ address: u64, data: bytes() }).map(tag('DMA_READ')),
  DMA_WRITE: fc.record({ transfer: fc.option(fc.record({ address: u64, count: u64 }), { nil: null }) }).map(tag('DMA_WRITE')),
  DEVICE_RESET: fc.constant({}).map(tag('DEVICE_RESET')),
  REGION_WRITE_MULTI: fc.record({ count: u64 }).map(tag('REGION_WRITE_MULTI')),
  DEVICE_FEATURE: deviceFeature.map(tag('DEVICE_FEATURE')),
  MIG_DATA_READ: fc.record({ argsz: u32, data: bytes() }).map(tag('MIG_DATA_READ')),
  MIG_DATA_WRITE: fc.constant({}).map(tag('MIG_DATA_WRITE')),
};

export const anyCommand: fc.Arbitrary<VfioUserCommand> = fc.oneof(...Object.values(commandBodies)) as fc.Arbitrary<VfioUserCommand>;
export const anyReply: fc.Arbitrary<VfioUserReply> = fc.oneof(...Object.values(replyBodies)) as fc.Arbitrary<VfioUserReply>;

export const anyMessage: fc.Arbitrary<VfioUserMessage> = fc.oneof(
  fc.record({ type: fc.constant('command' as const), msgId: u16, noReply: fc.boolean(), body: anyCommand }),
  fc.record({ type: fc.constant('reply' as const), msgId: u16, body: anyReply }),
  fc.record({ type: fc.constant('error' as const), msgId: u16, command: u16, errno: u32 }),
);
