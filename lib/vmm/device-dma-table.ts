/**
 * A vfio-user device's DMA table that covers the IOVA space: runs the shadow backend maps with guest RAM fds, and
 * every gap between them as an fd-less mapping, so the device's other accesses arrive as DMA_READ/DMA_WRITE
 * messages that the IOMMU translates (and, for an IOVA the guest never mapped, faults into FRCD with an errno).
 *
 * The table first offers the whole 64-bit space as one mapping. A peer that refuses mappings that large
 * (libvfio-user: ENOSPC above 8 TiB) gets only the IOVA space the IOMMU can translate, cut into aligned pieces of
 * the largest size it accepted (found by halving), as long as those pieces leave half of its max_dma_maps for runs.
 * Outside that space a device DMA then fails at the server rather than faulting in the unit, as it would anyway.
 *
 * vfio-user has no "replace": a DMA_MAP may not overlap a mapping, so putting a run inside a gap means unmapping the
 * gap, mapping the run and mapping the pieces around it again (and the reverse on unmap). For that short window a
 * device DMA by message into the gap finds no mapping at the server and fails there with a local error, without an
 * IOMMU fault record. The window cannot be closed without a protocol change; what is guaranteed is that it closes:
 * any part of a gap that a failed DMA_MAP left unmapped is a "hole", reported and mapped again on the next change.
 */
import { PAGE_BYTES } from '../memory/geometry';
import type { FileDescriptor } from '../native';
import type { ShadowTarget } from '../host/shadow-backend';
import { VfioUserRemoteError } from '../vfio-user/connection-errors';
import { ViommuError } from '../errors';

/** The part of a vfio-user client the table drives. */
export interface DmaMapPeer {
  dmaMap(request: { address: bigint; size: bigint; readable?: boolean; writable?: boolean; fd?: FileDescriptor; offset?: bigint }): Promise<unknown>;
  dmaUnmap(address: bigint, size: bigint): Promise<void>;
  /** The peer's max_dma_maps. */
  readonly maxDmaMaps: number;
}

export interface ShadowRunRequest {
  address: bigint;
  size: bigint;
  readable: boolean;
  writable: boolean;
  fd?: FileDescriptor;
  offset?: bigint;
}

export interface IovaWindow {
  readonly address: bigint;
  readonly size: bigint;
}

interface Range {
  start: bigint;
  end: bigint;
}

/** The top of the space a DMA_MAP can describe: address + size must fit 64 bits and stay page aligned. */
export const DMA_SPACE_END = (1n << 64n) - BigInt(PAGE_BYTES);

const U64_SPAN = 1n << 64n;
/** aw-bits is 39 or 48 (lib/vtd/config.ts): second-stage IOVAs, and the lower half of first-stage ones, lie below. */
const WIDEST_ADDRESS_BITS = 48n;
/** First-stage paging is 4-level (the unit offers no FS5LP): canonical addresses copy bit 47 upwards. */
const FIRST_STAGE_CANONICAL_BITS = 47n;

/**
 * Every IOVA the unit can translate: below 2^48, and the upper canonical half of first-stage paging. A DMA anywhere
 * else faults in the unit whatever the guest programs, so a peer that cannot take the whole space loses nothing
 * but the fault record when these are all it is given.
 */
export const TRANSLATABLE_IOVA: readonly IovaWindow[] = [
  { address: 0n, size: 1n << WIDEST_ADDRESS_BITS },
  { address: U64_SPAN - (1n << FIRST_STAGE_CANONICAL_BITS), size: DMA_SPACE_END - (U64_SPAN - (1n << FIRST_STAGE_CANONICAL_BITS)) },
];

export interface DeviceDmaTableOptions {
  /** What to cover when the peer refuses the whole space in one mapping (default TRANSLATABLE_IOVA). */
  readonly translatable?: readonly IovaWindow[];
}

function describe(range: Range): string {
  return `[0x${range.start.toString(16)}, 0x${range.end.toString(16)})`;
}

function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && b.start < a.end;
}

function byStart(a: Range, b: Range): number {
  return a.start < b.start ? -1 : a.start > b.start ? 1 : 0;
}

function touches(a: Range, b: Range): boolean {
  return a.end === b.start || b.end === a.start;
}

function log2(value: bigint): number {
  return value.toString(2).length - 1;
}

/** `ranges` minus `taken`, both sorted and non-overlapping within themselves. */
function subtract(ranges: readonly Range[], taken: readonly Range[]): Range[] {
  const result: Range[] = [];
  for (const range of ranges) {
    let cursor = range.start;
    for (const cut of taken) {
      if (cut.end <= cursor || cut.start >= range.end) continue;
      if (cut.start > cursor) result.push({ start: cursor, end: cut.start });
      cursor = cut.end > cursor ? cut.end : cursor;
    }
    if (cursor < range.end) result.push({ start: cursor, end: range.end });
  }
  return result;
}

/**
 * Gaps (fd-less mappings), holes (gap space the peer refused to map again) and runs (fd mappings) never overlap and,
 * once started, together cover the covered windows: [0, DMA_SPACE_END), or the translatable windows when the peer
 * limits the size of a mapping. Gaps and holes never cross a piece boundary (multiples of the piece size), so none
 * is larger than the peer accepts; runs may. Changes run one at a time: the shadow backend sends many maps at once,
 * and each change here rewrites a gap. A change's promise tells the fate of its run only (rejected: the run is as
 * it was); trouble with the gaps around it goes to `onError`, as the run's caller cannot act on it.
 */
export class DeviceDmaTable implements ShadowTarget {
  /** Sorted by start. */
  private gaps: Range[] = [];
  /** Gap space not mapped at the peer because a DMA_MAP of it failed; mapped again before the next change. */
  private holes: Range[] = [];
  /** Runs the device holds with an fd, by start. */
  private readonly sharedRuns = new Map<bigint, Range>();
  /** Runs without a shareable backing: left inside a gap, so the device reaches them by message. */
  private readonly messageRuns = new Map<bigint, Range>();
  private queue: Promise<void> = Promise.resolve();
  private windows: Range[] = [{ start: 0n, end: DMA_SPACE_END }];
  /** The largest gap the peer takes, a power of two; the whole 64-bit span until a peer refuses that. */
  private piece = U64_SPAN;
  private started = false;
  private readonly translatable: readonly Range[];

  constructor(
    private readonly peer: DmaMapPeer,
    /** Failures to keep the gaps mapped (the device's DMA by message to them fails until the next change). */
    private readonly onError: (error: Error) => void = () => undefined,
    options: DeviceDmaTableOptions = {},
  ) {
    this.translatable = (options.translatable ?? TRANSLATABLE_IOVA)
      .map((window) => ({ start: window.address, end: window.address + window.size }))
      .sort(byStart);
  }

  /** Each run can split a gap in two, so the runs may use at most half of what the gap pieces leave. */
  get maxDmaMaps(): number {
    return Math.max(0, Math.floor((this.peer.maxDmaMaps - this.pieceCount(this.windows, this.piece)) / 2));
  }

  /** The windows the gaps cover and the largest gap: the whole space in one piece unless the peer refused that. */
  get coverage(): { readonly windows: readonly IovaWindow[]; readonly pieceSize: bigint | undefined } {
    return {
      windows: this.windows.map((window) => ({ address: window.start, size: window.end - window.start })),
      pieceSize: this.piece === U64_SPAN ? undefined : this.piece,
    };
  }

  /** The runs mapped with guest RAM fds (the device reaches them directly), sorted. */
  get shared(): readonly { address: bigint; size: bigint }[] {
    return [...this.sharedRuns.values()].sort(byStart).map((r) => ({ address: r.start, size: r.end - r.start }));
  }

  /** Gap space left unmapped by failed DMA_MAPs, sorted (empty unless the peer refused to map a gap). */
  get unmappedGaps(): readonly { address: bigint; size: bigint }[] {
    return [...this.holes].sort(byStart).map((r) => ({ address: r.start, size: r.end - r.start }));
  }

  /**
   * Maps the space outside the runs: the whole of it as one gap, or, when the peer refuses that mapping with an
   * errno, the translatable windows in pieces as large as it accepts. Rejects when neither can be mapped.
   */
  start(): Promise<void> {
    return this.serially(async () => {
      if (this.started) return;
      if (this.gaps.length === 0 && this.holes.length === 0 && this.sharedRuns.size === 0) {
        try {
          await this.mapGap({ start: 0n, end: DMA_SPACE_END });
          this.started = true;
          return;
        } catch (error) {
          if (!(error instanceof VfioUserRemoteError)) throw error;
          await this.learnPieceSize(error);
        }
      }
      const runs = [...this.sharedRuns.values()].sort(byStart);
      for (const free of subtract(this.windows, [...runs, ...this.gaps, ...this.holes].sort(byStart))) {
        for (const segment of this.segments(free)) await this.mapGap(segment);
      }
      this.started = true;
    });
  }

  dmaMap(request: ShadowRunRequest): Promise<void> {
    return this.serially(async () => {
      await this.repairHoles();
      const run = { start: request.address, end: request.address + request.size };
      if (request.fd === undefined) {
        this.messageRuns.set(run.start, run);
        return;
      }
      const held = [...this.sharedRuns.values()].find((other) => overlaps(other, run));
      if (held !== undefined)
        throw new ViommuError('ERR_VIOMMU_DMA_TABLE', `IOVA range ${describe(run)} is already mapped for the device (the run ${describe(held)})`);
      const released: Range[] = [];
      try {
        // A refused unmap leaves everything as it was (gaps already taken down are put back).
        for (const gap of this.gaps.filter((other) => overlaps(other, run))) {
          await this.peer.dmaUnmap(gap.start, gap.end - gap.start);
          this.gaps = this.gaps.filter((other) => other !== gap);
          released.push(gap);
        }
      } catch (error) {
        for (const gap of released) await this.coverWithGap(gap);
        throw error;
      }
      for (const hole of this.holes.filter((other) => overlaps(other, run))) {
        this.holes = this.holes.filter((other) => other !== hole);
        released.push(hole);
      }
      released.sort(byStart);
      let mapped = false;
      try {
        await this.peer.dmaMap({ ...request });
        this.sharedRuns.set(run.start, run);
        mapped = true;
      } finally {
        for (const piece of released) {
          if (!mapped) await this.coverWithGap(piece);
          else {
            if (piece.start < run.start) await this.coverWithGap({ start: piece.start, end: run.start < piece.end ? run.start : piece.end });
            if (run.end < piece.end) await this.coverWithGap({ start: run.end > piece.start ? run.end : piece.start, end: piece.end });
          }
        }
      }
    });
  }

  dmaUnmap(address: bigint, size: bigint): Promise<void> {
    return this.serially(async () => {
      await this.repairHoles();
      const messageRun = this.messageRuns.get(address);
      const run = messageRun ?? this.sharedRuns.get(address);
      if (run === undefined || run.end !== address + size) {
        const held = run === undefined ? 'no run starts there' : `the run there is ${describe(run)}`;
        throw new ViommuError(
          'ERR_VIOMMU_DMA_TABLE',
          `unmap of ${describe({ start: address, end: address + size })} names no run the device holds exactly (${held})`,
        );
      }
      if (messageRun !== undefined) {
        this.messageRuns.delete(address);
        return;
      }
      // A refused unmap leaves the run mapped, as the rejection says.
      await this.peer.dmaUnmap(run.start, run.end - run.start);
      this.sharedRuns.delete(address);
      await this.coverWithGap(run);
    });
  }

  /** Resolves when every change asked for so far is answered. */
  settled(): Promise<void> {
    return this.queue;
  }

  /**
   * The whole space was refused: halves the size of the first piece until the peer maps one, never below what
   * would need more than half of its max_dma_maps to cover the translatable windows. The piece that was accepted
   * stays mapped as the first gap.
   */
  private async learnPieceSize(refusal: VfioUserRemoteError): Promise<void> {
    const windows = this.translatable;
    const first = windows[0];
    if (first === undefined) throw this.coverageError('no translatable IOVA window is configured', refusal);
    const budget = Math.floor(this.peer.maxDmaMaps / 2);
    let size = 1n << BigInt(log2(first.end - first.start));
    let last: Error = refusal;
    let smallestRefused: bigint | undefined;
    while (this.pieceCount(windows, size) <= budget) {
      try {
        await this.mapGap({ start: first.start, end: first.start + size });
        this.windows = [...windows];
        this.piece = size;
        return;
      } catch (error) {
        if (!(error instanceof VfioUserRemoteError)) throw error;
        last = error;
        smallestRefused = size;
        size >>= 1n;
      }
    }
    const tried = smallestRefused === undefined ? '' : `it refused pieces down to ${smallestRefused} bytes, and `;
    throw this.coverageError(
      `${tried}covering ${windows.map(describe).join(' and ')} (the IOVA space the IOMMU translates) in smaller pieces would take more than half of its ${this.peer.maxDmaMaps} mappings (max_dma_maps)`,
      last,
    );
  }

  private coverageError(why: string, cause: Error): ViommuError {
    return new ViommuError(
      'ERR_VIOMMU_DMA_TABLE',
      `the device refused to map the IOVA space without an fd in one piece (${cause.message}), and ${why}`,
    );
  }

  /** Gaps needed to cover `windows` in aligned pieces of `size`. */
  private pieceCount(windows: readonly Range[], size: bigint): number {
    let count = 0n;
    for (const window of windows) count += (window.end - 1n) / size - window.start / size + 1n;
    return count > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(count);
  }

  /** `range` within the covered windows, cut at piece boundaries. */
  private segments(range: Range): Range[] {
    const result: Range[] = [];
    for (const window of this.windows) {
      let start = range.start > window.start ? range.start : window.start;
      const end = range.end < window.end ? range.end : window.end;
      while (start < end) {
        const boundary = (start / this.piece + 1n) * this.piece;
        const stop = boundary < end ? boundary : end;
        result.push({ start, end: stop });
        start = stop;
      }
    }
    return result;
  }

  private samePiece(a: Range, b: Range): boolean {
    return a.start / this.piece === b.start / this.piece;
  }

  /**
   * Maps `range` (unmapped at the peer, no run inside) as gaps, each joined with the gaps and holes it touches
   * within its piece, so the table never holds more mappings than it needs. Never throws: when a join fails each
   * part is mapped back on its own, and a part that still fails becomes a hole.
   */
  private async coverWithGap(range: Range): Promise<void> {
    for (const segment of this.segments(range)) await this.coverSegment(segment);
  }

  private async coverSegment(range: Range): Promise<void> {
    const neighbours = (other: Range) => touches(other, range) && this.samePiece(other, range);
    const unmapped: Range[] = [range];
    for (const hole of this.holes.filter(neighbours)) unmapped.push(hole);
    this.holes = this.holes.filter((hole) => !unmapped.includes(hole));
    let joinSent = false;
    try {
      for (const neighbour of this.gaps.filter(neighbours)) {
        await this.peer.dmaUnmap(neighbour.start, neighbour.end - neighbour.start);
        this.gaps = this.gaps.filter((gap) => gap !== neighbour);
        unmapped.push(neighbour);
      }
      let start = range.start;
      let end = range.end;
      for (const piece of unmapped) {
        if (piece.start < start) start = piece.start;
        if (piece.end > end) end = piece.end;
      }
      joinSent = true;
      await this.mapGap({ start, end });
      return;
    } catch (error) {
      // One piece whose own map was just refused is not tried again at once.
      if (joinSent && unmapped.length === 1) {
        this.leaveHole(range, error as Error);
        return;
      }
      this.onError(error as Error);
    }
    for (const piece of unmapped) {
      try {
        await this.mapGap(piece);
      } catch (error) {
        this.leaveHole(piece, error as Error);
      }
    }
  }

  private leaveHole(range: Range, cause: Error): void {
    this.holes.push(range);
    this.onError(
      new ViommuError(
        'ERR_VIOMMU_DMA_TABLE',
        `IOVA range ${describe(range)} is not mapped for the device (its DMA there fails without a fault record) until the next change: ${cause.message}`,
      ),
    );
  }

  private async repairHoles(): Promise<void> {
    const holes = this.holes;
    this.holes = [];
    for (const hole of holes) await this.coverWithGap(hole);
  }

  private async mapGap(gap: Range): Promise<void> {
    await this.peer.dmaMap({ address: gap.start, size: gap.end - gap.start, readable: true, writable: true });
    const at = this.gaps.findIndex((other) => other.start > gap.start);
    this.gaps.splice(at < 0 ? this.gaps.length : at, 0, gap);
  }

  private serially(step: () => Promise<void>): Promise<void> {
    const result = this.queue.then(step);
    this.queue = result.catch(() => undefined);
    return result;
  }
}
