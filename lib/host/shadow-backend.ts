/**
 * The shadow backend: keeps each attached vfio-user device's DMA map table equal to what the guest's IOMMU tables
 * allow it (caching mode), with guest RAM passed as fd + offset so the device reaches it directly.
 */
import { EventEmitter } from 'node:events';
import { ViommuError } from '../errors';
import type { GuestMemory } from '../memory/guest-memory';
import type { FileDescriptor } from '../native';
import type { DeviceDomainListener, MappedRun, VtdDomain } from '../vtd/address-space';
import { HeldRuns } from './held-runs';
import { SHADOW_ACCESS, ShadowMappings, type ShadowChanges, type ShadowExtent } from './shadow-mappings';
import { PAGE_BYTES } from '../memory/geometry';

const PAGE = PAGE_BYTES;
/** DMA_MAPs in flight per device: well below the u16 message-id space, deep enough to keep the socket busy. */
const MAX_IN_FLIGHT = 256;

/** What the backend drives on a device: the DMA table half of a vfio-user client. */
export interface ShadowTarget {
  dmaMap(request: { address: bigint; size: bigint; readable: boolean; writable: boolean; fd?: FileDescriptor; offset?: bigint }): Promise<unknown>;
  dmaUnmap(address: bigint, size: bigint): Promise<void>;
  /** The peer's max_dma_maps. */
  readonly maxDmaMaps: number;
}

/** The unit side: who tells the backend which domain a device is in. */
export interface DomainSource {
  watchDevice(sid: number, listener: DeviceDomainListener): () => void;
}

export interface ShadowBackendEvents {
  /** A map or unmap the device refused, or a table that outgrew the device's max_dma_maps; the device keeps working. */
  error: [sid: number, error: Error];
}

/** One attached device. */
export interface ShadowAttachment {
  readonly sid: number;
  /** The domain the device currently follows (undefined: DMA blocked). */
  readonly domain: VtdDomain | undefined;
  /** Resolves once every DMA_MAP/DMA_UNMAP decided so far has been answered. */
  settled(): Promise<void>;
  /** Stops following the guest and unmaps everything from the device. */
  detach(): Promise<void>;
}

interface DomainShadow {
  readonly domain: VtdDomain;
  readonly mappings: ShadowMappings;
  readonly devices: Set<DeviceShadow>;
  readonly unlisten: () => void;
}

/** One batch of changes for one device. */
interface Batch {
  /** The runs to unmap; for a batch that unmaps everything, the domain table the batches before it left. */
  readonly unmap: readonly ShadowExtent[];
  /** Unmaps everything the device holds when the batch starts: the table as corrected by HeldRuns. */
  readonly everything: boolean;
  readonly map: readonly ShadowExtent[];
  /** Called once the batch is answered: settled() callers waiting for it (made when the first one asks). */
  done: (() => void)[] | undefined;
}

/** The DMA_MAP/DMA_UNMAP arguments of a run, made once per run however many devices it goes to. */
interface RunMessages {
  readonly generation: number;
  readonly address: bigint;
  readonly size: bigint;
  readonly map: ShadowMapRequest;
}

type ShadowMapRequest = Parameters<ShadowTarget['dmaMap']>[0];

/**
 * Sends one device its batches in order: a batch starts when the one before it is answered; inside a batch the
 * unmaps go first, all answered before the first map. At most MAX_IN_FLIGHT requests are out at once, a new one
 * leaving as each is answered. A plain state machine rather than a chain of promises: with many devices on one
 * domain, what each device costs per invalidation is what this class does.
 */
class DeviceShadow implements ShadowAttachment {
  domain: VtdDomain | undefined;
  /** Where what the device holds differs from its batches: what a later move away from the domain must unmap. */
  private readonly held = new HeldRuns();
  stopWatching: () => void = () => undefined;
  private readonly batches: Batch[] = [];
  private phase: 'unmap' | 'map' = 'unmap';
  private runs: readonly ShadowExtent[] = [];
  private nextRun = 0;
  private inFlight = 0;
  private readonly answered = (): void => this.requestDone();

  constructor(
    readonly sid: number,
    readonly target: ShadowTarget,
    private readonly backend: ShadowBackend,
  ) {}

  settled(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.whenSettled(resolve)) resolve();
    });
  }

  /** Requests decided and not yet answered. */
  get busy(): boolean {
    return this.batches.length > 0;
  }

  /** Calls `callback` once every batch queued so far is answered; false (and no call) when nothing is queued. */
  whenSettled(callback: () => void): boolean {
    const last = this.batches[this.batches.length - 1];
    if (last === undefined) return false;
    (last.done ??= []).push(callback);
    return true;
  }

  detach(): Promise<void> {
    return this.backend.detach(this);
  }

  /** Queues a batch of the domain's changes. */
  send(changes: ShadowChanges): void {
    if (changes.unmap.length === 0 && changes.map.length === 0) return;
    this.queue({ unmap: changes.unmap, everything: false, map: changes.map, done: undefined });
  }

  /**
   * Queues a batch that unmaps everything the device holds when it runs (earlier batches may still be on their
   * way); `table` is the domain's table now, which those batches leave the device with.
   */
  leave(table: readonly ShadowExtent[]): void {
    this.queue({ unmap: table, everything: true, map: [], done: undefined });
  }

  private queue(batch: Batch): void {
    this.batches.push(batch);
    if (this.batches.length > 1) return;
    this.beginBatch();
    this.launch();
  }

  private beginBatch(): void {
    const batch = this.batches[0]!;
    this.phase = 'unmap';
    this.runs = batch.everything ? this.held.left(batch.unmap) : batch.unmap;
    this.nextRun = 0;
  }

  /** Sends requests of the current phase up to the window; moves on when the phase is done. */
  private launch(): void {
    for (;;) {
      while (this.inFlight < MAX_IN_FLIGHT && this.nextRun < this.runs.length) {
        const run = this.runs[this.nextRun++]!;
        if (this.phase === 'unmap') this.unmap(run);
        else this.map(run);
      }
      if (this.inFlight > 0 || this.nextRun < this.runs.length) return;
      if (this.phase === 'unmap') {
        this.phase = 'map';
        this.runs = this.batches[0]!.map;
        this.nextRun = 0;
        continue;
      }
      const done = this.batches.shift()!.done;
      if (done !== undefined) for (const callback of done) callback();
      if (this.batches.length === 0) return;
      this.beginBatch();
    }
  }

  private unmap(run: ShadowExtent): void {
    // The run leaves `held` as it goes out, so a map of the same page in this batch does not see it.
    if (!this.held.released(run)) return;
    const messages = this.backend.messagesOf(run);
    this.inFlight++;
    let answer: Promise<void>;
    try {
      answer = this.target.dmaUnmap(messages.address, messages.size);
    } catch (error) {
      answer = Promise.reject(error);
    }
    answer.then(this.answered, (error: unknown) => {
      // The device still holds it (or may: a timed-out unmap), so a later unmap of everything must name it again.
      this.held.unmapFailed(run);
      this.backend.report(this.sid, error as Error);
      this.requestDone();
    });
  }

  private map(run: ShadowExtent): void {
    if (this.held.size >= this.target.maxDmaMaps) {
      this.backend.report(
        this.sid,
        new ViommuError(
          'ERR_VIOMMU_SHADOW_LIMIT',
          `device ${sidName(this.sid)} takes at most ${this.target.maxDmaMaps} DMA mappings; IOVA page 0x${run.iovaPage.toString(16)} stays unmapped`,
        ),
      );
      this.held.withheld(run);
      return;
    }
    const kept = this.held.keptAt(run.iovaPage);
    if (kept !== undefined) {
      // Only a refused unmap leaves a run here; the device would refuse the overlap too, and `held` must keep naming it.
      this.backend.report(
        this.sid,
        new ViommuError(
          'ERR_VIOMMU_SHADOW_STALE',
          `device ${sidName(this.sid)} still holds IOVA pages 0x${kept.iovaPage.toString(16)}+${kept.pages} (its unmap failed); the new mapping there is not sent`,
        ),
      );
      this.held.withheld(run);
      return;
    }
    this.held.claimed();
    this.inFlight++;
    let answer: Promise<unknown>;
    try {
      answer = this.target.dmaMap(this.backend.messagesOf(run).map);
    } catch (error) {
      answer = Promise.reject(error);
    }
    answer.then(this.answered, (error: unknown) => {
      this.held.mapFailed(run);
      this.backend.report(this.sid, error as Error);
      this.requestDone();
    });
  }

  private requestDone(): void {
    this.inFlight--;
    if (this.inFlight === 0 || this.nextRun < this.runs.length) this.launch();
  }
}

function sidName(sid: number): string {
  const bus = (sid >>> 8).toString(16).padStart(2, '0');
  const device = ((sid >>> 3) & 0x1f).toString(16).padStart(2, '0');
  return `${bus}:${device}.${sid & 7}`;
}

export class ShadowBackend extends EventEmitter<ShadowBackendEvents> {
  private readonly domains = new Map<VtdDomain, DomainShadow>();
  private readonly attachments = new Set<DeviceShadow>();
  private readonly messageCache = new WeakMap<ShadowExtent, RunMessages>();

  constructor(
    private readonly memory: GuestMemory,
    private readonly unit: DomainSource,
  ) {
    super();
  }

  /** Number of domains with at least one attached device (one shadow table each). */
  get domainCount(): number {
    return this.domains.size;
  }

  /** Follows the guest's tables for `sid` and keeps `target`'s DMA map table equal to them from now on. */
  attach(sid: number, target: ShadowTarget): ShadowAttachment {
    const device = new DeviceShadow(sid, target, this);
    this.attachments.add(device);
    device.stopWatching = this.unit.watchDevice(sid, { domainChanged: (domain) => this.move(device, domain) });
    return device;
  }

  /** What is outstanding: a promise of settled() while any device has requests on their way, else undefined. */
  pending(): Promise<void> | undefined {
    for (const device of this.attachments) if (device.busy) return this.settled();
    return undefined;
  }

  /** Resolves once every attached device has answered everything decided so far. */
  settled(): Promise<void> {
    return new Promise((resolve) => {
      let busy = 0;
      const deviceSettled = (): void => {
        if (--busy === 0) resolve();
      };
      for (const device of this.attachments) if (device.whenSettled(deviceSettled)) busy++;
      if (busy === 0) resolve();
    });
  }

  async detach(device: DeviceShadow): Promise<void> {
    if (!this.attachments.delete(device)) return device.settled();
    device.stopWatching();
    this.move(device, undefined);
    return device.settled();
  }

  report(sid: number, error: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', sid, error);
  }

  /**
   * The DMA_UNMAP range and DMA_MAP request of a run, made once and shared by every device of the domain (runs are
   * immutable; the guest memory's generation tells when a region change makes the fd part stale).
   */
  messagesOf(run: ShadowExtent): RunMessages {
    const generation = this.memory.generation;
    const cached = this.messageCache.get(run);
    if (cached !== undefined && cached.generation === generation) return cached;
    const map = this.mapRequest(run);
    const messages = { generation, address: map.address, size: map.size, map };
    this.messageCache.set(run, messages);
    return messages;
  }

  /** DMA_MAP of one run: with the guest RAM fd when one region with a shareable backing holds it all. */
  mapRequest(run: ShadowExtent): ShadowMapRequest & { address: bigint; size: bigint } {
    const request = {
      address: BigInt(run.iovaPage) * BigInt(PAGE),
      size: BigInt(run.pages) * BigInt(PAGE),
      readable: (run.access & SHADOW_ACCESS.READ) !== 0,
      writable: (run.access & SHADOW_ACCESS.WRITE) !== 0,
    };
    const start = run.gpaPage * PAGE;
    const region = this.memory.regionAt(start);
    if (region === undefined || region.backing === undefined || start + run.pages * PAGE > region.end) return request;
    return {
      ...request,
      fd: region.backing.region.fd,
      offset: BigInt(region.backing.region.fdOffset + region.backing.offset + (start - region.start)),
    };
  }

  private move(device: DeviceShadow, domain: VtdDomain | undefined): void {
    const previous = device.domain;
    if (previous === domain) return;
    if (previous !== undefined) {
      const shadow = this.domains.get(previous);
      shadow?.devices.delete(device);
      if (shadow !== undefined && shadow.devices.size === 0) {
        shadow.unlisten();
        this.domains.delete(previous);
      }
      // The domain's table now: the batches already queued for the device leave it holding that (less HeldRuns' exceptions).
      device.leave(shadow?.mappings.extents ?? []);
    }
    device.domain = domain;
    if (domain === undefined) return;
    const shadow = this.domains.get(domain) ?? this.follow(domain);
    shadow.devices.add(device);
    // A device joining a domain gets a replay of what the domain maps now.
    device.send({ unmap: [], map: [...shadow.mappings.extents] });
  }

  private follow(domain: VtdDomain): DomainShadow {
    const mappings = new ShadowMappings({ sameBacking: (previous, next) => this.sameBacking(previous, next) });
    const devices = new Set<DeviceShadow>();
    mappings.update(0, domain.pageLimit, domain.mappings(0, domain.pageLimit));
    const unlisten = domain.listen({
      mappingsChanged: (firstPage: number, pageCount: number, runs: readonly MappedRun[]) => {
        const changes = mappings.update(firstPage, pageCount, runs);
        for (const device of devices) device.send(changes);
      },
    });
    const shadow = { domain, mappings, devices, unlisten };
    this.domains.set(domain, shadow);
    return shadow;
  }

  private sameBacking(previousGpaPage: number, nextGpaPage: number): boolean {
    return this.memory.regionAt(previousGpaPage * PAGE) === this.memory.regionAt(nextGpaPage * PAGE);
  }
}
