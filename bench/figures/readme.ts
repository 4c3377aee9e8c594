/**
 * readme.a: README's main job as a newcomer runs it after set-up (`npx viommu demo`), against the same demo started
 * by node directly. The ratio is what npx and the bin add; the absolute time, wanted under 3 s, is printed each
 * round. npx itself (npm's CLI loading, the bin lookup) costs about as much as the demo's own ~0.8 s, so the target
 * allows it twice that: a main job under 3 s while the demo stays under 1 s.
 */
import * as path from 'node:path';
import { readReadme, setUpAndMainJob } from '../../test/readme';
import type { Figure } from '../harness';
import { tail, timedProcess } from '../timed-process';

/** dist/bench/figures -> the repository. */
const ROOT = path.resolve(__dirname, '..', '..', '..');

async function timed(command: string, args: readonly string[], side: string): Promise<number> {
  const run = await timedProcess(command, args, { cwd: ROOT });
  if (run.code !== 0) throw new Error(`readme bench: ${side} exited with ${run.code ?? run.signal}:\n${tail(run.output)}`);
  return run.seconds;
}

export function readmeFigure(): Figure {
  const { mainJob } = setUpAndMainJob(readReadme(ROOT));
  const [program, ...args] = mainJob.split(/\s+/);
  if (program !== 'npx' || args[0] !== 'viommu') throw new Error(`readme bench: the main job "${mainJob}" is not \`npx viommu ...\``);
  const direct = [path.join(ROOT, 'bin', 'viommu.js'), ...args.slice(1)];
  let round = 0;
  return {
    id: 'readme.a',
    title: `README's main job after set-up (\`${mainJob}\`), wall time from spawn to exit, against the same command by node`,
    subject: mainJob,
    baseline: `node bin/viommu.js ${args.slice(1).join(' ')}`,
    direction: 'cost',
    target: 3,
    unit: 'runs',
    measure: async () => {
      // One untimed run of each first, so that the page cache holds node, npm and the demo before any timing.
      if (round === 0) {
        await timed('npx', args, mainJob);
        await timed(process.execPath, direct, 'node bin/viommu.js');
      }
      // Alternate which side goes first, so neither always runs right after the other.
      const first = round++ % 2 === 0;
      let viaNpx = 0;
      if (first) viaNpx = await timed('npx', args, mainJob);
      const byNode = await timed(process.execPath, direct, 'node bin/viommu.js');
      if (!first) viaNpx = await timed('npx', args, mainJob);
      console.log(`  round ${round}: \`${mainJob}\` ${viaNpx.toFixed(2)} s (under 3 s wanted), node directly ${byNode.toFixed(2)} s`);
      return { subject: 1 / viaNpx, baseline: 1 / byNode };
    },
  };
}
