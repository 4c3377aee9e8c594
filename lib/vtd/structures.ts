/** In-memory VT-d structures (tables, entries, page-table entries, IRTEs, invalidation descriptors) as field tables. */

import { defineFields, getField, type Field, type FieldTable } from './bitfield';

/*
 * Conventions: bit positions are absolute within the structure (qword N starts at bit 64*N), as Linux's
 * pasid.h and the spec's entry diagrams count them. Bits no field covers are reserved (must be zero). Fields
 * with `addressShift` hold an address >> shift; their bits at or above the host address width are reserved.
 * Fields named IGN* are ignored by hardware: they are listed so that they do not count as reserved.
 */

// ---- root and context tables ----

export const LEGACY_ROOT_ENTRY = defineFields('root entry (legacy)', 128, [
  { name: 'P', bit: 0, width: 1, description: 'present' },
  { name: 'CTP', bit: 12, width: 52, addressShift: 12, description: 'context table pointer' },
] as const);

export const SCALABLE_ROOT_ENTRY = defineFields('root entry (scalable)', 128, [
  { name: 'LP', bit: 0, width: 1, description: 'lower present: devfn 0..127' },
  { name: 'LCTP', bit: 12, width: 52, addressShift: 12, description: 'lower context table pointer' },
  { name: 'UP', qword: 1, bit: 0, width: 1, description: 'upper present: devfn 128..255' },
  { name: 'UCTP', qword: 1, bit: 12, width: 52, addressShift: 12, description: 'upper context table pointer' },
] as const);

export const LEGACY_CONTEXT_ENTRY = defineFields('context entry (legacy)', 128, [
  { name: 'P', bit: 0, width: 1, description: 'present' },
  { name: 'FPD', bit: 1, width: 1, description: 'fault processing disable' },
  {
    name: 'TT',
    bit: 2,
    width: 2,
    description: 'translation type',
    values: { 0: 'untranslated only', 1: 'with device TLB', 2: 'pass-through', 3: 'reserved' },
  },
  { name: 'SLPTPTR', bit: 12, width: 52, addressShift: 12, description: 'second-stage page table pointer' },
  {
    name: 'AW',
    qword: 1,
    bit: 0,
    width: 3,
    description: 'address width: AW+2 levels',
    values: { 1: '39-bit, 3-level', 2: '48-bit, 4-level', 3: '57-bit, 5-level' },
  },
  { name: 'IGN_AVAIL', qword: 1, bit: 3, width: 4, description: 'available to software, ignored' },
  { name: 'DID', qword: 1, bit: 8, width: 16, description: 'domain id' },
] as const);

export const SCALABLE_CONTEXT_ENTRY = defineFields('context entry (scalable)', 256, [
  { name: 'P', bit: 0, width: 1, description: 'present' },
  { name: 'FPD', bit: 1, width: 1, description: 'fault processing disable' },
  { name: 'DTE', bit: 2, width: 1, description: 'device TLB enable' },
  { name: 'PASIDE', bit: 3, width: 1, description: 'requests with PASID allowed' },
  { name: 'PRE', bit: 4, width: 1, description: 'page requests enable' },
  { name: 'PDTS', bit: 9, width: 3, description: 'PASID directory size: 2^(PDTS+7) entries' },
  { name: 'PASIDDIRPTR', bit: 12, width: 52, addressShift: 12, description: 'PASID directory pointer' },
  { name: 'RID_PASID', qword: 1, bit: 0, width: 20, description: 'PASID used for requests without PASID' },
  { name: 'RID_PRIV', qword: 1, bit: 20, width: 1, description: 'privilege for requests without PASID' },
] as const);

export const PASID_DIRECTORY_ENTRY = defineFields('PASID directory entry', 64, [
  { name: 'P', bit: 0, width: 1, description: 'present' },
  { name: 'FPD', bit: 1, width: 1, description: 'fault processing disable' },
  { name: 'PTP', bit: 12, width: 52, addressShift: 12, description: 'PASID table pointer' },
] as const);

export const PASID_PGTT = { FIRST_STAGE: 1, SECOND_STAGE: 2, NESTED: 3, PASS_THROUGH: 4 } as const;

export const SCALABLE_PASID_ENTRY = defineFields('PASID entry (scalable)', 512, [
  { name: 'P', bit: 0, width: 1, description: 'present' },
  { name: 'FPD', bit: 1, width: 1, description: 'fault processing disable' },
  { name: 'AW', bit: 2, width: 3, description: 'second-stage address width: AW+2 levels' },
  { name: 'SSEE', bit: 5, width: 1, description: 'second-stage execute enable' },
  {
    name: 'PGTT',
    bit: 6,
    width: 3,
    description: 'PASID granular translation type',
    values: { 1: 'first stage', 2: 'second stage', 3: 'nested', 4: 'pass-through' },
  },
  { name: 'SSADE', bit: 9, width: 1, description: 'second-stage accessed/dirty enable', reservedUnless: 'SLADS' },
  { name: 'SSPTPTR', bit: 12, width: 52, addressShift: 12, description: 'second-stage page table pointer' },
  { name: 'DID', bit: 64, width: 16, description: 'domain id' },
  { name: 'PWSNP', bit: 87, width: 1, description: 'page-walk snoop' },
  { name: 'PGSNP', bit: 88, width: 1, description: 'page snoop' },
  { name: 'CD', bit: 89, width: 1, description: 'cache disable' },
  { name: 'EMTE', bit: 90, width: 1, description: 'extended memory type enable' },
  { name: 'EMT', bit: 91, width: 3, description: 'extended memory type' },
  { name: 'PWT', bit: 94, width: 1, description: 'page-level write-through' },
  { name: 'PCD', bit: 95, width: 1, description: 'page-level cache disable' },
  { name: 'PAT', bit: 96, width: 32, description: 'page attribute table' },
  { name: 'SRE', bit: 128, width: 1, description: 'supervisor requests enable', reservedUnless: 'SRS' },
  { name: 'ERE', bit: 129, width: 1, description: 'execute requests enable', reservedUnless: 'ERS' },
  { name: 'FSPM', bit: 130, width: 2, description: 'first-stage paging mode', values: { 0: '4-level, 48-bit', 1: '5-level, 57-bit' } },
  { name: 'WPE', bit: 132, width: 1, description: 'write protect enable for supervisor requests' },
  { name: 'EAFE', bit: 135, width: 1, description: 'extended accessed flag enable', reservedUnless: 'EAFS' },
  { name: 'FSPTPTR', bit: 140, width: 52, addressShift: 12, description: 'first-stage page table pointer' },
] as const);

// ---- second-stage paging entries ----

/*
 * Reserved bits follow QEMU 7.2's vtd_spte_rsvd tables, which are stricter than the spec for table entries:
 * SNP and TM are reserved in every table-pointing entry and legal only in leaves (SNP with snoop control or
 * scalable mode, TM with device TLBs). Feature names are ECAP field names; see config.enabledFeatures.
 */
const SECOND_STAGE_COMMON = [
  { name: 'R', bit: 0, width: 1, description: 'read' },
  { name: 'W', bit: 1, width: 1, description: 'write' },
  { name: 'X', bit: 2, width: 1, description: 'execute (with SSEE)' },
  { name: 'EMT', bit: 3, width: 3, description: 'extended memory type (leaf)' },
  { name: 'IPAT', bit: 6, width: 1, description: 'ignore PAT (leaf)' },
  { name: 'A', bit: 8, width: 1, description: 'accessed (with SSADE)' },
  { name: 'D', bit: 9, width: 1, description: 'dirty (leaf, with SSADE)' },
  { name: 'IGN10', bit: 10, width: 1, description: 'ignored' },
  { name: 'IGN52', bit: 52, width: 10, description: 'ignored' },
  { name: 'IGN63', bit: 63, width: 1, description: 'ignored' },
] as const;

const SECOND_STAGE_LEAF_ONLY = [
  { name: 'SNP', bit: 11, width: 1, description: 'snoop', reservedUnless: ['SC', 'SMTS'] },
  { name: 'TM', bit: 62, width: 1, description: 'transient mapping (reserved since spec 3.2)', reservedUnless: 'DT' },
] as const;

/** Entries at levels 2..3 with PS = 0: they point to the next table. */
export const SECOND_STAGE_TABLE_ENTRY = defineFields('second-stage table entry', 64, [
  ...SECOND_STAGE_COMMON,
  { name: 'PS', bit: 7, width: 1, description: 'page size: 1 makes this entry a leaf at levels 2 and 3' },
  { name: 'ADDR', bit: 12, width: 40, addressShift: 12, description: 'next table' },
] as const);

/** The top entry (level 4 or 5): always a table pointer, so bit 7 is reserved too. */
export const SECOND_STAGE_TOP_ENTRY = defineFields('second-stage PML4E/PML5E', 64, [
  ...SECOND_STAGE_COMMON,
  { name: 'ADDR', bit: 12, width: 40, addressShift: 12, description: 'next table' },
] as const);

/** Level-1 entries. */
export const SECOND_STAGE_4K_LEAF = defineFields('second-stage 4 KiB leaf', 64, [
  ...SECOND_STAGE_COMMON,
  ...SECOND_STAGE_LEAF_ONLY,
  { name: 'IGN7', bit: 7, width: 1, description: 'ignored' },
  { name: 'ADDR', bit: 12, width: 40, addressShift: 12, description: '4 KiB page' },
] as const);

export const SECOND_STAGE_2M_LEAF = defineFields('second-stage 2 MiB leaf', 64, [
  ...SECOND_STAGE_COMMON,
  ...SECOND_STAGE_LEAF_ONLY,
  { name: 'PS', bit: 7, width: 1, description: 'page size (1)' },
  { name: 'ADDR', bit: 21, width: 31, addressShift: 21, description: '2 MiB page' },
] as const);

export const SECOND_STAGE_1G_LEAF = defineFields('second-stage 1 GiB leaf', 64, [
  ...SECOND_STAGE_COMMON,
  ...SECOND_STAGE_LEAF_ONLY,
  { name: 'PS', bit: 7, width: 1, description: 'page size (1)' },
  { name: 'ADDR', bit: 30, width: 22, addressShift: 30, description: '1 GiB page' },
] as const);

// ---- first-stage paging entries (IA-32e format, as the CPU) ----

const FIRST_STAGE_COMMON = [
  { name: 'P', bit: 0, width: 1, description: 'present' },
  { name: 'RW', bit: 1, width: 1, description: 'read/write' },
  { name: 'US', bit: 2, width: 1, description: 'user/supervisor' },
  { name: 'PWT', bit: 3, width: 1, description: 'page-level write-through' },
  { name: 'PCD', bit: 4, width: 1, description: 'page-level cache disable' },
  { name: 'A', bit: 5, width: 1, description: 'accessed' },
  { name: 'IGN52', bit: 52, width: 11, description: 'ignored' },
  { name: 'XD', bit: 63, width: 1, description: 'execute disable' },
] as const;

export const FIRST_STAGE_TABLE_ENTRY = defineFields('first-stage table entry', 64, [
  ...FIRST_STAGE_COMMON,
  { name: 'IGN6', bit: 6, width: 1, description: 'ignored' },
  { name: 'PS', bit: 7, width: 1, description: 'page size: leaf at PDE and PDPE' },
  { name: 'IGN8', bit: 8, width: 2, description: 'ignored' },
  { name: 'EA', bit: 10, width: 1, description: 'extended accessed (set with A when the PASID entry has EAFE; else ignored)' },
  { name: 'IGN11', bit: 11, width: 1, description: 'ignored' },
  { name: 'ADDR', bit: 12, width: 40, addressShift: 12, description: 'next table' },
] as const);

/** PML4E and PML5E: bit 7 is reserved. */
export const FIRST_STAGE_TOP_ENTRY = defineFields('first-stage PML4E/PML5E', 64, [
  ...FIRST_STAGE_COMMON,
  { name: 'IGN6', bit: 6, width: 1, description: 'ignored' },
  { name: 'IGN8', bit: 8, width: 2, description: 'ignored' },
  { name: 'EA', bit: 10, width: 1, description: 'extended accessed (set with A when the PASID entry has EAFE; else ignored)' },
  { name: 'IGN11', bit: 11, width: 1, description: 'ignored' },
  { name: 'ADDR', bit: 12, width: 40, addressShift: 12, description: 'next table' },
] as const);

const FIRST_STAGE_LEAF_COMMON = [
  ...FIRST_STAGE_COMMON,
  { name: 'D', bit: 6, width: 1, description: 'dirty' },
  { name: 'G', bit: 8, width: 1, description: 'global' },
  { name: 'IGN9', bit: 9, width: 1, description: 'ignored' },
  { name: 'EA', bit: 10, width: 1, description: 'extended accessed (set with A when the PASID entry has EAFE; else ignored)' },
  { name: 'IGN11', bit: 11, width: 1, description: 'ignored' },
] as const;

export const FIRST_STAGE_4K_LEAF = defineFields('first-stage 4 KiB leaf', 64, [
  ...FIRST_STAGE_LEAF_COMMON,
  { name: 'PAT', bit: 7, width: 1, description: 'page attribute table index' },
  { name: 'ADDR', bit: 12, width: 40, addressShift: 12, description: '4 KiB page' },
] as const);

export const FIRST_STAGE_2M_LEAF = defineFields('first-stage 2 MiB leaf', 64, [
  ...FIRST_STAGE_LEAF_COMMON,
  { name: 'PS', bit: 7, width: 1, description: 'page size (1)' },
  { name: 'PAT', bit: 12, width: 1, description: 'page attribute table index' },
  { name: 'ADDR', bit: 21, width: 31, addressShift: 21, description: '2 MiB page' },
] as const);

export const FIRST_STAGE_1G_LEAF = defineFields('first-stage 1 GiB leaf', 64, [
  ...FIRST_STAGE_LEAF_COMMON,
  { name: 'PS', bit: 7, width: 1, description: 'page size (1)' },
  { name: 'PAT', bit: 12, width: 1, description: 'page attribute table index' },
  { name: 'ADDR', bit: 30, width: 22, addressShift: 30, description: '1 GiB page' },
] as const);

// ---- interrupt remapping ----

/** Remapped format (IM = 0). Posted format (IM = 1) lays out bits 127:16 differently. */
export const IRTE = defineFields('IRTE (remapped format)', 128, [
  { name: 'P', bit: 0, width: 1, description: 'present' },
  { name: 'FPD', bit: 1, width: 1, description: 'fault processing disable' },
  { name: 'DM', bit: 2, width: 1, description: 'destination mode', values: { 0: 'physical', 1: 'logical' } },
  { name: 'RH', bit: 3, width: 1, description: 'redirection hint' },
  { name: 'TM', bit: 4, width: 1, description: 'trigger mode', values: { 0: 'edge', 1: 'level' } },
  {
    name: 'DLM',
    bit: 5,
    width: 3,
    description: 'delivery mode',
    values: { 0: 'fixed', 1: 'lowest priority', 2: 'SMI', 4: 'NMI', 5: 'INIT', 7: 'ExtINT' },
  },
  { name: 'AVAIL', bit: 8, width: 4, description: 'available to software' },
  { name: 'IM', bit: 15, width: 1, description: 'IRTE mode', values: { 0: 'remapped', 1: 'posted' } },
  { name: 'V', bit: 16, width: 8, description: 'vector' },
  { name: 'DST', bit: 32, width: 32, description: 'destination id (xAPIC: bits 47:40 only; x2APIC with IRTA.EIME: all)' },
  { name: 'SID', bit: 64, width: 16, description: 'source id to verify' },
  { name: 'SQ', bit: 80, width: 2, description: 'source-id qualifier: bus/devfn bits ignored' },
  { name: 'SVT', bit: 82, width: 2, description: 'source validation type', values: { 0: 'none', 1: 'SID/SQ', 2: 'bus range' } },
] as const);

// ---- invalidation descriptors (128-bit; in 256-bit queues bits 255:128 are reserved) ----

const TYPE_FIELDS = [
  { name: 'TYPE_LO', bit: 0, width: 4, description: 'descriptor type bits 3:0' },
  { name: 'TYPE_HI', bit: 9, width: 3, description: 'descriptor type bits 6:4' },
] as const;

export const CONTEXT_CACHE_INVALIDATE = defineFields('context-cache invalidate', 128, [
  ...TYPE_FIELDS,
  { name: 'G', bit: 4, width: 2, description: 'granularity', values: { 1: 'global', 2: 'domain', 3: 'device' } },
  { name: 'DID', bit: 16, width: 16, description: 'domain id' },
  { name: 'SID', bit: 32, width: 16, description: 'source id' },
  { name: 'FM', bit: 48, width: 2, description: 'function mask' },
] as const);

export const IOTLB_INVALIDATE = defineFields('IOTLB invalidate', 128, [
  ...TYPE_FIELDS,
  { name: 'G', bit: 4, width: 2, description: 'granularity', values: { 1: 'global', 2: 'domain', 3: 'page' } },
  { name: 'DW', bit: 6, width: 1, description: 'drain writes' },
  { name: 'DR', bit: 7, width: 1, description: 'drain reads' },
  { name: 'DID', bit: 16, width: 16, description: 'domain id' },
  { name: 'AM', bit: 64, width: 6, description: 'address mask: 2^AM pages' },
  { name: 'IH', bit: 70, width: 1, description: 'invalidation hint: leaf entries only' },
  { name: 'ADDR', bit: 76, width: 52, addressShift: 12, description: 'page address' },
] as const);

export const DEVICE_TLB_INVALIDATE = defineFields('device-TLB invalidate', 128, [
  ...TYPE_FIELDS,
  { name: 'PFSID_LO', bit: 12, width: 4, description: 'physical function source id bits 3:0' },
  { name: 'MIP', bit: 16, width: 5, description: 'max invalidations pending' },
  { name: 'SID', bit: 32, width: 16, description: 'source id of the device' },
  { name: 'PFSID_HI', bit: 52, width: 12, description: 'physical function source id bits 15:4' },
  { name: 'S', bit: 64, width: 1, description: 'size: range encoded in ADDR' },
  { name: 'ADDR', bit: 76, width: 52, addressShift: 12, description: 'address' },
] as const);

export const INTERRUPT_ENTRY_CACHE_INVALIDATE = defineFields('interrupt entry cache invalidate', 128, [
  ...TYPE_FIELDS,
  { name: 'G', bit: 4, width: 1, description: 'granularity', values: { 0: 'global', 1: 'index' } },
  { name: 'IM', bit: 27, width: 5, description: 'index mask: 2^IM entries' },
  { name: 'IIDX', bit: 32, width: 16, description: 'interrupt index' },
] as const);

export const INVALIDATION_WAIT = defineFields('invalidation wait', 128, [
  ...TYPE_FIELDS,
  { name: 'IF', bit: 4, width: 1, description: 'interrupt on completion' },
  { name: 'SW', bit: 5, width: 1, description: 'status write' },
  { name: 'FN', bit: 6, width: 1, description: 'fence' },
  { name: 'PD', bit: 7, width: 1, description: 'page request drain', reservedUnless: 'PDS' },
  { name: 'SDATA', bit: 32, width: 32, description: 'status data' },
  // Bits 127:116 would be address bits 63:52, beyond any host address width.
  { name: 'SADDR', bit: 66, width: 50, addressShift: 2, description: 'status address (dword aligned)' },
] as const);

export const PASID_IOTLB_INVALIDATE = defineFields('PASID-based IOTLB invalidate', 128, [
  ...TYPE_FIELDS,
  { name: 'G', bit: 4, width: 2, description: 'granularity', values: { 2: 'all of PASID', 3: 'page in PASID' } },
  { name: 'DID', bit: 16, width: 16, description: 'domain id' },
  { name: 'PASID', bit: 32, width: 20, description: 'PASID' },
  { name: 'AM', bit: 64, width: 6, description: 'address mask: 2^AM pages' },
  { name: 'IH', bit: 70, width: 1, description: 'invalidation hint: leaf entries only' },
  { name: 'ADDR', bit: 76, width: 52, addressShift: 12, description: 'page address' },
] as const);

export const PASID_CACHE_INVALIDATE = defineFields('PASID cache invalidate', 128, [
  ...TYPE_FIELDS,
  { name: 'G', bit: 4, width: 2, description: 'granularity', values: { 0: 'domain', 1: 'PASID', 3: 'global' } },
  { name: 'DID', bit: 16, width: 16, description: 'domain id' },
  { name: 'PASID', bit: 32, width: 20, description: 'PASID' },
] as const);

export const PASID_DEVICE_TLB_INVALIDATE = defineFields('PASID-based device-TLB invalidate', 128, [
  ...TYPE_FIELDS,
  { name: 'MIP', bit: 4, width: 5, description: 'max invalidations pending' },
  { name: 'PFSID_LO', bit: 12, width: 4, description: 'physical function source id bits 3:0' },
  { name: 'SID', bit: 16, width: 16, description: 'source id of the device' },
  { name: 'PASID', bit: 32, width: 20, description: 'PASID' },
  { name: 'PFSID_HI', bit: 52, width: 12, description: 'physical function source id bits 15:4' },
  { name: 'G', bit: 64, width: 1, description: 'global: all PASIDs' },
  { name: 'S', bit: 75, width: 1, description: 'size: range encoded in ADDR' },
  { name: 'ADDR', bit: 76, width: 52, addressShift: 12, description: 'address' },
] as const);

export const PAGE_GROUP_RESPONSE = defineFields('page group response', 128, [
  ...TYPE_FIELDS,
  { name: 'PV', bit: 4, width: 1, description: 'PASID present' },
  { name: 'PDP', bit: 5, width: 1, description: 'private data present (in bits 255:128)' },
  { name: 'RC', bit: 12, width: 4, description: 'response code', values: { 0: 'success', 1: 'invalid request', 15: 'failure' } },
  { name: 'RID', bit: 16, width: 16, description: 'requester id' },
  { name: 'PASID', bit: 32, width: 20, description: 'PASID' },
  { name: 'LPIG', bit: 66, width: 1, description: 'last page in group' },
  { name: 'PRGI', bit: 67, width: 9, description: 'page request group index' },
] as const);

export interface DescriptorKind<N extends string = DescriptorName> {
  readonly type: number;
  readonly name: N;
  readonly fields: FieldTable;
  /** A scalable-mode descriptor: valid only in a 256-bit queue (IQA.DW = 1); in a 128-bit queue it is an IQE. */
  readonly wideOnly: boolean;
}

/** Keeps each descriptor's name as a literal type, so DescriptorName is derived from the table itself. */
function descriptorRows<const K extends readonly DescriptorKind<string>[]>(kinds: K): K {
  return kinds;
}

const DESCRIPTOR_ROWS = descriptorRows([
  { type: 1, name: 'context-cache', fields: CONTEXT_CACHE_INVALIDATE, wideOnly: false },
  { type: 2, name: 'IOTLB', fields: IOTLB_INVALIDATE, wideOnly: false },
  { type: 3, name: 'device-TLB', fields: DEVICE_TLB_INVALIDATE, wideOnly: false },
  { type: 4, name: 'interrupt entry cache', fields: INTERRUPT_ENTRY_CACHE_INVALIDATE, wideOnly: false },
  { type: 5, name: 'wait', fields: INVALIDATION_WAIT, wideOnly: false },
  { type: 6, name: 'PASID-based IOTLB', fields: PASID_IOTLB_INVALIDATE, wideOnly: true },
  { type: 7, name: 'PASID cache', fields: PASID_CACHE_INVALIDATE, wideOnly: true },
  { type: 8, name: 'PASID-based device-TLB', fields: PASID_DEVICE_TLB_INVALIDATE, wideOnly: true },
  { type: 9, name: 'page group response', fields: PAGE_GROUP_RESPONSE, wideOnly: true },
]);

/** Every descriptor name the table has, as a type: a misspelt descriptor name is a compile error. */
export type DescriptorName = (typeof DESCRIPTOR_ROWS)[number]['name'];

/** Descriptor types by number, the way the queue decoder dispatches. */
export const INVALIDATION_DESCRIPTORS: readonly DescriptorKind[] = DESCRIPTOR_ROWS;

const descriptorsByType = new Map(INVALIDATION_DESCRIPTORS.map((d) => [d.type, d]));
const descriptorsByName = new Map(INVALIDATION_DESCRIPTORS.map((d) => [d.name, d]));
const TYPE_LO: Field = CONTEXT_CACHE_INVALIDATE.f.TYPE_LO;
const TYPE_HI: Field = CONTEXT_CACHE_INVALIDATE.f.TYPE_HI;
const TYPE_LO_BITS = 4;

/** The descriptor type from its first dword(s): bits 3:0 plus bits 11:9 as bits 6:4. */
export function descriptorType(words: ArrayLike<number>, base = 0): number {
  return getField(words, TYPE_LO, base) | (getField(words, TYPE_HI, base) << TYPE_LO_BITS);
}

/** The layout for a descriptor type, or undefined for types the unit does not know (an IQE for the guest). */
export function descriptorKind(type: number): DescriptorKind | undefined {
  return descriptorsByType.get(type);
}

/** The layout of the descriptor named `name`; every DescriptorName is in the table. */
export function descriptorKindNamed(name: DescriptorName): DescriptorKind {
  return descriptorsByName.get(name)!;
}
