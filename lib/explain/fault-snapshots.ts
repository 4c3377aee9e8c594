/**
 * `--snapshot-on-fault DIR`: each DMA translation fault of a watched unit is snapshotted at once (before the guest
 * can change its tables) into a file in DIR, up to a limit; later faults are only counted.
 */

import * as fs from 'node:fs';
import * as path from 'node:path';
import type { GuestMemory } from '../memory/guest-memory';
import { faultReason } from '../vtd/fault-reasons';
import type { TranslationFailure, TranslationRequest } from '../vtd/translation-result';
import type { VtdUnit } from '../vtd/unit';
import { takeSnapshot } from '../vtd/unit-snapshot';
import { writeSnapshot } from './snapshot-file';
import { requesterName } from './walk-words';

export const DEFAULT_SNAPSHOT_LIMIT = 16;

export class FaultSnapshots {
  /** Files written, in order. */
  readonly written: string[] = [];
  /** Faults after the limit, not snapshotted. */
  skipped = 0;
  /** Snapshots that could not be taken or written (the translation itself is never disturbed). */
  readonly errors: string[] = [];

  constructor(
    readonly directory: string,
    readonly limit = DEFAULT_SNAPSHOT_LIMIT,
  ) {
    fs.mkdirSync(directory, { recursive: true });
  }

  /**
   * Snapshots every failed translate() of `unit` from now on. The unit's DMA spaces call translate() through the
   * instance, so the hook sits there; `memory` is the guest RAM the unit was built on. Returns the unhook.
   */
  watch(unit: VtdUnit, memory: GuestMemory, source: string): () => void {
    // The unit may carry its own wrapper already (a trace sink installs one): put back exactly what was there.
    const own = Object.hasOwn(unit, 'translate');
    const translate = unit.translate;
    unit.translate = (request) => {
      const result = translate.call(unit, request);
      if (!result.ok) this.capture(unit, memory, request, result, source);
      return result;
    };
    return () => {
      if (own) unit.translate = translate;
      else Reflect.deleteProperty(unit, 'translate');
    };
  }

  private capture(unit: VtdUnit, memory: GuestMemory, request: TranslationRequest, failure: TranslationFailure, source: string): void {
    if (this.written.length >= this.limit) {
      this.skipped++;
      return;
    }
    const name = [
      `fault-${String(this.written.length + 1).padStart(3, '0')}`,
      source
        .replace(/^viommu /, '')
        .replace(/[^a-z0-9]+/gi, '-')
        .replace(/^-|-$/g, '')
        .toLowerCase(),
      requesterName(request.sid).replace(/[:.]/g, '-'),
      ...(request.pasid === undefined ? [] : [`pasid-${request.pasid}`]),
      `iova-${BigInt.asUintN(64, request.iova).toString(16)}`,
      (faultReason(failure.fault.reason)?.name ?? `reason-${failure.fault.reason}`).toLowerCase(),
    ]
      .filter((part) => part !== '')
      .join('-');
    const file = path.join(this.directory, `${name}.json`);
    try {
      writeSnapshot(file, takeSnapshot(unit, memory, request, { observed: failure, source }));
      this.written.push(file);
    } catch (error) {
      this.errors.push(`${file}: ${(error as Error).message}`);
    }
  }

  /** One line for the end of a run: how many snapshots went where, and what was left out. */
  summary(): string {
    const more = this.skipped === 0 ? '' : `; ${this.skipped} later fault(s) not snapshotted (limit ${this.limit})`;
    const failed = this.errors.length === 0 ? '' : `; ${this.errors.length} could not be written: ${this.errors.join('; ')}`;
    return `${this.written.length} fault snapshot(s) in ${this.directory}${more}${failed}`;
  }
}
