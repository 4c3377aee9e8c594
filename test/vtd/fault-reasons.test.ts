/** Fault reasons: lookups by hardware code, unknown and out-of-range codes, names for the walker. */
import { strict as assert } from 'node:assert';
import { FAULT_REASONS, describeFaultReason, faultCode, faultReason, parseFaultReasonName, type FaultReasonName } from '../../lib/vtd/fault-reasons';

describe('vtd fault reasons', () => {
  it('finds the codes QEMU 7.2 produced in the oracle runs', () => {
    assert.equal(faultReason(5)?.name, 'WRITE');
    assert.equal(faultReason(6)?.name, 'READ');
    assert.equal(faultReason(5)?.mode, 'legacy');
  });

  it('covers legacy 1..0xE, interrupt remapping 0x20..0x26 and the scalable-mode ranges', () => {
    for (let code = 1; code <= 0xe; code++) assert.equal(faultReason(code)?.mode, 'legacy', `0x${code.toString(16)}`);
    for (let code = 0x20; code <= 0x26; code++) assert.equal(faultReason(code)?.mode, 'interrupt-remapping');
    const scalable = [
      0x30,
      0x31,
      0x32,
      0x38,
      0x39,
      0x3a,
      ...range(0x40, 0x48),
      0x50,
      0x51,
      0x52,
      ...range(0x58, 0x5d),
      ...range(0x70, 0x7c),
      ...range(0x80, 0x87),
      0x90,
    ];
    for (const code of scalable) assert.equal(faultReason(code)?.mode, 'scalable', `0x${code.toString(16)}`);
  });

  it('indexes the table by code', () => {
    FAULT_REASONS.forEach((reason, code) => {
      if (reason) assert.equal(reason.code, code);
    });
    assert.equal(FAULT_REASONS.length, 256);
  });

  it('returns undefined for reserved, negative, fractional and too-large codes', () => {
    for (const code of [0, 0xf, 0x1f, 0x27, 0x33, 0x49, 0x5e, 0x6f, 0x7d, 0x88, 0x92, 0xff, 256, 1000, -1, 1.5, Number.NaN]) {
      assert.equal(faultReason(code), undefined, String(code));
    }
  });

  it('describes any code in one line', () => {
    assert.equal(describeFaultReason(0x59), '0x59 SM_PASID_ENTRY_NOT_PRESENT: SM: Present bit in PASID Table Entry is clear');
    assert.equal(describeFaultReason(0x33), '0x33 reserved fault reason');
    assert.equal(describeFaultReason(-1), '-1 reserved fault reason');
  });

  it('maps names to codes; names from outside the program are parsed, and unknown ones refused', () => {
    assert.equal(faultCode('CONTEXT_ENTRY_NOT_PRESENT'), 2);
    assert.equal(faultCode('SM_READ'), 0x86);
    assert.equal(parseFaultReasonName('SM_READ'), 'SM_READ');
    assert.equal(parseFaultReasonName('NO_SUCH_REASON'), undefined);
    assert.equal(parseFaultReasonName('sm_read'), undefined, 'names are exact');
    // @ts-expect-error a misspelt literal is a compile error, so the walkers cannot ask for a reason the table lacks
    assert.equal(parseFaultReasonName('NO_SUCH_REASON' satisfies FaultReasonName), undefined);
  });

  it('gives every reason a condition and an explanation', () => {
    for (const reason of FAULT_REASONS) {
      if (!reason) continue;
      assert.ok(reason.condition.length > 0 && reason.explanation.length > 0, reason.name);
    }
  });
});

function range(first: number, last: number): number[] {
  return Array.from({ length: last - first + 1 }, (_, i) => first + i);
}
