/** VtdUnit in scalable mode, programmed as a guest: each PGTT, the scalable fault reasons in FRCD, FPD, TTM values. */
import { strict as assert } from 'node:assert';
import { DmaFault, EFAULT, EPERM } from '../../lib/memory/dma-space';
import { faultCode, type FaultReasonName } from '../../lib/vtd/fault-reasons';
import { FSTS, OFFSET } from '../../lib/vtd/register-bits';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest, TTM_SCALABLE, frcdHi } from './scalable-guest';
import { FRCD, PAGE, SID } from './unit-guest';

const SCALABLE = 'x-scalable-mode=on,aw-bits=48';
const FIRST_STAGE = 'x-scalable-mode=on,x-flts=on,aw-bits=48,x-pasid-mode=on';
const NESTED = `${FIRST_STAGE},x-nested=on`;
const code = faultCode;
const A = 1n << 5n;
const D = 1n << 6n;

function ok(guest: ScalableGuest, iova: number | bigint, options: Parameters<ScalableGuest['request']>[1] = {}): number {
  const result = guest.request(iova, options);
  if (!result.ok) assert.fail(`expected a translation of 0x${iova.toString(16)}, got fault 0x${result.fault.reason.toString(16)}`);
  return result.address;
}

function refused(guest: ScalableGuest, reason: FaultReasonName, iova: number | bigint, options: Parameters<ScalableGuest['request']>[1] = {}): void {
  const result = guest.request(iova, options);
  if (result.ok) assert.fail(`expected fault ${reason}, got 0x${result.address.toString(16)}`);
  assert.equal(result.fault.reason, code(reason), `${reason}: got 0x${result.fault.reason.toString(16)}`);
}

/** A device in scalable mode with a 4-level second-stage domain (DID 1) at RID_PASID 0. */
function secondStageGuest(config = SCALABLE): { guest: ScalableGuest; top: number } {
  const guest = new ScalableGuest(config);
  guest.scalableContext();
  const top = guest.secondStage(SID, 0, 1);
  guest.writer.mapSecond(top, 4, 0x200000, 0x300000);
  guest.writer.mapSecond(top, 4, 0x201000, 0x301000, { write: false });
  guest.enableScalable();
  return { guest, top };
}

describe('VtdUnit scalable mode', () => {
  describe('translation by PGTT', () => {
    it('second stage (PGTT 2) for requests without PASID through RID_PASID 0', () => {
      const { guest } = secondStageGuest();
      assert.equal(ok(guest, 0x200123), 0x300123);
      assert.equal(ok(guest, 0x201fff), 0x301fff);
      assert.equal(guest.read32(OFFSET.FSTS), 0);
    });

    it('a write to a read-only page records 0x85 with PP = 0 (request without PASID)', () => {
      const { guest } = secondStageGuest();
      refused(guest, 'SM_WRITE', 0x201000, { write: true });
      assert.equal(guest.read64(FRCD), 0x201000n);
      assert.equal(guest.frcdHi(), frcdHi(0x85));
      assert.equal(guest.read32(OFFSET.FSTS) & FSTS.PPF, FSTS.PPF);
    });

    it('an unmapped read records 0x86 with T = 1', () => {
      const { guest } = secondStageGuest();
      refused(guest, 'SM_READ', 0x900000);
      assert.equal(guest.frcdHi(), frcdHi(0x86, { read: true }));
    });

    it('pass-through (PGTT 4): the input is the output, up to the host address width', () => {
      const guest = new ScalableGuest(SCALABLE);
      guest.scalableContext();
      guest.pasidEntry(SID, 0, { PGTT: PASID_PGTT.PASS_THROUGH, DID: 2 });
      guest.enableScalable();
      assert.equal(ok(guest, 0x1234567, { write: true }), 0x1234567);
      refused(guest, 'SM_BEYOND_HARDWARE_MAX', 1n << 48n);
    });

    it('first stage (PGTT 1) for a request with PASID: A and D set in guest memory, PP/PV in the record', () => {
      const guest = new ScalableGuest(FIRST_STAGE);
      guest.scalableContext();
      const top = guest.firstStage(SID, 5, 9);
      guest.writer.mapFirst(top, 4, 0x7000_0000n, 0x400000);
      guest.writer.mapFirst(top, 4, 0x7000_1000n, 0x401000, { us: false });
      guest.enableScalable();
      assert.equal(ok(guest, 0x7000_0042, { pasid: 5, write: true }), 0x400042);
      const leaf = guest.writer.firstEntryAddress(top, 4, 0x7000_0000n, 1);
      assert.equal(guest.memory.readU64(leaf) & (A | D), A | D);
      refused(guest, 'SM_USER_SUPERVISOR', 0x7000_1000, { pasid: 5 });
      assert.equal(guest.frcdHi(), frcdHi(0x81, { read: true, pasid: 5 }));
      guest.clearFault();
      refused(guest, 'SM_NON_CANONICAL', 0x8000_0000_0000n, { pasid: 5 });
      // A supervisor request needs SRE in the PASID entry (the x-flts unit offers no SRS, so SRE stays clear).
      refused(guest, 'SM_PASID_ENTRY_SRE_CLEAR', 0x7000_0000, { pasid: 5, supervisor: true });
    });

    it('first stage: a write through a cached translation whose D is clear walks again and sets D', () => {
      const guest = new ScalableGuest(FIRST_STAGE);
      guest.scalableContext();
      const top = guest.firstStage(SID, 5, 9);
      guest.writer.mapFirst(top, 4, 0x1000n, 0x400000);
      guest.enableScalable();
      ok(guest, 0x1000, { pasid: 5 });
      const leaf = guest.writer.firstEntryAddress(top, 4, 0x1000n, 1);
      assert.equal(guest.memory.readU64(leaf) & D, 0n);
      ok(guest, 0x1000, { pasid: 5, write: true });
      assert.equal(guest.memory.readU64(leaf) & D, D);
    });

    it('nested (PGTT 3): the first stage in guest-physical space, every table and the output through the second stage', () => {
      const guest = new ScalableGuest(NESTED);
      guest.scalableContext();
      const ssTop = guest.writer.page();
      // Guest-physical 0x1_0000_0000.. holds the first-stage tables; second stage maps them onto host table pages.
      const gpaBase = 0x1_0000_0000;
      const hostPages: number[] = [];
      for (let i = 0; i < 4; i++) {
        hostPages.push(guest.writer.page());
        guest.writer.mapSecond(ssTop, 4, gpaBase + i * PAGE, hostPages[i]!);
      }
      guest.writer.mapSecond(ssTop, 4, 0x2_0000_0000, 0x500000);
      // First-stage chain built by hand: guest page i points at guest page i+1; the leaf maps 0x3000 to GPA 0x2_0000_0000.
      for (let level = 4; level > 1; level--) {
        const i = 4 - level;
        guest.memory.writeU64(hostPages[i]!, BigInt(gpaBase + (i + 1) * PAGE) | 0x7n);
      }
      guest.memory.writeU64(hostPages[3]! + 3 * 8, 0x2_0000_0000n | 0x7n);
      guest.pasidEntry(SID, 7, { PGTT: PASID_PGTT.NESTED, AW: 2, SSPTPTR: ssTop / PAGE, FSPTPTR: gpaBase / PAGE, DID: 4 });
      guest.enableScalable();
      assert.equal(ok(guest, 0x3abc, { pasid: 7, write: true }), 0x500abc);
      // Take away the second-stage mapping of the output page: a second-stage fault reported for the output.
      guest.writer.mapSecond(ssTop, 4, 0x2_0000_0000, 0x500000, { read: false, write: false });
      guest.globalIotlbInvalidate();
      refused(guest, 'SM_READ', 0x3abc, { pasid: 7 });
      assert.equal(guest.frcdHi(), frcdHi(0x86, { read: true, pasid: 7 }));
    });
  });

  describe('scalable fault reasons in FRCD', () => {
    const cases: Array<[FaultReasonName, (guest: ScalableGuest) => void, Parameters<ScalableGuest['request']>[1]?]> = [
      ['SM_ROOT_ENTRY_NOT_PRESENT', (g) => g.rootEntry(0, { LP: 0 })],
      ['SM_ROOT_ENTRY_RESERVED', (g) => g.rootEntry(0, {}, 1n << 5n)],
      ['SM_CONTEXT_ENTRY_NOT_PRESENT', (g) => g.scalableContext(SID, { P: 0 })],
      ['SM_CONTEXT_ENTRY_RESERVED', (g) => g.scalableContext(SID, {}, 1n << 200n)],
      ['SM_CONTEXT_PASIDE_CLEAR', (g) => g.scalableContext(SID, { PASIDE: 0 }), { pasid: 3 }],
      ['SM_CONTEXT_PASID_TOO_LARGE', () => undefined, { pasid: 64 * 128 }],
      ['SM_CONTEXT_RID_PASID_ERROR', (g) => g.scalableContext(SID, { RID_PASID: 1 })],
      ['SM_PASID_DIRECTORY_NOT_PRESENT', (g) => g.directoryEntry(SID, 0, { P: 0 })],
      ['SM_PASID_DIRECTORY_RESERVED', (g) => g.directoryEntry(SID, 0, {}, 1n << 3n)],
      ['SM_PASID_DIRECTORY_ACCESS', (g) => g.scalableContext(SID, { PASIDDIRPTR: 0x4000_0000 / PAGE })],
      ['SM_PASID_ENTRY_ACCESS', (g) => g.directoryEntry(SID, 0, { PTP: 0x4000_0000 / PAGE })],
      ['SM_PASID_ENTRY_NOT_PRESENT', (g) => g.pasidEntry(SID, 0, { P: 0 })],
      ['SM_PASID_ENTRY_RESERVED', (g) => g.pasidEntry(SID, 0, { PGTT: PASID_PGTT.SECOND_STAGE, AW: 2, SSPTPTR: 0x200, DID: 1 }, 1n << 10n)],
      ['SM_PASID_ENTRY_INVALID', (g) => g.pasidEntry(SID, 0, { PGTT: 5, DID: 1 })],
      ['SM_PASID_ENTRY_INVALID', (g) => g.pasidEntry(SID, 0, { PGTT: PASID_PGTT.FIRST_STAGE, DID: 1 })],
      ['SM_SECOND_STAGE_POINTER_INVALID', (g) => g.secondStage(SID, 0, 1, 4, { SSPTPTR: 0x4000_0000 / PAGE })],
    ];
    for (const [reason, breakIt, options] of cases) {
      it(`${reason} (0x${code(reason).toString(16)})`, () => {
        const { guest } = secondStageGuest();
        breakIt(guest);
        guest.globalContextInvalidate();
        refused(guest, reason, 0x200000, options);
        const pasid = options?.pasid;
        assert.equal(guest.frcdHi(), frcdHi(code(reason), { read: true, ...(pasid === undefined ? {} : { pasid }) }));
      });
    }

    it('FPD in the PASID entry suppresses a qualified fault; root and directory faults are recorded regardless', () => {
      const { guest, top } = secondStageGuest();
      guest.pasidEntry(SID, 0, { PGTT: PASID_PGTT.SECOND_STAGE, AW: 2, SSPTPTR: top / PAGE, DID: 1, FPD: 1 });
      guest.globalContextInvalidate();
      const result = guest.request(0x900000);
      assert.ok(!result.ok && result.recording === 'suppressed-fpd');
      assert.equal(guest.read32(OFFSET.FSTS), 0);
      guest.directoryEntry(SID, 0, { P: 0, FPD: 1 });
      guest.globalContextInvalidate();
      assert.ok(!guest.request(0x200000).ok);
      assert.equal(guest.read32(OFFSET.FSTS), 0, 'a directory entry with FPD set and P clear suppresses its own fault');
      guest.scalableContext(SID, { PASIDDIRPTR: 0x4000_0000 / PAGE, FPD: 1 });
      guest.globalContextInvalidate();
      refused(guest, 'SM_PASID_DIRECTORY_ACCESS', 0x200000);
      assert.equal(guest.frcdHi(), frcdHi(0x50, { read: true }), 'an unreadable directory is not a qualified fault');
    });

    it("compat=qemu-7.2 uses a non-zero RID_PASID and records QEMU's codes with PP = 1 for page faults", () => {
      const guest = new ScalableGuest(`${SCALABLE},compat=qemu-7.2`);
      guest.scalableContext(SID, { RID_PASID: 1 });
      const top = guest.secondStage(SID, 1, 1);
      guest.writer.mapSecond(top, 4, 0x200000, 0x300000, { write: false });
      guest.enableScalable();
      assert.equal(ok(guest, 0x200010), 0x300010);
      guest.globalIotlbInvalidate();
      refused(guest, 'WRITE', 0x200000, { write: true });
      assert.equal(guest.frcdHi(), frcdHi(5, { pasid: 1 }));
    });
  });

  describe('RTADDR.TTM', () => {
    it('TTM 11 and 10 give fault 0x30 (invalid root table address) on a scalable-capable unit', () => {
      for (const ttm of [3n << 10n, 2n << 10n]) {
        const { guest } = secondStageGuest();
        guest.enableScalable(ttm);
        refused(guest, 'SM_ROOT_TABLE_ADDRESS_INVALID', 0x200000);
        assert.equal(guest.frcdHi(), frcdHi(0x30, { read: true }));
      }
    });

    it('TTM 01 on a unit without ECAP.SMTS gives fault 8 (invalid root table)', () => {
      const guest = new ScalableGuest('');
      guest.enableScalable(TTM_SCALABLE);
      refused(guest, 'ROOT_TABLE_INVALID', 0x200000);
    });
  });

  describe('the errno a device sees for a DMA fault', () => {
    const errnoOf = (action: () => void): number => {
      try {
        action();
      } catch (error) {
        if (error instanceof DmaFault) return error.errno;
        throw error;
      }
      return assert.fail('the DMA succeeded');
    };

    it('permission faults of scalable second-stage (0x85) and first-stage (0x81) translation are EPERM; unmapped is EFAULT', () => {
      const { guest } = secondStageGuest();
      const dma = guest.unit.dmaSpace(SID);
      assert.equal(
        errnoOf(() => dma.write(0x201000n, new Uint8Array(4))),
        EPERM,
        '0x85 on a read-only page',
      );
      assert.equal(
        errnoOf(() => dma.read(0x900000n, new Uint8Array(4))),
        EFAULT,
        'nothing mapped',
      );

      const user = new ScalableGuest(FIRST_STAGE);
      user.scalableContext();
      const top = user.firstStage(SID, 0, 9);
      user.writer.mapFirst(top, 4, 0x7000_1000n, 0x401000, { us: false });
      user.enableScalable();
      assert.equal(
        errnoOf(() => user.unit.dmaSpace(SID).read(0x7000_1000n, new Uint8Array(4))),
        EPERM,
        '0x81: a user request to a supervisor page',
      );
      assert.equal((user.frcdHi() >> 32n) & 0xffn, 0x81n);
    });
  });
});
