/** Benchmark harness: each figure is measured against a baseline in the same run and reported as a ratio. */

export type Direction = 'throughput' | 'cost';

export interface Figure {
  /** Short id, e.g. "foundation.a". */
  id: string;
  title: string;
  subject: string;
  baseline: string;
  /** throughput: subject/baseline rate, higher is better; cost: subject/baseline time, lower is better. */
  direction: Direction;
  /** The target the ratio must meet (at least this for throughput, at most for cost). */
  target: number;
  /** Unit of one operation, for the printed rates. */
  unit: string;
  /** Returns operations per second of the subject, then of the baseline, for one round. */
  measure(): Promise<{ subject: number; baseline: number }>;
}

export interface Result {
  figure: Figure;
  subjectRate: number;
  baselineRate: number;
  ratio: number;
  met: boolean;
}

/** Runs `operation` repeatedly for about `milliseconds` and returns operations per second. */
export function rate(operation: () => number, milliseconds: number): number {
  // Each call of `operation` reports how many operations it did, so tight loops stay inside the callee.
  let operations = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(milliseconds * 1e6));
  let now = start;
  while (now < deadline) {
    operations += operation();
    now = process.hrtime.bigint();
  }
  return operations / (Number(now - start) / 1e9);
}

/** Like rate() for work that completes asynchronously: `run(stopAt)` resolves to the operations done by stopAt. */
export async function asyncRate(run: (deadlineNs: bigint) => Promise<number>, milliseconds: number): Promise<number> {
  const start = process.hrtime.bigint();
  const operations = await run(start + BigInt(Math.round(milliseconds * 1e6)));
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  return operations / elapsed;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Measures a figure over several interleaved rounds and takes the median of each side. */
export async function runFigure(figure: Figure, rounds: number): Promise<Result> {
  const subjects: number[] = [];
  const baselines: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const { subject, baseline } = await figure.measure();
    subjects.push(subject);
    baselines.push(baseline);
  }
  const subjectRate = median(subjects);
  const baselineRate = median(baselines);
  const ratio = figure.direction === 'throughput' ? subjectRate / baselineRate : baselineRate / subjectRate;
  const met = figure.direction === 'throughput' ? ratio >= figure.target : ratio <= figure.target;
  return { figure, subjectRate, baselineRate, ratio, met };
}

function formatRate(value: number, unit: string): string {
  const scaled = value >= 1e6 ? `${(value / 1e6).toFixed(2)} M` : value >= 1e3 ? `${(value / 1e3).toFixed(1)} k` : value.toFixed(1) + ' ';
  return `${scaled}${unit}/s`;
}

export function formatResult(result: Result): string {
  const { figure } = result;
  const relation = figure.direction === 'throughput' ? 'throughput ratio' : 'cost ratio';
  const goal = figure.direction === 'throughput' ? `>= ${figure.target}` : `<= ${figure.target}`;
  return [
    `${figure.id}  ${figure.title}`,
    `  subject : ${figure.subject}: ${formatRate(result.subjectRate, figure.unit)}`,
    `  baseline: ${figure.baseline}: ${formatRate(result.baselineRate, figure.unit)}`,
    `  ${relation} ${result.ratio.toFixed(2)}x (target ${goal}) ${result.met ? 'met' : 'NOT MET'}`,
  ].join('\n');
}

/**
 * Like rate() when each call needs an untimed preparation first (refilling a cache, say): only `operation` is
 * timed, and calls repeat until the timed part adds up to about `milliseconds`.
 */
export function rateExcludingSetup(setup: () => void, operation: () => number, milliseconds: number): number {
  let operations = 0;
  let timed = 0n;
  const budget = BigInt(Math.round(milliseconds * 1e6));
  while (timed < budget) {
    setup();
    const start = process.hrtime.bigint();
    operations += operation();
    timed += process.hrtime.bigint() - start;
  }
  return operations / (Number(timed) / 1e9);
}
