/** Differential: DMA remapping faults (every legacy reason), FRCD/FSTS/FECTL, fault events, FPD and overflow, QEMU 7.2 vs viommu. */
import { encodeBig } from '../../lib/vtd/bitfield';
import type { QuirkId } from '../../lib/vtd/compat-quirks';
import { LEGACY_CONTEXT_ENTRY, LEGACY_ROOT_ENTRY } from '../../lib/vtd/structures';
import { DMAR, EDU_SID, PAGE, differential, skipWithoutQemu, type OracleGuest } from './harness';

const PV: QuirkId = 'frcd-pv-ffff-without-pasid';
const SECOND_EDU_SLOT = 5;
const SECOND_EDU_SID = SECOND_EDU_SLOT << 3;
/** Outside the 256 MiB of RAM, below the PCI hole: reads there fail on both sides. */
const OUTSIDE_RAM = 0x40000000;

/**
 * One domain for 00:04.0; each case reprograms one structure, invalidates, does one read (or write) through the
 * edu device, and notes FSTS and the fault record (then clears them).
 */
async function faultReasons(guest: OracleGuest): Promise<void> {
  await guest.enableEdu();
  await guest.setReg('FEDATA', 0x31);
  await guest.setReg('FEADDR', 0xfee0c000);
  await guest.setReg('FECTL', 0);
  const root = guest.allocPage();
  const top = await guest.setContext(root, EDU_SID, { aw: 1, did: 3 });
  await guest.map(top, 3, 0x200000, 0x300000);
  await guest.map(top, 3, 0x201000, 0x301000, { write: false });
  await guest.map(top, 3, 0x202000, 0x302000, { read: false });
  await guest.map(top, 3, 0x203000, 0x303000, { read: false, write: false });
  await guest.map(top, 3, 0x205000, OUTSIDE_RAM);
  await guest.map(top, 3, 0x206000, 0xfee00000);
  await guest.enableTranslation(root);
  const contexts = Number(guest.shadowed(root) >> 12n) * PAGE;
  const invalidate = async () => {
    await guest.setReg('CCMD', 0xa000000000000000n);
    await guest.setReg('IOTLB', 0x9000000000000000n);
  };
  const context = async (values: Partial<Record<'P' | 'FPD' | 'TT' | 'SLPTPTR' | 'AW' | 'DID', number>>, extra = 0n) => {
    await guest.write128(contexts + EDU_SID * 16, encodeBig(LEGACY_CONTEXT_ENTRY, { P: 1, SLPTPTR: top / PAGE, AW: 1, DID: 3, ...values }) | extra);
    await invalidate();
  };
  const probe = async (label: string, iova: number | bigint, direction: 'to-device' | 'to-ram' = 'to-device', quirks: QuirkId[] = []) => {
    await guest.dma(direction, iova, 16, 0x100);
    await guest.observeFault(label, { quirks });
    await guest.observeInterrupts(`${label}: MSIs`, quirks);
  };

  await probe('read of a read-write page', 0x200000);
  await probe('write to a read-only page (5)', 0x201000, 'to-ram');
  await probe('read of a write-only page (6)', 0x202000);
  await probe('read of an R = W = 0 entry (6)', 0x203000, 'to-device', ['second-stage-not-present-is-permission-fault']);
  await probe('write to an R = W = 0 entry (5)', 0x203000, 'to-ram', ['second-stage-not-present-is-permission-fault']);
  await probe('read of an unmapped IOVA (6)', 0x280000);
  await probe('a leaf pointing outside RAM (no fault; the data is not RAM)', 0x205000);
  await probe('an output address in the interrupt range (E)', 0x206000);
  await probe('a write to an output address in the interrupt range (E)', 0x206000, 'to-ram');
  await probe('beyond the 39-bit MGAW (4)', 1n << 39n);
  await probe('far beyond (4)', 1n << 60n);

  await context({ SLPTPTR: OUTSIDE_RAM / PAGE });
  await probe('an unreadable top-level table', 0x200000, 'to-device', ['top-table-read-error-is-context-invalid']);
  const brokenTop = guest.allocPage();
  await guest.writeq(brokenTop, BigInt(OUTSIDE_RAM) | 3n);
  await context({ SLPTPTR: brokenTop / PAGE });
  await probe('an unreadable second-level table (7)', 0x200000);
  await context({ AW: 2 });
  await probe('AW 2 while SAGAW offers only 39 bits (3)', 0x200000);
  await context({ AW: 0 });
  await probe('AW 0 (3)', 0x200000);
  await context({ TT: 1 });
  await probe('TT 1 without ECAP.DT (3)', 0x200000);
  await context({ TT: 3 });
  await probe('TT 3 (3)', 0x200000);
  await context({}, 1n << 5n);
  await probe('context reserved bit 5 (B)', 0x200000);
  await context({}, 1n << 100n);
  await probe('context reserved bit 100 (B)', 0x200000);
  await context({}, 1n << 50n);
  await probe('context address bit 50 (B)', 0x200000);
  await context({ P: 0 });
  await probe('context not present (2)', 0x200000);
  await context({ FPD: 1 });
  await probe('FPD: a read of an unmapped IOVA is not recorded', 0x280000);
  await context({ FPD: 1, AW: 2 });
  await probe('FPD: an invalid context entry is not recorded', 0x200000);
  await context({ FPD: 1, P: 0 });
  await probe('FPD in a context entry that is not present: not recorded (2 is qualified)', 0x200000);
  await context({ FPD: 1 }, 1n << 5n);
  await probe('FPD does not cover reserved bits in the context entry (B)', 0x200000);
  await context({});

  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contexts / PAGE }) | (1n << 70n));
  await invalidate();
  await probe('root reserved bit 70 (A)', 0x200000);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contexts / PAGE }) | (1n << 4n));
  await invalidate();
  await probe('root reserved bit 4 (A)', 0x200000);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: OUTSIDE_RAM / PAGE }));
  await invalidate();
  await probe('context table outside RAM (9)', 0x200000);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 0, CTP: contexts / PAGE }));
  await invalidate();
  await probe('root not present (1)', 0x200000);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contexts / PAGE }));
  await guest.setReg('RTADDR', BigInt(OUTSIDE_RAM));
  await guest.gcmd(0xc0000000);
  await invalidate();
  await probe('root table outside RAM (8)', 0x200000);
  await guest.setReg('RTADDR', BigInt(root));
  await guest.gcmd(0xc0000000);
  await invalidate();
  await probe('back to normal', 0x200000);

  // Reserved and ignored bits of a 4 KiB leaf (SNP without snoop control, TM without device TLBs, high address).
  const leafCases: ReadonlyArray<[string, bigint]> = [
    ['bit 7 (ignored in a 4 KiB leaf)', 1n << 7n], ['SNP (C)', 1n << 11n], ['TM (C)', 1n << 62n], ['address bit 45 (C)', 1n << 45n],
    ['address bit 39 (C)', 1n << 39n], ['address bit 38', 1n << 38n], ['bit 52 (ignored)', 1n << 52n], ['A (bit 8)', 1n << 8n],
    ['X (bit 2)', 1n << 2n], ['EMT and IPAT (bits 6:3)', 0x78n], ['bit 63 (ignored)', 1n << 63n], ['bit 10 (ignored)', 1n << 10n],
  ];
  for (const [label, bits] of leafCases) {
    await guest.map(top, 3, 0x200000, 0x300000, { extra: bits });
    await invalidate();
    await probe(`leaf ${label}`, 0x200000);
  }
  await guest.map(top, 3, 0x200000, 0x300000);
  await invalidate();

  // A permission miss on a cached translation: QEMU 7.2 blocks it without a record.
  await guest.dma('to-device', 0x201000, 16, 0x100);
  await guest.observeFault('a read caches the read-only page');
  await guest.dma('to-ram', 0x201000, 16, 0x100);
  await guest.observeFault('a write hits the cached read-only page', { quirks: ['iotlb-hit-without-permission-not-recorded'] });
  await guest.observeInterrupts('MSIs for it', ['iotlb-hit-without-permission-not-recorded']);
  guest.note('the read-only page is unchanged', await guest.peer.readBytes(0x301000, 16));
}

/** One record (CAP.NFR = 0): compression by source id, overflow from a second device, FECTL.IM/IP, F write-1-to-clear. */
async function recordingAndEvents(guest: OracleGuest): Promise<void> {
  await guest.enableEdu();
  await guest.enableEdu(SECOND_EDU_SLOT);
  const root = guest.allocPage();
  await guest.setContext(root, EDU_SID, { aw: 1, did: 3 });
  await guest.setContext(root, SECOND_EDU_SID, { aw: 1, did: 4 });
  await guest.enableTranslation(root);
  await guest.observe('CAP', 'CAP (NFR 0: one record)');
  await guest.setReg('FEDATA', 0x55);
  await guest.setReg('FEADDR', 0xfee0e000);
  await guest.setReg('FECTL', 0);
  const state = async (label: string, quirks: QuirkId[] = []) => {
    await guest.observe('FSTS', `${label}: FSTS`);
    await guest.observe('FECTL', `${label}: FECTL`, quirks);
    const [lo, hi] = await guest.frcd(0);
    guest.note(`${label}: FRCD lo`, lo);
    guest.note(`${label}: FRCD hi`, hi, [PV]);
    await guest.observeInterrupts(`${label}: MSIs`, quirks);
  };
  const clearF = () => guest.peer.writel(DMAR + 0x22c, 0x80000000);

  await guest.dma('to-device', 0x1000, 8);
  await state('a fault from 00:04.0');
  await guest.dma('to-device', 0x2000, 8);
  await state('a second fault from 00:04.0 (compressed)', ['collapse-faults-from-pending-source']);
  await guest.dma('to-device', 0x3000, 8, 0, SECOND_EDU_SLOT);
  await state('a fault from 00:05.0 with the record full (PFO)');
  await guest.dma('to-device', 0x4000, 8, 0, SECOND_EDU_SLOT);
  await state('another from 00:05.0');
  await guest.peer.writel(DMAR + 0x228, 0xffffffff);
  await state('a write of ones to the lower half of FRCD hi');
  await clearF();
  await state('F cleared');
  await guest.dma('to-device', 0x5000, 8, 0, SECOND_EDU_SLOT);
  await state('a fault while PFO is set (dropped)');
  await guest.setReg('FSTS', 0x1);
  await state('PFO cleared');
  await guest.dma('to-device', 0x6000, 8, 0, SECOND_EDU_SLOT);
  await state('a fault from 00:05.0 now');
  await guest.setReg('FECTL', 0x80000000);
  await state('masked');
  await clearF();
  await state('F cleared while masked');
  await guest.dma('to-device', 0x7000, 8);
  await state('a fault while masked (IP)');
  await guest.setReg('FECTL', 0);
  await state('unmasked: the held event is sent');
  await clearF();
  await guest.setReg('FECTL', 0x80000000);
  await guest.dma('to-device', 0x8000, 8);
  await state('a fault while masked again');
  await clearF();
  await state('F cleared while IP is set', ['fectl-ip-kept-when-records-cleared']);
  await guest.setReg('FECTL', 0);
  await state('unmasked after the record was cleared', ['fectl-ip-kept-when-records-cleared']);
  await guest.setReg('FSTS', 0);
  await state('an FSTS write clears a stale IP');
}

describe('differential: DMA remapping faults, QEMU 7.2 vs viommu', function () {
  this.timeout(60_000);
  before(function () {
    skipWithoutQemu(this);
  });

  it('agrees on every legacy fault reason, FPD, reserved bits and the fault records', async () => {
    await differential(faultReasons, { checkSpecMode: true });
  });

  it('agrees on fault compression, overflow (PFO) from a second device, FECTL IM/IP and the fault events', async () => {
    await differential(recordingAndEvents, { checkSpecMode: true, extraEduSlots: [SECOND_EDU_SLOT] });
  });
});
