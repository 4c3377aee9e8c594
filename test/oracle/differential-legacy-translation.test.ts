/** Differential: legacy-mode translated DMA with 3- and 4-level tables, 2 MiB and 1 GiB pages, and invalidation, QEMU 7.2 vs viommu. */
import { encodeBig } from '../../lib/vtd/bitfield';
import type { QuirkId } from '../../lib/vtd/compat-quirks';
import { IOTLB_FIELDS, IVA_FIELDS } from '../../lib/vtd/registers';
import { SECOND_STAGE_TOP_ENTRY } from '../../lib/vtd/structures';
import { EDU_SID, differential, outcome, skipWithoutQemu, type DmaOutcome, type OracleGuest } from './harness';

interface Copy {
  /** IOVA read, and the guest-physical address it must translate to. */
  from: number | bigint;
  source: number;
  /** IOVA written, and where the data must land (also what is noted when the write does not move it). */
  to: number | bigint;
  landing: number;
  count: number;
  /** What the write must do (default: move the data to `landing`). */
  write?: DmaOutcome;
  /** Where a write that does not move the data writes it out instead, to check the read (IOVA, guest-physical). */
  spare?: readonly [number, number];
  quirks?: readonly QuirkId[];
}

/** Copies `count` bytes from `from` to `to` (both IOVAs) through the edu buffer and notes what arrived at `landing`. */
async function copy(guest: OracleGuest, label: string, c: Copy): Promise<void> {
  const quirks = c.quirks ?? [];
  const write = c.write ?? outcome.moved(c.landing);
  await guest.dma('to-device', c.from, c.count, outcome.moved(c.source));
  await guest.dma('to-ram', c.to, c.count, write);
  guest.note(`${label}: data`, await guest.peer.readBytes(c.landing, c.count), quirks);
  await guest.observeFault(label, { quirks });
  if (write.kind !== 'moved') {
    if (c.spare === undefined) throw new Error(`${label}: a write that does not move the data needs a spare page to check the read`);
    await guest.dma('to-ram', c.spare[0], c.count, outcome.moved(c.spare[1]));
  }
}

/**
 * A read that faults. Only the fault is compared: what the device buffer holds afterwards is the device's business
 * (QEMU's edu gets zeros from the failed read, ours keeps the old bytes).
 */
async function faultingRead(guest: OracleGuest, label: string, from: number | bigint, count: number): Promise<void> {
  await guest.dma('to-device', from, count, outcome.fault());
  await guest.observeFault(label);
}

async function pageSizes(guest: OracleGuest, levels: 3 | 4): Promise<void> {
  await guest.enableEdu();
  const root = guest.allocPage();
  const top = await guest.setContext(root, EDU_SID, { aw: levels - 2, did: 3 });
  // Sources: 4 KiB pages; destinations: a 2 MiB page, a 1 GiB page, and (4 levels) a page above 2^39.
  await guest.map(top, levels, 0x200000, 0x300000);
  await guest.map(top, levels, 0x201000, 0x301000);
  await guest.map(top, levels, 0x40000000, 0x800000, { size: '2m' });
  await guest.map(top, levels, 0x80000000, 0, { size: '1g' });
  if (levels === 4) await guest.map(top, 4, 2 ** 40, 0x400000);
  await guest.enableTranslation(root);
  await guest.observe('GSTS');
  await guest.fill(0x300000, 0x2000, 1);
  const spare = [0x201800, 0x301800] as const;
  await copy(guest, '4 KiB to a 2 MiB page', {
    from: 0x200010,
    source: 0x300010,
    to: 0x40000000 + 0x123450,
    landing: 0x800000 + 0x123450,
    count: 100,
  });
  await copy(guest, 'across two 4 KiB pages to a 1 GiB page', {
    from: 0x200f80,
    source: 0x300f80,
    to: 0x80000000 + 0x5ff0000,
    landing: 0x5ff0000,
    count: 0x200,
  });
  await copy(guest, 'within the 1 GiB page, across its 2 MiB boundaries', {
    from: 0x80000000 + 0x5ff0000,
    source: 0x5ff0000,
    to: 0x80000000 + 0x61fff80,
    landing: 0x61fff80,
    count: 0x100,
  });
  if (levels === 4)
    await copy(guest, 'to an IOVA above 2^39', { from: 0x200000, source: 0x300000, to: 2 ** 40 + 0x10, landing: 0x400010, count: 64 });
  else
    await copy(guest, 'to an IOVA above 2^39 with 3 levels (4)', {
      from: 0x200000,
      source: 0x300000,
      to: 2 ** 40 + 0x10,
      landing: 0x400010,
      count: 64,
      write: outcome.fault(0x400010),
      spare,
    });
  await copy(guest, 'to an IOVA above 2^48 (4)', {
    from: 0x200000,
    source: 0x300000,
    to: 2n ** 48n,
    landing: 0x400000,
    count: 16,
    write: outcome.fault(0x400000),
    spare,
  });
  await faultingRead(guest, 'from an unmapped 2 MiB region (6)', 0x40200000, 16);
}

/** Large-page entries where they are not allowed: PS in the top entry of a 4-level table is reserved (C). */
async function misplacedLargePages(guest: OracleGuest): Promise<void> {
  await guest.enableEdu();
  const root = guest.allocPage();
  const top = await guest.setContext(root, EDU_SID, { aw: 2, did: 3 });
  await guest.map(top, 4, 0x200000, 0x300000);
  await guest.writeq(top + 8, encodeBig(SECOND_STAGE_TOP_ENTRY, { R: 1, W: 1, ADDR: 0 }) | (1n << 7n));
  await guest.enableTranslation(root);
  await guest.fill(0x300000, 64, 2);
  const spare = [0x200800, 0x300800] as const;
  await copy(guest, 'PS in a PML4 entry (C)', {
    from: 0x200000,
    source: 0x300000,
    to: 2 ** 39,
    landing: 0x1000,
    count: 16,
    write: outcome.fault(0x1000),
    spare,
  });
  // A 2 MiB leaf whose address bits 20:12 are set (reserved in a 2 MiB leaf).
  await guest.map(top, 4, 0x40000000, 0x800000, { size: '2m', extra: 0x1000n });
  await guest.setReg('IOTLB', 0x9000000000000000n);
  await copy(guest, '2 MiB leaf with address bits 20:12 set (C)', {
    from: 0x200000,
    source: 0x300000,
    to: 0x40000000,
    landing: 0x800000,
    count: 16,
    write: outcome.fault(0x800000),
    spare,
  });
}

/** Changing mappings: stale until invalidated (page-selective, domain, global), SRTP flushing, pass-through. */
async function invalidationAndModes(guest: OracleGuest): Promise<void> {
  await guest.enableEdu();
  const root = guest.allocPage();
  const top = await guest.setContext(root, EDU_SID, { aw: 1, did: 3 });
  await guest.map(top, 3, 0x200000, 0x300000);
  await guest.map(top, 3, 0x201000, 0x301000);
  await guest.map(top, 3, 0x210000, 0x310000);
  await guest.enableTranslation(root);
  await guest.fill(0x300000, 0x20000, 3);
  await guest.fill(0x380000, 0x1000, 4);
  const page = async (did: number, iova: number, am: number) => {
    await guest.setReg('IVA', encodeBig(IVA_FIELDS, { ADDR: iova / 4096, AM: am }));
    await guest.setReg('IOTLB', encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 3, DID: did }));
    await guest.observe('IOTLB', `IOTLB page-selective for domain ${did}`);
  };
  await copy(guest, 'read 0x200000, write 0x201000', { from: 0x200000, source: 0x300000, to: 0x201000, landing: 0x301000, count: 64 });
  // Remap 0x200000 to 0x380000 and invalidate it page-selectively: the next read sees the new page.
  await guest.map(top, 3, 0x200000, 0x380000);
  await page(3, 0x200000, 0);
  await copy(guest, 'after remapping and a page-selective invalidation', {
    from: 0x200000,
    source: 0x380000,
    to: 0x201000,
    landing: 0x301000,
    count: 64,
  });
  // AM 4 covers 0x210000 (16 pages from 0x210000), a different domain id does not.
  await guest.map(top, 3, 0x210000, 0x300000);
  await page(9, 0x210000, 4);
  await page(3, 0x200000, 4);
  await copy(guest, 'after page-selective invalidation with AM 4', { from: 0x210000, source: 0x300000, to: 0x201000, landing: 0x301000, count: 64 });
  // Unmapping + domain invalidation: the read faults.
  await guest.writeq(await guest.map(top, 3, 0x210000, 0x300000), 0n);
  await guest.setReg('IOTLB', encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 2, DID: 3 }));
  await guest.observe('IOTLB', 'IOTLB domain 3');
  await faultingRead(guest, 'after unmapping and a domain invalidation (6)', 0x210000, 64);
  // SRTP drops cached translations (QEMU 7.2 does so without being asked).
  await guest.map(top, 3, 0x210000, 0x310000);
  await guest.gcmd(0xc0000000);
  await copy(guest, 'after re-mapping and SRTP', {
    from: 0x210000,
    source: 0x310000,
    to: 0x201000,
    landing: 0x301000,
    count: 64,
    quirks: ['srtp-flushes-caches'],
  });
  // Pass-through (TT 2): IOVA = guest-physical address.
  await guest.setContext(root, EDU_SID, { aw: 1, did: 3, tt: 2, table: top });
  await guest.setReg('CCMD', 0xa000000000000000n);
  await guest.setReg('IOTLB', 0x9000000000000000n);
  await copy(guest, 'pass-through', { from: 0x380000, source: 0x380000, to: 0x390000, landing: 0x390000, count: 64 });
  await copy(guest, 'pass-through beyond RAM', {
    from: 0x380000,
    source: 0x380000,
    to: 0x40000000,
    landing: 0x390000,
    count: 16,
    write: outcome.unrecorded('pass-through to an address no RAM answers', 0x390000),
    spare: [0x3b0000, 0x3b0000],
  });
  // Translation off: the same.
  await guest.gcmd(0x40000000);
  await guest.observe('GSTS', 'GSTS with TE off');
  await copy(guest, 'TE off', { from: 0x380000, source: 0x380000, to: 0x3a0000, landing: 0x3a0000, count: 64 });
}

describe('differential: legacy-mode translated DMA, QEMU 7.2 vs viommu', function () {
  this.timeout(60_000);
  before(function () {
    skipWithoutQemu(this);
  });

  it('agrees on 4-level tables (aw-bits=48) with 4 KiB, 2 MiB and 1 GiB pages', async () => {
    await differential((guest) => pageSizes(guest, 4), { props: 'aw-bits=48', checkSpecMode: true });
  });

  it('agrees on 3-level tables (aw-bits=39) with 2 MiB and 1 GiB pages', async () => {
    await differential((guest) => pageSizes(guest, 3), { checkSpecMode: true });
  });

  it('agrees on large-page bits where the tables do not allow them', async () => {
    await differential(misplacedLargePages, { props: 'aw-bits=48', checkSpecMode: true });
  });

  it('agrees on remapping with page-selective, domain and SRTP invalidation, pass-through and TE off', async () => {
    await differential(invalidationAndModes, { checkSpecMode: true });
  });
});
