/** Differential: every VT-d register a guest can read after reset, QEMU 7.2 against `viommu qtest`, per property set. */
import { strict as assert } from 'node:assert';
import { QemuQtest, ViommuQtest, qemuAvailability } from './qemu';
import type { QtestPeer } from '../../lib/vmm/qtest/client';

const DMAR = 0xfed90000;
const PROPERTY_SETS = ['', 'aw-bits=48', 'caching-mode=on', 'x-scalable-mode=on', 'device-iotlb=on', 'pt=off', 'intremap=off'];
/** 32-bit registers of the window (0x00..0x100) plus the IOTLB pair and the first fault record, read as 64 bits. */
const DWORD_OFFSETS = Array.from({ length: 0x100 / 4 }, (_, i) => i * 4);
const QWORD_OFFSETS = [0x08, 0x10, 0x20, 0x28, 0x80, 0x88, 0x90, 0xb8, 0xf0, 0xf8, 0x220, 0x228];

async function readAll(peer: QtestPeer): Promise<Map<string, bigint>> {
  const values = new Map<string, bigint>();
  for (const offset of DWORD_OFFSETS) values.set(`readl 0x${offset.toString(16)}`, BigInt(await peer.readl(DMAR + offset)));
  for (const offset of QWORD_OFFSETS) values.set(`readq 0x${offset.toString(16)}`, await peer.readq(DMAR + offset));
  return values;
}

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
        const expected = await readAll(qemu);
        const actual = await readAll(ours);
        const differences = [...expected].filter(([key, value]) => actual.get(key) !== value)
          .map(([key, value]) => `${key}: QEMU 0x${value.toString(16)}, viommu 0x${actual.get(key)?.toString(16)}`);
        assert.deepEqual(differences, [], `registers differ with '${props}'`);
      } finally {
        await qemu.close();
        await ours.close();
      }
    });
  }
});
