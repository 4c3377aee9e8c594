/** The device-model API over a real socket: mmap-able regions with sparse areas, argsz rules, IRQ semantics, DMA maps. */

import assert from 'node:assert/strict';
import { PCI_CAPABILITY_IDS } from '../../../lib/devices/pci-layout';
import { SharedRegion } from '../../../lib/memory';
import { native } from '../../../lib/native';
import { EventFd } from '../../../lib/os';
import { VfioUserRemoteError } from '../../../lib/vfio-user/connection-errors';
import type { VfioUserConnection } from '../../../lib/vfio-user/connection';
import { ERRNO } from '../../../lib/errno';
import { DMA_MAP_FLAGS, DMA_UNMAP_FLAGS, REGION_INFO_FLAGS, SET_IRQS_FLAGS } from '../../../lib/vfio-user/protocol';
import { VfioUserDevice, type VfioUserDeviceOptions } from '../../../lib/vfio-user/server/device';
import type { DmaMapping } from '../../../lib/vfio-user/server/dma-maps';
import { bufferRegion } from '../../../lib/vfio-user/server/regions';
import { waitFor } from '../../helpers';
import { Cleanup, CONFIG, connect, dmaMapBody, expectFdsBack, openFdTargets, readRegion, readU32, serve, writeRegion } from './harness';

const BAR1 = 1;
const BAR2 = 2;
const { DATA_NONE, DATA_BOOL, DATA_EVENTFD, ACTION_MASK, ACTION_UNMASK, ACTION_TRIGGER } = SET_IRQS_FLAGS.bits;

function setIrqs(index: number, flags: number, start: number, count: number, data = new Uint8Array(0)) {
  return { argsz: 20 + data.length, flags, index, start, count, data };
}

async function expectErrno(promise: Promise<unknown>, errno: number): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof VfioUserRemoteError, `expected an error reply, got ${String(error)}`);
    assert.equal(error.errno, errno);
    return true;
  });
}

describe('vfio-user device-model API', () => {
  const cleanup = new Cleanup();
  let fdsBefore = new Map<string, string>();
  const mapped: DmaMapping[] = [];
  const unmapped: DmaMapping[] = [];
  const resets: string[] = [];
  const bar2 = new Uint8Array(256);

  function sampleDevice(overrides: Partial<VfioUserDeviceOptions> = {}): VfioUserDevice {
    return new VfioUserDevice({
      pci: {
        identity: { vendorId: 0xdead, deviceId: 0xbeef, classCode: 0x058000, subsystemVendorId: 0xcafe, subsystemId: 0xbabe },
        capabilities: [
          { kind: 'msi', vectors: 4, perVectorMasking: true },
          { kind: 'msix', tableSize: 8, tableBar: 2, tableOffset: 0, pbaBar: 2, pbaOffset: 0x80 },
        ],
      },
      regions: {
        BAR1: {
          size: 0x4000,
          mmap: {
            areas: [
              { offset: 0n, size: 0x1000n },
              { offset: 0x2000n, size: 0x1000n },
            ],
          },
        },
        BAR2: { size: 256, handler: bufferRegion(bar2) },
      },
      irqs: { INTX: 1, ERR: 1, REQ: 1 },
      onDmaMap: (mapping) => mapped.push(mapping),
      onDmaUnmap: (mapping) => void unmapped.push(mapping),
      reset: (reason) => void resets.push(reason),
      ...overrides,
    });
  }

  beforeEach(() => {
    fdsBefore = openFdTargets();
    mapped.length = 0;
    unmapped.length = 0;
    resets.length = 0;
  });
  afterEach(async () => {
    await cleanup.run();
    await expectFdsBack(fdsBefore);
  });

  async function client(device = sampleDevice()): Promise<{ client: VfioUserConnection; device: VfioUserDevice }> {
    const served = serve(cleanup, device);
    return { client: await connect(cleanup, served.path), device };
  }

  describe('regions', () => {
    it('hands out an mmap-able region as an fd with the sparse-mmap capability, and the client sees device writes', async () => {
      const { client: c, device } = await client();
      const reply = await c.request('DEVICE_GET_REGION_INFO', { argsz: 512, index: BAR1 });
      const { READ, WRITE, MMAP, CAPS } = REGION_INFO_FLAGS.bits;
      assert.equal(reply.body.argsz, 80);
      assert.equal(reply.body.flags, READ | WRITE | MMAP | CAPS);
      assert.equal(reply.body.size, 0x4000n);
      assert.deepEqual(reply.body.capabilities, [
        {
          kind: 'sparse-mmap',
          areas: [
            { offset: 0n, size: 0x1000n },
            { offset: 0x2000n, size: 0x1000n },
          ],
        },
      ]);
      assert.equal(reply.fds.length, 1);
      assert.match(reply.fds[0]!.describe(), /memfd:vfio-user-bar1/);
      const region = SharedRegion.fromFd(reply.fds[0]!, { offset: 0, length: 0x1000 });
      cleanup.add(() => region.close());
      new Uint8Array(device.memory('BAR1')!.buffer).set(Buffer.from('from the device'), 0x10);
      assert.equal(Buffer.from(region.buffer, 0x10, 15).toString(), 'from the device');
      // REGION_READ/WRITE reach the same memory.
      await writeRegion(c, BAR1, 0x2000, Buffer.from('by message'));
      assert.equal(Buffer.from(device.memory('BAR1')!.buffer, 0x2000, 10).toString(), 'by message');
      assert.equal(Buffer.from(await readRegion(c, BAR1, 0x10, 15)).toString(), 'from the device');
    });

    it('with too small an argsz: 32 bytes, CAPS cleared, no fd, and the argsz it needs', async () => {
      const { client: c } = await client();
      const reply = await c.request('DEVICE_GET_REGION_INFO', { argsz: 32, index: BAR1 });
      assert.equal(reply.body.argsz, 80);
      assert.equal(reply.body.flags, REGION_INFO_FLAGS.bits.READ | REGION_INFO_FLAGS.bits.WRITE | REGION_INFO_FLAGS.bits.MMAP);
      assert.deepEqual(reply.body.capabilities, []);
      assert.equal(reply.fds.length, 0);
      const exact = await c.request('DEVICE_GET_REGION_INFO', { argsz: 80, index: BAR1 });
      assert.equal(exact.fds.length, 1);
      for (const fd of exact.fds) fd.close();
    });

    it('refuses accesses past a region, to missing regions, and region indexes past VGA with EINVAL', async () => {
      const { client: c } = await client();
      await expectErrno(readRegion(c, BAR2, 255, 2), ERRNO.EINVAL);
      await expectErrno(readRegion(c, 3, 0, 1), ERRNO.EINVAL);
      await expectErrno(readRegion(c, 99, 0, 4), ERRNO.EINVAL);
      await expectErrno(writeRegion(c, CONFIG, 0x100, Uint8Array.of(1)), ERRNO.EINVAL);
      await expectErrno(c.request('DEVICE_GET_REGION_INFO', { argsz: 32, index: 9 }), ERRNO.EINVAL);
      assert.equal((await readRegion(c, BAR2, 255, 1)).length, 1);
    });

    it('lists MSI then MSI-X in config space, with the subsystem IDs', async () => {
      const { client: c } = await client();
      const header = await readRegion(c, CONFIG, 0, 0x40);
      assert.equal(header[0x2c]! | (header[0x2d]! << 8), 0xcafe);
      assert.equal(header[0x2e]! | (header[0x2f]! << 8), 0xbabe);
      let at = header[0x34]!;
      const ids: number[] = [];
      while (at !== 0) {
        const capability = await readRegion(c, CONFIG, at, 2);
        ids.push(capability[0]!);
        at = capability[1]!;
      }
      assert.deepEqual(ids, [PCI_CAPABILITY_IDS.MSI, PCI_CAPABILITY_IDS.MSIX]);
    });
  });

  describe('IRQs', () => {
    it('triggers, masks and unmasks vectors as SET_IRQS says (NONE, BOOL, EVENTFD, de-assign)', async () => {
      const { client: c, device } = await client();
      const efds = [EventFd.create(), EventFd.create()];
      cleanup.add(() => efds.forEach((efd) => efd.close()));
      await c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_EVENTFD | ACTION_TRIGGER, 1, 2), { fds: efds.map((efd) => efd.fd) });
      // Loopback trigger from the client: DATA_NONE fires every vector in range, DATA_BOOL the ones set.
      await c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_NONE | ACTION_TRIGGER, 1, 2));
      assert.deepEqual(
        efds.map((efd) => efd.read()),
        [1, 1],
      );
      await c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_BOOL | ACTION_TRIGGER, 1, 2, Uint8Array.of(0, 1)));
      assert.deepEqual(
        efds.map((efd) => efd.read()),
        [0, 1],
      );
      // A masked vector holds its interrupt until unmasked.
      await c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_NONE | ACTION_MASK, 1, 1));
      assert.equal(device.irqs.trigger('MSI', 1), false);
      assert.equal(efds[0]!.read(), 0);
      await c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_NONE | ACTION_UNMASK, 1, 1));
      assert.equal(efds[0]!.read(), 1);
      // DATA_EVENTFD without fds de-assigns the range.
      await c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_EVENTFD | ACTION_TRIGGER, 2, 1));
      assert.equal(device.irqs.eventFd('MSI', 2), undefined);
      assert.equal(device.irqs.trigger('MSI', 2), false);
    });

    it('unmasks a vector when the client signals its UNMASK eventfd (the resample path)', async () => {
      const { client: c, device } = await client();
      const trigger = EventFd.create();
      const unmask = EventFd.create();
      cleanup.add(() => (trigger.close(), unmask.close()));
      await c.request('DEVICE_SET_IRQS', setIrqs(0, DATA_EVENTFD | ACTION_TRIGGER, 0, 1), { fds: [trigger.fd] });
      await c.request('DEVICE_SET_IRQS', setIrqs(0, DATA_EVENTFD | ACTION_UNMASK, 0, 1), { fds: [unmask.fd] });
      await c.request('DEVICE_SET_IRQS', setIrqs(0, DATA_NONE | ACTION_MASK, 0, 1));
      device.setIntx(true);
      assert.equal(trigger.read(), 0);
      unmask.signal();
      await waitFor(() => !device.irqs.masked('INTX'), 'the unmask eventfd to be seen');
      assert.equal(trigger.read(), 1);
    });

    it('holds an MSI masked in config space (per-vector masking) pending until software unmasks it', async () => {
      const { client: c, device } = await client();
      const efd = EventFd.create();
      cleanup.add(() => efd.close());
      await c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_EVENTFD | ACTION_TRIGGER, 0, 1), { fds: [efd.fd] });
      const msi = device.config.capability(PCI_CAPABILITY_IDS.MSI)!;
      await writeRegion(c, CONFIG, msi.offset + 2, Uint8Array.of(0x01 | (2 << 4), 0)); // enable, 4 vectors
      await writeRegion(c, CONFIG, msi.offset + 0x10, Uint8Array.of(0x1, 0, 0, 0)); // mask vector 0
      assert.equal(device.signalMsi(0), false);
      assert.equal(await readU32(c, CONFIG, msi.offset + 0x14), 1, 'pending bit set');
      await writeRegion(c, CONFIG, msi.offset + 0x10, Uint8Array.of(0, 0, 0, 0));
      assert.equal(efd.read(), 1);
      assert.equal(await readU32(c, CONFIG, msi.offset + 0x14), 0);
    });

    it('refuses what an index cannot do with EINVAL: ranges outside it, masks on ERR, fd counts that do not match', async () => {
      const { client: c } = await client();
      const efd = EventFd.create();
      cleanup.add(() => efd.close());
      await expectErrno(c.request('DEVICE_SET_IRQS', setIrqs(0, DATA_NONE | ACTION_TRIGGER, 0, 2)), ERRNO.EINVAL);
      await expectErrno(c.request('DEVICE_SET_IRQS', setIrqs(2, DATA_NONE | ACTION_TRIGGER, 8, 1)), ERRNO.EINVAL);
      await expectErrno(c.request('DEVICE_SET_IRQS', setIrqs(5, DATA_NONE | ACTION_TRIGGER, 0, 1)), ERRNO.EINVAL);
      await expectErrno(c.request('DEVICE_SET_IRQS', setIrqs(3, DATA_NONE | ACTION_MASK, 0, 1)), ERRNO.EINVAL);
      await expectErrno(c.request('DEVICE_SET_IRQS', setIrqs(0, DATA_EVENTFD | ACTION_TRIGGER, 0, 0)), ERRNO.EINVAL);
      await expectErrno(c.request('DEVICE_SET_IRQS', setIrqs(1, DATA_EVENTFD | ACTION_TRIGGER, 0, 2), { fds: [efd.fd] }), ERRNO.EINVAL);
      const notAnEventFd = SharedRegion.create('not-an-eventfd', 4096);
      cleanup.add(() => notAnEventFd.close());
      await expectErrno(c.request('DEVICE_SET_IRQS', setIrqs(0, DATA_EVENTFD | ACTION_TRIGGER, 0, 1), { fds: [notAnEventFd.fd] }), ERRNO.EINVAL);
    });
  });

  describe('DMA maps', () => {
    it('tells the device about maps and unmaps, refuses overlaps (EEXIST) and unknown unmaps (ENOENT), unmaps all', async () => {
      const { client: c } = await client();
      const ram = SharedRegion.create('dma', 0x3000);
      cleanup.add(() => ram.close());
      await c.request('DMA_MAP', dmaMapBody(0x10000n, 0x1000n, DMA_MAP_FLAGS.bits.READ, 0x1000n), { fds: [ram.fd] });
      await c.request('DMA_MAP', dmaMapBody(0x20000n, 0x1000n));
      assert.deepEqual(
        mapped.map((m) => [m.address, m.readable, m.writable, m.memory !== undefined, m.sealed]),
        [
          [0x10000n, true, false, true, true],
          [0x20000n, true, true, false, undefined],
        ],
      );
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0x10800n, 0x1000n)), ERRNO.EEXIST);
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0x0fff0n, 0x20n)), ERRNO.EEXIST);
      await expectErrno(c.request('DMA_UNMAP', { argsz: 24, flags: 0, address: 0x10000n, size: 0x800n }), ERRNO.ENOENT);
      await expectErrno(c.request('DMA_UNMAP', { argsz: 24, flags: 0, address: 0x30000n, size: 0x1000n }), ERRNO.ENOENT);
      const one = await c.request('DMA_UNMAP', { argsz: 24, flags: 0, address: 0x20000n, size: 0x1000n });
      assert.deepEqual(one.body.unmapped, { argsz: 24, flags: 0, address: 0x20000n, size: 0x1000n });
      const all = await c.request('DMA_UNMAP', { argsz: 24, flags: DMA_UNMAP_FLAGS.bits.ALL, address: 0n, size: 0n });
      assert.equal(all.body.unmapped?.flags, DMA_UNMAP_FLAGS.bits.ALL);
      assert.deepEqual(
        unmapped.map((m) => m.address),
        [0x20000n, 0x10000n],
      );
      assert.equal(mapped[0]!.memory!.byteLength, 0, 'the mapping is gone from this process');
    });

    it('refuses fds that cannot back the range: too small, not a file, more than one (EINVAL)', async () => {
      const { client: c } = await client();
      const small = SharedRegion.create('small', 4096);
      const efd = EventFd.create();
      cleanup.add(() => (small.close(), efd.close()));
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0n, 0x2000n), { fds: [small.fd] }), ERRNO.EINVAL);
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0n, 0x1000n, 3, 0x800n), { fds: [small.fd] }), ERRNO.EINVAL);
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0n, 0x1000n), { fds: [efd.fd] }), ERRNO.EINVAL);
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0n, 0x1000n), { fds: [small.fd, small.fd] }), ERRNO.EINVAL);
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0n, 0n)), ERRNO.EINVAL);
      await expectErrno(c.request('DMA_MAP', dmaMapBody((1n << 64n) - 0x1000n, 0x2000n)), ERRNO.EINVAL);
      assert.equal(mapped.length, 0);
    });

    it('maps an unaligned offset inside a file, and accepts an unsealed file with a warning when allowed', async () => {
      const served = serve(cleanup, sampleDevice(), { allowUnsealedDmaFds: true });
      const warnings: string[] = [];
      served.server.on('warning', (_client, message) => warnings.push(message));
      const c = await connect(cleanup, served.path);
      const fs = await import('node:fs');
      const os = await import('node:os');
      const path = await import('node:path');
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-dma-')), 'ram');
      fs.writeFileSync(file, Buffer.alloc(0x3000, 0x5a));
      const fd = native.adoptFd(fs.openSync(file, 'r+'));
      cleanup.add(() => fd.close());
      await c.request('DMA_MAP', dmaMapBody(0x8000n, 0x100n, 3, 0x1234n), { fds: [fd] });
      assert.equal(mapped[0]!.sealed, false);
      // An unsealed file is reached by pread/pwrite, checked against its size on every access, never mapped.
      assert.equal(mapped[0]!.backing, 'file');
      const bytes = new Uint8Array(0x100);
      await served.device.dma.read(0x8000n, bytes);
      assert.deepEqual(bytes, new Uint8Array(0x100).fill(0x5a));
      await waitFor(() => warnings.length === 1, 'the unsealed-fd warning');
      assert.match(warnings[0]!, /not sealed against shrinking/);
    });

    it('refuses maps beyond max_dma_maps (EINVAL, as libvfio-user) and announces the limit', async () => {
      const served = serve(cleanup, sampleDevice(), { maxDmaMaps: 2 });
      const c = await connect(cleanup, served.path);
      assert.equal(c.peerCapabilities.maxDmaMaps, 2);
      await c.request('DMA_MAP', dmaMapBody(0n, 0x1000n));
      await c.request('DMA_MAP', dmaMapBody(0x1000n, 0x1000n));
      await expectErrno(c.request('DMA_MAP', dmaMapBody(0x2000n, 0x1000n)), ERRNO.EINVAL);
    });

    it('answers DMA_UNMAP only after an asynchronous onDmaUnmap settled', async () => {
      let release: (() => void) | undefined;
      const device = sampleDevice({ onDmaUnmap: () => new Promise<void>((resolve) => (release = resolve)) });
      const { client: c } = await client(device);
      await c.request('DMA_MAP', dmaMapBody(0n, 0x1000n));
      let answered = false;
      const unmap = c.request('DMA_UNMAP', { argsz: 24, flags: 0, address: 0n, size: 0x1000n }).then(() => (answered = true));
      await waitFor(() => release !== undefined, 'onDmaUnmap');
      await new Promise((resolve) => setTimeout(resolve, 5));
      assert.equal(answered, false);
      release!();
      await unmap;
    });

    it('keeps a mapping readable while an asynchronous onDmaUnmap runs after the client left, and resets after it', async () => {
      let release: (() => void) | undefined;
      let seenDuringNotice: number | undefined;
      const device = sampleDevice({
        onDmaUnmap: (mapping) => {
          seenDuringNotice = mapping.memory!.byteLength;
          return new Promise<void>((resolve) => (release = resolve));
        },
      });
      const { client: c } = await client(device);
      const ram = SharedRegion.create('dma', 0x1000);
      cleanup.add(() => ram.close());
      new Uint8Array(ram.buffer)[0] = 0x5a;
      await c.request('DMA_MAP', dmaMapBody(0x10000n, 0x1000n, DMA_MAP_FLAGS.bits.READ | DMA_MAP_FLAGS.bits.WRITE, 0n), { fds: [ram.fd] });
      c.close();
      await waitFor(() => release !== undefined, 'onDmaUnmap after the client left');
      assert.equal(seenDuringNotice, 0x1000);
      await new Promise((resolve) => setTimeout(resolve, 5));
      assert.equal(mapped[0]!.memory!.byteLength, 0x1000, 'the device may still finish its DMA there');
      assert.equal(mapped[0]!.memory![0], 0x5a);
      assert.deepEqual(resets, [], 'no reset before the device let go of its mappings');
      release!();
      await waitFor(() => resets.length === 1, 'the reset after the notices settled');
      assert.equal(mapped[0]!.memory!.byteLength, 0, 'the mapping is gone once the device let go');
    });
  });

  it('resets the device with the reason, on DEVICE_RESET and when the client leaves', async () => {
    const served = serve(cleanup, sampleDevice());
    const c = await connect(cleanup, served.path);
    await c.request('DEVICE_RESET', {});
    c.close();
    await waitFor(() => resets.length === 2, 'two resets');
    assert.deepEqual(resets, ['client', 'lost-connection']);
  });
});
