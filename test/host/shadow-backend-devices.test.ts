/**
 * ShadowBackend with several devices on one domain, in process: a device that refused or was not sent a mapping
 * gets no unmap for it, the others are untouched, and leaving unmaps exactly what that device holds.
 */
import { strict as assert } from 'node:assert';
import { ShadowBackend, type DomainSource, type ShadowTarget } from '../../lib/host/shadow-backend';
import { GuestMemory } from '../../lib/memory';
import {
  MAPPING_ACCESS,
  type DeviceDomainListener,
  type DomainInvalidationListener,
  type DomainMappingListener,
  type MappedRun,
  type VtdDomain,
} from '../../lib/vtd/address-space';

const PAGE = 4096;
const RW = MAPPING_ACCESS.READ | MAPPING_ACCESS.WRITE;

/** A domain of single pages the test sets, told to its listeners on invalidate(). */
class PageDomain implements VtdDomain {
  readonly kind = 'second-stage' as const;
  readonly key = 'ss:did=9';
  readonly did = 9;
  readonly pageLimit = 1 << 20;
  readonly pages = new Map<number, number>();
  private readonly listeners = new Set<DomainMappingListener>();

  mappings(firstPage: number, pageCount: number): MappedRun[] {
    return [...this.pages]
      .filter(([page]) => page >= firstPage && page < firstPage + pageCount)
      .sort(([a], [b]) => a - b)
      .map(([iovaPage, gpaPage]) => ({ iovaPage, gpaPage, pages: 1, access: RW }));
  }

  listen(listener: DomainMappingListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  listenInvalidations(_listener: DomainInvalidationListener): () => void {
    return () => undefined;
  }

  invalidate(): void {
    const runs = this.mappings(0, this.pageLimit);
    for (const listener of this.listeners) listener.mappingsChanged(0, this.pageLimit, runs);
  }
}

/** Every SID in one domain. */
function sameDomain(domain: VtdDomain): DomainSource {
  return {
    watchDevice(_sid: number, listener: DeviceDomainListener) {
      listener.domainChanged(domain);
      return () => undefined;
    },
  };
}

/** A device's DMA table as it sees it, by IOVA page; refuses the DMA_MAPs of the pages in `refuse`. */
class RecordingTarget implements ShadowTarget {
  readonly table = new Map<number, number>();
  readonly unmapped: number[] = [];

  constructor(
    readonly maxDmaMaps = 1 << 20,
    private readonly refuse: readonly number[] = [],
  ) {}

  dmaMap(request: { address: bigint; size: bigint }): Promise<unknown> {
    const page = Number(request.address) / PAGE;
    if (this.refuse.includes(page)) return Promise.reject(new Error(`DMA_MAP of page 0x${page.toString(16)} refused`));
    assert.ok(!this.table.has(page), `page 0x${page.toString(16)} is mapped twice`);
    this.table.set(page, Number(request.size) / PAGE);
    return Promise.resolve();
  }

  dmaUnmap(address: bigint): Promise<void> {
    const page = Number(address) / PAGE;
    assert.ok(this.table.delete(page), `page 0x${page.toString(16)} is unmapped but not mapped`);
    this.unmapped.push(page);
    return Promise.resolve();
  }
}

describe('ShadowBackend with several devices on one domain', () => {
  it('sends each device the unmaps of what it holds only, through refusals, its limit and detach', async () => {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(64 * PAGE) });
    const domain = new PageDomain();
    for (const page of [0x10, 0x12, 0x14]) domain.pages.set(page, page);
    const backend = new ShadowBackend(memory, sameDomain(domain));
    const errors: string[] = [];
    backend.on('error', (sid, error) => errors.push(`${sid}: ${(error as { code?: string }).code ?? error.message}`));
    const plain = new RecordingTarget();
    const refusing = new RecordingTarget(1 << 20, [0x12, 0x20]);
    const small = new RecordingTarget(2);
    const devices = [plain, refusing, small].map((target, i) => backend.attach(i + 1, target));
    await backend.settled();
    assert.deepEqual([...plain.table.keys()], [0x10, 0x12, 0x14]);
    assert.deepEqual([...refusing.table.keys()], [0x10, 0x14]);
    assert.deepEqual([...small.table.keys()], [0x10, 0x12]);
    assert.deepEqual(errors.sort(), ['2: DMA_MAP of page 0x12 refused', '3: ERR_VIOMMU_SHADOW_LIMIT']);

    // The guest moves page 0x12 to 0x20 and drops 0x14: each device unmaps only what it holds.
    domain.pages.delete(0x12);
    domain.pages.delete(0x14);
    domain.pages.set(0x20, 0x20);
    domain.invalidate();
    await backend.settled();
    assert.deepEqual(plain.unmapped, [0x12, 0x14]);
    assert.deepEqual(refusing.unmapped, [0x14]);
    assert.deepEqual(small.unmapped, [0x12]);
    for (const target of [plain, small]) assert.deepEqual([...target.table.keys()].sort(), [0x10, 0x20]);
    assert.deepEqual([...refusing.table.keys()], [0x10]);

    // Leaving names what the device holds: not 0x20, whose map it refused.
    await devices[1]!.detach();
    assert.deepEqual(refusing.unmapped, [0x14, 0x10]);
    assert.equal(refusing.table.size, 0);
    await Promise.all([devices[0]!.detach(), devices[2]!.detach()]);
    assert.equal(plain.table.size + small.table.size, 0);
    assert.deepEqual(errors.slice(2), ['2: DMA_MAP of page 0x20 refused']);
  });
});
