/** Differential: every VT-d register a guest can read after reset, QEMU 7.2 against `viommu qtest`, per property set. */
import { strict as assert } from 'node:assert';
import { QemuQtest, ViommuQtest, qemuAvailability } from './qemu';
import { readAllRegisters } from './register-sweep';

const PROPERTY_SETS = ['', 'aw-bits=48', 'caching-mode=on', 'x-scalable-mode=on', 'device-iotlb=on', 'pt=off', 'intremap=off'];

describe('differential: VT-d reset values, QEMU 7.2 vs viommu', function () {
  this.timeout(60_000);
  before(function () {
    const availability = qemuAvailability();
    if (!availability.available) {
      console.log(`      skipped: ${availability.reason}`);
      this.skip();
    }
  });

  for (const props of PROPERTY_SETS) {
    it(`agrees on every register after reset (${props || 'default props'})`, async () => {
      const qemu = await QemuQtest.start({ iommuProps: props });
      const ours = await ViommuQtest.start({ iommuProps: props });
      try {
        const expected = await readAllRegisters(qemu);
        const actual = await readAllRegisters(ours);
        const differences = [...expected]
          .filter(([key, value]) => actual.get(key) !== value)
          .map(([key, value]) => `${key}: QEMU 0x${value.toString(16)}, viommu 0x${actual.get(key)?.toString(16)}`);
        assert.deepEqual(differences, [], `registers differ with '${props}'`);
      } finally {
        await qemu.close();
        await ours.close();
      }
    });
  }
});
