/** faultPlace(): a fault record's stage and levels in the words explain uses for a replayed walk's stop. */
import { strict as assert } from 'node:assert';
import { faultPlace } from '../../lib/explain/walk-words';
import { faultRecord, type FaultDetail, type FaultStage } from '../../lib/vtd/fault';
import { faultCode } from '../../lib/vtd/fault-reasons';

const READ = faultCode('SM_READ');

describe('explain: where a fault record says the walk stopped', () => {
  const cases: Array<[string, FaultStage, FaultDetail, boolean, string, number?]> = [
    ['the request', 'request', {}, false, 'the request itself, before any table was read'],
    ['a lookup structure', 'pasid-table', { entryAddress: 0x1000 }, false, 'the PASID entry, before either paging stage'],
    ['a first-stage level', 'first-stage', { level: 2 }, true, 'first stage, level 2 (PDE)'],
    ['a second-stage-only level', 'second-stage', { level: 3 }, false, 'second stage, at L3 SL-PDPE'],
    ['a nested output', 'second-stage', { level: 0, secondStageLevel: 2 }, true, "second stage, translating the first stage's output, at L2 SL-PDE"],
    [
      'a nested first-stage table',
      'second-stage',
      { level: 4, secondStageLevel: 1 },
      true,
      'second stage, translating the level 4 (PML4E) table of the first stage, at L1 SL-PTE',
    ],
    [
      'a nested table beyond the second stage, before any of its levels',
      'second-stage',
      { level: 2 },
      true,
      'second stage, translating the level 2 (PDE) table of the first stage',
    ],
    [
      'a nested A/D update the second stage refuses',
      'second-stage',
      { level: 1 },
      true,
      'second stage, allowing the walk to set A/D in the level 1 (PTE) table of the first stage',
      faultCode('SM_FIRST_STAGE_WRITE_NESTED'),
    ],
    ['the output', 'output', {}, false, 'the translated address, in the interrupt range'],
  ];
  for (const [what, stage, detail, nested, expected, reason] of cases) {
    it(what, () => assert.equal(faultPlace(faultRecord(reason ?? READ, stage, false, detail), nested), expected));
  }
});
