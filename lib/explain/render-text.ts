/** The walk model as text for a terminal: each entry read, its address, value and deciding fields, then where and why the walk stopped. */

import { PASID_PGTT } from '../vtd/structures';
import { configString } from '../vtd/unit-snapshot';
import type { WalkStep } from '../vtd/walk-trace';
import { decodeEntry, fieldsLine, reservedOptionsOf } from './entry-fields';
import { describeRequest, describeStop, hex, indexName, levelName, pageSizeName, structureName } from './walk-words';
import type { SecondStageWalk, WalkModel } from './walk-model';

const MARK = '  <== stopped here';

/** Renders `model` as lines of text (no colour, no trailing newline). */
export function renderWalkText(model: WalkModel): string {
  const lines: string[] = [];
  const reserved = reservedOptionsOf(model.config);
  const stop = model.stop;
  const isStop = (step: WalkStep | undefined) => step !== undefined && stop?.entry === step;
  const entryLines = (step: WalkStep, indent: string, label: string): void => {
    const where =
      step.guestEntryAddress === undefined
        ? `at ${hex(step.entryAddress)}`
        : `at GPA ${hex(step.guestEntryAddress)} (host ${hex(step.entryAddress)})`;
    const flags = step.flagsSet === undefined ? '' : `; the walk set ${step.flagsSet.join(', ')}`;
    lines.push(`${indent}${label} [${indexName(step)}] ${where} = ${hex(step.value)}${flags}${isStop(step) ? MARK : ''}`);
    lines.push(`${indent}    ${fieldsLine(decodeEntry(step, reserved))}`);
  };
  const secondStageLines = (walk: SecondStageWalk, indent: string): void => {
    for (const step of walk.steps) entryLines(step, indent, `second stage ${levelName('second-stage', step.level)}`);
    // A walk traced per level that stopped at an entry it could not read: that level has no step to mark.
    if (walk.steps.length > 0 && stop?.secondStageWalk === walk && stop.entry === undefined && stop.secondStageLevel !== undefined) {
      lines.push(`${indent}second stage ${levelName('second-stage', stop.secondStageLevel)}: the entry could not be read${MARK}`);
    }
  };

  lines.push(describeRequest(model.request));
  lines.push(`unit: intel-iommu,${configString(model.config)}`);
  lines.push(`translation: ${modeLine(model)}`);

  if (model.lookup.length > 0) {
    lines.push('');
    lines.push('lookup');
    for (const step of model.lookup) entryLines(step, '  ', structureName(step));
  }

  if (model.firstStage.length > 0) {
    lines.push('');
    const nested = model.pgtt === PASID_PGTT.NESTED;
    lines.push(
      nested ? 'first stage (tables in guest-physical space; each table pointer translated by the second stage, shown beneath it)' : 'first stage',
    );
    for (const row of model.firstStage) {
      lines.push(`  level ${row.level} (${levelName('first-stage', row.level)})`);
      if (row.table !== undefined) {
        const t = row.table.translation;
        if (t !== undefined) {
          const outcome = t.output === undefined ? 'NO TRANSLATION' : `host ${hex(t.output)}${rights(t.readable, t.writable)}`;
          lines.push(`    entry's GPA ${hex(t.input)} -> second stage -> ${outcome}${row.table.failed && row.table.steps.length === 0 ? MARK : ''}`);
        }
        secondStageLines(row.table, '      ');
      }
      if (row.entry !== undefined) entryLines(row.entry, '    ', 'entry');
      else if (stop?.stage === 'first' && stop.firstStageLevel === row.level) lines.push(`    (the entry could not be read)${MARK}`);
    }
  }

  const output = model.secondStage;
  if (output !== undefined) {
    lines.push('');
    const t = output.translation;
    if (t !== undefined && model.pgtt === PASID_PGTT.NESTED) {
      const outcome = t.output === undefined ? 'NO TRANSLATION' : `host ${hex(t.output)}${rights(t.readable, t.writable)}`;
      lines.push(`output: GPA ${hex(t.input)} -> second stage -> ${outcome}${output.failed && output.steps.length === 0 ? MARK : ''}`);
    } else if (t !== undefined) {
      const outcome = t.output === undefined ? 'NO TRANSLATION' : `host ${hex(t.output)}${rights(t.readable, t.writable)}`;
      lines.push(`second stage: ${hex(t.input)} -> ${outcome}${output.failed && output.steps.length === 0 ? MARK : ''}`);
    } else {
      lines.push(`second stage${model.secondStageLevels === undefined ? '' : ` (${model.secondStageLevels} levels)`}`);
      if (output.failed && output.steps.length === 0) lines.push(`  (no entry of this walk was read)${MARK}`);
    }
    secondStageLines(output, '  ');
  }

  lines.push('');
  const result = model.result;
  if (result.ok) {
    lines.push(`result: translated to ${hex(result.address)} (${pageSizeName(result.pageSize)} page${rights(result.readable, result.writable)})`);
  } else {
    lines.push(...describeStop(model));
  }
  if (model.missingPages.length > 0) {
    lines.push('');
    lines.push(
      `note: the walk read page(s) ${model.missingPages.map(hex).join(', ')}, which the snapshot does not hold: it read them as unbacked, so the`,
    );
    lines.push('      result may differ from what the live unit would find; snapshot the request itself to explain it exactly.');
  }
  return lines.join('\n');
}

function rights(readable: boolean | undefined, writable: boolean | undefined): string {
  if (readable === undefined) return '';
  return `, ${readable ? 'r' : '-'}${writable ? 'w' : '-'}`;
}

function modeLine(model: WalkModel): string {
  switch (model.result.mode) {
    case 'off':
      return 'off (GCMD.TE = 0): addresses pass unchanged';
    case 'legacy':
      return 'legacy mode (RTADDR.TTM = 00)';
    case 'invalid-root':
      return 'RTADDR.TTM selects no mode this unit offers';
    default: {
      const kind = model.pgtt === undefined ? '' : `, PASID entry PGTT ${model.pgtt} (${PGTT_NAMES[model.pgtt] ?? 'reserved'})`;
      return `scalable mode (RTADDR.TTM = 01)${kind}`;
    }
  }
}

const PGTT_NAMES: Readonly<Record<number, string>> = {
  [PASID_PGTT.FIRST_STAGE]: 'first stage only',
  [PASID_PGTT.SECOND_STAGE]: 'second stage only',
  [PASID_PGTT.NESTED]: 'nested',
  [PASID_PGTT.PASS_THROUGH]: 'pass-through',
};
