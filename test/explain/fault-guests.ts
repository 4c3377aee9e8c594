/** Test guests with one fault each, in every shape explain must render, built with the unit test guests and their table writers. */
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest } from '../vtd/scalable-guest';
import { PAGE, SID, TestGuest } from '../vtd/unit-guest';

export const NESTED_CONFIG = 'x-scalable-mode=on,x-flts=on,aw-bits=48,x-pasid-mode=on,x-nested=on';
export const NESTED_PASID = 7;
/** Guest-physical (second-stage input) base of the first-stage tables, and the output page's guest address. */
export const FIRST_STAGE_TABLES_GPA = 0x1_0000_0000;
export const OUTPUT_GPA = 0x2_0000_0000;
export const OUTPUT_HPA = 0x500000;
/** The IOVA the nested guest maps: 0x3000 -> OUTPUT_GPA. */
export const NESTED_IOVA = 0x3abc;

export interface NestedGuest {
  readonly guest: ScalableGuest;
  readonly ssTop: number;
  /** Host pages of the four first-stage tables (levels 4..1). */
  readonly hostPages: readonly number[];
}

/**
 * A nested domain for PASID 7 of SID: first-stage tables at guest-physical FIRST_STAGE_TABLES_GPA.., mapped by the
 * second stage onto host pages; the first stage maps NESTED_IOVA's page to OUTPUT_GPA, which the second stage maps to
 * OUTPUT_HPA. `unmappedTableLevel`: leave that first-stage level's table out of the second stage.
 */
export function nestedGuest(options: { unmappedTableLevel?: number } = {}): NestedGuest {
  const guest = new ScalableGuest(NESTED_CONFIG);
  guest.scalableContext();
  const ssTop = guest.writer.page();
  const hostPages: number[] = [];
  for (let i = 0; i < 4; i++) {
    hostPages.push(guest.writer.page());
    if (options.unmappedTableLevel !== 4 - i) guest.writer.mapSecond(ssTop, 4, FIRST_STAGE_TABLES_GPA + i * PAGE, hostPages[i]!);
  }
  guest.writer.mapSecond(ssTop, 4, OUTPUT_GPA, OUTPUT_HPA);
  // Table i (level 4 - i) points at guest page i + 1; the leaf maps page 3 of the IOVA space to OUTPUT_GPA.
  for (let i = 0; i < 3; i++) guest.memory.writeU64(hostPages[i]!, BigInt(FIRST_STAGE_TABLES_GPA + (i + 1) * PAGE) | 0x7n);
  guest.memory.writeU64(hostPages[3]! + 3 * 8, BigInt(OUTPUT_GPA) | 0x7n);
  guest.pasidEntry(SID, NESTED_PASID, { PGTT: PASID_PGTT.NESTED, AW: 2, SSPTPTR: ssTop / PAGE, FSPTPTR: FIRST_STAGE_TABLES_GPA / PAGE, DID: 4 });
  guest.enableScalable();
  return { guest, ssTop, hostPages };
}

export const LEGACY_IOVA = 0x40_3000;

/** A legacy guest whose SID maps LEGACY_IOVA read-only (4-level second stage). */
export function legacyGuest(): TestGuest {
  const guest = new TestGuest('aw-bits=48');
  guest.setContext(SID, { aw: 2 });
  guest.map(SID, LEGACY_IOVA, 0x80_0000, { read: true, write: false });
  guest.enable();
  return guest;
}

export const SECOND_STAGE_IOVA = 0x20_0000;

/** Mapped read-write by secondStageGuest, through second-stage tables of its own (below the top table). */
export const SECOND_STAGE_FAR_IOVA = 0x80_0000_0000;

/** Scalable second-stage-only (PGTT 2) for requests without PASID: SECOND_STAGE_IOVA mapped read-only. */
export function secondStageGuest(): ScalableGuest {
  const guest = new ScalableGuest('x-scalable-mode=on,aw-bits=48');
  guest.scalableContext();
  const top = guest.secondStage(SID, 0, 1, 4);
  guest.writer.mapSecond(top, 4, SECOND_STAGE_IOVA, 0x60_0000, { write: false });
  guest.writer.mapSecond(top, 4, SECOND_STAGE_FAR_IOVA, 0x61_0000);
  guest.enableScalable();
  return guest;
}
