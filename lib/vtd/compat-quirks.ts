/** Places where the unit follows QEMU rather than the letter of the VT-d spec, each listed once and selectable by compat. */

import type { FieldTable } from './bitfield';
import type { Compat, VtdConfig } from './config';
import { ViommuError } from '../errors';
import {
  CCMD_FIELDS,
  EVENT_CONTROL_FIELDS,
  FRCD_HI_FIELDS,
  FRCD_LO_FIELDS,
  FSTS_FIELDS,
  GSTS_FIELDS,
  IQA_FIELDS,
  QUEUE_POINTER_FIELDS,
  RTADDR_FIELDS,
  faultRecordRegister,
  findRegister,
  type RegisterName,
} from './registers';
import { FIRST_STAGE_2M_LEAF, FIRST_STAGE_4K_LEAF, FIRST_STAGE_TABLE_ENTRY, FIRST_STAGE_TOP_ENTRY } from './structures';

export type QuirkId =
  | 'iqa-readback-shows-latched-base'
  | 'frcd-pv-ffff-without-pasid'
  | 'top-table-read-error-is-context-invalid'
  | 'second-stage-not-present-is-permission-fault'
  | 'srtp-acts-on-every-gcmd-write'
  | 'srtp-flushes-caches'
  | 'collapse-faults-from-pending-source'
  | 'context-domain-invalidation-is-global'
  | 'compatibility-interrupts-pass-without-cfi'
  | 'gcmd-cfi-ignored'
  | 'iotlb-hit-without-permission-not-recorded'
  | 'iotlb-page-invalidation-mask-truncated'
  | 'interrupt-range-read-returns-zeros'
  | 'interrupt-remapping-faults-not-recorded'
  | 'qi-disable-needs-drained-queue'
  | 'iec-descriptor-reserved-bits-ignored'
  | 'pasid-descriptors-accepted-unchecked'
  | 'interrupt-dma-writes-skip-source-id-check'
  | 'irte-posted-and-xapic-destination-unchecked'
  | 'fectl-ip-kept-when-records-cleared'
  | 'rid-pasid-used-without-rps'
  | 'scalable-faults-use-legacy-reasons'
  | 'scalable-rid-pasid-recorded-as-pasid'
  | 'first-stage-rights-checked-per-level'
  | 'first-stage-flags-written-only-when-all-clear'
  | 'first-stage-canonical-check-uses-pasid-aw'
  | 'interrupt-dma-write-faults-recorded-with-sid-ffff';

export interface CompatQuirk {
  readonly id: QuirkId;
  /**
   * The compat settings that enable it. 'all' means the unit always behaves this way: the spec permits it or is
   * silent, so QEMU's choice is kept in every mode.
   */
  readonly compat: readonly Compat[] | 'all';
  /** What QEMU does, and what the spec asks instead. */
  readonly description: string;
  /** Where it was seen: the differential tests (comma-separated) that show it against QEMU 7.2 or 10.0. */
  readonly evidence: string;
  /**
   * What it may change in what a guest sees, and nothing more: the differential harness (test/oracle/harness.ts)
   * excuses a spec-mode difference at a value tagged with the quirk only inside these bits or kinds.
   */
  readonly changes: QuirkChanges;
}

/** Differential observations that are not register values. */
export type ObservationKind =
  /** Bytes in guest memory: what a device moved, or what the unit wrote there (wait-descriptor status). */
  | 'data'
  /** The MSIs the unit delivered: fault and completion events, remapped interrupts. */
  | 'interrupts';

/**
 * Paging entries that differential tests read back from guest memory (the A and D flags the walk sets) and
 * compare bit by bit like registers, by the names a quirk's `changes` uses for them.
 */
export const ENTRY_FIELDS = {
  FS_TOP_ENTRY: FIRST_STAGE_TOP_ENTRY,
  FS_TABLE_ENTRY: FIRST_STAGE_TABLE_ENTRY,
  FS_4K_LEAF: FIRST_STAGE_4K_LEAF,
  FS_2M_LEAF: FIRST_STAGE_2M_LEAF,
} as const satisfies Readonly<Record<string, FieldTable>>;

/**
 * The registers whose fields a quirk may change, with their field tables: the tables of lib/vtd/registers.ts (a
 * register that is listed with another table fails at load), here again only so that the compiler knows each
 * register's field names. A quirk that changes a register first needs its row here.
 */
const CHANGEABLE_REGISTERS = {
  GSTS: GSTS_FIELDS,
  RTADDR: RTADDR_FIELDS,
  CCMD: CCMD_FIELDS,
  FSTS: FSTS_FIELDS,
  FECTL: EVENT_CONTROL_FIELDS,
  IQH: QUEUE_POINTER_FIELDS,
  IQA: IQA_FIELDS,
} as const satisfies Partial<Readonly<Record<RegisterName, FieldTable>>>;

/** FRCD_LO and FRCD_HI stand for every fault-recording register's halves (FRCD0_LO, FRCD0_HI, ...). */
const FAULT_RECORD_HALVES = { FRCD_LO: FRCD_LO_FIELDS, FRCD_HI: FRCD_HI_FIELDS } as const;

const CHANGEABLE = { ...CHANGEABLE_REGISTERS, ...FAULT_RECORD_HALVES, ...ENTRY_FIELDS };

for (const [name, table] of Object.entries(CHANGEABLE_REGISTERS) as [keyof typeof CHANGEABLE_REGISTERS, FieldTable][]) {
  if (findRegister(name).fields !== table)
    throw new ViommuError('ERR_FIELD_TABLE', `compat quirks: ${name} is listed with ${table.name}, not its own table`);
}
if (findRegister(faultRecordRegister(0, 'LO')).fields !== FRCD_LO_FIELDS || findRegister(faultRecordRegister(0, 'HI')).fields !== FRCD_HI_FIELDS) {
  throw new ViommuError('ERR_FIELD_TABLE', 'compat quirks: the fault-recording registers are not described by FRCD_LO_FIELDS and FRCD_HI_FIELDS');
}

/** A register or entry a quirk's `changes` can name: a register of CHANGEABLE_REGISTERS, FRCD_LO / FRCD_HI, or an ENTRY_FIELDS entry. */
export type QuirkChangeTarget = keyof typeof CHANGEABLE;

/** The field names of what `changes` calls `T`, as its field table defines them. */
type FieldNameOf<T extends QuirkChangeTarget> = keyof (typeof CHANGEABLE)[T]['f'] & string;

/** Per register or entry, the fields a quirk may change there: a misspelt register or field does not compile. */
export type QuirkRegisterChanges = { readonly [T in QuirkChangeTarget]?: readonly FieldNameOf<T>[] };

export interface QuirkChanges {
  /** The fields the quirk may change, by register (FRCD_LO and FRCD_HI for every fault record) or paging entry. */
  readonly registers?: QuirkRegisterChanges;
  /** Observations other than register values that it may change as a whole. */
  readonly observations?: readonly ObservationKind[];
}

/** Every field of what `changes` calls `target`, by name: a table's fields carry exactly the names it defines. */
function everyField<T extends QuirkChangeTarget>(target: T): readonly FieldNameOf<T>[] {
  const table: FieldTable = CHANGEABLE[target];
  return table.fields.map((field) => field.name as FieldNameOf<T>);
}

/** What a fault that is recorded in one mode and not in the other changes: the record, the status and the event. */
const FAULT_RECORD: QuirkChanges = {
  registers: {
    FSTS: ['PFO', 'PPF', 'FRI'],
    FECTL: ['IP'],
    FRCD_LO: everyField('FRCD_LO'),
    FRCD_HI: everyField('FRCD_HI'),
  },
  observations: ['interrupts'],
};

/** What an invalidation descriptor accepted in one mode and refused (IQE) in the other changes. */
const QUEUE_ERROR: QuirkChanges = {
  registers: { FSTS: ['IQE'], FECTL: ['IP'], IQH: ['QH'] },
  observations: ['interrupts', 'data'],
};

function merge(...parts: QuirkChanges[]): QuirkChanges {
  const registers = new Map<QuirkChangeTarget, Set<string>>();
  const observations = new Set<ObservationKind>();
  for (const part of parts) {
    for (const [target, fields] of Object.entries(part.registers ?? {}) as [QuirkChangeTarget, readonly string[]][]) {
      registers.set(target, new Set([...(registers.get(target) ?? []), ...fields]));
    }
    for (const kind of part.observations ?? []) observations.add(kind);
  }
  // Each target's fields come from parts that are QuirkChanges themselves, so the union is one too.
  const merged = Object.fromEntries([...registers].map(([target, fields]) => [target, [...fields]])) as QuirkRegisterChanges;
  return { registers: merged, observations: [...observations] };
}

const QEMU_7_2: readonly Compat[] = ['qemu-7.2'];
const QEMU_10_0: readonly Compat[] = ['qemu-10.0'];
const QEMU_7_2_AND_10_0: readonly Compat[] = ['qemu-7.2', 'qemu-10.0'];

/** The first-stage entries the tests read back, by their ENTRY_FIELDS names. */
const FIRST_STAGE_ENTRIES = ['FS_TOP_ENTRY', 'FS_TABLE_ENTRY', 'FS_4K_LEAF', 'FS_2M_LEAF'] as const;
const FIRST_STAGE_LEAVES = ['FS_4K_LEAF', 'FS_2M_LEAF'] as const;

/** The same fields in each first-stage entry (in the leaves only, with leavesOnly): names every entry defines. */
// FieldNameOf of a union of entries is the names that all of them define (keyof a union).
function inFirstStageEntries(fields: readonly FieldNameOf<(typeof FIRST_STAGE_ENTRIES)[number]>[]): QuirkRegisterChanges;
function inFirstStageEntries(fields: readonly FieldNameOf<(typeof FIRST_STAGE_LEAVES)[number]>[], leavesOnly: true): QuirkRegisterChanges;
function inFirstStageEntries(fields: readonly string[], leavesOnly = false): QuirkRegisterChanges {
  const names = leavesOnly ? FIRST_STAGE_LEAVES : FIRST_STAGE_ENTRIES;
  return Object.fromEntries(names.map((name) => [name, fields]));
}

export const COMPAT_QUIRKS: readonly CompatQuirk[] = [
  {
    id: 'iqa-readback-shows-latched-base',
    compat: QEMU_7_2_AND_10_0,
    description:
      'IQA reads back as the queue base latched by the last QIE enable (0 before the first) plus QS; DW is never shown. The spec reads back what was written.',
    evidence: 'test/oracle/differential-queued-invalidation.test.ts',
    changes: { registers: { IQA: ['IQA', 'DW'] } },
  },
  {
    id: 'frcd-pv-ffff-without-pasid',
    compat: QEMU_7_2_AND_10_0,
    description:
      'FRCD.PV is 0xffff (with PP = 0) for faults of requests without PASID found at or after the page walk (root and context faults get PV 0). The spec leaves PV 0 when PP is 0.',
    evidence: 'test/oracle/differential-faults.test.ts',
    changes: { registers: { FRCD_HI: ['PV'] } },
  },
  {
    id: 'top-table-read-error-is-context-invalid',
    compat: QEMU_7_2_AND_10_0,
    description: 'an unreadable top-level page table gives fault 3 (invalid context entry); the spec reports 7 (next page table pointer invalid)',
    evidence: 'test/oracle/differential-faults.test.ts',
    changes: { registers: { FRCD_HI: ['FR'] } },
  },
  {
    id: 'second-stage-not-present-is-permission-fault',
    compat: 'all',
    description: 'a second-stage entry with R = W = 0 gives fault 6 (read) or 5 (write): legacy mode has no separate not-present code',
    evidence: 'test/oracle/differential-faults.test.ts',
    changes: { registers: { FRCD_HI: ['FR'] } },
  },
  {
    id: 'srtp-acts-on-every-gcmd-write',
    compat: 'all',
    description: 'SRTP and SIRTP latch the pointer on every GCMD write with the bit set, not only on a 0 -> 1 change',
    evidence: 'test/oracle/differential-commands.test.ts',
    changes: { registers: { RTADDR: ['TTM', 'RTA'] }, observations: ['data'] },
  },
  {
    id: 'srtp-flushes-caches',
    compat: 'all',
    description: 'SRTP drops the context cache and IOTLB (QEMU 7.2 vtd_handle_gcmd_srtp; later advertised as CAP.ESRTPS)',
    evidence: 'test/oracle/differential-legacy-translation.test.ts',
    changes: { observations: ['data'] },
  },
  {
    id: 'collapse-faults-from-pending-source',
    compat: 'all',
    description: 'a fault from a source id that already has a pending record is not recorded (spec-permitted fault compression)',
    evidence: 'test/oracle/differential-faults.test.ts',
    changes: FAULT_RECORD,
  },
  {
    id: 'context-domain-invalidation-is-global',
    compat: 'all',
    description: 'a domain-selective context-cache invalidation is done (and reported in CCMD.CAIG) as global',
    evidence: 'test/oracle/differential-commands.test.ts',
    changes: { registers: { CCMD: ['CAIG'] }, observations: ['data'] },
  },
  {
    id: 'compatibility-interrupts-pass-without-cfi',
    compat: QEMU_7_2_AND_10_0,
    description: 'with IRE on, compatibility-format interrupts pass even when GSTS.CFIS is 0; the spec blocks them with fault 0x25',
    evidence: 'test/oracle/differential-interrupt-remapping.test.ts',
    changes: FAULT_RECORD,
  },
  {
    id: 'gcmd-cfi-ignored',
    compat: QEMU_7_2_AND_10_0,
    description: 'GCMD.CFI is not implemented: GSTS.CFIS never sets. The spec sets CFIS while CFI is written as 1.',
    evidence: 'test/oracle/differential-commands.test.ts',
    changes: { registers: { GSTS: ['CFIS'] } },
  },
  {
    id: 'iotlb-hit-without-permission-not-recorded',
    compat: QEMU_7_2_AND_10_0,
    description:
      'a request that hits a cached translation lacking the needed permission (a write after a read of a read-only page, a read after a write of a write-only page; in 10.0 first-stage translations too) is blocked without a fault record; the spec records the fault (5 or 6, 0x85 in scalable mode) as for an uncached walk',
    evidence: 'test/oracle/differential-faults.test.ts, test/oracle/differential-first-stage.test.ts',
    changes: FAULT_RECORD,
  },
  {
    id: 'iotlb-page-invalidation-mask-truncated',
    compat: QEMU_7_2,
    description:
      'a page-selective IOTLB invalidation also drops every cached page of the domain whose page number agrees with the invalidated one in bits AM..7, and from AM 8 on (every 2 MiB or 1 GiB invalidation) the whole domain: QEMU 7.2 holds the address mask in 8 bits (10.0 does not). The spec drops the named range; dropping more is allowed, and shows only where a stale or permission-lacking entry would have been used',
    evidence: 'test/oracle/differential-random.test.ts',
    changes: { observations: ['data'] },
  },
  {
    id: 'interrupt-range-read-returns-zeros',
    compat: QEMU_7_2_AND_10_0,
    description:
      'a DMA read (without PASID) of 0xfee00000-0xfeefffff completes with zeros; the spec treats it as an illegal request and blocks it (no fault record either way)',
    evidence: 'test/oracle/differential-interrupt-remapping.test.ts',
    changes: { observations: ['data'] },
  },
  {
    id: 'interrupt-remapping-faults-not-recorded',
    compat: QEMU_7_2,
    description:
      'an interrupt request that fails remapping (faults 0x20-0x26) is dropped with a message on stderr but never recorded in FRCD and raises no fault event',
    evidence: 'test/oracle/differential-interrupt-remapping.test.ts',
    changes: FAULT_RECORD,
  },
  {
    id: 'qi-disable-needs-drained-queue',
    compat: QEMU_7_2_AND_10_0,
    description:
      'clearing GCMD.QIE is ignored (QIES stays 1, IQH kept) unless IQH = IQT and the last descriptor processed was a wait descriptor; the spec disables queued invalidation and resets IQH to 0',
    evidence: 'test/oracle/differential-queued-invalidation.test.ts',
    changes: { registers: { GSTS: ['QIES'], IQH: ['QH'], CCMD: ['ICC', 'CAIG'] } },
  },
  {
    id: 'iec-descriptor-reserved-bits-ignored',
    compat: QEMU_7_2,
    description: 'reserved bits of an interrupt entry cache invalidation descriptor are not checked; the spec reports an invalid descriptor (IQE)',
    evidence: 'test/oracle/differential-queued-invalidation.test.ts',
    changes: QUEUE_ERROR,
  },
  {
    id: 'pasid-descriptors-accepted-unchecked',
    compat: QEMU_7_2,
    description:
      'PASID-based IOTLB (type 6) and PASID-cache (type 7) descriptors are accepted unchecked, also in a 128-bit queue without scalable mode; the spec reports IQE for them there',
    evidence: 'test/oracle/differential-queued-invalidation.test.ts',
    changes: QUEUE_ERROR,
  },
  {
    id: 'interrupt-dma-writes-skip-source-id-check',
    compat: QEMU_7_2_AND_10_0,
    description:
      "a device's plain DMA write to the interrupt range is remapped without source-id verification (it carries no requester id in QEMU; its MSIs do): SID/SQ/SVT, SVT = 3 included, are not checked. The spec verifies every interrupt request.",
    evidence: 'test/oracle/differential-interrupt-remapping.test.ts',
    changes: FAULT_RECORD,
  },
  {
    id: 'irte-posted-and-xapic-destination-unchecked',
    compat: QEMU_7_2_AND_10_0,
    description:
      'an IRTE with IM = 1 (posted, while CAP.PI = 0) or, in xAPIC mode, destination bits outside 15:8 set is used as a remapped entry (destination = DST bits 15:8); the spec reports fault 0x24',
    evidence: 'test/oracle/differential-interrupt-remapping.test.ts',
    changes: FAULT_RECORD,
  },
  {
    id: 'fectl-ip-kept-when-records-cleared',
    compat: QEMU_7_2_AND_10_0,
    description:
      'clearing the last pending fault record (FRCD.F) leaves FECTL.IP set, so unmasking later sends a stale fault event; QEMU clears IP only on an FSTS write. The spec clears IP once no fault condition is left.',
    evidence: 'test/oracle/differential-faults.test.ts',
    changes: { registers: { FECTL: ['IP'] }, observations: ['interrupts'] },
  },
  {
    id: 'rid-pasid-used-without-rps',
    compat: QEMU_7_2_AND_10_0,
    description:
      'requests without PASID in scalable mode use whatever RID_PASID the context entry holds; the spec (ECAP.RPS = 0, as here) requires RID_PASID 0 and reports fault 0x48 otherwise',
    evidence: 'test/oracle/differential-scalable.test.ts',
    changes: merge(FAULT_RECORD, { observations: ['data'] }),
  },
  {
    id: 'scalable-faults-use-legacy-reasons',
    compat: QEMU_7_2_AND_10_0,
    description:
      'scalable-mode faults are recorded with legacy codes: root entry not present 1, context entry not present 2, second-stage write 5 and read 6, and (7.2 only) 0x58 for every PASID directory or PASID entry fault (not present, unreadable, reserved bits, invalid PGTT or AW); 10.0 records those with their own codes (0x51, 0x58, 0x59, 0x5b), and first-stage faults too (0x85 for a write). The spec has a scalable-mode code for each (0x39, 0x41, 0x85, 0x86, 0x50..0x5b)',
    evidence: 'test/oracle/differential-scalable.test.ts, test/oracle/differential-first-stage.test.ts',
    changes: { registers: { FRCD_HI: ['FR'] } },
  },
  {
    id: 'scalable-rid-pasid-recorded-as-pasid',
    compat: QEMU_7_2_AND_10_0,
    description:
      'a page-walk fault of a request without PASID in scalable mode is recorded with PP = 1 and PV = RID_PASID, as if the request carried that PASID (10.0: first-stage walks too); the spec records PP = 0 (QEMU too for root, context and PASID-structure faults)',
    evidence: 'test/oracle/differential-scalable.test.ts, test/oracle/differential-first-stage.test.ts',
    changes: { registers: { FRCD_HI: ['PP', 'PV'] } },
  },
  {
    id: 'first-stage-rights-checked-per-level',
    compat: QEMU_10_0,
    description:
      "first-stage U/S and R/W are checked entry by entry as the walk goes, before that entry's reserved bits and before the entries below: a refused right faults at once (0x81, or 0x85 for a write), the refusing entry and those below it get no A, and it wins over a not-present or reserved entry further down. The spec applies the IA-32e rules (SDM 4.7): a not-present or reserved entry anywhere means no translation (0x71, 0x72), and rights are judged on the complete translation. Which A flags a faulting walk sets is left open (SDM 4.8; Intel CPUs set none)",
    evidence: 'test/oracle/differential-first-stage.test.ts',
    changes: { registers: { FRCD_HI: ['FR'], ...inFirstStageEntries(['A']) } },
  },
  {
    id: 'first-stage-flags-written-only-when-all-clear',
    compat: QEMU_10_0,
    description:
      'a first-stage entry is written back only when none of the flags due is set yet: a write through a leaf whose A is set leaves D clear, one whose D is set leaves A clear, and the translation is cached as written, so a write after a read (which set A) never sets D. The spec (3.6.2, as SDM 4.8) sets D on every write and A on every use',
    evidence: 'test/oracle/differential-first-stage.test.ts',
    changes: { registers: inFirstStageEntries(['A', 'D'], true) },
  },
  {
    id: 'first-stage-canonical-check-uses-pasid-aw',
    compat: QEMU_10_0,
    description:
      "the first-stage canonical check uses the width of the PASID entry's AW (a second-stage field: 39 bits for AW 1) instead of FSPM's 48 bits, so a canonical address above 2^38 faults (0x80) under AW 1. The spec checks bits 63:47 (FSPM 0) and ignores AW for first-stage translation",
    evidence: 'test/oracle/differential-first-stage.test.ts',
    changes: merge(FAULT_RECORD, { observations: ['data'] }),
  },
  {
    id: 'interrupt-dma-write-faults-recorded-with-sid-ffff',
    compat: QEMU_10_0,
    description:
      "the interrupt-remapping fault of a device's plain DMA write to the interrupt range is recorded with SID 0xffff: the write reaches QEMU's interrupt window without its requester id (7.2 recorded no such fault at all). The spec records the requester id of the faulting request",
    evidence: 'test/oracle/differential-qemu10.test.ts',
    changes: { registers: { FRCD_HI: ['SID'] } },
  },
];

/** The quirks in effect for a configuration. */
export function quirksFor(config: Pick<VtdConfig, 'compat'>): ReadonlySet<QuirkId> {
  const set = new Set<QuirkId>();
  for (const quirk of COMPAT_QUIRKS) {
    if (quirk.compat === 'all' || quirk.compat.includes(config.compat)) set.add(quirk.id);
  }
  return set;
}

/**
 * What `changes` calls an observed register or entry name: a fault-recording register (FRCDn_LO, FRCDn_HI) by
 * its half; undefined for a name no quirk can name (such a register has no bits a quirk may change).
 */
function changeTarget(name: string): QuirkChangeTarget | undefined {
  const key = name.replace(/^FRCD\d+_/, 'FRCD_');
  return Object.hasOwn(CHANGEABLE, key) ? (key as QuirkChangeTarget) : undefined;
}

/** The bits of `fields` in what `changes` calls `target` (QuirkRegisterChanges names only fields its table has). */
function fieldMask(target: QuirkChangeTarget, fields: readonly string[]): bigint {
  const table: FieldTable = CHANGEABLE[target];
  let mask = 0n;
  for (const name of fields) {
    const field = table.f[name]!;
    mask |= ((1n << BigInt(field.msb - field.lsb + 1)) - 1n) << BigInt(field.lsb);
  }
  return mask;
}

/**
 * The bits of register `name` (a name of lib/vtd/registers.ts as an observation carries it, or an ENTRY_FIELDS
 * entry) that quirk `id` may change: the union of the fields its `changes` lists there, 0n when it lists none.
 */
export function quirkRegisterMask(id: QuirkId, name: string): bigint {
  const quirk = COMPAT_QUIRKS.find((q) => q.id === id);
  if (quirk === undefined) throw new Error(`no compat quirk ${id}`);
  const target = changeTarget(name);
  return target === undefined ? 0n : fieldMask(target, quirk.changes.registers?.[target] ?? []);
}

/** Whether quirk `id` may change an observation of `kind` (not a register value) as a whole. */
export function quirkChangesObservation(id: QuirkId, kind: ObservationKind): boolean {
  const quirk = COMPAT_QUIRKS.find((q) => q.id === id);
  if (quirk === undefined) throw new Error(`no compat quirk ${id}`);
  return quirk.changes.observations?.includes(kind) ?? false;
}

/** QEMU 7.2 behaviour seen by the oracle tests that no compat setting reproduces, and why. */
export interface UnreproducedDifference {
  readonly id: string;
  readonly description: string;
  readonly why: string;
}

export const UNREPRODUCED_QEMU_DIFFERENCES: readonly UnreproducedDifference[] = [
  {
    id: 'wait-descriptor-sw-and-if-aborts',
    description: 'a wait descriptor with both SW and IF set stops QEMU 7.2 with an assertion failure (vtd_process_wait_desc)',
    why: 'a guest must never be able to stop the unit; we write the status and signal completion',
  },
  {
    id: 'no-interrupt-entry-cache',
    description: 'QEMU reads the IRTE for every interrupt, so a changed IRTE takes effect without an interrupt entry cache invalidation',
    why: 'we keep an interrupt entry cache, as hardware may; software that follows the spec invalidates and sees no difference',
  },
  {
    id: 'iotlb-keyed-by-source-id',
    description: "QEMU's IOTLB is keyed by source id and looked up before the context entry",
    why: 'ours is keyed by domain, as the spec describes; the two differ only for software that skips a required invalidation',
  },
  {
    id: 'partial-dma-transfers',
    description: "QEMU's memory core translates a transfer page by page and moves the pages that translate; a failed read gives the device zeros",
    why: "a DmaSpace transfer is all or nothing (lib/memory/dma-space.ts); what a device makes of a failed read is the device model's business",
  },
];
