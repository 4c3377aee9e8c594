/**
 * The shadow backend: keeps each attached vfio-user device's DMA map table equal to what the guest's IOMMU tables
 * allow it (caching mode), with guest RAM passed as fd + offset so the device reaches it directly.
 */
import { EventEmitter } from 'node:events';
import { ViommuError } from '../errors';
import type { GuestMemory } from '../memory/guest-memory';
import type { FileDescriptor } from '../native';
import type { DeviceDomainListener, MappedRun, VtdDomain } from '../vtd/address-space';
import { ShadowMappings, type ShadowChanges, type ShadowExtent } from './shadow-mappings';

const PAGE_SHIFT = 12;
const PAGE = 2 ** PAGE_SHIFT;
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

class DeviceShadow implements ShadowAttachment {
  domain: VtdDomain | undefined;
  /** Runs the device holds right now (as sent): what a later move away from the domain must unmap. */
  readonly held = new Map<number, ShadowExtent>();
  private queue: Promise<void> = Promise.resolve();
  stopWatching: () => void = () => undefined;

  constructor(
    readonly sid: number,
    readonly target: ShadowTarget,
    private readonly backend: ShadowBackend,
  ) {}

  settled(): Promise<void> {
    return this.queue;
  }

  detach(): Promise<void> {
    return this.backend.detach(this);
  }

  /**
   * Changes go out in order: a batch starts when the one before it is answered; inside a batch, unmaps go first.
   * 'everything' unmaps what the device holds when the batch runs (earlier batches may still be on their way).
   */
  send(changes: ShadowChanges | 'everything'): void {
    if (changes !== 'everything' && changes.unmap.length === 0 && changes.map.length === 0) return;
    this.queue = this.queue.then(() => this.apply(changes === 'everything' ? { unmap: [...this.held.values()], map: [] } : changes));
  }

  private async apply(changes: ShadowChanges): Promise<void> {
    await this.inWindows(changes.unmap, async (run) => {
      if (!this.held.delete(run.iovaPage)) return;
      await this.target.dmaUnmap(BigInt(run.iovaPage) * BigInt(PAGE), BigInt(run.pages) * BigInt(PAGE));
    });
    await this.inWindows(changes.map, async (run) => {
      if (this.held.size >= this.target.maxDmaMaps) {
        throw new ViommuError('ERR_VIOMMU_SHADOW_LIMIT', `device ${sidName(this.sid)} takes at most ${this.target.maxDmaMaps} DMA mappings; IOVA page 0x${run.iovaPage.toString(16)} stays unmapped`);
      }
      this.held.set(run.iovaPage, run);
      try {
        await this.target.dmaMap(this.backend.mapRequest(run));
      } catch (error) {
        this.held.delete(run.iovaPage);
        throw error;
      }
    });
  }

  private async inWindows(runs: readonly ShadowExtent[], step: (run: ShadowExtent) => Promise<void>): Promise<void> {
    for (let start = 0; start < runs.length; start += MAX_IN_FLIGHT) {
      const results = await Promise.allSettled(runs.slice(start, start + MAX_IN_FLIGHT).map(step));
      for (const result of results) if (result.status === 'rejected') this.backend.report(this.sid, result.reason as Error);
    }
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

  /** Resolves once every attached device has answered everything decided so far. */
  async settled(): Promise<void> {
    await Promise.all([...this.attachments].map((device) => device.settled()));
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

  /** DMA_MAP of one run: with the guest RAM fd when one region with a shareable backing holds it all. */
  mapRequest(run: ShadowExtent): { address: bigint; size: bigint; readable: boolean; writable: boolean; fd?: FileDescriptor; offset?: bigint } {
    const request = {
      address: BigInt(run.iovaPage) * BigInt(PAGE),
      size: BigInt(run.pages) * BigInt(PAGE),
      readable: (run.access & 0x1) !== 0,
      writable: (run.access & 0x2) !== 0,
    };
    const start = run.gpaPage * PAGE;
    const region = this.memory.regionAt(start);
    if (region === undefined || region.backing === undefined || start + run.pages * PAGE > region.end) return request;
    return { ...request, fd: region.backing.region.fd, offset: BigInt(region.backing.region.fdOffset + region.backing.offset + (start - region.start)) };
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
      device.send('everything');
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
