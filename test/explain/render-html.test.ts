/** The HTML explanation: self-contained, and, in headless Chromium, the failing cell of the 2-D walk drawn in the fault colour where the page says. */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { renderWalkHtml, type WalkPage } from '../../lib/explain/render-html';
import { FAULT_COLOUR, PASSED_COLOUR } from '../../lib/explain/walk-diagram';
import { buildWalkModel } from '../../lib/explain/walk-model';
import { replaySnapshot, takeSnapshot } from '../../lib/vtd/unit-snapshot';
import type { TranslationRequest } from '../../lib/vtd/translation-result';
import { SID } from '../vtd/unit-guest';
import { NESTED_IOVA, NESTED_PASID, OUTPUT_GPA, nestedGuest } from './fault-guests';
import { decodePng, pixelColour } from './png';

const WIDTH = 1200;
const HEIGHT = 900;
const request: TranslationRequest = { sid: SID, iova: BigInt(NESTED_IOVA), write: false, pasid: NESTED_PASID };

/** The page for the nested request, its output unmapped in the second stage (`broken`) or not. */
function nestedPage(broken: boolean): WalkPage {
  const { guest, ssTop } = nestedGuest();
  if (broken) guest.writer.mapSecond(ssTop, 4, OUTPUT_GPA, 0x500000, { read: false, write: false });
  return renderWalkHtml(buildWalkModel(replaySnapshot(takeSnapshot(guest.unit, guest.memory, request))), ['a test page']);
}

/** Why Chromium cannot take screenshots here, or undefined when it can. */
function chromiumMissing(): string | undefined {
  const probe = spawnSync('chromium', ['--version'], { encoding: 'utf8', timeout: 20_000 });
  if (probe.error !== undefined) return `chromium is not installed (${probe.error.message}); Debian package 'chromium'`;
  return probe.status === 0 ? undefined : `chromium --version exited ${probe.status}: ${probe.stderr.trim()}`;
}

function screenshot(html: string, directory: string, name: string): Buffer {
  const page = path.join(directory, `${name}.html`);
  const png = path.join(directory, `${name}.png`);
  fs.writeFileSync(page, html);
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
  return fs.readFileSync(png);
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

  it('draws the failing cell in the fault colour where the page puts it (headless Chromium screenshot)', function () {
    const missing = chromiumMissing();
    if (missing !== undefined) {
      console.log(`      skipped: ${missing}`);
      this.skip();
    }
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-explain-html-'));
    try {
      const broken = nestedPage(true);
      const cell = broken.failingCell!;
      const png = decodePng(screenshot(broken.html, directory, 'broken'));
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
      const passing = decodePng(screenshot(nestedPage(false).html, directory, 'passing'));
      for (const [x, y] of inside) assert.equal(pixelColour(passing, x!, y!), PASSED_COLOUR, `passing page, pixel (${x}, ${y})`);
    } finally {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  });
});
