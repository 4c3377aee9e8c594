/** Decoded vfio-user messages: one typed body per command and per reply, and the message union around them. */

import type { CommandName } from './protocol';
import type { VersionCapabilities } from './version';

/**
 * Field conventions: u64 addresses, offsets and sizes are bigint; u32 and smaller are number. Where the wire carries
 * both a byte count and the bytes, the body carries only `data` and the encoder writes `data.length` as the count,
 * so the two cannot disagree.
 */

export interface VersionBody {
  readonly major: number;
  readonly minor: number;
  /** The JSON text exactly as sent (without the NUL); the encoder writes this text. */
  readonly json: string;
  /** `json` parsed and validated; derived, the encoder ignores it (build both with `versionBody`). */
  readonly capabilities: VersionCapabilities;
}

export interface DmaMapBody {
  readonly argsz: number;
  readonly flags: number;
  readonly offset: bigint;
  readonly address: bigint;
  readonly size: bigint;
}

export interface DmaUnmapBody {
  readonly argsz: number;
  readonly flags: number;
  readonly address: bigint;
  readonly size: bigint;
}

/** A GET_*_INFO request: `argsz` bounds the reply, `index` selects; the spec says every other field is zero. */
export interface InfoRequestBody {
  readonly argsz: number;
}
export interface IndexedInfoRequestBody {
  readonly argsz: number;
  readonly index: number;
}

export interface DeviceInfoBody {
  readonly argsz: number;
  readonly flags: number;
  readonly numRegions: number;
  readonly numIrqs: number;
}

export interface SparseMmapArea {
  readonly offset: bigint;
  readonly size: bigint;
}

export type RegionCapability =
  | { readonly kind: 'sparse-mmap'; readonly areas: readonly SparseMmapArea[] }
  | { readonly kind: 'type'; readonly type: number; readonly subtype: number }
  /** A capability we do not interpret, kept whole: its body runs to the next capability or the payload's end. */
  | { readonly kind: 'unknown'; readonly id: number; readonly version: number; readonly body: Uint8Array };

export interface RegionInfoReplyBody {
  /** The size the whole answer needs; it exceeds the bytes sent when the client's argsz was too small. */
  readonly argsz: number;
  /** Region flags; CAPS is set exactly when `capabilities` is not empty (the codec checks this both ways). */
  readonly flags: number;
  readonly index: number;
  readonly size: bigint;
  readonly offset: bigint;
  /** In wire order; the encoder lays them out back to back after the 32-byte struct. */
  readonly capabilities: readonly RegionCapability[];
}

export interface SubRegionIoFd {
  readonly offset: bigint;
  readonly size: bigint;
  readonly fdIndex: number;
  readonly type: number;
  /** KVM's ioeventfd or ioregionfd flags, passed through uninterpreted. */
  readonly flags: number;
  readonly datamatchOrUserData: bigint;
}

export interface RegionIoFdsReplyBody {
  readonly argsz: number;
  readonly index: number;
  /** The number of sub-regions the server has; `subRegions` is empty when argsz was too small to carry them. */
  readonly count: number;
  readonly subRegions: readonly SubRegionIoFd[];
}

export interface IrqInfoBody {
  readonly argsz: number;
  readonly flags: number;
  readonly index: number;
  readonly count: number;
}

export interface SetIrqsBody {
  readonly argsz: number;
  readonly flags: number;
  readonly index: number;
  readonly start: number;
  readonly count: number;
  /** One byte per interrupt with DATA_BOOL, empty otherwise (eventfds travel as fds, not bytes). */
  readonly data: Uint8Array;
}

export interface RegionAccessBody {
  readonly offset: bigint;
  readonly region: number;
  readonly count: number;
}

export interface RegionDataBody {
  readonly offset: bigint;
  readonly region: number;
  readonly data: Uint8Array;
}

export interface DmaAccessBody {
  readonly address: bigint;
  readonly count: bigint;
}

export interface DmaDataBody {
  readonly address: bigint;
  readonly data: Uint8Array;
}

export interface DmaWriteReplyBody {
  /** Address and count written; null when the peer sent no payload (QEMU answers with the header alone). */
  readonly transfer: DmaAccessBody | null;
}

export interface DmaUnmapReplyBody {
  /** The echoed request; null when the server sent no payload (libvfio-user without a DMA controller). */
  readonly unmapped: DmaUnmapBody | null;
}

export interface RegionWriteOne {
  readonly offset: bigint;
  readonly region: number;
  /** At most 8 bytes: the multi-write entry has a fixed 8-byte data slot. */
  readonly data: Uint8Array;
}

export interface RegionWriteMultiBody {
  readonly writes: readonly RegionWriteOne[];
}

export interface RegionWriteMultiReplyBody {
  readonly count: bigint;
}

export interface DeviceFeatureBody {
  readonly argsz: number;
  /** Bits 15:0 of flags: which feature (see DEVICE_FEATURES). */
  readonly feature: number;
  readonly get: boolean;
  readonly set: boolean;
  readonly probe: boolean;
  /** Feature-specific bytes (see device-feature.ts for the known layouts). */
  readonly data: Uint8Array;
}

export interface MigDataReadBody {
  readonly argsz: number;
  readonly size: number;
}

export interface MigDataBody {
  readonly argsz: number;
  readonly data: Uint8Array;
}

export type EmptyBody = Record<never, never>;

/** Command payloads, by command name. */
export interface CommandBodies {
  VERSION: VersionBody;
  DMA_MAP: DmaMapBody;
  DMA_UNMAP: DmaUnmapBody;
  DEVICE_GET_INFO: InfoRequestBody;
  DEVICE_GET_REGION_INFO: IndexedInfoRequestBody;
  DEVICE_GET_REGION_IO_FDS: IndexedInfoRequestBody;
  DEVICE_GET_IRQ_INFO: IndexedInfoRequestBody;
  DEVICE_SET_IRQS: SetIrqsBody;
  REGION_READ: RegionAccessBody;
  REGION_WRITE: RegionDataBody;
  DMA_READ: DmaAccessBody;
  DMA_WRITE: DmaDataBody;
  DEVICE_RESET: EmptyBody;
  REGION_WRITE_MULTI: RegionWriteMultiBody;
  DEVICE_FEATURE: DeviceFeatureBody;
  MIG_DATA_READ: MigDataReadBody;
  MIG_DATA_WRITE: MigDataBody;
}

/** Successful reply payloads, by command name. */
export interface ReplyBodies {
  VERSION: VersionBody;
  DMA_MAP: EmptyBody;
  DMA_UNMAP: DmaUnmapReplyBody;
  DEVICE_GET_INFO: DeviceInfoBody;
  DEVICE_GET_REGION_INFO: RegionInfoReplyBody;
  DEVICE_GET_REGION_IO_FDS: RegionIoFdsReplyBody;
  DEVICE_GET_IRQ_INFO: IrqInfoBody;
  DEVICE_SET_IRQS: EmptyBody;
  REGION_READ: RegionDataBody;
  REGION_WRITE: RegionAccessBody;
  DMA_READ: DmaDataBody;
  DMA_WRITE: DmaWriteReplyBody;
  DEVICE_RESET: EmptyBody;
  REGION_WRITE_MULTI: RegionWriteMultiReplyBody;
  DEVICE_FEATURE: DeviceFeatureBody;
  MIG_DATA_READ: MigDataBody;
  MIG_DATA_WRITE: EmptyBody;
}

/** A command payload tagged with its command name: `{ command: 'DMA_MAP', argsz, flags, ... }`. */
export type VfioUserCommand = { [N in CommandName]: { readonly command: N } & CommandBodies[N] }[CommandName];
export type VfioUserReply = { [N in CommandName]: { readonly command: N } & ReplyBodies[N] }[CommandName];
export type CommandOf<N extends CommandName> = Extract<VfioUserCommand, { command: N }>;
export type ReplyOf<N extends CommandName> = Extract<VfioUserReply, { command: N }>;

export interface CommandMessage {
  readonly type: 'command';
  readonly msgId: number;
  /** The sender asks for no reply (QEMU posts region writes this way). */
  readonly noReply: boolean;
  readonly body: VfioUserCommand;
}

export interface ReplyMessage {
  readonly type: 'reply';
  readonly msgId: number;
  readonly body: VfioUserReply;
}

/** An error reply: the header alone, REPLY|ERROR, with the errno. The command may be one we do not know. */
export interface ErrorReplyMessage {
  readonly type: 'error';
  readonly msgId: number;
  readonly command: number;
  /** A UNIX errno; the spec allows 0 even with the ERROR flag. */
  readonly errno: number;
}

export type VfioUserMessage = CommandMessage | ReplyMessage | ErrorReplyMessage;

/** Decoding options: what the decoder cannot see in the bytes themselves. */
export interface DecodeContext {
  /**
   * The command a reply answers. With it the decoder checks the reply against the request (REGION_READ's region,
   * offset and count; DMA_READ's count; MIG_DATA_READ's argsz) and can place QEMU-style DMA_READ data.
   */
  readonly command?: VfioUserCommand;
  /**
   * Which layout a DMA_READ reply uses: 'spec' (data at 16), 'qemu' (QEMU's client: u32 count at 8, data at 12,
   * 4 zero bytes of struct padding at the end), or 'auto' (the default: spec unless only QEMU's reading is
   * consistent; see decodeDmaReadReply for the one ambiguous case).
   */
  readonly dmaReadReplyLayout?: 'auto' | 'spec' | 'qemu';
}
