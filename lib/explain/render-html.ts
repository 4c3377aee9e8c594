/** The walk model as one self-contained HTML page: the 2-D walk drawn in inline SVG, then the text explanation; no scripts, no network. */

import { renderWalkText } from './render-text';
import { drawWalk, FAULT_COLOUR, type Rect } from './walk-diagram';
import type { WalkModel } from './walk-model';

/** The page's body margin: the drawing's top-left corner sits here on the rendered page. */
export const PAGE_MARGIN = 16;

export interface WalkPage {
  readonly html: string;
  /** Where the failing cell lands on the rendered page (CSS pixels), for a screenshot check. */
  readonly failingCell?: Rect;
}

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Renders `model`; `heading` lines (where the snapshot came from) go above the text explanation. */
export function renderWalkHtml(model: WalkModel, heading: readonly string[] = []): WalkPage {
  const diagram = drawWalk(model);
  const text = [...heading, ...(heading.length > 0 ? [''] : []), renderWalkText(model)].join('\n');
  const html = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>viommu explain</title>
<style>
  body { margin: ${PAGE_MARGIN}px; font-family: monospace; color: #1d1d1d; background: #ffffff; }
  svg { display: block; }
  pre { font-size: 12px; line-height: 1.4; margin-top: 20px; white-space: pre-wrap; }
  .legend { font-size: 12px; margin-top: 8px; }
  .legend b { color: ${FAULT_COLOUR}; }
</style>
</head>
<body>
${diagram.svg}
<div class="legend">green: entries the walk read and passed; <b>red</b>: where it stopped; grey: a walk not reached. FS: first stage, SS: second stage; each row is one first-stage level, with the second-stage walk that located its entry across it; the last row is the second-stage walk of the output (or of the request, without a first stage).</div>
<pre>${escape(text)}</pre>
</body>
</html>
`;
  const cell = diagram.failingCell;
  return { html, ...(cell === undefined ? {} : { failingCell: { ...cell, x: cell.x + PAGE_MARGIN, y: cell.y + PAGE_MARGIN } }) };
}
