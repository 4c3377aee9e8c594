/**
 * A vfio-user device's DMA table that covers the whole IOVA space: runs the shadow backend maps with guest RAM fds,
 * and every gap between them as an fd-less mapping, so the device's other accesses arrive as DMA_READ/DMA_WRITE
 * messages that the IOMMU translates (and, for an IOVA the guest never mapped, faults into FRCD with an errno).
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

/**
 * Gaps (fd-less mappings) and runs (fd mappings) never overlap and, once started, together cover [0, DMA_SPACE_END).
 * Changes run one at a time: the shadow backend sends many maps at once, and each change here rewrites a gap.
 */
export class DeviceDmaTable implements ShadowTarget {
  /** Sorted by start. */
  private gaps: Range[] = [];
  /** Runs the device holds with an fd, by start. */
  private readonly sharedRuns = new Map<bigint, Range>();
  /** Runs without a shareable backing: left inside a gap, so the device reaches them by message. */
  private readonly messageRuns = new Map<bigint, Range>();
  private queue: Promise<void> = Promise.resolve();

  constructor(private readonly peer: DmaMapPeer) {}

  /** Each run can split a gap in two, so the runs may use at most half of the peer's mappings. */
  get maxDmaMaps(): number {
    return Math.max(0, Math.floor((this.peer.maxDmaMaps - 1) / 2));
  }

  /** The runs mapped with guest RAM fds (the device reaches them directly), sorted. */
  get shared(): readonly { address: bigint; size: bigint }[] {
    return [...this.sharedRuns.values()].sort((a, b) => (a.start < b.start ? -1 : 1)).map((r) => ({ address: r.start, size: r.end - r.start }));
  }

  /** Maps the whole space as one gap: everything by message until runs arrive. */
  start(): Promise<void> {
    return this.serially(async () => {
      if (this.gaps.length > 0 || this.sharedRuns.size > 0) return;
      await this.mapGap({ start: 0n, end: DMA_SPACE_END });
    });
  }

  dmaMap(request: ShadowRunRequest): Promise<void> {
    return this.serially(async () => {
      const run = { start: request.address, end: request.address + request.size };
      if (request.fd === undefined) {
        this.messageRuns.set(run.start, run);
        return;
      }
      const index = this.gaps.findIndex((gap) => gap.start <= run.start && run.end <= gap.end);
      if (index < 0) throw new ViommuError('ERR_VIOMMU_DMA_TABLE', `IOVA range [0x${run.start.toString(16)}, 0x${run.end.toString(16)}) is already mapped for the device`);
      const gap = this.gaps[index]!;
      await this.peer.dmaUnmap(gap.start, gap.end - gap.start);
      this.gaps.splice(index, 1);
      try {
        await this.peer.dmaMap({ ...request });
      } catch (error) {
        await this.mapGap(gap);
        throw error;
      }
      this.sharedRuns.set(run.start, run);
      if (gap.start < run.start) await this.mapGap({ start: gap.start, end: run.start });
      if (run.end < gap.end) await this.mapGap({ start: run.end, end: gap.end });
    });
  }

  dmaUnmap(address: bigint, size: bigint): Promise<void> {
    return this.serially(async () => {
      if (this.messageRuns.delete(address)) return;
      const run = this.sharedRuns.get(address);
      if (run === undefined || run.end !== address + size) return;
      await this.peer.dmaUnmap(run.start, run.end - run.start);
      this.sharedRuns.delete(address);
      // The freed range joins its neighbouring gaps, so the table never holds more pieces than it needs.
      const merged = { start: run.start, end: run.end };
      for (const neighbour of this.gaps.filter((gap) => gap.end === run.start || gap.start === run.end)) {
        await this.peer.dmaUnmap(neighbour.start, neighbour.end - neighbour.start);
        this.gaps = this.gaps.filter((gap) => gap !== neighbour);
        merged.start = neighbour.start < merged.start ? neighbour.start : merged.start;
        merged.end = neighbour.end > merged.end ? neighbour.end : merged.end;
      }
      await this.mapGap(merged);
    });
  }

  /** Resolves when every change asked for so far is answered. */
  settled(): Promise<void> {
    return this.queue;
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
