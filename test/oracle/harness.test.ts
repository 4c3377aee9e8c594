/** The differential harness's comparison: it must fail on any untagged difference (no QEMU needed). */
import { strict as assert } from 'node:assert';
import { assertAgreement, type DifferentialRun, type Observation } from './harness';

const o = (label: string, value: string, quirks: Observation['quirks'] = []): Observation => ({ label, value, quirks });

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
    const qemu = [o('a', '0x1', ['frcd-pv-ffff-without-pasid']), o('b', '0x1')];
    assertAgreement(run(qemu, qemu, [o('a', '0x2'), o('b', '0x1')]));
    assert.throws(() => assertAgreement(run(qemu, qemu, [o('a', '0x1'), o('b', '0x2')])), /no listed quirk/);
    // A quirk the spec mode has too ('all') explains nothing.
    const always = [o('a', '0x1', ['collapse-faults-from-pending-source'])];
    assert.throws(() => assertAgreement(run(always, always, [o('a', '0x2')])), /no listed quirk/);
  });
});
