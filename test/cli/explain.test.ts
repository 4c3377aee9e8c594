/** `viommu demo --snapshot-on-fault DIR`, then `viommu explain FILE`, as a user runs them: separate processes of bin/viommu.js. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { VIOMMU_BIN, runViommu } from '../vfio-user/cli-process';

const EXPLAIN_DOC = path.resolve(__dirname, '..', '..', '..', 'docs', 'explain.md');
/** Where the doc's commands keep their files; the test runs them with a fresh temporary directory in its place. */
const DOC_TEMP = '/tmp/';
/** A line of a quoted output that stands for one or more lines left out. */
const ELISION = '...';

/** A command docs/explain.md shows (```, then `$ viommu ARGS`, then its output) and the output it quotes. */
interface QuotedRun {
  readonly args: readonly string[];
  readonly output: readonly string[];
}

function quotedRuns(doc: string): QuotedRun[] {
  return [...doc.matchAll(/^```\n\$ viommu (.*)\n([\s\S]*?)^```$/gm)].map((match) => ({
    args: match[1]!.split(' '),
    output: match[2]!.replace(/\n$/, '').split('\n'),
  }));
}

/** What legitimately differs between runs: the time a snapshot was taken. */
function maskTime(line: string): string {
  return line.replace(/\(taken \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /, '(taken <time> ');
}

/** `actual` is what `quoted` shows: line for line, an ELISION line standing for at least one line of `actual`. */
function assertQuotes(quoted: readonly string[], actual: readonly string[], what: string): void {
  const segments: string[][] = [[]];
  for (const line of quoted) {
    if (line === ELISION) segments.push([]);
    else segments.at(-1)!.push(line);
  }
  const text = (lines: readonly string[]) => lines.join('\n');
  if (segments.length === 1) {
    assert.equal(text(actual), text(quoted), `${what}: the doc quotes the whole output`);
    return;
  }
  const head = segments[0]!;
  const tail = segments.at(-1)!;
  assert.equal(text(actual.slice(0, head.length)), text(head), `${what}: the start the doc quotes`);
  assert.equal(text(actual.slice(actual.length - tail.length)), text(tail), `${what}: the end the doc quotes`);
  let at = head.length;
  for (const middle of segments.slice(1, -1)) {
    let found = at + 1;
    while (found + middle.length <= actual.length && text(actual.slice(found, found + middle.length)) !== text(middle)) found++;
    assert.ok(
      found + middle.length <= actual.length,
      `${what}: the output lacks these lines the doc quotes:\n${text(middle)}\n\noutput:\n${text(actual)}`,
    );
    at = found + middle.length;
  }
  assert.ok(at < actual.length - tail.length, `${what}: each '${ELISION}' stands for lines left out, but none are:\n${text(actual)}`);
}

/** A qtest session as QEMU's libqtest would send it: edu at 00:04.0 with BAR0 and bus mastering, translation on over an empty root table, one edu DMA read of IOVA 0x1000. */
const QTEST_FAULTING_DMA = [
  'outl 0xcf8 0x80002010',
  'outl 0xcfc 0xfe000000',
  'outl 0xcf8 0x80002004',
  'outw 0xcfc 0x6',
  'writeq 0xfed90020 0x100000',
  'writel 0xfed90018 0x40000000',
  'writel 0xfed90018 0x80000000',
  'writeq 0xfe000080 0x1000',
  'writeq 0xfe000088 0x40000',
  'writeq 0xfe000090 0x10',
  'writeq 0xfe000098 0x1',
  'readq 0xfe000098',
  'readq 0xfe000098',
].join('\n');

describe('cli: viommu explain', function () {
  this.timeout(90_000);
  let directory: string;
  let snapshots: string[];

  before(async () => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-cli-explain-'));
    const demo = await runViommu(['demo', '--snapshot-on-fault', path.join(directory, 'faults')]);
    assert.equal(demo.code, 0, `stdout:\n${demo.stdout}\nstderr:\n${demo.stderr}`);
    snapshots = fs
      .readdirSync(path.join(directory, 'faults'))
      .sort()
      .map((name) => path.join(directory, 'faults', name));
    assert.match(
      demo.stdout,
      new RegExp(
        `^fault snapshots: ${snapshots.length} fault snapshot\\(s\\) in ${path.join(directory, 'faults').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`,
        'm',
      ),
    );
  });

  after(() => fs.rmSync(directory, { recursive: true, force: true }));

  it('the demo snapshots each fault it provokes, per mode', () => {
    // Every mode faults an unmapped read and a write after the unmap; first stage adds a supervisor page, nested a second-stage hole.
    assert.equal(snapshots.length, 10, snapshots.join('\n'));
    assert.ok(
      snapshots.some((file) => /fault-\d{3}-demo-mode-legacy-00-04-0-iova-b000000-read\.json$/.test(file)),
      snapshots.join('\n'),
    );
  });

  it('explains the nested fault of the demo: the first stage maps to a page the second stage does not map', async () => {
    const file = snapshots.find((name) => /mode-nested-.*iova-b001000-sm_read\.json$/.test(name));
    assert.ok(file !== undefined, snapshots.join('\n'));
    const html = path.join(directory, 'nested.html');
    const result = await runViommu(['explain', file, '--html', html]);
    assert.equal(result.code, 0, result.stderr);
    const out = result.stdout;
    for (const pattern of [
      new RegExp(`^snapshot: ${file.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} \\(taken .* by viommu demo, mode nested, \\d+ page\\(s\\)\\)$`),
      /^live unit: 0x86 SM_READ: SM: No read permission for Read\/AtomicOp request; second stage, translating the first stage's output, at L2 SL-PDE; fault record: recorded$/,
      /^request: read by 00:04\.0 \(SID 0x20\) without PASID at IOVA 0xb001000$/,
      /^translation: scalable mode \(RTADDR\.TTM = 01\), PASID entry PGTT 3 \(nested\)$/,
      /^ {4}entry \[1\] at GPA 0x80004008 \(host 0x[0-9a-f]+\) = 0x9f000027$/,
      /^output: GPA 0x9f000000 -> second stage -> NO TRANSLATION/,
      /^stopped: second stage, translating the first stage's output \(GPA 0x9f000000\)/,
      /^reason: {2}0x86 SM_READ: SM: No read permission for Read\/AtomicOp request$/,
      new RegExp(`^wrote ${html.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`),
    ])
      assert.match(out, new RegExp(pattern.source, 'm'));
    assert.match(fs.readFileSync(html, 'utf8'), /<svg [\s\S]*class="cell failed"/);
  });

  it('explains another request against the same state', async () => {
    const file = snapshots.find((name) => /mode-nested-.*iova-b001000-sm_read\.json$/.test(name))!;
    const result = await runViommu(['explain', file, '--sid', '00:04.0', '--iova', '0xb000000']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^explaining another request against the snapshot's state/m);
    assert.match(result.stdout, /^request: read by 00:04\.0 \(SID 0x20\) without PASID at IOVA 0xb000000$/m);
    assert.match(result.stdout, /^stopped: first stage, level 1 \(PTE\)$/m);
    assert.match(result.stdout, /^reason: {2}0x71 SM_FIRST_STAGE_NOT_PRESENT: /m);
  });

  it('viommu qtest --snapshot-on-fault snapshots the DMA fault of a qtest session, and says so on stderr', async () => {
    const faults = path.join(directory, 'qtest-faults');
    const session = spawnSync(process.execPath, [VIOMMU_BIN, 'qtest', '--snapshot-on-fault', faults], {
      input: `${QTEST_FAULTING_DMA}\n`,
      encoding: 'utf8',
      timeout: 30_000,
    });
    assert.equal(session.status, 0, session.stderr);
    assert.equal(session.stdout.split('\n').filter((l) => l.startsWith('OK')).length, 13, session.stdout);
    assert.equal(session.stderr, `viommu qtest: 1 fault snapshot(s) in ${faults}\n`);
    const [file] = fs.readdirSync(faults);
    assert.equal(file, 'fault-001-qtest-00-04-0-iova-1000-root_entry_not_present.json');
    const result = await runViommu(['explain', path.join(faults, file!)]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.stdout,
      /^live unit: 0x1 ROOT_ENTRY_NOT_PRESENT: Present bit in root entry is clear; the root entry, before either paging stage; fault record: recorded$/m,
    );
    assert.match(result.stdout, /^translation: legacy mode \(RTADDR\.TTM = 00\)$/m);
    assert.match(result.stdout, /^stopped: the root entry, before either paging stage$/m);
  });

  it('docs/explain.md quotes the output of the commands it shows, as they run now', async () => {
    const runs = quotedRuns(fs.readFileSync(EXPLAIN_DOC, 'utf8'));
    assert.ok(runs.length >= 3, `docs/explain.md shows the demo and two explain runs; found ${runs.length} quoted run(s)`);
    const temp = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-explain-doc-'));
    try {
      // In order: the explain runs read the snapshots the demo run writes.
      for (const run of runs) {
        const command = `viommu ${run.args.join(' ')}`;
        const result = await runViommu(run.args.map((arg) => (arg.startsWith(DOC_TEMP) ? path.join(temp, arg.slice(DOC_TEMP.length)) : arg)));
        assert.equal(result.code, 0, `${command}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
        assert.equal(result.stderr, '', command);
        const actual = result.stdout.split(`${temp}${path.sep}`).join(DOC_TEMP).replace(/\n$/, '').split('\n');
        assertQuotes(run.output.map(maskTime), actual.map(maskTime), command);
      }
    } finally {
      fs.rmSync(temp, { recursive: true, force: true });
    }
  });

  it('refuses a corrupt snapshot with a message that says what is wrong, and exit code 1', async () => {
    const bad = path.join(directory, 'bad.json');
    fs.writeFileSync(bad, fs.readFileSync(snapshots[0]!, 'utf8').slice(0, 200));
    const result = await runViommu(['explain', bad]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, new RegExp(`^viommu: ${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: not a viommu fault snapshot \\(not JSON: `));
    const foreign = await runViommu(['explain', path.join(__dirname, '..', '..', '..', 'package.json')]);
    assert.equal(foreign.code, 1);
    assert.match(foreign.stderr, /package\.json: not a viommu fault snapshot \(format null, expected 'viommu-fault-snapshot'\)/);
  });
});
