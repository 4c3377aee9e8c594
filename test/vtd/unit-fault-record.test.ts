/** The fault record translate() hands out: stage, levels, the entry that decided and its value, the PASID used, in both modes. */
import { strict as assert } from 'node:assert';
import type { FaultRecord } from '../../lib/vtd/fault';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { PASID_PGTT } from '../../lib/vtd/structures';
import type { TranslationResult } from '../../lib/vtd/translation-result';
import { ScalableGuest } from './scalable-guest';
import { PAGE, SID, TestGuest } from './unit-guest';

const NESTED = 'x-scalable-mode=on,x-flts=on,aw-bits=48,x-nested=on';

function recordOf(result: TranslationResult): FaultRecord {
  if (result.ok) assert.fail(`expected a fault, got a translation to 0x${result.address.toString(16)}`);
  return result.fault;
}

describe('vtd unit: the fault record out of translate()', () => {
  describe('legacy mode', () => {
    it('names the second-stage leaf that refused a write, with its value, on a walk and through the paging-structure cache', () => {
      const guest = new TestGuest('aw-bits=48');
      guest.setContext(SID, { aw: 2 });
      guest.map(SID, 0x40_0000, 0x80_0000);
      guest.map(SID, 0x40_1000, 0x80_1000, { write: false });
      guest.enable();
      const leaf = guest.leafAddress(SID, 0x40_1000);
      const expected = {
        ok: false,
        reason: faultCode('WRITE'),
        stage: 'second-stage',
        level: 1,
        entryAddress: leaf,
        entryValue: guest.memory.readU64(leaf),
        fpd: false,
        notPresent: false,
        pastContext: true,
      };
      // A fresh walk, then one that finds the leaf table in the paging-structure cache (its neighbour was translated).
      assert.deepEqual(recordOf(guest.translate(0x40_1000, true)), expected);
      assert.ok(guest.translate(0x40_0000, true).ok);
      assert.deepEqual(recordOf(guest.translate(0x40_1abc, true)), expected);
    });

    it('names a not-present context entry at its address with its value, before the page walk', () => {
      const guest = new TestGuest('aw-bits=48');
      guest.setContext(SID, { aw: 2 }, false);
      guest.enable();
      const fault = recordOf(guest.translate(0x1000));
      const contextTable = Number(guest.memory.readU64(guest.root) >> 12n) * PAGE;
      const contextAddress = contextTable + (SID & 0xff) * 16;
      assert.deepEqual(
        { stage: fault.stage, entryAddress: fault.entryAddress, notPresent: fault.notPresent, pastContext: fault.pastContext },
        { stage: 'context', entryAddress: contextAddress, notPresent: true, pastContext: false },
      );
      assert.equal(fault.entryValue, guest.memory.readU64(contextAddress) | (guest.memory.readU64(contextAddress + 8) << 64n));
      assert.equal(fault.level, undefined);
    });

    it("calls an input in the interrupt range the request's own fault, and an output there the output's", () => {
      const guest = new TestGuest('aw-bits=48');
      guest.setContext(SID, { aw: 2 });
      guest.map(SID, 0x50_0000, 0xfee0_0000);
      guest.enable();
      assert.equal(recordOf(guest.translate(0xfee0_0000)).stage, 'request');
      const output = recordOf(guest.translate(0x50_0000));
      assert.deepEqual([output.stage, output.reason, output.pastContext], ['output', faultCode('INTERRUPT_ADDRESS'), true]);
    });
  });

  describe('scalable mode', () => {
    it('names the PASID entry that is not present, with the PASID the request carried', () => {
      const guest = new ScalableGuest(NESTED);
      guest.scalableContext();
      const address = guest.pasidEntryAddress(SID, 5);
      guest.enableScalable();
      const fault = recordOf(guest.request(0x1000, { pasid: 5 }));
      assert.deepEqual(
        {
          reason: fault.reason,
          stage: fault.stage,
          entryAddress: fault.entryAddress,
          entryValue: fault.entryValue,
          pasid: fault.pasid,
          notPresent: fault.notPresent,
        },
        { reason: faultCode('SM_PASID_ENTRY_NOT_PRESENT'), stage: 'pasid-table', entryAddress: address, entryValue: 0n, pasid: 5, notPresent: true },
      );
    });

    it('names the first-stage level and entry for a first-stage fault, and RID_PASID for a request without PASID', () => {
      const guest = new ScalableGuest(NESTED);
      guest.scalableContext();
      const top = guest.firstStage(SID, 0, 3);
      guest.enableScalable();
      const fault = recordOf(guest.request(0x7000));
      assert.deepEqual(
        { reason: fault.reason, stage: fault.stage, level: fault.level, entryAddress: fault.entryAddress, pasid: fault.pasid },
        { reason: faultCode('SM_FIRST_STAGE_NOT_PRESENT'), stage: 'first-stage', level: 4, entryAddress: top, pasid: 0 },
      );
    });

    it('names the second stage of a nested walk apart from the first-stage level: the output (level 0) and where its walk stopped', () => {
      const guest = new ScalableGuest(NESTED);
      guest.scalableContext();
      const ssTop = guest.writer.page();
      const gpaBase = 0x1_0000_0000;
      const hostPages: number[] = [];
      for (let i = 0; i < 4; i++) {
        hostPages.push(guest.writer.page());
        guest.writer.mapSecond(ssTop, 4, gpaBase + i * PAGE, hostPages[i]!);
      }
      for (let level = 4; level > 1; level--) guest.memory.writeU64(hostPages[4 - level]!, BigInt(gpaBase + (5 - level) * PAGE) | 0x7n);
      // The leaf maps 0x3000 to GPA 0x2_0000_0000, which the second stage does not map.
      guest.memory.writeU64(hostPages[3]! + 3 * 8, 0x2_0000_0000n | 0x7n);
      guest.pasidEntry(SID, 7, { PGTT: PASID_PGTT.NESTED, AW: 2, SSPTPTR: ssTop / PAGE, FSPTPTR: gpaBase / PAGE, DID: 4 });
      guest.enableScalable();
      const result = guest.request(0x3abc, { pasid: 7 });
      const fault = recordOf(result);
      assert.equal(fault.stage, 'second-stage');
      assert.equal(fault.level, 0, "the first stage's output was being translated");
      assert.ok(fault.secondStageLevel !== undefined && fault.secondStageLevel >= 1 && fault.secondStageLevel <= 4);
      assert.equal(fault.pasid, 7);
    });
  });
});
