/** `viommu explain`'s "live unit:" line: the reason the unit recorded and where its record says the walk stopped. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { runExplain } from '../../lib/cli/explain';
import { writeSnapshot } from '../../lib/explain/snapshot-file';
import type { TranslationRequest } from '../../lib/vtd/translation-result';
import { serializeSnapshot, takeSnapshot } from '../../lib/vtd/unit-snapshot';
import { SID, type TestGuest } from '../vtd/unit-guest';
import { LEGACY_IOVA, NESTED_IOVA, NESTED_PASID, OUTPUT_GPA, legacyGuest, nestedGuest } from '../explain/fault-guests';

describe('cli: viommu explain, the live unit line', () => {
  let directory: string;
  beforeEach(() => (directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-live-unit-'))));
  afterEach(() => fs.rmSync(directory, { recursive: true, force: true }));

  /** Faults `request` live, snapshots it to a file (`edit` may rewrite the file's JSON) and explains it; the live unit line. */
  function liveUnitLine(guest: TestGuest, request: TranslationRequest, edit?: (file: Record<string, unknown>) => object): string {
    const live = guest.unit.translate(request);
    assert.equal(live.ok, false, 'the request should fault live');
    const snapshot = takeSnapshot(guest.unit, guest.memory, request, { observed: live.ok ? undefined : live });
    const file = path.join(directory, 'fault.json');
    if (edit === undefined) writeSnapshot(file, snapshot);
    else fs.writeFileSync(file, JSON.stringify(edit(JSON.parse(serializeSnapshot(snapshot)) as Record<string, unknown>)));
    const stdout = new PassThrough();
    let text = '';
    stdout.on('data', (chunk: Buffer) => (text += chunk.toString()));
    runExplain(file, {}, { stdout });
    const found = text.split('\n').find((line) => line.startsWith('live unit: '));
    assert.ok(found !== undefined, text);
    return found;
  }

  const nestedRead: TranslationRequest = { sid: SID, iova: BigInt(NESTED_IOVA), write: false, pasid: NESTED_PASID };

  it('a nested walk whose output the second stage does not map: the second stage, on the output, at its level', () => {
    const { guest, ssTop } = nestedGuest();
    guest.writer.mapSecond(ssTop, 4, OUTPUT_GPA, 0x500000, { read: false, write: false });
    assert.equal(
      liveUnitLine(guest, nestedRead),
      "live unit: 0x86 SM_READ: SM: No read permission for Read/AtomicOp request; second stage, translating the first stage's output, at L1 SL-PTE; fault record: recorded",
    );
  });

  it('a nested walk whose level-3 table the second stage does not map: that first-stage level and the second-stage level', () => {
    const { guest } = nestedGuest({ unmappedTableLevel: 3 });
    assert.match(
      liveUnitLine(guest, nestedRead),
      /^live unit: 0x76 SM_FIRST_STAGE_READ_NESTED: [^;]*; second stage, translating the level 3 \(PDPE\) table of the first stage, at L1 SL-PTE; fault record: recorded$/,
    );
  });

  it('a legacy write to a read-only page: the second-stage level', () => {
    const guest = legacyGuest();
    assert.equal(
      liveUnitLine(guest, { sid: SID, iova: BigInt(LEGACY_IOVA), write: true }),
      'live unit: 0x5 WRITE: PTE Write access is not set; second stage, at L1 SL-PTE; fault record: recorded',
    );
  });

  it('a version 1 snapshot, which kept the reason and level only: the line as it was', () => {
    const guest = legacyGuest();
    const line = liveUnitLine(guest, { sid: SID, iova: BigInt(LEGACY_IOVA), write: true }, (file) => ({
      ...file,
      version: 1,
      observed: { reason: 5, level: 1, recording: 'recorded' },
    }));
    assert.equal(line, 'live unit: 0x5 WRITE: PTE Write access is not set, level 1; fault record: recorded');
  });
});
