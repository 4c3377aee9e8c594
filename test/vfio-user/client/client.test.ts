/** VfioUserClient against a scripted server, one suite over the in-memory transport and a real socketpair. */

import assert from 'node:assert/strict';
import { DmaFault, EPERM, GuestMemory, SharedRegion, type DmaSpace } from '../../../lib/memory';
import { native } from '../../../lib/native';
import { EventFd, MessageSocket } from '../../../lib/os';
import { VfioUserClient, VfioUserClientError, type DmaFaultEvent, type VfioUserClientOptions } from '../../../lib/vfio-user/client';
import { VfioUserRemoteError } from '../../../lib/vfio-user/connection-errors';
import { ERRNO } from '../../../lib/errno';
import { DEVICE_INFO_FLAGS, IRQ_INDEXES, REGION_INFO_FLAGS, SET_IRQS_FLAGS } from '../../../lib/vfio-user/protocol';
import { dmaRead, dmaWrite } from '../../../lib/vfio-user/transfers';
import { InMemoryTransport, socketTransport, type Transport } from '../../../lib/vfio-user/transport';
import { openFdCount, tick, waitFor } from '../../helpers';
import { BAR1_AREAS, BAR1_SIZE, IRQ_COUNTS, REGION_TYPE, ScriptedServer, type ScriptedServerOptions } from './scripted-server';

const KINDS: Record<string, () => [Transport, Transport]> = {
  'in-memory': () => InMemoryTransport.pair(),
  socket: () => MessageSocket.pair().map(socketTransport) as [Transport, Transport],
};

function isClientError(code: VfioUserClientError['code']) {
  return (error: unknown) => error instanceof VfioUserClientError && error.code === code && error.message.length > 0;
}

function isRemoteErrno(errno: number) {
  return (error: unknown) => error instanceof VfioUserRemoteError && error.errno === errno;
}

for (const [kind, makePair] of Object.entries(KINDS)) {
  describe(`VfioUserClient over ${kind}`, () => {
    const cleanup: (() => void)[] = [];
    afterEach(() => {
      for (const run of cleanup.splice(0).reverse()) run();
    });

    async function start(clientOptions: VfioUserClientOptions = {}, serverOptions: ScriptedServerOptions = {}) {
      const [a, b] = makePair();
      const server = new ScriptedServer(b, serverOptions);
      cleanup.push(() => server.close());
      const client = await VfioUserClient.open(a, { requestTimeoutMs: 5000, ...clientOptions });
      cleanup.push(() => client.close());
      return { client, server };
    }

    it('negotiates and enumerates regions (sparse mmap, fd, type cap) and IRQ indexes', async () => {
      const { client, server } = await start();
      const description = client.description;
      assert.deepEqual(description.version, { major: 0, minor: 2 });
      assert.equal(description.twinSocket, false);
      assert.equal(description.serverCapabilities.maxMsgFds, 8);
      assert.deepEqual(description.device, { flags: DEVICE_INFO_FLAGS.bits.RESET | DEVICE_INFO_FLAGS.bits.PCI, numRegions: 9, numIrqs: 5 });
      const bar1 = description.regions[1]!;
      assert.equal(bar1.name, 'BAR1');
      assert.equal(bar1.size, BigInt(BAR1_SIZE));
      assert.equal(
        bar1.flags,
        REGION_INFO_FLAGS.bits.READ | REGION_INFO_FLAGS.bits.WRITE | REGION_INFO_FLAGS.bits.MMAP | REGION_INFO_FLAGS.bits.CAPS,
      );
      assert.equal(bar1.sparse, true);
      assert.deepEqual(bar1.mmapAreas, BAR1_AREAS);
      assert.equal(bar1.hasFd, true);
      assert.equal(bar1.argsz, 80);
      assert.match(client.region(1).describeFd() ?? '', /memfd:bar1/);
      assert.deepEqual(description.regions[7], {
        index: 7,
        name: 'CONFIG',
        flags: 3,
        size: 256n,
        offset: 0n,
        argsz: 32,
        mmapAreas: [],
        sparse: false,
        type: undefined,
        otherCapabilities: [],
        hasFd: false,
      });
      assert.deepEqual(description.regions[8]!.type, REGION_TYPE);
      assert.deepEqual(
        description.regions.slice(2, 7).map((r) => [r.index, r.size, r.flags]),
        [2, 3, 4, 5, 6].map((i) => [i, 0n, 0]),
      );
      assert.deepEqual(
        description.irqs.map((irq) => [irq.name, irq.count]),
        [
          ['INTX', 1],
          ['MSI', 4],
          ['MSIX', 0],
          ['ERR', 1],
          ['REQ', 1],
        ],
      );
      // Regions with caps did not fit 32 bytes: asked with 32, told the size, asked again with it; the others once.
      assert.deepEqual(
        server.regionInfoRequests.filter((r) => r.index === 1),
        [
          { index: 1, argsz: 32 },
          { index: 1, argsz: 80 },
        ],
      );
      assert.deepEqual(
        server.regionInfoRequests.filter((r) => r.index === 8),
        [
          { index: 8, argsz: 32 },
          { index: 8, argsz: 48 },
        ],
      );
      assert.equal(server.regionInfoRequests.length, 11);
    });

    it('refuses a server whose argsz keeps growing, and closes everything it got', async () => {
      const before = openFdCount();
      const [a, b] = makePair();
      const server = new ScriptedServer(b, { growingArgsz: true });
      cleanup.push(() => server.close());
      await assert.rejects(VfioUserClient.open(a, { requestTimeoutMs: 5000 }), isClientError('ERR_VFIO_USER_ENUMERATION'));
      await tick(5);
      server.close();
      await tick(5);
      assert.equal(openFdCount(), before);
    });

    it("splits region I/O to the server's max_data_xfer_size, posts writes with NO_REPLY on request", async () => {
      const { client, server } = await start({ capabilities: { maxDataXferSize: 80 } }, { capabilities: { maxDataXferSize: 64 } });
      const data = Uint8Array.from({ length: 200 }, (_, i) => i + 1);
      await client.regionWrite(0, 16, data);
      assert.deepEqual(
        server.accesses.map((a) => [a.offset, a.length]),
        [
          [16n, 64],
          [80n, 64],
          [144n, 64],
          [208n, 8],
        ],
      );
      assert.deepEqual(server.bar0.subarray(16, 216), data);
      assert.deepEqual(await client.regionRead(0, 16n, 200), data);
      assert.deepEqual(
        server.accesses.slice(4).map((a) => a.length),
        [64, 64, 64, 8],
      );

      // Read replies carry the data, so our own limit bounds read pieces too.
      const small = await start({ capabilities: { maxDataXferSize: 48 } }, { capabilities: { maxDataXferSize: 64 } });
      await small.client.regionWrite(0, 0, data.subarray(0, 100));
      assert.deepEqual(await small.client.regionRead(0, 0, 100), data.subarray(0, 100));
      assert.deepEqual(
        small.server.accesses.map((a) => [a.command, a.length]),
        [
          ['REGION_WRITE', 64],
          ['REGION_WRITE', 36],
          ['REGION_READ', 48],
          ['REGION_READ', 48],
          ['REGION_READ', 4],
        ],
      );

      server.accesses.length = 0;
      await client.regionWrite(7, 0x40, Uint8Array.of(1, 2, 3, 4), { posted: true });
      assert.deepEqual(await client.regionRead(7, 0x40, 4), Uint8Array.of(1, 2, 3, 4));
      assert.deepEqual(
        server.accesses.map((a) => [a.command, a.noReply]),
        [
          ['REGION_WRITE', true],
          ['REGION_READ', false],
        ],
      );
    });

    it('refuses region accesses outside a region or against its flags before sending', async () => {
      const { client, server } = await start();
      await assert.rejects(client.regionRead(0, 250, 8), isClientError('ERR_VFIO_USER_REGION_ACCESS'));
      await assert.rejects(client.regionWrite(8, 0, Uint8Array.of(1)), isClientError('ERR_VFIO_USER_REGION_ACCESS'));
      await assert.rejects(client.regionRead(9, 0, 1), isClientError('ERR_VFIO_USER_NO_REGION'));
      assert.equal(server.accesses.length, 0);
      assert.deepEqual(await client.regionRead(8, 0, 2), Uint8Array.of(0x5a, 0x5a));
    });

    it('reports a short REGION_READ reply', async () => {
      const { client } = await start({}, { shortReads: true });
      await assert.rejects(client.regionRead(0, 0, 8), isClientError('ERR_VFIO_USER_SHORT_ACCESS'));
    });

    it('maps sparse areas on demand and accesses them directly, the rest by message', async () => {
      const { client, server } = await start();
      assert.equal(client.region(1).mapped, false);
      const areas = client.mapRegion(1);
      assert.deepEqual(
        areas.map((a) => [a.offset, a.size, a.bytes.length]),
        [
          [0n, 0x1000n, 0x1000],
          [0x2000n, 0x1000n, 0x1000],
        ],
      );
      const serverBar1 = new Uint8Array(server.bar1.buffer);
      serverBar1.set([9, 8, 7, 6], 0x2010);
      assert.deepEqual(await client.regionRead(1, 0x2010, 4), Uint8Array.of(9, 8, 7, 6));
      await client.regionWrite(1, 0x20, Uint8Array.of(0xaa, 0xbb));
      assert.deepEqual(serverBar1.subarray(0x20, 0x22), Uint8Array.of(0xaa, 0xbb));
      assert.equal(server.accesses.length, 0, 'accesses inside mapped areas never reach the socket');
      serverBar1[0x1800] = 0x33;
      assert.deepEqual(await client.regionRead(1, 0x1800, 1), Uint8Array.of(0x33));
      assert.deepEqual(await client.regionRead(1, 0x2010, 1, { viaMessage: true }), Uint8Array.of(9));
      assert.deepEqual(
        server.accesses.map((a) => a.offset),
        [0x1800n, 0x2010n],
      );
      assert.throws(() => client.mapRegion(0), isClientError('ERR_VFIO_USER_REGION_ACCESS'));
      const view = areas[1]!.bytes;
      client.close();
      assert.equal(view.length, 0, 'closing the client unmaps the areas');
    });

    it('DMA_MAPs a memfd the server can map and see, and keeps its own map table', async () => {
      const { client, server } = await start();
      const ram = SharedRegion.create('ram', 0x4000);
      cleanup.push(() => ram.close());
      new Uint8Array(ram.buffer).set(Buffer.from('guest bytes'), 0x1000);
      const mapping = await client.dmaMap({ address: 0x100000n, size: 0x2000n, fd: ram.fd, offset: 0x1000n });
      assert.equal(mapping.state, 'mapped');
      assert.equal(server.maps.length, 1);
      assert.deepEqual(server.maps[0]!.body, { command: 'DMA_MAP', argsz: 32, flags: 3, offset: 0x1000n, address: 0x100000n, size: 0x2000n });
      assert.equal(Buffer.from(server.mappedBytes(0x100000n, 11)).toString(), 'guest bytes');
      server.mappedBytes(0x100020n, 2).set([0x12, 0x34]);
      assert.deepEqual(new Uint8Array(ram.buffer, 0x1020, 2), Uint8Array.of(0x12, 0x34));
      assert.deepEqual(
        client.dmaMappings.map((m) => [m.address, m.size, m.withFd]),
        [[0x100000n, 0x2000n, true]],
      );
      await client.dmaUnmap(0x100000n, 0x2000n);
      assert.deepEqual(client.dmaMappings, []);
      assert.equal(server.maps.length, 0);
    });

    it('refuses overlapping maps, unaligned ranges, unmaps of unmapped ranges and maps beyond max_dma_maps locally', async () => {
      const { client, server } = await start({}, { capabilities: { maxDmaMaps: 3 } });
      await client.dmaMap({ address: 0x10000n, size: 0x2000n });
      await assert.rejects(client.dmaMap({ address: 0x11000n, size: 0x1000n }), isClientError('ERR_VFIO_USER_DMA_OVERLAP'));
      await assert.rejects(client.dmaMap({ address: 0xf000n, size: 0x2000n }), isClientError('ERR_VFIO_USER_DMA_OVERLAP'));
      // Two maps of one range in flight at once: the second is refused before the first is answered.
      const first = client.dmaMap({ address: 0x20000n, size: 0x1000n });
      await assert.rejects(client.dmaMap({ address: 0x20000n, size: 0x1000n }), isClientError('ERR_VFIO_USER_DMA_OVERLAP'));
      await first;
      await assert.rejects(client.dmaMap({ address: 0x30800n, size: 0x1000n }), isClientError('ERR_VFIO_USER_DMA_RANGE'));
      await assert.rejects(client.dmaMap({ address: 0x30000n, size: 0n }), isClientError('ERR_VFIO_USER_DMA_RANGE'));
      await client.dmaMap({ address: 0x12000n, size: 0x1000n }); // adjacent, not overlapping
      await assert.rejects(client.dmaMap({ address: 0x40000n, size: 0x1000n }), isClientError('ERR_VFIO_USER_DMA_LIMIT'));
      await assert.rejects(client.dmaUnmap(0x10000n, 0x1000n), isClientError('ERR_VFIO_USER_DMA_NOT_MAPPED'));
      await assert.rejects(client.dmaUnmap(0x50000n, 0x1000n), isClientError('ERR_VFIO_USER_DMA_NOT_MAPPED'));
      assert.deepEqual(
        server.maps.map((m) => m.body.address),
        [0x10000n, 0x20000n, 0x12000n],
      );
      assert.equal(server.unmaps.length, 0);
      await client.dmaUnmapAll();
      assert.deepEqual(server.unmaps, [{ address: 0n, size: 0n, flags: 2 }]);
      assert.deepEqual(client.dmaMappings, []);
      await client.dmaMap({ address: 0x11000n, size: 0x1000n });
    });

    it("hands eventfds over with SET_IRQS, split to max_msg_fds; the server's signal reaches our EventFd", async () => {
      const { client, server } = await start({}, { capabilities: { maxMsgFds: 2 } });
      const eventfds = [EventFd.create(), EventFd.create(), EventFd.create()];
      cleanup.push(() => eventfds.forEach((e) => e.close()));
      await client.enableMsi(eventfds);
      const { DATA_EVENTFD, ACTION_TRIGGER, DATA_NONE, ACTION_MASK, ACTION_UNMASK } = SET_IRQS_FLAGS.bits;
      assert.deepEqual(
        server.setIrqs.map(({ body, fds }) => [body.index, body.start, body.count, body.flags, body.argsz, fds]),
        [
          [1, 0, 2, DATA_EVENTFD | ACTION_TRIGGER, 20, 2],
          [1, 2, 1, DATA_EVENTFD | ACTION_TRIGGER, 20, 1],
        ],
      );
      server.irqFds.forEach((fd, vector) => native.eventfdWrite(fd, vector + 1));
      assert.deepEqual(
        eventfds.map((e) => e.read()),
        [1, 2, 3],
      );

      const signalled: number[] = [];
      eventfds[0]!.watch((count) => signalled.push(count));
      native.eventfdWrite(server.irqFds[0]!, 5);
      await waitFor(() => signalled.length === 1, 'the watched eventfd to fire');
      assert.deepEqual(signalled, [5]);

      server.setIrqs.length = 0;
      await client.maskIrqs(IRQ_INDEXES.values.MSI, 1, 2);
      await client.unmaskIrqs(IRQ_INDEXES.values.MSI, 1, 2);
      await client.triggerIrqs(IRQ_INDEXES.values.MSI, 0, 1);
      await client.disableIrqs(IRQ_INDEXES.values.MSI);
      assert.deepEqual(
        server.setIrqs.map(({ body }) => [body.flags, body.start, body.count]),
        [
          [DATA_NONE | ACTION_MASK, 1, 2],
          [DATA_NONE | ACTION_UNMASK, 1, 2],
          [DATA_NONE | ACTION_TRIGGER, 0, 1],
          [DATA_NONE | ACTION_TRIGGER, 0, 0],
        ],
      );
      await client.setIrqs(IRQ_INDEXES.values.MSI, { start: 1, count: 3, data: 'bool', action: 'trigger', bools: [true, false, true] });
      const last = server.setIrqs.pop()!.body;
      assert.deepEqual([last.flags, last.argsz, [...last.data]], [SET_IRQS_FLAGS.bits.DATA_BOOL | ACTION_TRIGGER, 23, [1, 0, 1]]);
      await assert.rejects(client.maskIrqs(IRQ_INDEXES.values.MSI, 3, 2), isClientError('ERR_VFIO_USER_IRQ_RANGE'));
      await assert.rejects(client.enableMsix([eventfds[0]!]), isClientError('ERR_VFIO_USER_IRQ_RANGE'));
      await assert.rejects(client.triggerIrqs(7, 0, 1), isClientError('ERR_VFIO_USER_IRQ_RANGE'));
      await assert.rejects(
        client.setIrqs(IRQ_INDEXES.values.MSI, { start: 0, count: 2, data: 'eventfd', action: 'trigger', eventfds: [eventfds[0]!] }),
        isClientError('ERR_VFIO_USER_IRQ_RANGE'),
      );
      assert.equal(server.setIrqs.length, 4);
      assert.deepEqual(IRQ_COUNTS[1], 4);
    });

    it("serves the server's DMA_READ/DMA_WRITE from a GuestMemory DmaSpace, with faults answered by errno", async () => {
      const memory = new GuestMemory();
      const ram = SharedRegion.create('guest-ram', 0x10000);
      cleanup.push(() => ram.close());
      memory.addSharedRegion('ram', 0x100000, ram);
      const faults: DmaFaultEvent[] = [];
      const { client, server } = await start({ dmaSpace: memory.dma, capabilities: { maxDataXferSize: 1024 } });
      client.on('dmaFault', (event) => faults.push(event));
      await client.dmaMap({ address: 0x100000n, size: 0x4000n });
      await client.dmaMap({ address: 0x104000n, size: 0x1000n, writable: false });
      await client.dmaMap({ address: 0x200000n, size: 0x1000n }); // mapped, but no guest RAM behind it

      const data = Uint8Array.from({ length: 3000 }, (_, i) => (i * 7) & 255);
      await dmaWrite(server.connection, 0x100100n, data);
      assert.deepEqual(memory.read(0x100100, 3000), data);
      memory.write(0x104010, Uint8Array.of(4, 5, 6));
      assert.deepEqual(await dmaRead(server.connection, 0x104010n, 3), Uint8Array.of(4, 5, 6));
      // One access spanning two adjacent mappings.
      memory.write(0x103ffe, Uint8Array.of(1, 2, 3, 4));
      assert.deepEqual(await dmaRead(server.connection, 0x103ffen, 4), Uint8Array.of(1, 2, 3, 4));

      await assert.rejects(dmaWrite(server.connection, 0x200000n, Uint8Array.of(1)), isRemoteErrno(ERRNO.EFAULT));
      await assert.rejects(dmaWrite(server.connection, 0x104000n, Uint8Array.of(1)), isRemoteErrno(ERRNO.EFAULT));
      await assert.rejects(dmaRead(server.connection, 0x300000n, 8), isRemoteErrno(ERRNO.EFAULT));
      assert.deepEqual(
        faults.map((f) => [f.access, f.address, f.errno]),
        [
          ['write', 0x200000n, ERRNO.EFAULT],
          ['write', 0x104000n, ERRNO.EFAULT],
          ['read', 0x300000n, ERRNO.EFAULT],
        ],
      );
      assert.match(faults[1]!.reason, /does not allow the device to write/);
      assert.match(faults[0]!.reason, /no writable guest RAM/);

      // Swapped for an asynchronous space (as a vIOMMU that waits may be), whose fault carries EPERM.
      const seen: bigint[] = [];
      client.dmaSpace = {
        async read(address, into) {
          await tick();
          seen.push(address);
          if (address >= 0x103000n) throw new DmaFault(address, into.length, 'read', 'blocked by the IOMMU', EPERM);
          into.fill(0xee);
        },
        write: () => undefined,
      };
      assert.deepEqual(await dmaRead(server.connection, 0x100000n, 2), Uint8Array.of(0xee, 0xee));
      await assert.rejects(dmaRead(server.connection, 0x103000n, 2), isRemoteErrno(ERRNO.EPERM));
      assert.deepEqual(seen, [0x100000n, 0x103000n]);
      client.dmaSpace = undefined;
      await assert.rejects(dmaRead(server.connection, 0x100000n, 2), isRemoteErrno(ERRNO.EFAULT));
    });

    it('lets the VMM opt out of the map-table check (a vIOMMU space decides alone)', async () => {
      const space: DmaSpace = { read: (_address, into) => into.fill(1), write: () => undefined };
      const { server } = await start({ dmaSpace: space, checkDmaAgainstMaps: false });
      assert.deepEqual(await dmaRead(server.connection, 0xdead000n, 2), Uint8Array.of(1, 1));
    });

    it('resets the device', async () => {
      const { client, server } = await start();
      await client.reset();
      assert.equal(server.resets, 1);
    });

    it('releases everything when the server vanishes, and refuses use afterwards', async () => {
      const { client, server } = await start();
      const areas = client.mapRegion(1);
      const closed = new Promise<Error | undefined>((resolve) => client.once('close', resolve));
      server.connection.close();
      await closed;
      assert.ok(client.closed);
      assert.equal(areas[0]!.bytes.length, 0);
      assert.equal(client.region(1).describeFd(), undefined);
      await assert.rejects(client.regionRead(0, 0, 1), isClientError('ERR_VFIO_USER_CLIENT_STATE'));
    });

    it('leaks no fd or mapping over a whole session with maps, eventfds, region fds and server DMA', async function () {
      this.timeout(20000);
      const before = openFdCount();
      const liveBefore = native.liveFileDescriptors();
      {
        const memory = new GuestMemory();
        const ram = SharedRegion.create('guest-ram', 0x4000);
        memory.addSharedRegion('ram', 0, ram);
        const { client, server } = await start({ dmaSpace: memory.dma, twinSocket: kind === 'socket' });
        client.mapRegion(1);
        const eventfds = [EventFd.create(), EventFd.create()];
        for (let round = 0; round < 40; round++) {
          await client.dmaMap({ address: 0x0n, size: 0x2000n, fd: ram.fd });
          await client.dmaMap({ address: 0x2000n, size: 0x2000n });
          await client.enableMsi(eventfds);
          await dmaWrite(server.connection, 0x2000n, Uint8Array.of(round));
          await assert.rejects(dmaRead(server.connection, 0x8000n, 1), isRemoteErrno(ERRNO.EFAULT));
          await client.dmaUnmap(0x0n, 0x2000n);
          await client.dmaUnmap(0x2000n, 0x2000n);
          for (const fd of server.irqFds.splice(0)) fd.close();
        }
        assert.equal(memory.readU8(0x2000), 39);
        const closed = new Promise((resolve) => server.connection.once('close', resolve));
        client.close();
        await closed;
        server.close();
        eventfds.forEach((e) => e.close());
        ram.close();
        cleanup.length = 0;
      }
      await tick(10);
      assert.equal(openFdCount(), before);
      assert.equal(native.liveFileDescriptors(), liveBefore);
    });
  });
}

describe('VfioUserClient.connect over a UNIX socket path', () => {
  it('connects, negotiates a twin socket and serves DMA on it', async () => {
    const { UnixServer } = await import('../../../lib/os');
    const { tempSocketPath } = await import('../../helpers');
    const path = tempSocketPath('client');
    const listener = UnixServer.listen(path);
    let server: ScriptedServer | undefined;
    listener.on('connection', (socket) => {
      server = new ScriptedServer(socketTransport(socket), { twinSocket: true });
    });
    const memory = new GuestMemory();
    memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(0x1000) });
    const client = await VfioUserClient.connect(path, { twinSocket: true, dmaSpace: memory.dma, requestTimeoutMs: 5000 });
    try {
      assert.equal(client.description.twinSocket, true);
      assert.ok(server!.connection.hasTwin);
      await client.dmaMap({ address: 0n, size: 0x1000n });
      await dmaWrite(server!.connection, 0x10n, Uint8Array.of(1, 2, 3));
      assert.deepEqual(memory.read(0x10, 3), Uint8Array.of(1, 2, 3));
    } finally {
      client.close();
      listener.close();
      server?.close();
    }
  });
});
