/**
 * The testbed with a shadowed vfio-user device: a DMAR register write returns at once however many DMA_MAPs it
 * causes, and the guest's wait descriptor completes only once the device holds the mappings.
 */
import { strict as assert } from 'node:assert';
import { createDmaEngine } from '../../lib/vfio-user/server/dma-engine';
import { VfioUserServer } from '../../lib/vfio-user/server/server';
import { GuestPci, LEGACY_INVALIDATIONS, LegacyTables, PageAllocator, VtdDriver } from '../../lib/vmm/guest-driver';
import { DMAR_BASE, EDU_DEVFN, TestbedMachine } from '../../lib/vmm/testbed';
import { OFFSET } from '../../lib/vtd/register-bits';
import { VtdUnit } from '../../lib/vtd/unit';
import { tempSocketPath } from '../helpers';

const BAR0 = 0xfe000000;
const IOVA = 0x0a000000;
const GPA = 0x02000000;
/** Pages mapped one apart, so none coalesce: one DMA_MAP each. */
const SCATTERED_PAGES = 400;
const PAGE = 4096;

describe('testbed: completions wait for the shadowed device, register writes do not', function () {
  this.timeout(30_000);

  it('returns from the IQT write at once and holds the wait descriptor until every DMA_MAP is answered', async () => {
    const socketPath = tempSocketPath('completion');
    const engine = createDmaEngine();
    const server = VfioUserServer.listen(socketPath, engine.device, { twinSocket: true });
    const machine = new TestbedMachine({
      builtInEdu: false,
      ramBytes: 64 << 20,
      iommu: (memory) => new VtdUnit({ memory, config: 'caching-mode=on,aw-bits=48', onInterrupt: () => undefined }),
    });
    try {
      const device = await machine.attachVfioUser(socketPath);
      const pages = new PageAllocator(machine, 0x100000);
      const vtd = new VtdDriver(machine, DMAR_BASE, pages);
      await new GuestPci(machine).enable(EDU_DEVFN, BAR0);
      const tables = new LegacyTables(machine, pages);
      await tables.addDevice(EDU_DEVFN, 1, 4);
      await vtd.setRootTable(await tables.root);
      await vtd.enableQueue();
      await vtd.invalidate([LEGACY_INVALIDATIONS.contextGlobal(), LEGACY_INVALIDATIONS.iotlbGlobal()]);
      await vtd.enableTranslation();
      for (let i = 0; i < SCATTERED_PAGES; i++) await tables.map(EDU_DEVFN, IOVA + 2 * i * PAGE, GPA, 1, { read: true, write: true });

      // Watch the guest's IQT write: it must return at once, with the device still busy with what it caused.
      const iqt = BigInt(DMAR_BASE + OFFSET.IQT);
      const writeMemory64 = machine.writeMemory64.bind(machine);
      const iqtWrites: { returned: unknown; deviceBusy: boolean }[] = [];
      machine.writeMemory64 = (address, value) => {
        const returned = writeMemory64(address, value);
        if (address === iqt) iqtWrites.push({ returned, deviceBusy: machine.hostBackend!.pending() !== undefined });
        return returned;
      };
      await vtd.invalidate([LEGACY_INVALIDATIONS.iotlbGlobal()]);
      assert.deepEqual(iqtWrites, [{ returned: undefined, deviceBusy: true }]);
      // The driver saw its wait status only now: by then the device held every page it was told about.
      assert.equal(device.table.shared.length, SCATTERED_PAGES);
      assert.equal(machine.hostBackend!.pending(), undefined);
    } finally {
      machine.close();
      await server.close();
    }
  });
});
