/** The legacy walker's trace: root, context and every second-stage level as steps, and a traced walk that finds what the tuned walk finds. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { getFieldBig } from '../../lib/vtd/bitfield';
import { LegacyWalker, type ContextFound } from '../../lib/vtd/legacy-walk';
import {
  LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
} from '../../lib/vtd/structures';
import { WalkTrace, type WalkStep } from '../../lib/vtd/walk-trace';
import { PAGE, SID, TestGuest } from '../vtd/unit-guest';

function walkerOf(guest: TestGuest): LegacyWalker {
  return new LegacyWalker(
    guest.memory,
    { addressWidth: 48, sagaw: 0b110, sllps: 0b11, deviceTlb: false, passThrough: true, features: new Set() },
    new Set(),
  );
}

function contextOf(walker: LegacyWalker, guest: TestGuest): ContextFound['context'] {
  const found = walker.lookupContext(guest.root, SID);
  if (!found.ok) assert.fail(`no context: reason 0x${found.reason.toString(16)}`);
  return found.context;
}

describe('explain: legacy walk trace', () => {
  it('traces the root entry, the context entry and each second-stage level with its layout', () => {
    const guest = new TestGuest('aw-bits=48');
    const top = guest.setContext(SID, { aw: 2 });
    guest.map(SID, 0x40_3000, 0x80_0000, { read: true, write: false });
    const walker = walkerOf(guest);
    const trace = new WalkTrace();
    const found = walker.lookupContext(guest.root, SID, trace);
    assert.ok(found.ok);
    const page = walker.walk(found.context, 0x40_3000, true, trace);
    const steps = trace.records as WalkStep[];
    assert.deepEqual(page, {
      ok: false,
      reason: 0x5,
      stage: 'second-stage',
      level: 1,
      entryAddress: guest.leafAddress(SID, 0x40_3000),
      entryValue: steps[5]!.value,
      fpd: false,
      notPresent: false,
      pastContext: true,
    });
    assert.deepEqual(
      steps.map((s) => [s.structure, s.level, s.index]),
      [
        ['root', 0, 0],
        ['context', 0, SID],
        ['second-stage', 4, 0],
        ['second-stage', 3, 0],
        ['second-stage', 2, 2],
        ['second-stage', 1, 3],
      ],
    );
    assert.deepEqual(
      steps.map((s) => s.layout),
      [LEGACY_ROOT_ENTRY, LEGACY_CONTEXT_ENTRY, SECOND_STAGE_TOP_ENTRY, SECOND_STAGE_TABLE_ENTRY, SECOND_STAGE_TABLE_ENTRY, SECOND_STAGE_4K_LEAF],
    );
    assert.equal(steps[0]!.entryAddress, guest.root);
    assert.equal(steps[2]!.tableAddress, top);
    assert.equal(steps[5]!.entryAddress, guest.leafAddress(SID, 0x40_3000));
    assert.equal(getFieldBig(steps[5]!.value, SECOND_STAGE_4K_LEAF.f.W), 0n);
    assert.equal(getFieldBig(steps[1]!.value, LEGACY_CONTEXT_ENTRY.f.SLPTPTR) * BigInt(PAGE), BigInt(top));
  });

  it('stops the trace at the entry that refused, and names a large leaf by its own layout', () => {
    const guest = new TestGuest('aw-bits=48');
    guest.setContext(SID, { aw: 2 });
    guest.map(SID, 0x60_0000, 0x80_0000, { size: '2m' });
    const walker = walkerOf(guest);
    const trace = new WalkTrace();
    const page = walker.walk(contextOf(walker, guest), 0x60_1234, false, trace);
    assert.ok(page.ok);
    assert.equal((trace.records.at(-1) as WalkStep).layout, SECOND_STAGE_2M_LEAF);
    const missing = new WalkTrace();
    const fault = walker.walk(contextOf(walker, guest), 0x1_0000_0000, false, missing);
    const refusing = missing.records.at(-1) as WalkStep;
    assert.deepEqual(fault, {
      ok: false,
      reason: 0x6,
      stage: 'second-stage',
      level: 3,
      entryAddress: refusing.entryAddress,
      entryValue: refusing.value,
      fpd: false,
      notPresent: true,
      pastContext: true,
    });
    assert.deepEqual(
      (missing.records as WalkStep[]).map((s) => s.level),
      [4, 3],
    );
  });

  it('a traced walk finds exactly what the untraced walk finds, on random tables', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            page: fc.integer({ min: 0, max: 63 }),
            size: fc.constantFrom<'4k' | '2m'>('4k', '2m'),
            read: fc.boolean(),
            write: fc.boolean(),
            reserved: fc.boolean(),
          }),
          { maxLength: 6 },
        ),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 64 * 512 - 1 }), fc.boolean()), { minLength: 1, maxLength: 8 }),
        (mappings, requests) => {
          const guest = new TestGuest('aw-bits=48');
          guest.setContext(SID, { aw: 2 });
          for (const m of mappings) {
            // 4 KiB pages in the first 2 MiB, large pages above it: no mapping is walked through another's leaf.
            const iova = m.size === '2m' ? (m.page + 1) * 2 ** 21 : m.page * PAGE;
            guest.map(SID, iova, 0x80_0000, { size: m.size, read: m.read, write: m.write, extra: m.reserved ? 1n << 50n : 0n });
          }
          const walker = walkerOf(guest);
          const context = contextOf(walker, guest);
          for (const [page, write] of requests) {
            const plain = walker.walk(context, page * PAGE, write);
            const traced = walker.walk(context, page * PAGE, write, new WalkTrace());
            assert.deepEqual(traced, plain, `page 0x${page.toString(16)} ${write ? 'write' : 'read'}`);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
