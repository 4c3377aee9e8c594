/** Differential: legacy-mode translated DMA by the edu device, with permission and not-present faults, QEMU 7.2 vs viommu. */
import { strict as assert } from 'node:assert';
import { QemuQtest, ViommuQtest, qemuAvailability } from './qemu';
import type { QtestPeer } from '../../lib/vmm/qtest/client';

const DMAR = 0xfed90000;
const EDU = 0xfe000000;
const ROOT = 0x100000;
const CONTEXT = 0x101000;
const LEVEL3 = 0x102000;
const LEVEL2 = 0x103000;
const LEVEL1 = 0x104000;
const READ = 1n;
const WRITE = 2n;

async function enableEdu(peer: QtestPeer): Promise<void> {
  await peer.outl(0xcf8, 0x80002010);
  await peer.outl(0xcfc, EDU);
  await peer.outl(0xcf8, 0x80002004);
  await peer.outw(0xcfc, 0x6);
}

/** A guest driver's legacy-mode bring-up: one 3-level domain for 00:04.0 with a read-write and a read-only page. */
async function programUnit(peer: QtestPeer): Promise<void> {
  await peer.writeq(ROOT, BigInt(CONTEXT) | 1n);
  await peer.writeq(CONTEXT + 0x20 * 16, BigInt(LEVEL3) | 1n);
  await peer.writeq(CONTEXT + 0x20 * 16 + 8, 1n | (5n << 8n)); // AW 1 (3 levels), DID 5
  await peer.writeq(LEVEL3, BigInt(LEVEL2) | READ | WRITE);
  await peer.writeq(LEVEL2 + 8, BigInt(LEVEL1) | READ | WRITE); // IOVA 0x200000..0x3fffff
  await peer.writeq(LEVEL1, 0x300000n | READ | WRITE); // IOVA 0x200000 -> GPA 0x300000
  await peer.writeq(LEVEL1 + 8, 0x301000n | READ); // IOVA 0x201000 -> GPA 0x301000, read-only
  await peer.writeq(DMAR + 0x20, BigInt(ROOT));
  await peer.writel(DMAR + 0x18, 0x40000000); // SRTP
  await peer.writeq(DMAR + 0x28, 0xa000000000000000n); // global context invalidation
  await peer.writeq(DMAR + 0xf8, 0x9000000000000000n); // global IOTLB invalidation
  await peer.writel(DMAR + 0x18, 0x80000000); // TE
}

async function eduDma(peer: QtestPeer, source: bigint, destination: bigint, count: bigint, toRam: boolean): Promise<void> {
  await peer.writeq(EDU + 0x80, source);
  await peer.writeq(EDU + 0x88, destination);
  await peer.writeq(EDU + 0x90, count);
  await peer.writeq(EDU + 0x98, toRam ? 3n : 1n);
  for (let attempt = 0; attempt < 100; attempt++) {
    if (((await peer.readq(EDU + 0x98)) & 1n) === 0n) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`${peer.name}: edu DMA did not finish`);
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

/** Runs the scenario and returns every value the guest reads, in order, by name. */
async function scenario(peer: QtestPeer): Promise<Array<[string, string]>> {
  const seen: Array<[string, string]> = [];
  const note = (name: string, value: bigint | number | string) => seen.push([name, typeof value === 'string' ? value : `0x${value.toString(16)}`]);
  await enableEdu(peer);
  await programUnit(peer);
  note('GSTS', await peer.readl(DMAR + 0x1c));
  note('CCMD', await peer.readq(DMAR + 0x28));
  note('IOTLB', await peer.readq(DMAR + 0xf8));
  await peer.writeBytes(0x300000, Buffer.from('data the device reads through the IOMMU, 64 bytes long.........'));
  await eduDma(peer, 0x200000n, 0x40000n, 64n, false);
  await eduDma(peer, 0x40000n, 0x200800n, 64n, true);
  note('copied through a read-write page', hex(await peer.readBytes(0x300800, 64)));
  note('FSTS after good DMA', await peer.readl(DMAR + 0x34));
  await eduDma(peer, 0x40000n, 0x201000n, 16n, true);
  note('read-only page untouched', hex(await peer.readBytes(0x301000, 16)));
  note('FSTS after write fault', await peer.readl(DMAR + 0x34));
  note('FECTL after write fault', await peer.readl(DMAR + 0x38));
  note('FRCD lo', await peer.readq(DMAR + 0x220));
  note('FRCD hi', await peer.readq(DMAR + 0x228));
  await eduDma(peer, 0x400000n, 0x40000n, 16n, false);
  note('FSTS after a second fault with the record full', await peer.readl(DMAR + 0x34));
  await peer.writel(DMAR + 0x22c, 0x80000000);
  note('FSTS after clearing F', await peer.readl(DMAR + 0x34));
  await eduDma(peer, 0x400000n, 0x40000n, 16n, false);
  note('FSTS after a read of an unmapped IOVA', await peer.readl(DMAR + 0x34));
  note('FRCD hi (read fault)', await peer.readq(DMAR + 0x228));
  return seen;
}

describe('differential: legacy-mode DMA through the IOMMU, QEMU 7.2 vs viommu', function () {
  this.timeout(60_000);
  before(function () {
    const availability = qemuAvailability();
    if (!availability.available) {
      console.log(`      skipped: ${availability.reason}`);
      this.skip();
    }
  });

  it('agrees on data, fault status and fault records of a 3-level domain', async () => {
    const qemu = await QemuQtest.start({});
    // QEMU 7.2 writes PV 0xffff into these records: our unit does so with compat=qemu-7.2 (the spec leaves PV 0).
    const ours = await ViommuQtest.start({ iommuProps: 'compat=qemu-7.2' });
    try {
      const expected = await scenario(qemu);
      const actual = await scenario(ours);
      if (process.env.VIOMMU_ORACLE_VERBOSE) console.log(expected);
      assert.deepEqual(actual, expected);
    } finally {
      await qemu.close();
      await ours.close();
    }
  });
});
