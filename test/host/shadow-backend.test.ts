/**
 * ShadowBackend against a real vfio-user server over a socket: the server's DMA table follows a domain's mappings,
 * devices sharing a domain share one walk, and moves between domains unmap and replay.
 */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { ShadowBackend, type DomainSource } from '../../lib/host/shadow-backend';
import { GuestMemory, SharedRegion } from '../../lib/memory';
import { VfioUserClient } from '../../lib/vfio-user/client';
import { VfioUserDevice } from '../../lib/vfio-user/server/device';
import type { DmaMapping } from '../../lib/vfio-user/server/dma-maps';
import { VfioUserServer } from '../../lib/vfio-user/server/server';
import {
  MAPPING_ACCESS,
  type DeviceDomainListener,
  type DomainInvalidationListener,
  type DomainMappingListener,
  type MappedRun,
  type VtdDomain,
} from '../../lib/vtd/address-space';
import { openFdCount, tempSocketPath } from '../helpers';

const PAGE = 4096;
const RW = MAPPING_ACCESS.READ | MAPPING_ACCESS.WRITE;

/** A domain as a page map the test edits, with the walk counted: the backend must walk once per invalidation. */
class PageMapDomain implements VtdDomain {
  readonly kind = 'second-stage' as const;
  readonly pageLimit = 1 << 20;
  readonly pages = new Map<number, [number, number]>();
  private readonly listeners = new Set<DomainMappingListener>();
  private readonly rangeListeners = new Set<DomainInvalidationListener>();
  walks = 0;

  constructor(
    readonly key: string,
    readonly did: number,
  ) {}

  mappings(firstPage: number, pageCount: number): MappedRun[] {
    this.walks++;
    const runs: MappedRun[] = [];
    for (const page of [...this.pages.keys()].sort((a, b) => a - b)) {
      if (page < firstPage || page >= firstPage + pageCount) continue;
      const [gpaPage, access] = this.pages.get(page)!;
      runs.push({ iovaPage: page, gpaPage, pages: 1, access });
    }
    return runs;
  }

  listen(listener: DomainMappingListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  listenInvalidations(listener: DomainInvalidationListener): () => void {
    this.rangeListeners.add(listener);
    return () => this.rangeListeners.delete(listener);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }

  /** What the unit does on a page-selective IOTLB invalidation. */
  invalidate(firstPage: number, pageCount: number): void {
    for (const listener of this.rangeListeners) listener.invalidated(firstPage, pageCount);
    const runs = this.mappings(firstPage, pageCount);
    for (const listener of this.listeners) listener.mappingsChanged(firstPage, pageCount, runs);
  }
}

class DeviceDirectory implements DomainSource {
  private readonly watchers = new Map<number, DeviceDomainListener>();
  private readonly placement = new Map<number, VtdDomain | undefined>();

  watchDevice(sid: number, listener: DeviceDomainListener): () => void {
    this.watchers.set(sid, listener);
    listener.domainChanged(this.placement.get(sid));
    return () => this.watchers.delete(sid);
  }

  place(sid: number, domain: VtdDomain | undefined): void {
    this.placement.set(sid, domain);
    this.watchers.get(sid)?.domainChanged(domain);
  }
}

interface ServedDevice {
  readonly client: VfioUserClient;
  /** The server's view: IOVA page -> [fd offset page or -1 without fd, access, pages]. */
  readonly table: Map<bigint, DmaMapping>;
  close(): Promise<void>;
}

async function serveDevice(): Promise<ServedDevice> {
  const table = new Map<bigint, DmaMapping>();
  const device = new VfioUserDevice({
    pci: { identity: { vendorId: 0x1234, deviceId: 0x11e8, revision: 0, classCode: 0xff0000 } },
    onDmaMap: (mapping) => void table.set(mapping.address, mapping),
    onDmaUnmap: (mapping) => void table.delete(mapping.address),
  });
  const path = tempSocketPath('shadow');
  const server = VfioUserServer.listen(path, device);
  const client = await VfioUserClient.connect(path, { requestTimeoutMs: 10000 });
  return {
    client,
    table,
    async close() {
      client.close();
      await server.close();
      device.close();
    },
  };
}

function shadowTarget(client: VfioUserClient) {
  return {
    dmaMap: (request: Parameters<VfioUserClient['dmaMap']>[0]) => client.dmaMap(request),
    dmaUnmap: (address: bigint, size: bigint) => client.dmaUnmap(address, size),
    get maxDmaMaps() {
      return client.connection.peerCapabilities.maxDmaMaps;
    },
  };
}

/** Expands a server table into per-page [gpa page, access], reading the guest page number through the mapped fd. */
function serverPages(table: Map<bigint, DmaMapping>, ram: SharedRegion): Map<number, [number, number]> {
  const pages = new Map<number, [number, number]>();
  for (const mapping of table.values()) {
    assert.ok(mapping.memory !== undefined, 'RAM-backed runs are mapped with the guest RAM fd');
    const access = (mapping.readable ? MAPPING_ACCESS.READ : 0) | (mapping.writable ? MAPPING_ACCESS.WRITE : 0);
    for (let i = 0; i < Number(mapping.size) / PAGE; i++) {
      const gpaPage = Number(mapping.offset) / PAGE + i;
      // The device really sees the guest page: each page of the test's RAM starts with its own page number.
      assert.equal(new DataView(mapping.memory.buffer, mapping.memory.byteOffset + i * PAGE, 4).getUint32(0, true), gpaPage);
      pages.set(Number(mapping.address) / PAGE + i, [gpaPage, access]);
    }
  }
  assert.ok(ram.length > 0);
  return pages;
}

describe('ShadowBackend with a real vfio-user server', () => {
  const RAM_PAGES = 64;
  let ram: SharedRegion;
  let memory: GuestMemory;

  beforeEach(() => {
    ram = SharedRegion.create('shadow-ram', RAM_PAGES * PAGE);
    memory = new GuestMemory();
    memory.addSharedRegion('ram', 0, ram);
    for (let page = 0; page < RAM_PAGES; page++) memory.writeU32(page * PAGE, page);
  });

  afterEach(() => ram.close());

  it('maps a domain into the device with coalesced runs, follows invalidations, and unmaps on detach', async () => {
    const fds = openFdCount();
    const served = await serveDevice();
    const domain = new PageMapDomain('ss:did=1', 1);
    for (let i = 0; i < 8; i++) domain.pages.set(0x100 + i, [10 + i, RW]);
    const directory = new DeviceDirectory();
    directory.place(0x20, domain);
    const backend = new ShadowBackend(memory, directory);
    const errors: Error[] = [];
    backend.on('error', (_sid, error) => errors.push(error));
    const attachment = backend.attach(0x20, shadowTarget(served.client));
    await attachment.settled();
    assert.equal(served.table.size, 1, 'eight contiguous pages are one DMA_MAP');
    assert.deepEqual(serverPages(served.table, ram), domain.pages);

    domain.pages.delete(0x103);
    domain.pages.set(0x200, [40, MAPPING_ACCESS.READ]);
    domain.invalidate(0x103, 1);
    domain.invalidate(0x200, 1);
    await attachment.settled();
    assert.deepEqual(serverPages(served.table, ram), domain.pages);
    assert.equal(served.table.size, 3);

    await attachment.detach();
    assert.equal(served.table.size, 0);
    assert.equal(domain.listenerCount, 0, 'the last device leaving a domain stops following it');
    assert.deepEqual(errors, []);
    await served.close();
    assert.equal(openFdCount(), fds);
  });

  it('keeps a run whose unmap failed among what the device holds, so detach still unmaps it', async () => {
    const served = await serveDevice();
    const domain = new PageMapDomain('ss:did=1', 1);
    domain.pages.set(0x100, [10, RW]);
    domain.pages.set(0x300, [20, RW]);
    const directory = new DeviceDirectory();
    directory.place(0x20, domain);
    const backend = new ShadowBackend(memory, directory);
    const errors: Error[] = [];
    backend.on('error', (_sid, error) => errors.push(error));
    let failUnmaps = 0;
    const target = shadowTarget(served.client);
    const attachment = backend.attach(0x20, {
      ...target,
      maxDmaMaps: target.maxDmaMaps,
      dmaUnmap: (address: bigint, size: bigint) =>
        failUnmaps-- > 0 ? Promise.reject(new Error('DMA_UNMAP timed out')) : target.dmaUnmap(address, size),
    });
    await attachment.settled();
    assert.equal(served.table.size, 2);

    // The guest unmaps page 0x100 and remaps page 0x300 elsewhere; both unmaps fail, so the device keeps both runs.
    domain.pages.delete(0x100);
    domain.pages.set(0x300, [30, RW]);
    failUnmaps = 2;
    domain.invalidate(0x100, 1);
    domain.invalidate(0x300, 1);
    await attachment.settled();
    assert.equal(served.table.size, 2);
    assert.deepEqual(
      errors.map((error) => (error as { code?: string }).code ?? error.message),
      ['DMA_UNMAP timed out', 'DMA_UNMAP timed out', 'ERR_VIOMMU_SHADOW_STALE'],
    );

    await attachment.detach();
    assert.equal(served.table.size, 0, 'detach unmaps the runs whose unmaps failed');
    await served.close();
  });

  it('walks a shared domain once per invalidation and replays it to a device that joins later', async () => {
    const first = await serveDevice();
    const second = await serveDevice();
    const domain = new PageMapDomain('ss:did=7', 7);
    domain.pages.set(5, [5, RW]);
    const directory = new DeviceDirectory();
    directory.place(0x20, domain);
    directory.place(0x28, domain);
    const backend = new ShadowBackend(memory, directory);
    const a = backend.attach(0x20, shadowTarget(first.client));
    domain.pages.set(6, [9, RW]);
    domain.invalidate(6, 1);
    const b = backend.attach(0x28, shadowTarget(second.client));
    assert.equal(backend.domainCount, 1);
    const walksBefore = domain.walks;
    domain.pages.set(7, [20, RW]);
    domain.invalidate(0, 64);
    assert.equal(domain.walks - walksBefore, 1, 'one walk however many devices');
    await backend.settled();
    assert.deepEqual(serverPages(first.table, ram), domain.pages);
    assert.deepEqual(serverPages(second.table, ram), domain.pages);
    await a.detach();
    await b.detach();
    await first.close();
    await second.close();
  });

  it('moves a device between domains: everything of the old one is unmapped, the new one replayed', async () => {
    const served = await serveDevice();
    const red = new PageMapDomain('ss:did=1', 1);
    const blue = new PageMapDomain('ss:did=2', 2);
    red.pages.set(1, [1, RW]);
    red.pages.set(2, [2, RW]);
    blue.pages.set(1, [30, MAPPING_ACCESS.READ]);
    const directory = new DeviceDirectory();
    directory.place(0x20, red);
    const backend = new ShadowBackend(memory, directory);
    const attachment = backend.attach(0x20, shadowTarget(served.client));
    directory.place(0x20, blue);
    await attachment.settled();
    assert.deepEqual(serverPages(served.table, ram), blue.pages);
    directory.place(0x20, undefined);
    await attachment.settled();
    assert.equal(served.table.size, 0, 'a blocked device holds no mappings');
    await attachment.detach();
    await served.close();
  });

  it('keeps the server table equal to the domain over random edits and invalidations', async () => {
    const served = await serveDevice();
    const domain = new PageMapDomain('ss:did=3', 3);
    const directory = new DeviceDirectory();
    directory.place(0x20, domain);
    const backend = new ShadowBackend(memory, directory);
    const attachment = backend.attach(0x20, shadowTarget(served.client));
    const edit = fc.record({
      page: fc.integer({ min: 0, max: 40 }),
      gpa: fc.option(fc.integer({ min: 0, max: RAM_PAGES - 1 }), { nil: undefined }),
      access: fc.constantFrom(MAPPING_ACCESS.READ, RW),
      span: fc.integer({ min: 1, max: 8 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(edit, { maxLength: 20 }), async (edits) => {
        for (const { page, gpa, access, span } of edits) {
          for (let i = 0; i < span; i++) {
            if (gpa === undefined || gpa + i >= RAM_PAGES) domain.pages.delete(page + i);
            else domain.pages.set(page + i, [gpa + i, access]);
          }
          domain.invalidate(page, span);
        }
        await attachment.settled();
        assert.deepEqual(serverPages(served.table, ram), domain.pages);
      }),
      { numRuns: 40 },
    );
    await attachment.detach();
    await served.close();
  });
});
