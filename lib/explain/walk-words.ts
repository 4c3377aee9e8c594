/** The words both renderers use for a walk: structure and level names, the request, and the sentence saying where and why it stopped. */

import type { FaultRecord } from '../vtd/fault';
import { faultCode } from '../vtd/fault-reasons';
import { PASID_PGTT } from '../vtd/structures';
import type { TranslationRequest } from '../vtd/translation-result';
import type { WalkStep } from '../vtd/walk-trace';
import type { WalkModel } from './walk-model';

export function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

/** bus:device.function of a requester id. */
export function requesterName(sid: number): string {
  return `${(sid >> 8).toString(16).padStart(2, '0')}:${((sid >> 3) & 0x1f).toString(16).padStart(2, '0')}.${sid & 7}`;
}

const LEVEL_ENTRY_NAMES: Readonly<Record<number, string>> = { 5: 'PML5E', 4: 'PML4E', 3: 'PDPE', 2: 'PDE', 1: 'PTE' };

/** The entry a paging level holds, as the spec names it (second-stage names carry an SL- prefix). */
export function levelName(structure: 'first-stage' | 'second-stage', level: number): string {
  const name = LEVEL_ENTRY_NAMES[level] ?? `level ${level}`;
  return structure === 'second-stage' ? `L${level} SL-${name}` : name;
}

const STRUCTURE_NAMES: Readonly<Record<WalkStep['structure'], string>> = {
  root: 'root entry',
  context: 'context entry',
  'pasid-directory': 'PASID directory entry',
  'pasid-table': 'PASID entry',
  'first-stage': 'first-stage entry',
  'second-stage': 'second-stage entry',
};

/** "root entry", "context entry", ... */
export function structureName(step: WalkStep | WalkStep['structure']): string {
  const structure = typeof step === 'string' ? step : step.structure;
  return STRUCTURE_NAMES[structure];
}

/** What indexes an entry in its table: "bus 0x0", "devfn 0x20", or the index. */
export function indexName(step: WalkStep): string {
  if (step.structure === 'root') return `bus ${hex(step.index)}`;
  if (step.structure === 'context') return `devfn ${hex(step.index)}`;
  return String(step.index);
}

export function pageSizeName(bytes: number): string {
  if (bytes >= 2 ** 30) return `${bytes / 2 ** 30} GiB`;
  if (bytes >= 2 ** 20) return `${bytes / 2 ** 20} MiB`;
  return `${bytes / 1024} KiB`;
}

/** "read by 00:04.0 with PASID 7 (supervisor) at IOVA 0x3abc". */
export function describeRequest(request: TranslationRequest): string {
  const privilege =
    request.pasid === undefined ? '' : `${request.supervisor === true ? ', supervisor' : ', user'}${request.execute === true ? ', execute' : ''}`;
  const pasid = request.pasid === undefined ? 'without PASID' : `with PASID ${request.pasid}`;
  return `request: ${request.write ? 'write' : 'read'} by ${requesterName(request.sid)} (SID ${hex(request.sid)}) ${pasid}${privilege} at IOVA ${hex(BigInt.asUintN(64, request.iova))}`;
}

/** Where the walk stopped, in one phrase: "second stage, translating the first stage's output (GPA 0x...), at L1 SL-PTE". */
export function stopPlace(model: WalkModel): string {
  const stop = model.stop;
  if (stop === undefined) return '';
  switch (stop.stage) {
    case 'lookup':
      return `the ${structureName(stop.structure!)}, before either paging stage${stop.unreadable === true ? ' (the entry could not be read)' : ''}`;
    case 'first':
      return `first stage, level ${stop.firstStageLevel} (${levelName('first-stage', stop.firstStageLevel ?? 0)})${stop.entry === undefined ? ', its entry not read' : ''}`;
    default: {
      // A walk traced per level that lacks the entry at its stopping level could not read it.
      const unread = stop.entry === undefined && (stop.secondStageWalk?.steps.length ?? 0) > 0;
      const at =
        stop.secondStageLevel === undefined || stop.secondStageLevel === 0
          ? ''
          : `, at ${levelName('second-stage', stop.secondStageLevel)}${unread ? ' (the entry could not be read)' : ''}`;
      const input = stop.secondStageWalk?.translation?.input;
      const gpa = input === undefined ? '' : ` (GPA ${hex(input)})`;
      if (model.pgtt !== PASID_PGTT.NESTED || stop.firstStageLevel === undefined) return `second stage${gpa}${at}`;
      if (stop.firstStageLevel === 0) return `second stage, translating the first stage's output${gpa}${at}`;
      const what = stop.secondStageWalk?.translation === undefined ? 'allowing the walk to set A/D in the' : 'translating the';
      return `second stage, ${what} level ${stop.firstStageLevel} (${levelName('first-stage', stop.firstStageLevel)}) table of the first stage${gpa}${at}`;
    }
  }
}

const TABLE_WRITE_NESTED = faultCode('SM_FIRST_STAGE_WRITE_NESTED');

/**
 * Where a unit's fault record says its walk stopped, in the words stopPlace() uses for a replayed walk. A record
 * alone does not say whether a second-stage fault ended a nested walk when the second stage stopped before any
 * level: `nested` (the walk's PGTT) says so.
 */
export function faultPlace(fault: FaultRecord, nested: boolean): string {
  switch (fault.stage) {
    case 'request':
      return 'the request itself, before any table was read';
    case 'root':
    case 'context':
    case 'pasid-directory':
    case 'pasid-table':
      return `the ${structureName(fault.stage)}, before either paging stage`;
    case 'first-stage':
      return fault.level === undefined ? 'first stage' : `first stage, level ${fault.level} (${levelName('first-stage', fault.level)})`;
    case 'output':
      return 'the translated address, in the interrupt range';
    case 'second-stage': {
      if (!nested && fault.secondStageLevel === undefined) {
        return fault.level === undefined ? 'second stage' : `second stage, at ${levelName('second-stage', fault.level)}`;
      }
      const at = fault.secondStageLevel === undefined ? '' : `, at ${levelName('second-stage', fault.secondStageLevel)}`;
      const firstStageLevel = fault.level ?? 0;
      if (firstStageLevel === 0) return `second stage, translating the first stage's output${at}`;
      const what = fault.reason === TABLE_WRITE_NESTED ? 'allowing the walk to set A/D in the' : 'translating the';
      return `second stage, ${what} level ${firstStageLevel} (${levelName('first-stage', firstStageLevel)}) table of the first stage${at}`;
    }
  }
}

/** The closing lines of a failed walk: where, the fault reason with its description, the deciding entry. */
export function describeStop(model: WalkModel): string[] {
  const stop = model.stop;
  if (stop === undefined) return [];
  const lines = [`stopped: ${stopPlace(model)}`];
  const reason = stop.reason;
  if (reason === undefined) lines.push(`reason:  ${hex(stop.code)} (a reserved fault reason code)`);
  else {
    lines.push(`reason:  ${hex(stop.code)} ${reason.name}: ${reason.condition}`);
    lines.push(`         ${reason.explanation}`);
  }
  if (stop.entry !== undefined) {
    const entry = stop.entry;
    const label =
      entry.structure === 'first-stage' || entry.structure === 'second-stage'
        ? `${entry.structure} ${levelName(entry.structure, entry.level)}`
        : structureName(entry);
    lines.push(`entry:   ${label} [${indexName(entry)}] at ${hex(entry.entryAddress)} = ${hex(entry.value)}`);
  }
  if (stop.pasid !== undefined)
    lines.push(`PASID:   ${stop.pasid}${model.request.pasid === undefined ? " (the context entry's RID_PASID: the request carried none)" : ''}`);
  if (stop.fpd) lines.push('FPD:     fault processing disabled on this path: the unit does not record this fault');
  return lines;
}
