/**
 * A walk trace arranged as the two-dimensional walk it records: the lookup structures, each first-stage level with
 * the second-stage walk of its table pointer, the second-stage walk of the output (or of a legacy / second-stage-only
 * request), and where and why the walk stopped. Both renderers (text and HTML) draw this model.
 */

import { getFieldBig } from '../vtd/bitfield';
import type { FaultStage } from '../vtd/fault';
import { faultReason, type FaultReason } from '../vtd/fault-reasons';
import type { ReplayedWalk } from '../vtd/unit-snapshot';
import { LEGACY_CONTEXT_ENTRY, PASID_PGTT, SCALABLE_PASID_ENTRY } from '../vtd/structures';
import type { TranslationRequest } from '../vtd/translation-result';
import type { TracedWalk } from '../vtd/unit';
import type { VtdConfig } from '../vtd/config';
import type { SecondStageStep, WalkStep } from '../vtd/walk-trace';

/** One second-stage walk: of a first-stage table pointer, of the output, or of the request itself (legacy, PGTT 2). */
export interface SecondStageWalk {
  /** The nested walker's summary (input, output); absent for a legacy walk, which has none. */
  readonly translation?: SecondStageStep;
  /** The entries the walk read, top level first (empty when the second stage was not traced per level). */
  readonly steps: readonly WalkStep[];
  /** This walk is where the request stopped. */
  readonly failed: boolean;
}

/** One first-stage level: the second-stage walk that located its table (nested), then the entry read there. */
export interface FirstStageRow {
  readonly level: number;
  readonly table?: SecondStageWalk;
  readonly entry?: WalkStep;
}

export type StopStage = 'lookup' | 'first' | 'second';

/** Where and why the walk stopped. */
export interface WalkStop {
  readonly code: number;
  readonly reason: FaultReason | undefined;
  readonly stage: StopStage;
  /** The lookup structure that refused the request (stage 'lookup'). */
  readonly structure?: WalkStep['structure'];
  /** First-stage level being processed (nested and first-stage walks); 0: the output. */
  readonly firstStageLevel?: number;
  /** Second-stage level where a second-stage walk stopped, when known. */
  readonly secondStageLevel?: number;
  /** The second-stage walk that stopped (stage 'second'). */
  readonly secondStageWalk?: SecondStageWalk;
  /** The entry that decided, when the walk read one (an unreadable entry has none). */
  readonly entry?: WalkStep;
  readonly fpd: boolean;
  readonly pasid?: number;
  /** The lookup entry that decided was located but could not be read (from the fault record: an address, no value). */
  readonly unreadable?: boolean;
}

export interface WalkModel {
  readonly request: TranslationRequest;
  readonly config: VtdConfig;
  readonly result: TracedWalk;
  /** Root, context, PASID directory and PASID table entries, in the order read. */
  readonly lookup: readonly WalkStep[];
  /** PGTT of the PASID entry (scalable mode), when it was read. */
  readonly pgtt?: number;
  /** First-stage levels, top first (first-stage and nested walks). */
  readonly firstStage: readonly FirstStageRow[];
  /** The second-stage walk of the output (nested) or of the request (legacy, second-stage-only). */
  readonly secondStage?: SecondStageWalk;
  /** Levels of the second-stage tables (from the context or PASID entry), when the walk uses them. */
  readonly secondStageLevels?: number;
  readonly stop?: WalkStop;
  /** Pages the replay needed that the snapshot lacks: the walk went where the snapshot cannot follow. */
  readonly missingPages: readonly number[];
}

/** The lookup structure a fault stage names, if it is one; a refused request is shown at the root. */
function lookupStructureOf(stage: FaultStage): WalkStep['structure'] | undefined {
  switch (stage) {
    case 'request':
      return 'root';
    case 'root':
    case 'context':
    case 'pasid-directory':
    case 'pasid-table':
      return stage;
    default:
      return undefined;
  }
}

function isWalkStep(record: ReplayedWalk['records'][number]): record is WalkStep {
  return record.structure !== 'second-stage-translation';
}

/** Arranges a replayed walk's trace. */
export function buildWalkModel(replay: ReplayedWalk): WalkModel {
  const lookup: WalkStep[] = [];
  const rows = new Map<number, { level: number; table?: SecondStageWalk; entry?: WalkStep }>();
  let pending: WalkStep[] = [];
  let output: SecondStageWalk | undefined;
  let lastTranslation: SecondStageWalk | undefined;
  const row = (level: number) => {
    let found = rows.get(level);
    if (found === undefined) rows.set(level, (found = { level }));
    return found;
  };
  for (const record of replay.records) {
    if (!isWalkStep(record)) {
      // The nested walker notes each translation after walking it: the second-stage steps just read are its walk.
      const walk: SecondStageWalk = { translation: record, steps: pending, failed: record.output === undefined };
      pending = [];
      lastTranslation = walk;
      if (record.purpose === 'table') row(record.level).table = walk;
      else output = walk;
    } else if (record.structure === 'second-stage') pending.push(record);
    else if (record.structure === 'first-stage') row(record.level).entry = record;
    else lookup.push(record);
  }
  const result = replay.result;
  // Second-stage steps with no translation after them: a legacy walk, or a walk that stopped inside (no note yet).
  if (pending.length > 0) output = { steps: pending, failed: !result.ok };
  else if (output === undefined && !result.ok && result.mode === 'legacy' && lookupStructureOf(result.fault.stage) === undefined) {
    // A legacy walk that could not read its top table has no steps: still its walk is where it stopped.
    output = { steps: [], failed: true };
  }
  const pasidStep = lookup.find((step) => step.structure === 'pasid-table');
  const contextStep = lookup.find((step) => step.structure === 'context');
  const pgtt = pasidStep === undefined ? undefined : Number(getFieldBig(pasidStep.value, SCALABLE_PASID_ENTRY.f.PGTT));
  let secondStageLevels: number | undefined;
  if (pasidStep !== undefined && (pgtt === PASID_PGTT.SECOND_STAGE || pgtt === PASID_PGTT.NESTED)) {
    secondStageLevels = Number(getFieldBig(pasidStep.value, SCALABLE_PASID_ENTRY.f.AW)) + 2;
  } else if (result.mode === 'legacy' && contextStep !== undefined) {
    secondStageLevels = Number(getFieldBig(contextStep.value, LEGACY_CONTEXT_ENTRY.f.AW)) + 2;
  }
  const firstStage = [...rows.values()].sort((a, b) => b.level - a.level);
  const base = {
    request: replay.request,
    config: replay.config,
    result,
    lookup,
    firstStage,
    missingPages: replay.missingPages,
    ...(pgtt === undefined ? {} : { pgtt }),
    ...(secondStageLevels === undefined ? {} : { secondStageLevels }),
  };
  const withOutput = output === undefined ? base : { ...base, secondStage: output };
  if (result.ok) return withOutput;
  return { ...withOutput, stop: findStop(result, lookup, firstStage, output, lastTranslation) };
}

type FailedWalk = Extract<TracedWalk, { ok: false }>;

function findStop(
  result: FailedWalk,
  lookup: readonly WalkStep[],
  firstStage: readonly FirstStageRow[],
  output: SecondStageWalk | undefined,
  lastTranslation: SecondStageWalk | undefined,
): WalkStop {
  const fault = result.fault;
  const reason = faultReason(fault.reason);
  const common = { code: fault.reason, reason, fpd: fault.fpd, ...(fault.pasid === undefined ? {} : { pasid: fault.pasid }) };
  const structure = lookupStructureOf(fault.stage);
  if (structure !== undefined) {
    const entry = [...lookup].reverse().find((step) => step.structure === structure);
    const unreadable = fault.entryAddress !== undefined && fault.entryValue === undefined;
    return { ...common, stage: 'lookup', structure, ...(entry === undefined ? {} : { entry }), ...(unreadable ? { unreadable } : {}) };
  }
  if (fault.stage === 'first-stage') {
    const level = fault.level ?? firstStage[firstStage.length - 1]?.level ?? 0;
    const entry = firstStage.find((r) => r.level === level)?.entry;
    return { ...common, stage: 'first', firstStageLevel: level, ...(entry === undefined ? {} : { entry }) };
  }
  // The second stage (or its output): the walk that failed is the last one noted without an output, else the trailing walk.
  const failedWalk = lastTranslation?.failed === true ? lastTranslation : output?.failed === true ? output : undefined;
  if (failedWalk === undefined) {
    // Every translation succeeded: the second stage refused something else about a first-stage level (setting A/D in its table).
    const row = fault.level === undefined ? undefined : firstStage.find((r) => r.level === fault.level);
    if (row === undefined) return { ...common, stage: 'second' };
    return {
      ...common,
      stage: 'second',
      firstStageLevel: row.level,
      ...(row.table === undefined ? {} : { secondStageWalk: row.table }),
      ...(row.entry === undefined ? {} : { entry: row.entry }),
    };
  }
  const translation = failedWalk.translation;
  const last = failedWalk.steps[failedWalk.steps.length - 1];
  // Inside a nested walk the record names the second-stage level apart; legacy and second-stage-only walks as the level.
  const secondStageLevel = translation?.purpose === 'table' ? last?.level : (fault.secondStageLevel ?? (fault.level || undefined) ?? last?.level);
  const entry = last !== undefined && last.level === secondStageLevel ? last : undefined;
  return {
    ...common,
    stage: 'second',
    secondStageWalk: failedWalk,
    ...(translation === undefined ? {} : { firstStageLevel: translation.level }),
    ...(secondStageLevel === undefined ? {} : { secondStageLevel }),
    ...(entry === undefined ? {} : { entry }),
  };
}
