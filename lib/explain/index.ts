/** Explaining a translation: a snapshot replayed with a trace sink, arranged as the 2-D walk, rendered as text or HTML. */

export { buildWalkModel, type WalkModel, type WalkStop, type FirstStageRow, type SecondStageWalk } from './walk-model';
export { renderWalkText } from './render-text';
export { renderWalkHtml, type WalkPage } from './render-html';
export { drawWalk, FAULT_COLOUR, type WalkDiagram } from './walk-diagram';
export { readSnapshot, writeSnapshot } from './snapshot-file';
export { FaultSnapshots, DEFAULT_SNAPSHOT_LIMIT } from './fault-snapshots';
