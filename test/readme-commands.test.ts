/**
 * README's two commands, run as a newcomer types them, in a fresh clone of this checkout's last commit: the set-up
 * and main job (`npm ci && npx viommu demo`) and the test command (`npm test`, here with a --grep that selects no
 * test, since this suite is what it runs). Skips, saying why, without git, a commit, or the npm registry.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { repositoryRoot } from './helpers';

/** The first ```sh block under `heading` in README.md, as lines without comments. */
function commandsUnder(readme: string, heading: string): string[] {
  const at = readme.indexOf(`\n## ${heading}\n`);
  assert.ok(at >= 0, `README.md has a "## ${heading}" section`);
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(block, `README.md's "${heading}" section has a sh block`);
  return block[1]!
    .split('\n')
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '');
}

function run(command: string, cwd: string, timeoutMs: number): { status: number | null; output: string; seconds: number } {
  const started = process.hrtime.bigint();
  const result = spawnSync('bash', ['-c', command], { cwd, encoding: 'utf8', timeout: timeoutMs, env: { ...process.env, CI: 'true' } });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { status: result.status, output: `${result.stdout ?? ''}${result.stderr ?? ''}`, seconds };
}

function skipReason(root: string): string | undefined {
  if (spawnSync('git', ['--version']).status !== 0) return 'git is not installed';
  if (spawnSync('git', ['rev-parse', 'HEAD'], { cwd: root }).status !== 0) return `${root} is not a git checkout with a commit`;
  const registry = spawnSync('npm', ['ping'], { encoding: 'utf8', timeout: 20_000 });
  if (registry.status !== 0) return 'the npm registry does not answer (npm ping), so npm ci cannot install';
  return undefined;
}

describe("README's commands, as written, in a fresh clone", function () {
  this.timeout(15 * 60_000);
  const root = repositoryRoot();
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
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
    const [setUp, ...rest] = commandsUnder(readme, 'Set up and run');
    assert.deepEqual(rest, [], 'one command');
    const first = run(setUp!, clone, 10 * 60_000);
    assert.equal(first.status, 0, first.output.slice(-3000));
    assert.match(first.output, /viommu demo: every mode passed/);
    // After set-up, the main job alone (the part after `npm ci &&`), for the time a newcomer waits.
    const mainJob = setUp!.split('&&').slice(1).join('&&').trim();
    const again = run(mainJob, clone, 60_000);
    assert.equal(again.status, 0, again.output.slice(-3000));
    console.log(`      \`${mainJob}\` after set-up: ${again.seconds.toFixed(2)} s`);
  });

  it('runs the test command (selecting no test: this suite is what it runs)', () => {
    const [test, ...rest] = commandsUnder(readme, 'Test');
    assert.deepEqual(rest, [], 'one command');
    assert.equal(test, 'npm test');
    const result = run(`${test} -- --grep 'no test has this title'`, clone, 10 * 60_000);
    assert.equal(result.status, 0, result.output.slice(-3000));
    assert.match(result.output, /0 passing/);
  });
});
