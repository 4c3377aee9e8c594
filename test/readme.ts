/** README.md's command blocks, read as a newcomer reads them: what the README test runs and the readme bench times. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';

export function readReadme(root: string): string {
  return fs.readFileSync(path.join(root, 'README.md'), 'utf8');
}

/** The first ```sh block under `heading` in README.md, as lines without comments. */
export function commandsUnder(readme: string, heading: string): string[] {
  const at = readme.indexOf(`\n## ${heading}\n`);
  assert.ok(at >= 0, `README.md has a "## ${heading}" section`);
  const block = /```sh\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(block, `README.md's "${heading}" section has a sh block`);
  return block[1]!
    .split('\n')
    .map((line) => line.replace(/#.*$/, '').trim())
    .filter((line) => line !== '');
}

/** The set-up-and-run command split at its first `&&`: the set-up, then the main job a newcomer waits for afterwards. */
export function setUpAndMainJob(readme: string): { setUp: string; mainJob: string; whole: string } {
  const commands = commandsUnder(readme, 'Set up and run');
  assert.equal(commands.length, 1, `README's "Set up and run" block has one command, not ${commands.length}`);
  const whole = commands[0]!;
  const [setUp, ...rest] = whole.split('&&');
  assert.ok(rest.length > 0, `README's set-up command "${whole}" runs the main job after \`&&\``);
  return { setUp: setUp!.trim(), mainJob: rest.join('&&').trim(), whole };
}
