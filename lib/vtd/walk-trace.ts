/** The per-step record a walk emits when given a trace sink: what `viommu explain` renders, produced by the walker itself. */

import type { FieldTable } from './bitfield';

/** Which structure a step read: the lookup chain of scalable mode, then the two paging stages. */
export type WalkStructure = 'root' | 'context' | 'pasid-directory' | 'pasid-table' | 'first-stage' | 'second-stage';

/** One structure entry the walker read (and possibly updated). */
export interface WalkStep {
  readonly structure: WalkStructure;
  /** Paging level (5..1) for paging entries; 0 for root, context and PASID structures. */
  readonly level: number;
  /** Base address of the table the entry was read from, as the structure pointing to it gives it. */
  readonly tableAddress: number;
  readonly index: number;
  /** Where the entry was read: the host (physical) address. */
  readonly entryAddress: number;
  /**
   * In nested translation the first-stage tables live in guest-physical space: the entry's guest address
   * (tableAddress + index * 8), which the second stage translated into entryAddress.
   */
  readonly guestEntryAddress?: number;
  /** The entry as read, and the table that decodes it (for renderFields). */
  readonly value: bigint;
  readonly layout: FieldTable;
  /** Flags the walk set in memory on this entry (A, EA, D), if any. */
  readonly flagsSet?: readonly string[];
}

/**
 * A second-stage translation of one guest-physical address inside a nested walk: of a first-stage table
 * (purpose 'table') or of the first stage's output (purpose 'output').
 */
export interface SecondStageStep {
  readonly structure: 'second-stage-translation';
  readonly purpose: 'table' | 'output';
  /** The first-stage level whose table was translated; 0 for the final output. */
  readonly level: number;
  readonly input: number;
  /** The host address, or undefined when the second stage faulted (the walk result carries the fault). */
  readonly output?: number;
  readonly readable?: boolean;
  readonly writable?: boolean;
}

export type TraceRecord = WalkStep | SecondStageStep;

/** Receives the steps of one walk in order. Walks never call it when none is given, so tracing off costs nothing. */
export interface WalkTraceSink {
  step(record: TraceRecord): void;
}

/** A sink that keeps every record, for tests and the explain renderer. */
export class WalkTrace implements WalkTraceSink {
  readonly records: TraceRecord[] = [];

  step(record: TraceRecord): void {
    this.records.push(record);
  }
}
