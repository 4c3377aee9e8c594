/**
 * `npm run bench`: measures every figure against its same-run baseline and prints the ratios.
 *
 * Each set of figures runs in its own Node process: figures share library code, and one set's setup (a GuestMemory
 * subclass that records reads, say) would otherwise change how V8 compiles the code another set measures.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { foundationFigures } from './figures/foundation';
import { shadowFigures } from './figures/shadow';
import { softNestingFigures } from './figures/soft-nesting';
import { vfioUserFigures } from './figures/vfio-user';
import { vtdFigures } from './figures/vtd';
import { formatResult, runFigure, type Figure } from './harness';

/** Figure ids start with their set's name and a dot. */
const SETS: Readonly<Record<string, () => Figure[]>> = {
  foundation: foundationFigures,
  vtd: vtdFigures,
  vfio: vfioUserFigures,
  soft: softNestingFigures,
  shadow: shadowFigures,
};

interface Row {
  id: string;
  ratio: number;
  target: number;
  direction: string;
  met: boolean;
}

function wanted(id: string, only: readonly string[]): boolean {
  return only.length === 0 || only.some((prefix) => id.startsWith(prefix) || prefix.startsWith(id));
}

/** Child: runs the selected figures of one set and writes their rows to `rowsFile`. */
async function runSet(set: string, only: readonly string[], rounds: number, rowsFile: string): Promise<void> {
  const figures = SETS[set]!().filter((figure) => wanted(figure.id, only));
  const rows: Row[] = [];
  for (const figure of figures) {
    const result = await runFigure(figure, rounds);
    rows.push({ id: figure.id, ratio: result.ratio, target: figure.target, direction: figure.direction, met: result.met });
    console.log(formatResult(result) + '\n');
  }
  fs.writeFileSync(rowsFile, JSON.stringify(rows));
}

function main(): void {
  const args = process.argv.slice(2);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
  if (args[0] === '--set') {
    void runSet(args[1]!, args.slice(3), rounds, args[2]!).then(() => process.exit(0));
    return;
  }
  const only = args;
  const sets = Object.keys(SETS).filter((set) => wanted(`${set}.`, only));
  console.log(`viommu bench: ${sets.length} sets of figures, each in its own process; ${rounds} interleaved rounds per figure, median rates\n`);
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-bench-'));
  const rows: Row[] = [];
  try {
    for (const set of sets) {
      const rowsFile = path.join(scratch, `${set}.json`);
      const child = spawnSync(process.execPath, [__filename, '--set', set, rowsFile, ...only], { stdio: 'inherit' });
      if (child.status !== 0 || !fs.existsSync(rowsFile)) {
        console.log(`set ${set}: the bench process failed (exit ${child.status ?? child.signal})\n`);
        continue;
      }
      rows.push(...(JSON.parse(fs.readFileSync(rowsFile, 'utf8')) as Row[]));
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  const missed = rows.filter((row) => !row.met).map((row) => row.id);
  console.log(missed.length === 0 ? 'all targets met' : `targets not met: ${missed.join(', ')}`);
  if (process.env.BENCH_JSON) fs.writeFileSync(process.env.BENCH_JSON, JSON.stringify(rows, null, 2));
}

main();
