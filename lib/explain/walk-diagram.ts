/**
 * The two-dimensional walk as an SVG drawing: the lookup structures in a strip on top, then one row per first-stage
 * level (its entry, and across it the second-stage walk of its table pointer), and a last row for the second-stage
 * walk of the output (or of the request itself, legacy and second-stage-only). The cell where the walk stopped is
 * filled with FAULT_COLOUR; its rectangle is returned, so that a test can find it on a screenshot.
 */

import { PASID_PGTT } from '../vtd/structures';
import type { WalkStep } from '../vtd/walk-trace';
import { hex, indexName, levelName } from './walk-words';
import type { SecondStageWalk, WalkModel } from './walk-model';

export const FAULT_COLOUR = '#e0245e';
export const PASSED_COLOUR = '#d7efd7';
const PASSED_STROKE = '#4f9a4f';
const UNREAD_COLOUR = '#f2f2f2';
const UNREAD_STROKE = '#b0b0b0';
const TEXT_COLOUR = '#1d1d1d';

export const CELL_WIDTH = 168;
export const CELL_HEIGHT = 56;
const GAP = 10;
const LABEL_WIDTH = 150;
const MARGIN = 12;
const TITLE_HEIGHT = 34;
const HEADING_HEIGHT = 24;

export interface Rect {
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

export interface WalkDiagram {
  readonly svg: string;
  readonly width: number;
  readonly height: number;
  /** Where the cell of the failing entry is drawn, in the SVG's own pixels (undefined: the walk succeeded). */
  readonly failingCell?: Rect;
}

type CellState = 'passed' | 'failed' | 'unread';

interface Cell {
  readonly rect: Rect;
  readonly state: CellState;
  readonly lines: readonly string[];
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** The value of an entry, shortened to fit a cell: its low 64 bits (the text explanation has all of it). */
function shortValue(step: WalkStep): string {
  return hex(BigInt.asUintN(64, step.value));
}

/** Names short enough for a cell. */
const CELL_NAMES: Readonly<Record<WalkStep['structure'], string>> = {
  root: 'root',
  context: 'context',
  'pasid-directory': 'PASID dir',
  'pasid-table': 'PASID entry',
  'first-stage': 'FS',
  'second-stage': 'SS',
};

function stepLines(step: WalkStep, title: string): string[] {
  return [`${title} [${indexName(step)}]`, shortValue(step)];
}

/** Draws `model`; every position follows from the constants above, so the failing cell's rectangle is exact. */
export function drawWalk(model: WalkModel): WalkDiagram {
  const cells: Cell[] = [];
  const texts: string[] = [];
  const stop = model.stop;
  const failedEntry = stop?.entry;
  const stateOf = (step: WalkStep): CellState => (failedEntry === step ? 'failed' : 'passed');
  let failingCell: Rect | undefined;
  const add = (rect: Rect, state: CellState, lines: readonly string[]) => {
    cells.push({ rect, state, lines });
    if (state === 'failed') failingCell = rect;
  };
  const heading = (x: number, y: number, text: string, weight = 'normal') => {
    texts.push(`<text x="${x}" y="${y}" font-size="13" font-weight="${weight}" fill="${TEXT_COLOUR}">${escape(text)}</text>`);
  };

  const nested = model.pgtt === PASID_PGTT.NESTED;
  const secondLevels = model.secondStageLevels ?? 0;
  const columns = 1 + secondLevels;
  const gridLeft = MARGIN + LABEL_WIDTH;
  const columnX = (column: number) => gridLeft + column * (CELL_WIDTH + GAP);
  let y = MARGIN;
  heading(MARGIN, y + 18, `viommu explain: ${model.request.write ? 'write' : 'read'} of IOVA ${hex(BigInt.asUintN(64, model.request.iova))}`, 'bold');
  y += TITLE_HEIGHT;

  // The lookup strip, with a placeholder for a structure the walk could not read.
  heading(MARGIN, y + CELL_HEIGHT / 2 + 4, 'lookup');
  model.lookup.forEach((step, i) => {
    add(
      { x: gridLeft + i * (CELL_WIDTH + GAP), y, width: CELL_WIDTH, height: CELL_HEIGHT },
      stateOf(step),
      stepLines(step, CELL_NAMES[step.structure]),
    );
  });
  if (stop?.stage === 'lookup' && stop.entry === undefined) {
    add({ x: gridLeft + model.lookup.length * (CELL_WIDTH + GAP), y, width: CELL_WIDTH, height: CELL_HEIGHT }, 'failed', [
      CELL_NAMES[stop.structure!],
      'not readable',
    ]);
  }
  y += CELL_HEIGHT + GAP * 2;

  // Column headings of the grid: the first stage, then each second-stage level.
  const hasFirstStage = model.firstStage.length > 0 || stop?.stage === 'first';
  if (hasFirstStage || secondLevels > 0) {
    if (hasFirstStage) heading(columnX(0), y + 16, 'first stage (FS)');
    for (let level = secondLevels; level >= 1; level--) heading(columnX(1 + secondLevels - level), y + 16, `SS ${levelName('second-stage', level)}`);
    y += HEADING_HEIGHT;
  }

  /** The cells of one second-stage walk across the second-stage columns, starting at row top `rowY`. */
  const secondStageCells = (walk: SecondStageWalk, rowY: number) => {
    if (secondLevels === 0) return;
    if (walk.steps.length === 0) {
      // The walk ran as one step (the nested walker notes its input and output only): one cell across the columns.
      const t = walk.translation;
      const rect = { x: columnX(1), y: rowY, width: secondLevels * CELL_WIDTH + (secondLevels - 1) * GAP, height: CELL_HEIGHT };
      const text =
        t === undefined ? ['no entry read'] : [`GPA ${hex(t.input)}`, t.output === undefined ? 'no translation' : `-> host ${hex(t.output)}`];
      add(rect, walk.failed && stop?.secondStageWalk === walk ? 'failed' : walk.failed ? 'unread' : 'passed', text);
      return;
    }
    for (const step of walk.steps) {
      add(
        { x: columnX(1 + secondLevels - step.level), y: rowY, width: CELL_WIDTH, height: CELL_HEIGHT },
        stateOf(step),
        stepLines(step, levelName('second-stage', step.level)),
      );
    }
    if (stop?.secondStageWalk === walk && stop.entry === undefined && stop.secondStageLevel !== undefined && stop.secondStageLevel > 0) {
      add({ x: columnX(1 + secondLevels - stop.secondStageLevel), y: rowY, width: CELL_WIDTH, height: CELL_HEIGHT }, 'failed', [
        levelName('second-stage', stop.secondStageLevel),
        'not readable',
      ]);
    }
  };

  for (const row of model.firstStage) {
    heading(MARGIN, y + CELL_HEIGHT / 2 + 4, `FS level ${row.level} (${levelName('first-stage', row.level)})`);
    if (row.entry !== undefined)
      add(
        { x: columnX(0), y, width: CELL_WIDTH, height: CELL_HEIGHT },
        stateOf(row.entry),
        stepLines(row.entry, levelName('first-stage', row.level)),
      );
    else if (stop?.stage === 'first' && stop.firstStageLevel === row.level)
      add({ x: columnX(0), y, width: CELL_WIDTH, height: CELL_HEIGHT }, 'failed', [levelName('first-stage', row.level), 'not readable']);
    if (row.table !== undefined) secondStageCells(row.table, y);
    y += CELL_HEIGHT + GAP;
  }
  if (stop?.stage === 'first' && !model.firstStage.some((row) => row.level === stop.firstStageLevel)) {
    heading(MARGIN, y + CELL_HEIGHT / 2 + 4, `FS level ${stop.firstStageLevel}`);
    add({ x: columnX(0), y, width: CELL_WIDTH, height: CELL_HEIGHT }, 'failed', [
      levelName('first-stage', stop.firstStageLevel ?? 0),
      'no entry read',
    ]);
    y += CELL_HEIGHT + GAP;
  }
  if (model.secondStage !== undefined) {
    heading(MARGIN, y + CELL_HEIGHT / 2 + 4, nested ? 'output' : 'request address');
    secondStageCells(model.secondStage, y);
    y += CELL_HEIGHT + GAP;
  }

  const width = MARGIN * 2 + LABEL_WIDTH + Math.max(columns, model.lookup.length + 1) * (CELL_WIDTH + GAP);
  const height = y + MARGIN;
  const drawn = cells.map((cell) => {
    const { x, y: top, width: w, height: h } = cell.rect;
    const fill = cell.state === 'failed' ? FAULT_COLOUR : cell.state === 'passed' ? PASSED_COLOUR : UNREAD_COLOUR;
    const stroke = cell.state === 'failed' ? FAULT_COLOUR : cell.state === 'passed' ? PASSED_STROKE : UNREAD_STROKE;
    const ink = cell.state === 'failed' ? '#ffffff' : TEXT_COLOUR;
    const lines = cell.lines
      .map((line, i) => `<text x="${x + 8}" y="${top + 20 + i * 18}" font-size="12" fill="${ink}">${escape(line)}</text>`)
      .join('');
    return `<g class="cell ${cell.state}"><rect x="${x}" y="${top}" width="${w}" height="${h}" rx="4" fill="${fill}" stroke="${stroke}" stroke-width="1.5"/>${lines}</g>`;
  });
  const svg = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="monospace">`,
    ...texts,
    ...drawn,
    '</svg>',
  ].join('\n');
  return { svg, width, height, ...(failingCell === undefined ? {} : { failingCell }) };
}
