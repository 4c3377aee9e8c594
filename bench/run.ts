/**
 * `npm run bench`: measures every figure against its same-run baseline and prints the ratios.
 *
 * Each figure runs in its own Node process: figures share library code, and one figure's setup (a GuestMemory
 * subclass that records reads, a unit missing its IOTLB) would otherwise change how V8 compiles the code another
 * figure measures.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { foundationFigures } from './figures/foundation';
import { MACHINE_FIGURES } from './figures/machine';
import { PASID_FIGURES } from './figures/pasid';
import { readmeFigure } from './figures/readme';
import { shadowFigures } from './figures/shadow';
import { softNestingFigures } from './figures/soft-nesting';
import { serverProcessFigure, vfioUserFigures } from './figures/vfio-user';
import { VTD_FIGURES } from './figures/vtd';
import { formatResult, runFigure, type Figure } from './harness';

/** Every figure by id, with what builds it (sets whose figures share cheap setup build them together). */
function fromSet(set: () => Figure[], id: string): () => Figure {
  return () => set().find((figure) => figure.id === id)!;
}

const FIGURES: Readonly<Record<string, () => Figure>> = {
  'foundation.a': fromSet(foundationFigures, 'foundation.a'),
  'foundation.b': fromSet(foundationFigures, 'foundation.b'),
  'foundation.c': fromSet(foundationFigures, 'foundation.c'),
  ...VTD_FIGURES,
  'vfio.a': fromSet(vfioUserFigures, 'vfio.a'),
  'vfio.b': fromSet(vfioUserFigures, 'vfio.b'),
  'vfio.c': fromSet(vfioUserFigures, 'vfio.c'),
  'vfio.d': serverProcessFigure,
  'soft.a': fromSet(softNestingFigures, 'soft.a'),
  'shadow.a': fromSet(shadowFigures, 'shadow.a'),
  'shadow.b': fromSet(shadowFigures, 'shadow.b'),
  ...MACHINE_FIGURES,
  ...PASID_FIGURES,
  'readme.a': readmeFigure,
};

interface Row {
  id: string;
  ratio: number;
  target: number;
  direction: string;
  met: boolean;
}

function wanted(id: string, only: readonly string[]): boolean {
  return only.length === 0 || only.some((prefix) => id.startsWith(prefix));
}

/** Child: runs one figure and writes its row to `rowFile`. */
async function runOne(id: string, rounds: number, rowFile: string): Promise<void> {
  const figure = FIGURES[id]!();
  const result = await runFigure(figure, rounds);
  const row: Row = { id: figure.id, ratio: result.ratio, target: figure.target, direction: figure.direction, met: result.met };
  console.log(formatResult(result) + '\n');
  fs.writeFileSync(rowFile, JSON.stringify(row));
}

function main(): void {
  const args = process.argv.slice(2);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
  if (args[0] === '--figure') {
    void runOne(args[1]!, rounds, args[2]!).then(() => process.exit(0));
    return;
  }
  const only = args;
  const ids = Object.keys(FIGURES).filter((id) => wanted(id, only));
  console.log(`viommu bench: ${ids.length} figures, each in its own process; ${rounds} interleaved rounds each, median rates\n`);
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-bench-'));
  const rows: Row[] = [];
  try {
    for (const id of ids) {
      const rowFile = path.join(scratch, `${id}.json`);
      const child = spawnSync(process.execPath, [__filename, '--figure', id, rowFile], { stdio: 'inherit' });
      if (child.status !== 0 || !fs.existsSync(rowFile)) {
        console.log(`${id}: the bench process failed (exit ${child.status ?? child.signal})\n`);
        rows.push({ id, ratio: NaN, target: NaN, direction: '', met: false });
        continue;
      }
      rows.push(JSON.parse(fs.readFileSync(rowFile, 'utf8')) as Row);
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  const missed = rows.filter((row) => !row.met).map((row) => row.id);
  console.log(missed.length === 0 ? 'all targets met' : `targets not met: ${missed.join(', ')}`);
  if (process.env.BENCH_JSON) fs.writeFileSync(process.env.BENCH_JSON, JSON.stringify(rows, null, 2));
}

main();
