/** `npm run bench`: measures every figure against its same-run baseline and prints the ratios. */
import * as fs from 'node:fs';
import { foundationFigures } from './figures/foundation';
import { shadowFigures } from './figures/shadow';
import { softNestingFigures } from './figures/soft-nesting';
import { vfioUserFigures } from './figures/vfio-user';
import { vtdFigures } from './figures/vtd';
import { formatResult, runFigure, type Figure } from './harness';

async function main(): Promise<void> {
  const only = process.argv.slice(2);
  const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
  const figures: Figure[] = [...foundationFigures(), ...vtdFigures(), ...vfioUserFigures(), ...softNestingFigures(), ...shadowFigures()].filter((figure) => only.length === 0 || only.some((id) => figure.id.startsWith(id)));
  const results = [];
  console.log(`viommu bench: ${figures.length} figures, ${rounds} interleaved rounds each, median rates\n`);
  for (const figure of figures) {
    const result = await runFigure(figure, rounds);
    results.push(result);
    console.log(formatResult(result) + '\n');
  }
  const missed = results.filter((result) => !result.met).map((result) => result.figure.id);
  console.log(missed.length === 0 ? 'all targets met' : `targets not met: ${missed.join(', ')}`);
  if (process.env.BENCH_JSON) {
    const rows = results.map((r) => ({ id: r.figure.id, ratio: r.ratio, target: r.figure.target, direction: r.figure.direction, met: r.met }));
    fs.writeFileSync(process.env.BENCH_JSON, JSON.stringify(rows, null, 2));
  }
  process.exit(0);
}

void main();
