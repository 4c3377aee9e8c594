/** Figures of soft nesting: a nested 4x4-level walk that misses every cache, against the entry reads it needs. */
import type { EntryWords } from '../../lib/memory/guest-memory';
import { FirstStageWalker, splitAddress, type FirstStageRequest } from '../../lib/vtd/first-stage-walk';
import { LegacyWalker } from '../../lib/vtd/legacy-walk';
import { NestedWalker, type NestedParams } from '../../lib/vtd/nested-walk';
import { rate, type Figure } from '../harness';
import { NestedTables, PAGE, RecordingMemory } from '../nested-tables';

const ROUND_MS = 400;
const ADDRESS_WIDTH = 48;
/** Four first-stage levels, each entry translated by four second-stage reads, then four for the output. */
const READS_PER_WALK = 4 * (4 + 1) + 4;
/** Walks cycle over this many pages 2 MiB apart: each has its own first-stage leaf table, so no two share a path. */
const PAGES = 256;
const VA_BASE = 0x7f12_3400_0000;

let sink = 0;

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`soft-nesting bench setup: ${what}`);
}

function walkers(memory: NestedTables['memory']): NestedWalker {
  const second = new LegacyWalker(
    memory,
    { addressWidth: ADDRESS_WIDTH, sagaw: 0b110, sllps: 0b11, deviceTlb: false, passThrough: true, features: new Set(['SMTS']) },
    new Set(),
  );
  return new NestedWalker(second, new FirstStageWalker(memory, { addressWidth: ADDRESS_WIDTH, fs1gp: true }));
}

/** soft.a: NestedWalker.walk (pure, no cache of any kind) against GuestMemory.readEntry at the 24 addresses it reads. */
function nestedWalkFigure(): Figure {
  const tables = new NestedTables(32 << 20);
  const requests: FirstStageRequest[] = [];
  const outputs: number[] = [];
  for (let i = 0; i < PAGES; i++) {
    const va = VA_BASE + i * 0x20_0000 + (i % 64) * 8;
    outputs.push(tables.host(tables.mapFirst(va)));
    requests.push({ ...splitAddress(BigInt(va)), write: false, execute: false, supervisor: false });
  }
  const params: NestedParams = {
    fsTable: tables.fsTop,
    fsLevels: 4,
    wpe: false,
    eafe: false,
    fpd: false,
    ssTable: tables.ssTop,
    ssLevels: 4,
    ssInputWidth: ADDRESS_WIDTH,
  };
  const walker = walkers(tables.memory);

  // One recorded pass over the same RAM: which entries each walk reads, for the baseline, and that it reads 24.
  const recording = new RecordingMemory(tables.ram);
  const recorder = walkers(recording);
  for (let i = 0; i < PAGES; i++) {
    const before = recording.reads.length;
    const page = recorder.walk(params, requests[i]!);
    check(page.ok && page.address === outputs[i], `walk ${i} did not reach its page`);
    check(
      recording.reads.length - before === READS_PER_WALK,
      `walk ${i} read ${recording.reads.length - before} entries, expected ${READS_PER_WALK}`,
    );
  }
  for (let i = 0; i < PAGES; i++) {
    const page = walker.walk(params, requests[i]!);
    check(page.ok && page.address + (Number(requests[i]!.lo) % PAGE) === outputs[i]! + (i % 64) * 8, `walk ${i} gave a wrong address`);
  }
  // A plain array of numbers, as the walk computes its addresses.
  const entries = [...recording.reads];
  const memory = tables.memory;
  const out: EntryWords = { lo: 0, hi: 0 };
  return {
    id: 'soft.a',
    title: 'nested 4x4-level walk, fresh every time (256 pages with their own leaf tables, reads only: A bits preset)',
    subject: 'NestedWalker.walk: 4 first-stage levels, each entry and the output through a 4-level second stage',
    baseline: `${READS_PER_WALK} GuestMemory.readEntry at the same entry addresses`,
    direction: 'cost',
    target: 4,
    unit: 'walks',
    async measure() {
      const subject = rate(() => {
        for (let i = 0; i < requests.length; i++) {
          const result = walker.walk(params, requests[i]!);
          if (result.ok) sink ^= result.address;
        }
        return requests.length;
      }, ROUND_MS);
      const baseline = rate(() => {
        for (let i = 0; i < entries.length; i += READS_PER_WALK) {
          for (let j = i; j < i + READS_PER_WALK; j++) memory.readEntry(entries[j]!, out);
          sink ^= out.lo;
        }
        return entries.length / READS_PER_WALK;
      }, ROUND_MS);
      if (sink === 0.5) console.log(sink);
      return { subject, baseline };
    },
  };
}

export function softNestingFigures(): Figure[] {
  return [nestedWalkFigure()];
}
