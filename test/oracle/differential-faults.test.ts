/** Differential: DMA remapping faults (every legacy reason), FRCD/FSTS/FECTL, fault events, FPD and overflow, QEMU 7.2 vs viommu. */
import { encodeBig } from '../../lib/vtd/bitfield';
import type { QuirkId } from '../../lib/vtd/compat-quirks';
import { LEGACY_CONTEXT_ENTRY, LEGACY_ROOT_ENTRY } from '../../lib/vtd/structures';
import { DMAR, EDU_SID, PAGE, differential, outcome, skipWithoutQemu, type DmaOutcome, type OracleGuest } from './harness';

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
  const FAULT = outcome.fault();
  /** A read that works loads the buffer from 0x300000 (IOVA 0x200000); written out to 0x300800, it is checked. */
  const READ_OK = outcome.moved(0x300000);
  const writeOut = () => guest.dma('to-ram', 0x200800, 16, outcome.moved(0x300800), 0x100);
  const probe = async (
    label: string,
    iova: number | bigint,
    expected: DmaOutcome,
    direction: 'to-device' | 'to-ram' = 'to-device',
    quirks: QuirkId[] = [],
  ) => {
    await guest.dma(direction, iova, 16, expected, 0x100);
    await guest.observeFault(label, { quirks });
    await guest.observeInterrupts(`${label}: MSIs`, quirks);
    if (expected === READ_OK) await writeOut();
  };
  const NO_RAM = outcome.unrecorded('the leaf translates, but no RAM answers at its address');

  await probe('read of a read-write page', 0x200000, READ_OK);
  await probe('write to a read-only page (5)', 0x201000, outcome.fault(0x301000), 'to-ram');
  await probe('read of a write-only page (6)', 0x202000, FAULT);
  await probe('read of an R = W = 0 entry (6)', 0x203000, FAULT, 'to-device', ['second-stage-not-present-is-permission-fault']);
  await probe('write to an R = W = 0 entry (5)', 0x203000, outcome.fault(0x303000), 'to-ram', ['second-stage-not-present-is-permission-fault']);
  await probe('read of an unmapped IOVA (6)', 0x280000, FAULT);
  await probe('a leaf pointing outside RAM (no fault; the data is not RAM)', 0x205000, NO_RAM);
  await probe('an output address in the interrupt range (E)', 0x206000, FAULT);
  await probe('a write to an output address in the interrupt range (E)', 0x206000, FAULT, 'to-ram');
  await probe('beyond the 39-bit MGAW (4)', 1n << 39n, FAULT);
  await probe('far beyond (4)', 1n << 60n, FAULT);

  await context({ SLPTPTR: OUTSIDE_RAM / PAGE });
  await probe('an unreadable top-level table', 0x200000, FAULT, 'to-device', ['top-table-read-error-is-context-invalid']);
  const brokenTop = guest.allocPage();
  await guest.writeq(brokenTop, BigInt(OUTSIDE_RAM) | 3n);
  await context({ SLPTPTR: brokenTop / PAGE });
  await probe('an unreadable second-level table (7)', 0x200000, FAULT);
  await context({ AW: 2 });
  await probe('AW 2 while SAGAW offers only 39 bits (3)', 0x200000, FAULT);
  await context({ AW: 0 });
  await probe('AW 0 (3)', 0x200000, FAULT);
  await context({ TT: 1 });
  await probe('TT 1 without ECAP.DT (3)', 0x200000, FAULT);
  await context({ TT: 3 });
  await probe('TT 3 (3)', 0x200000, FAULT);
  await context({}, 1n << 5n);
  await probe('context reserved bit 5 (B)', 0x200000, FAULT);
  await context({}, 1n << 100n);
  await probe('context reserved bit 100 (B)', 0x200000, FAULT);
  await context({}, 1n << 50n);
  await probe('context address bit 50 (B)', 0x200000, FAULT);
  await context({ P: 0 });
  await probe('context not present (2)', 0x200000, FAULT);
  const FPD = outcome.unrecorded('FPD is set in the context entry');
  await context({ FPD: 1 });
  await probe('FPD: a read of an unmapped IOVA is not recorded', 0x280000, FPD);
  await context({ FPD: 1, AW: 2 });
  await probe('FPD: an invalid context entry is not recorded', 0x200000, FPD);
  await context({ FPD: 1, P: 0 });
  await probe('FPD in a context entry that is not present: not recorded (2 is qualified)', 0x200000, FPD);
  await context({ FPD: 1 }, 1n << 5n);
  await probe('FPD does not cover reserved bits in the context entry (B)', 0x200000, FAULT);
  await context({});

  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contexts / PAGE }) | (1n << 70n));
  await invalidate();
  await probe('root reserved bit 70 (A)', 0x200000, FAULT);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contexts / PAGE }) | (1n << 4n));
  await invalidate();
  await probe('root reserved bit 4 (A)', 0x200000, FAULT);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: OUTSIDE_RAM / PAGE }));
  await invalidate();
  await probe('context table outside RAM (9)', 0x200000, FAULT);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 0, CTP: contexts / PAGE }));
  await invalidate();
  await probe('root not present (1)', 0x200000, FAULT);
  await guest.write128(root, encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: contexts / PAGE }));
  await guest.setReg('RTADDR', BigInt(OUTSIDE_RAM));
  await guest.gcmd(0xc0000000);
  await invalidate();
  await probe('root table outside RAM (8)', 0x200000, FAULT);
  await guest.setReg('RTADDR', BigInt(root));
  await guest.gcmd(0xc0000000);
  await invalidate();
  await probe('back to normal', 0x200000, READ_OK);

  // Reserved and ignored bits of a 4 KiB leaf (SNP without snoop control, TM without device TLBs, high address).
  const leafCases: ReadonlyArray<[string, bigint, DmaOutcome]> = [
    ['bit 7 (ignored in a 4 KiB leaf)', 1n << 7n, READ_OK],
    ['SNP (C)', 1n << 11n, FAULT],
    ['TM (C)', 1n << 62n, FAULT],
    ['address bit 45 (C)', 1n << 45n, FAULT],
    ['address bit 39 (C)', 1n << 39n, FAULT],
    ['address bit 38', 1n << 38n, NO_RAM],
    ['bit 52 (ignored)', 1n << 52n, READ_OK],
    ['A (bit 8)', 1n << 8n, READ_OK],
    ['X (bit 2)', 1n << 2n, READ_OK],
    ['EMT and IPAT (bits 6:3)', 0x78n, READ_OK],
    ['bit 63 (ignored)', 1n << 63n, READ_OK],
    ['bit 10 (ignored)', 1n << 10n, READ_OK],
  ];
  for (const [label, bits, expected] of leafCases) {
    await guest.map(top, 3, 0x200000, 0x300000, { extra: bits });
    await invalidate();
    await probe(`leaf ${label}`, 0x200000, expected);
  }
  await guest.map(top, 3, 0x200000, 0x300000);
  await invalidate();

  // A permission miss on a cached translation: QEMU 7.2 blocks it without a record.
  await guest.fill(0x301000, 16, 9);
  await guest.dma('to-device', 0x201000, 16, outcome.moved(0x301000), 0x100);
  await guest.observeFault('a read caches the read-only page');
  await writeOut();
  const CACHED_MISS = 'iotlb-hit-without-permission-not-recorded';
  await guest.dma(
    'to-ram',
    0x201000,
    16,
    outcome.byQuirk(CACHED_MISS, outcome.unrecorded('a permission miss on a cached translation', 0x301000), outcome.fault(0x301000)),
    0x100,
  );
  await guest.observeFault('a write hits the cached read-only page', { quirks: [CACHED_MISS] });
  await guest.observeInterrupts('MSIs for it', [CACHED_MISS]);
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
    guest.noteRegister(`${label}: FRCD lo`, 'FRCD0_LO', lo);
    guest.noteRegister(`${label}: FRCD hi`, 'FRCD0_HI', hi, [PV]);
    await guest.observeInterrupts(`${label}: MSIs`, quirks);
  };
  const clearF = () => guest.peer.writel(DMAR + 0x22c, 0x80000000);

  const FAULT = outcome.fault();
  const DROPPED = outcome.unrecorded('FSTS.PFO is set: the fault is dropped');
  await guest.dma('to-device', 0x1000, 8, FAULT);
  await state('a fault from 00:04.0');
  await guest.dma('to-device', 0x2000, 8, outcome.unrecorded('00:04.0 has a pending record: compressed'));
  await state('a second fault from 00:04.0 (compressed)', ['collapse-faults-from-pending-source']);
  await guest.dma('to-device', 0x3000, 8, outcome.overflow(), 0, SECOND_EDU_SLOT);
  await state('a fault from 00:05.0 with the record full (PFO)');
  await guest.dma('to-device', 0x4000, 8, DROPPED, 0, SECOND_EDU_SLOT);
  await state('another from 00:05.0');
  await guest.peer.writel(DMAR + 0x228, 0xffffffff);
  await state('a write of ones to the lower half of FRCD hi');
  await clearF();
  await state('F cleared');
  await guest.dma('to-device', 0x5000, 8, DROPPED, 0, SECOND_EDU_SLOT);
  await state('a fault while PFO is set (dropped)');
  await guest.setReg('FSTS', 0x1);
  await state('PFO cleared');
  await guest.dma('to-device', 0x6000, 8, FAULT, 0, SECOND_EDU_SLOT);
  await state('a fault from 00:05.0 now');
  await guest.setReg('FECTL', 0x80000000);
  await state('masked');
  await clearF();
  await state('F cleared while masked');
  await guest.dma('to-device', 0x7000, 8, FAULT);
  await state('a fault while masked (IP)');
  await guest.setReg('FECTL', 0);
  await state('unmasked: the held event is sent');
  await clearF();
  await guest.setReg('FECTL', 0x80000000);
  await guest.dma('to-device', 0x8000, 8, FAULT);
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
