/**
 * A vfio-user device's DMA table that covers the whole IOVA space: runs the shadow backend maps with guest RAM fds,
 * and every gap between them as an fd-less mapping, so the device's other accesses arrive as DMA_READ/DMA_WRITE
 * messages that the IOMMU translates (and, for an IOVA the guest never mapped, faults into FRCD with an errno).
 *
 * vfio-user has no "replace": a DMA_MAP may not overlap a mapping, so putting a run inside a gap means unmapping the
 * gap, mapping the run and mapping the pieces around it again (and the reverse on unmap). For that short window a
 * device DMA by message into the gap finds no mapping at the server and fails there with a local error, without an
 * IOMMU fault record. The window cannot be closed without a protocol change; what is guaranteed is that it closes:
 * any part of a gap that a failed DMA_MAP left unmapped is a "hole", reported and mapped again on the next change.
 */
import type { FileDescriptor } from '../native';
import type { ShadowTarget } from '../host/shadow-backend';
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

interface Range {
  start: bigint;
  end: bigint;
}

/** The top of the space a DMA_MAP can describe: address + size must fit 64 bits and stay page aligned. */
export const DMA_SPACE_END = (1n << 64n) - 4096n;

function describe(range: Range): string {
  return `[0x${range.start.toString(16)}, 0x${range.end.toString(16)})`;
}

function contains(outer: Range, inner: Range): boolean {
  return outer.start <= inner.start && inner.end <= outer.end;
}

function touches(a: Range, b: Range): boolean {
  return a.end === b.start || b.end === a.start;
}

/**
 * Gaps (fd-less mappings), holes (gap space the peer refused to map again) and runs (fd mappings) never overlap and,
 * once started, together cover [0, DMA_SPACE_END). Changes run one at a time: the shadow backend sends many maps at
 * once, and each change here rewrites a gap. A change's promise tells the fate of its run only (rejected: the run
 * is as it was); trouble with the gaps around it goes to `onError`, as the run's caller cannot act on it.
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

  constructor(
    private readonly peer: DmaMapPeer,
    /** Failures to keep the gaps mapped (the device's DMA by message to them fails until the next change). */
    private readonly onError: (error: Error) => void = () => undefined,
  ) {}

  /** Each run can split a gap in two, so the runs may use at most half of the peer's mappings. */
  get maxDmaMaps(): number {
    return Math.max(0, Math.floor((this.peer.maxDmaMaps - 1) / 2));
  }

  /** The runs mapped with guest RAM fds (the device reaches them directly), sorted. */
  get shared(): readonly { address: bigint; size: bigint }[] {
    return [...this.sharedRuns.values()].sort((a, b) => (a.start < b.start ? -1 : 1)).map((r) => ({ address: r.start, size: r.end - r.start }));
  }

  /** Gap space left unmapped by failed DMA_MAPs, sorted (empty unless the peer refused to map a gap). */
  get unmappedGaps(): readonly { address: bigint; size: bigint }[] {
    return [...this.holes].sort((a, b) => (a.start < b.start ? -1 : 1)).map((r) => ({ address: r.start, size: r.end - r.start }));
  }

  /** Maps the whole space as one gap: everything by message until runs arrive. */
  start(): Promise<void> {
    return this.serially(async () => {
      if (this.gaps.length > 0 || this.holes.length > 0 || this.sharedRuns.size > 0) return;
      await this.mapGap({ start: 0n, end: DMA_SPACE_END });
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
      let container = this.gaps.find((gap) => contains(gap, run));
      if (container !== undefined) {
        // A refused unmap leaves everything as it was.
        await this.peer.dmaUnmap(container.start, container.end - container.start);
        this.gaps = this.gaps.filter((gap) => gap !== container);
      } else {
        container = this.holes.find((hole) => contains(hole, run));
        if (container === undefined) throw new ViommuError('ERR_VIOMMU_DMA_TABLE', `IOVA range ${describe(run)} is already mapped for the device`);
        this.holes = this.holes.filter((hole) => hole !== container);
      }
      const gap = container;
      let mapped = false;
      try {
        await this.peer.dmaMap({ ...request });
        this.sharedRuns.set(run.start, run);
        mapped = true;
      } finally {
        if (!mapped) await this.coverWithGap(gap);
        else {
          if (gap.start < run.start) await this.coverWithGap({ start: gap.start, end: run.start });
          if (run.end < gap.end) await this.coverWithGap({ start: run.end, end: gap.end });
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
        throw new ViommuError('ERR_VIOMMU_DMA_TABLE', `unmap of ${describe({ start: address, end: address + size })} names no run the device holds exactly (${held})`);
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
   * Maps `range` (unmapped at the peer, no run inside) as a gap joined with the gaps and holes it touches, so the
   * table never holds more pieces than it needs. Never throws: when the join fails each piece is mapped back on
   * its own, and a piece that still fails becomes a hole.
   */
  private async coverWithGap(range: Range): Promise<void> {
    const unmapped: Range[] = [range];
    for (const hole of this.holes.filter((other) => touches(other, range))) unmapped.push(hole);
    this.holes = this.holes.filter((hole) => !unmapped.includes(hole));
    let joinSent = false;
    try {
      for (const neighbour of this.gaps.filter((gap) => touches(gap, range))) {
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
    this.onError(new ViommuError('ERR_VIOMMU_DMA_TABLE', `IOVA range ${describe(range)} is not mapped for the device (its DMA there fails without a fault record) until the next change: ${cause.message}`));
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
