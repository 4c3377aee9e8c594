/**
 * The HTML explanation: self-contained, and, in headless Chromium, the page `viommu explain SNAPSHOT --html FILE` writes
 * draws the failing cell of the 2-D walk in the fault colour where the renderer says it is.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { renderWalkHtml, type WalkPage } from '../../lib/explain/render-html';
import { writeSnapshot } from '../../lib/explain/snapshot-file';
import { FAULT_COLOUR, PASSED_COLOUR } from '../../lib/explain/walk-diagram';
import { buildWalkModel } from '../../lib/explain/walk-model';
import { replaySnapshot, takeSnapshot, type UnitSnapshot } from '../../lib/vtd/unit-snapshot';
import type { TranslationRequest } from '../../lib/vtd/translation-result';
import { SID } from '../vtd/unit-guest';
import { NESTED_IOVA, NESTED_PASID, OUTPUT_GPA, nestedGuest } from './fault-guests';
import { decodePng, pixelColour, type DecodedPng } from './png';
import { runViommu } from '../vfio-user/cli-process';

const WIDTH = 1200;
const HEIGHT = 900;
const request: TranslationRequest = { sid: SID, iova: BigInt(NESTED_IOVA), write: false, pasid: NESTED_PASID };

/** A snapshot of the nested request, its output unmapped in the second stage (`broken`) or not. */
function nestedSnapshot(broken: boolean): UnitSnapshot {
  const { guest, ssTop } = nestedGuest();
  if (broken) guest.writer.mapSecond(ssTop, 4, OUTPUT_GPA, 0x500000, { read: false, write: false });
  return takeSnapshot(guest.unit, guest.memory, request);
}

function nestedPage(broken: boolean): WalkPage {
  return renderWalkHtml(buildWalkModel(replaySnapshot(nestedSnapshot(broken))), ['a test page']);
}

/** The page file `viommu explain SNAPSHOT --html FILE` writes, the command run as its own process. */
async function explainedPage(snapshot: UnitSnapshot, directory: string, name: string): Promise<string> {
  const file = path.join(directory, `${name}.json`);
  const page = path.join(directory, `${name}.html`);
  writeSnapshot(file, snapshot);
  const result = await runViommu(['explain', file, '--html', page]);
  assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
  assert.ok(result.stdout.endsWith(`\nwrote ${page}\n`), result.stdout);
  return page;
}

/** Why Chromium cannot take screenshots here, or undefined when it can. */
function chromiumMissing(): string | undefined {
  const probe = spawnSync('chromium', ['--version'], { encoding: 'utf8', timeout: 20_000 });
  if (probe.error !== undefined) return `chromium is not installed (${probe.error.message}); Debian package 'chromium'`;
  return probe.status === 0 ? undefined : `chromium --version exited ${probe.status}: ${probe.stderr.trim()}`;
}

/** Chromium's screenshot of the page file, decoded. */
function screenshot(page: string): DecodedPng {
  const png = page.replace(/\.html$/, '.png');
  const run = spawnSync(
    'chromium',
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--hide-scrollbars',
      '--force-device-scale-factor=1',
      `--screenshot=${png}`,
      `--window-size=${WIDTH},${HEIGHT}`,
      `file://${page}`,
    ],
    { encoding: 'utf8', timeout: 60_000 },
  );
  assert.ok(fs.existsSync(png), `chromium wrote no screenshot (exit ${run.status}): ${run.stderr}`);
  return decodePng(fs.readFileSync(png));
}

describe('explain: HTML page', function () {
  this.timeout(120_000);

  it('is one self-contained page: inline CSS and SVG, no scripts, nothing fetched', () => {
    const { html, failingCell } = nestedPage(true);
    assert.match(html, /^<!DOCTYPE html>/);
    assert.match(html, /<style>[\s\S]*<\/style>/);
    assert.match(html, /<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
    assert.doesNotMatch(html, /<script|<link|<img|src=|href=|url\(/i);
    assert.equal((html.match(/class="cell failed"/g) ?? []).length, 1);
    assert.ok(failingCell !== undefined);
    assert.match(html, /stopped: second stage, translating the first stage&#39;s output|stopped: second stage, translating the first stage's output/);
    const passing = nestedPage(false);
    assert.equal(passing.failingCell, undefined);
    assert.doesNotMatch(passing.html, /class="cell failed"/);
  });

  it('viommu explain --html writes a page whose failing cell Chromium draws in the fault colour where the renderer puts it', async function () {
    const missing = chromiumMissing();
    if (missing !== undefined) {
      console.log(`      skipped: ${missing}`);
      this.skip();
    }
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-explain-html-'));
    try {
      const brokenSnapshot = nestedSnapshot(true);
      // Where the renderer puts the cell; the drawing comes first on the page, so the CLI's heading lines cannot move it.
      const cell = renderWalkHtml(buildWalkModel(replaySnapshot(brokenSnapshot))).failingCell!;
      const brokenPage = await explainedPage(brokenSnapshot, directory, 'broken');
      assert.equal((fs.readFileSync(brokenPage, 'utf8').match(/class="cell failed"/g) ?? []).length, 1, 'one failing cell on the page');
      const png = screenshot(brokenPage);
      assert.deepEqual([png.width, png.height], [WIDTH, HEIGHT]);
      assert.ok(cell.x + cell.width < WIDTH && cell.y + cell.height < HEIGHT, 'the failing cell is on screen');
      // Corners of the cell's inside, clear of its text (which starts 8 px in) and of its rounded border.
      const inside = [
        [cell.x + 5, cell.y + cell.height - 5],
        [cell.x + cell.width - 5, cell.y + 5],
        [cell.x + cell.width - 5, cell.y + cell.height - 5],
      ];
      for (const [x, y] of inside) assert.equal(pixelColour(png, x!, y!), FAULT_COLOUR, `pixel (${x}, ${y})`);
      // Just outside the cell: the page's background.
      assert.equal(pixelColour(png, cell.x - 4, cell.y + cell.height / 2), '#ffffff');
      // The same place on the page of a walk that passes holds a passed cell, not the fault colour.
      const passing = screenshot(await explainedPage(nestedSnapshot(false), directory, 'passing'));
      for (const [x, y] of inside) assert.equal(pixelColour(passing, x!, y!), PASSED_COLOUR, `passing page, pixel (${x}, ${y})`);
    } finally {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  });
});
