/** The differential harness's comparison: it must fail on any untagged difference, and a quirk excuses only what it changes (no QEMU needed). */
import { strict as assert } from 'node:assert';
import { quirkRegisterMask } from '../../lib/vtd/compat-quirks';
import { encodeBig } from '../../lib/vtd/bitfield';
import { FRCD_HI_FIELDS, FSTS_FIELDS } from '../../lib/vtd/registers';
import { assertAgreement, type DifferentialRun, type Observation } from './harness';

const o = (label: string, value: string, quirks: Observation['quirks'] = [], kind: Observation['kind'] = 'value'): Observation => ({
  label,
  value,
  quirks,
  kind,
});
/** A register observation, as OracleGuest.observe() and observeFault() make them. */
const r = (label: string, register: string, bits: bigint, quirks: Observation['quirks'] = []): Observation => ({
  label,
  value: `0x${bits.toString(16)}`,
  quirks,
  kind: 'register',
  register,
  bits,
});

function run(qemu: Observation[], ours: Observation[], spec?: Observation[]): DifferentialRun {
  return { qemu, ours, qemuStderr: '', ...(spec ? { spec } : {}) };
}

describe('differential harness comparison', () => {
  it('passes when every value agrees', () => {
    assertAgreement(run([o('a', '0x1')], [o('a', '0x1')], [o('a', '0x1')]));
  });

  it('fails on any difference with compat=qemu-7.2, tagged or not, and on a missing value', () => {
    assert.throws(() => assertAgreement(run([o('a', '0x1', ['frcd-pv-ffff-without-pasid'])], [o('a', '0x2')])), /disagree/);
    assert.throws(() => assertAgreement(run([o('a', '0x1'), o('b', '0x1')], [o('a', '0x1')])), /disagree/);
  });

  it('in spec mode accepts a difference only where a QEMU-only quirk is named', () => {
    const qemu = [o('a', 'ab', ['interrupt-range-read-returns-zeros'], 'data'), o('b', '0x1')];
    assertAgreement(run(qemu, qemu, [o('a', 'cd', [], 'data'), o('b', '0x1')]));
    assert.throws(() => assertAgreement(run(qemu, qemu, [o('a', 'ab', [], 'data'), o('b', '0x2')])), /no listed quirk/);
    // A quirk the spec mode has too ('all') explains nothing.
    const always = [o('a', '0x1', ['collapse-faults-from-pending-source'], 'interrupts')];
    assert.throws(() => assertAgreement(run(always, always, [o('a', '0x2', [], 'interrupts')])), /no listed quirk/);
  });

  it('in spec mode a quirk excuses only the bits of the register fields it changes', () => {
    const hi = encodeBig(FRCD_HI_FIELDS, { F: 1, T: 1, FR: 6, SID: 0x20 });
    const qemu = [r('FRCD hi', 'FRCD0_HI', hi | encodeBig(FRCD_HI_FIELDS, { PV: 0xffff }), ['frcd-pv-ffff-without-pasid'])];
    // PV differs: that is what the quirk changes.
    assertAgreement(run(qemu, qemu, [r('FRCD hi', 'FRCD0_HI', hi)]));
    // FR differs too: the PV quirk does not explain the fault reason.
    assert.throws(
      () => assertAgreement(run(qemu, qemu, [r('FRCD hi', 'FRCD0_HI', encodeBig(FRCD_HI_FIELDS, { F: 1, T: 1, FR: 5, SID: 0x20 }))])),
      /FRCD0_HI bits 0x300000000 differ outside the fields frcd-pv-ffff-without-pasid change/,
    );
    // A second tag widens the excuse by its own fields only.
    const both = [
      r('FRCD hi', 'FRCD0_HI', hi | encodeBig(FRCD_HI_FIELDS, { PV: 0xffff }), ['frcd-pv-ffff-without-pasid', 'scalable-faults-use-legacy-reasons']),
    ];
    assertAgreement(run(both, both, [r('FRCD hi', 'FRCD0_HI', encodeBig(FRCD_HI_FIELDS, { F: 1, T: 1, FR: 0x86, SID: 0x20 }))]));
    assert.throws(
      () => assertAgreement(run(both, both, [r('FRCD hi', 'FRCD0_HI', hi | encodeBig(FRCD_HI_FIELDS, { PV: 0xffff, SID: 0x28 }))])),
      /bits 0x8 differ/,
    );
  });

  it('in spec mode a quirk excuses no observation kind it does not change', () => {
    // gcmd-cfi-ignored changes GSTS.CFIS, not FSTS, and no memory data.
    const fsts = [r('FSTS', 'FSTS', 0n, ['gcmd-cfi-ignored'])];
    assert.throws(() => assertAgreement(run(fsts, fsts, [r('FSTS', 'FSTS', encodeBig(FSTS_FIELDS, { PPF: 1 }))])), /differ outside/);
    const data = [o('bytes', '00', ['gcmd-cfi-ignored'], 'data')];
    assert.throws(() => assertAgreement(run(data, data, [o('bytes', 'ff', [], 'data')])), /change no data observation/);
  });

  it('each quirk mask is the union of its fields (FRCDn registers share FRCD_HI / FRCD_LO)', () => {
    assert.equal(quirkRegisterMask('frcd-pv-ffff-without-pasid', 'FRCD0_HI'), 0xfffffn << 40n);
    assert.equal(quirkRegisterMask('scalable-rid-pasid-recorded-as-pasid', 'FRCD0_HI'), (0xfffffn << 40n) | (1n << 31n));
    assert.equal(quirkRegisterMask('frcd-pv-ffff-without-pasid', 'FSTS'), 0n);
    assert.equal(quirkRegisterMask('gcmd-cfi-ignored', 'GSTS'), 1n << 23n);
  });
});
