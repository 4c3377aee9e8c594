/**
 * README's commands, run as a newcomer types them, in a fresh clone of this checkout's last commit with nothing
 * beside it: the set-up and main job (`npm ci && npx viommu demo`), `npx viommu --help`, the test command (`npm
 * test`: the whole suite, this file skipping itself there) and the bench commands (one figure, one round). Skips, saying
 * why, without git, a commit, or the npm registry. How long the main job takes after set-up is a bench figure
 * (readme.a), not an assertion here.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repositoryRoot } from './helpers';
import { commandsUnder, readReadme, setUpAndMainJob } from './readme';

/** Set in README's `npm test` run inside this test, so that the run does not clone and test itself again. */
const NESTED = 'VIOMMU_README_NESTED';

function run(
  command: string,
  cwd: string,
  timeoutMs: number,
  extraEnv: NodeJS.ProcessEnv = {},
): { status: number | null; output: string; seconds: number } {
  const started = process.hrtime.bigint();
  const env: NodeJS.ProcessEnv = { ...process.env, CI: 'true', ...extraEnv };
  for (const [name, value] of Object.entries(extraEnv)) if (value === undefined) delete env[name];
  const result = spawnSync('bash', ['-c', command], { cwd, encoding: 'utf8', timeout: timeoutMs, env });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { status: result.status, output: `${result.stdout ?? ''}${result.stderr ?? ''}`, seconds };
}

function skipReason(root: string): string | undefined {
  if (process.env[NESTED] !== undefined) return "this run is README's `npm test` inside this very test, in a fresh clone";
  if (spawnSync('git', ['--version']).status !== 0) return 'git is not installed';
  if (spawnSync('git', ['rev-parse', 'HEAD'], { cwd: root }).status !== 0) return `${root} is not a git checkout with a commit`;
  const registry = spawnSync('npm', ['ping'], { encoding: 'utf8', timeout: 20_000 });
  if (registry.status !== 0) return 'the npm registry does not answer (npm ping), so npm ci cannot install';
  return undefined;
}

describe("README's commands, as written, in a fresh clone", function () {
  this.timeout(30 * 60_000);
  const root = repositoryRoot();
  const readme = readReadme(root);
  let clone = '';

  before(function () {
    const reason = skipReason(root);
    if (reason !== undefined) {
      console.log(`      skipped: ${reason}`);
      this.skip();
    }
    clone = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-readme-'));
    const cloned = spawnSync('git', ['clone', '-q', root, clone], { encoding: 'utf8' });
    assert.equal(cloned.status, 0, cloned.stderr);
  });

  after(() => {
    if (clone !== '') fs.rmSync(clone, { recursive: true, force: true });
  });

  it('sets up and runs the main job: every demo mode passes', () => {
    const { whole, mainJob } = setUpAndMainJob(readme);
    const first = run(whole, clone, 10 * 60_000);
    assert.equal(first.status, 0, first.output.slice(-3000));
    assert.match(first.output, /viommu demo: every mode passed/);
    // After set-up, the main job alone, as a newcomer runs it again.
    const again = run(mainJob, clone, 60_000);
    assert.equal(again.status, 0, again.output.slice(-3000));
    assert.match(again.output, /viommu demo: every mode passed/);
    console.log(`      \`${mainJob}\` after set-up: ${again.seconds.toFixed(2)} s`);
  });

  it("lists the other commands with the README's `npx viommu --help`", () => {
    assert.ok(readme.includes('`npx viommu --help`'), 'README names `npx viommu --help`');
    const result = run('npx viommu --help', clone, 60_000);
    assert.equal(result.status, 0, result.output.slice(-3000));
    for (const command of ['demo', 'serve', 'probe', 'qtest', 'smoke', 'explain']) {
      assert.ok(readme.includes(`\`viommu ${command}`), `README describes viommu ${command}`);
      assert.match(result.output, new RegExp(`^\\s+${command}\\b`, 'm'), `--help lists ${command}`);
    }
  });

  it('runs the test command: the whole suite passes in a clone with nothing beside it', () => {
    const [test, ...rest] = commandsUnder(readme, 'Test');
    assert.deepEqual(rest, [], 'one command');
    assert.equal(test, 'npm test');
    assert.ok(!fs.existsSync(path.join(clone, '..', 'shared')), `nothing is beside the clone (${path.join(clone, '..', 'shared')} exists)`);
    // No peers or captures from outside: the tests that need a peer skip, and the captures come from the clone.
    const result = run(test!, clone, 25 * 60_000, { [NESTED]: '1', VIOMMU_PEERS: undefined, VIOMMU_CAPTURES: undefined });
    assert.equal(result.status, 0, result.output.slice(-5000));
    const passing = /(\d+) passing/.exec(result.output);
    assert.ok(passing !== null && Number(passing[1]) > 1000, `the suite ran: ${passing?.[0] ?? 'no passing count'}`);
    assert.doesNotMatch(result.output, /\d+ failing/);
    console.log(`      in the clone: ${passing[0]}${/(\d+) pending/.exec(result.output)?.[0].replace(/^/, ', ') ?? ''}`);
  });

  it('runs the bench commands: one figure for one round, and a selection of no figure', () => {
    const commands = commandsUnder(readme, 'Benchmarks');
    assert.deepEqual(commands, ['npm run bench', 'npm run bench -- foundation.a']);
    const none = run(`${commands[0]} -- no-figure-has-this-id`, clone, 5 * 60_000);
    assert.equal(none.status, 0, none.output.slice(-3000));
    assert.match(none.output, /0 figures/);
    const one = run(`BENCH_ROUNDS=1 ${commands[1]}`, clone, 5 * 60_000);
    assert.equal(one.status, 0, one.output.slice(-3000));
    assert.match(one.output, /foundation\.a/);
    assert.match(one.output, /ratio [\d.]+x/);
  });
});
