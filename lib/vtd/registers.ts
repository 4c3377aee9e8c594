/** The DMAR unit's register file and register field layouts, each described once (offsets, masks, fields). */

import { ViommuError } from '../errors';
import { defineFields, type FieldTable } from './bitfield';

// ---- capability registers ----

export const CAP_FIELDS = defineFields('CAP', 64, [
  { name: 'ND', bit: 0, width: 3, description: 'number of domains supported (2^(4+2*ND))' },
  { name: 'AFL', bit: 3, width: 1, description: 'advanced fault logging' },
  { name: 'RWBF', bit: 4, width: 1, description: 'required write-buffer flushing' },
  { name: 'PLMR', bit: 5, width: 1, description: 'protected low-memory region' },
  { name: 'PHMR', bit: 6, width: 1, description: 'protected high-memory region' },
  { name: 'CM', bit: 7, width: 1, description: 'caching mode: not-present entries may be cached' },
  {
    name: 'SAGAW',
    bit: 8,
    width: 5,
    description: 'supported adjusted guest address widths (bit 1: 39, 2: 48, 3: 57)',
    values: { 2: '39-bit', 4: '48-bit', 6: '39- and 48-bit', 8: '57-bit', 14: '39-, 48- and 57-bit' },
  },
  { name: 'MGAW', bit: 16, width: 6, description: 'maximum guest address width minus 1' },
  { name: 'ZLR', bit: 22, width: 1, description: 'zero-length read' },
  { name: 'FRO', bit: 24, width: 10, description: 'fault-recording register offset / 16' },
  { name: 'SLLPS', bit: 34, width: 4, description: 'second-stage large pages (bit 0: 2 MiB, 1: 1 GiB)' },
  { name: 'PSI', bit: 39, width: 1, description: 'page-selective invalidation' },
  { name: 'NFR', bit: 40, width: 8, description: 'number of fault-recording registers minus 1' },
  { name: 'MAMV', bit: 48, width: 6, description: 'maximum address mask value for page-selective invalidation' },
  { name: 'DWD', bit: 54, width: 1, description: 'write draining' },
  { name: 'DRD', bit: 55, width: 1, description: 'read draining' },
  { name: 'FS1GP', bit: 56, width: 1, description: 'first-stage 1 GiB pages' },
  { name: 'PI', bit: 59, width: 1, description: 'posted interrupts' },
  { name: 'FS5LP', bit: 60, width: 1, description: 'first-stage 5-level paging' },
  { name: 'ESIRTPS', bit: 62, width: 1, description: 'SIRTP also invalidates the interrupt entry cache' },
  { name: 'ESRTPS', bit: 63, width: 1, description: 'SRTP also invalidates context, PASID and IOTLB caches' },
] as const);

export const ECAP_FIELDS = defineFields('ECAP', 64, [
  { name: 'C', bit: 0, width: 1, description: 'page-walk coherency' },
  { name: 'QI', bit: 1, width: 1, description: 'queued invalidation' },
  { name: 'DT', bit: 2, width: 1, description: 'device TLB' },
  { name: 'IR', bit: 3, width: 1, description: 'interrupt remapping' },
  { name: 'EIM', bit: 4, width: 1, description: 'extended interrupt mode (x2APIC, 32-bit destinations)' },
  { name: 'PT', bit: 6, width: 1, description: 'pass-through' },
  { name: 'SC', bit: 7, width: 1, description: 'snoop control' },
  { name: 'IRO', bit: 8, width: 10, description: 'IOTLB register offset / 16' },
  { name: 'MHMV', bit: 20, width: 4, description: 'maximum handle mask value (interrupt entry cache)' },
  { name: 'MTS', bit: 25, width: 1, description: 'memory type' },
  { name: 'NEST', bit: 26, width: 1, description: 'nested translation' },
  { name: 'PRS', bit: 29, width: 1, description: 'page requests' },
  { name: 'ERS', bit: 30, width: 1, description: 'execute requests' },
  { name: 'SRS', bit: 31, width: 1, description: 'supervisor requests' },
  { name: 'NWFS', bit: 33, width: 1, description: 'no write flag' },
  { name: 'EAFS', bit: 34, width: 1, description: 'extended accessed flag' },
  { name: 'PSS', bit: 35, width: 5, description: 'PASID size supported minus 1' },
  { name: 'PASID', bit: 40, width: 1, description: 'process address space IDs' },
  { name: 'DIT', bit: 41, width: 1, description: 'device-TLB invalidation throttling' },
  { name: 'PDS', bit: 42, width: 1, description: 'page-request drain' },
  { name: 'SMTS', bit: 43, width: 1, description: 'scalable-mode translation' },
  { name: 'VCS', bit: 44, width: 1, description: 'virtual command interface' },
  { name: 'SLADS', bit: 45, width: 1, description: 'second-stage accessed/dirty' },
  { name: 'SSTS', bit: 46, width: 1, description: 'second-stage translation (QEMU 7.2: SLTS)' },
  { name: 'FSTS', bit: 47, width: 1, description: 'first-stage translation' },
  { name: 'SMPWC', bit: 48, width: 1, description: 'scalable-mode page-walk coherency' },
  { name: 'RPRIVS', bit: 53, width: 1, description: 'RID_PRIV' },
] as const);

export const VCCAP_FIELDS = defineFields('VCCAP', 64, [{ name: 'PAS', bit: 0, width: 1, description: 'PASID allocation commands offered' }] as const);

/** VT-d 3.3 layout of the virtual command register. */
export const VCMD_FIELDS = defineFields('VCMD', 64, [
  { name: 'CMD', bit: 0, width: 8, description: 'command', values: { 1: 'allocate PASID', 2: 'free PASID' } },
  { name: 'OPERAND', bit: 16, width: 48, description: 'operand (free: the PASID)' },
] as const);

/** VT-d 3.3 layout of the virtual command response register. */
export const VCRSP_FIELDS = defineFields('VCRSP', 64, [
  { name: 'IP', bit: 0, width: 1, description: 'command in progress' },
  {
    name: 'SC',
    bit: 1,
    width: 7,
    description: 'status code',
    values: { 0: 'success', 1: 'unsupported command', 16: 'no PASID available / PASID not allocated' },
  },
  { name: 'RESULT', bit: 16, width: 48, description: 'result (allocate: the PASID)' },
] as const);

// ---- command, status and pointer registers ----

export const GCMD_FIELDS = defineFields('GCMD', 32, [
  { name: 'CFI', bit: 23, width: 1, description: 'compatibility format interrupts allowed' },
  { name: 'SIRTP', bit: 24, width: 1, description: 'set interrupt remapping table pointer' },
  { name: 'IRE', bit: 25, width: 1, description: 'interrupt remapping enable' },
  { name: 'QIE', bit: 26, width: 1, description: 'queued invalidation enable' },
  { name: 'WBF', bit: 27, width: 1, description: 'write buffer flush' },
  { name: 'EAFL', bit: 28, width: 1, description: 'enable advanced fault logging' },
  { name: 'SFL', bit: 29, width: 1, description: 'set fault log' },
  { name: 'SRTP', bit: 30, width: 1, description: 'set root table pointer' },
  { name: 'TE', bit: 31, width: 1, description: 'translation enable' },
] as const);

export const GSTS_FIELDS = defineFields('GSTS', 32, [
  { name: 'CFIS', bit: 23, width: 1, description: 'compatibility format interrupts allowed' },
  { name: 'IRTPS', bit: 24, width: 1, description: 'interrupt remapping table pointer set' },
  { name: 'IRES', bit: 25, width: 1, description: 'interrupt remapping enabled' },
  { name: 'QIES', bit: 26, width: 1, description: 'queued invalidation enabled' },
  { name: 'WBFS', bit: 27, width: 1, description: 'write buffer flush pending' },
  { name: 'AFLS', bit: 28, width: 1, description: 'advanced fault logging enabled' },
  { name: 'FLS', bit: 29, width: 1, description: 'fault log set' },
  { name: 'RTPS', bit: 30, width: 1, description: 'root table pointer set' },
  { name: 'TES', bit: 31, width: 1, description: 'translation enabled' },
] as const);

export const RTADDR_FIELDS = defineFields('RTADDR', 64, [
  {
    name: 'TTM',
    bit: 10,
    width: 2,
    description: 'translation table mode (QEMU calls bit 10 SMT)',
    values: { 0: 'legacy', 1: 'scalable', 3: 'abort DMA' },
  },
  { name: 'RTA', bit: 12, width: 52, addressShift: 12, description: 'root table address' },
] as const);

export const CCMD_FIELDS = defineFields('CCMD', 64, [
  { name: 'DID', bit: 0, width: 16, description: 'domain id' },
  { name: 'SID', bit: 16, width: 16, description: 'source id' },
  { name: 'FM', bit: 32, width: 2, description: 'function mask' },
  { name: 'CAIG', bit: 59, width: 2, description: 'actual invalidation granularity', values: { 1: 'global', 2: 'domain', 3: 'device' } },
  { name: 'CIRG', bit: 61, width: 2, description: 'requested invalidation granularity', values: { 1: 'global', 2: 'domain', 3: 'device' } },
  { name: 'ICC', bit: 63, width: 1, description: 'invalidate context cache (busy while set)' },
] as const);

export const FSTS_FIELDS = defineFields('FSTS', 32, [
  { name: 'PFO', bit: 0, width: 1, description: 'primary fault overflow (write 1 to clear)' },
  { name: 'PPF', bit: 1, width: 1, description: 'primary pending fault (any FRCD.F set)' },
  { name: 'AFO', bit: 2, width: 1, description: 'advanced fault overflow' },
  { name: 'APF', bit: 3, width: 1, description: 'advanced pending fault' },
  { name: 'IQE', bit: 4, width: 1, description: 'invalidation queue error (write 1 to clear)' },
  { name: 'ICE', bit: 5, width: 1, description: 'invalidation completion error' },
  { name: 'ITE', bit: 6, width: 1, description: 'invalidation time-out error' },
  { name: 'PRO', bit: 7, width: 1, description: 'page request overflow (older specs)' },
  { name: 'FRI', bit: 8, width: 8, description: 'fault record index' },
] as const);

export const EVENT_CONTROL_FIELDS = defineFields('FECTL/IECTL/PECTL', 32, [
  { name: 'IP', bit: 30, width: 1, description: 'interrupt pending' },
  { name: 'IM', bit: 31, width: 1, description: 'interrupt mask' },
] as const);

export const IQA_FIELDS = defineFields('IQA', 64, [
  { name: 'QS', bit: 0, width: 3, description: 'queue size: 2^QS pages of 4 KiB' },
  { name: 'DW', bit: 11, width: 1, description: 'descriptor width (1: 256-bit, needs ECAP.SMTS)', values: { 0: '128-bit', 1: '256-bit' } },
  { name: 'IQA', bit: 12, width: 52, addressShift: 12, description: 'invalidation queue base address' },
] as const);

export const QUEUE_POINTER_FIELDS = defineFields('IQH/IQT', 64, [
  { name: 'QH', bit: 4, width: 15, description: 'descriptor offset: index << 4 (128-bit) or << 5 (256-bit, bit 4 must be 0)' },
] as const);

export const ICS_FIELDS = defineFields('ICS', 32, [
  { name: 'IWC', bit: 0, width: 1, description: 'invalidation wait descriptor complete (write 1 to clear)' },
] as const);

export const IRTA_FIELDS = defineFields('IRTA', 64, [
  { name: 'S', bit: 0, width: 4, description: 'table size: 2^(S+1) entries' },
  { name: 'EIME', bit: 11, width: 1, description: 'extended interrupt mode enable (x2APIC destinations)' },
  { name: 'IRTA', bit: 12, width: 52, addressShift: 12, description: 'interrupt remapping table address' },
] as const);

export const IOTLB_FIELDS = defineFields('IOTLB', 64, [
  { name: 'DID', bit: 32, width: 16, description: 'domain id' },
  { name: 'DW', bit: 48, width: 1, description: 'drain writes' },
  { name: 'DR', bit: 49, width: 1, description: 'drain reads' },
  { name: 'IAIG', bit: 57, width: 2, description: 'actual invalidation granularity', values: { 1: 'global', 2: 'domain', 3: 'page' } },
  { name: 'IIRG', bit: 60, width: 2, description: 'requested invalidation granularity', values: { 1: 'global', 2: 'domain', 3: 'page' } },
  { name: 'IVT', bit: 63, width: 1, description: 'invalidate IOTLB (busy while set)' },
] as const);

export const IVA_FIELDS = defineFields('IVA', 64, [
  { name: 'AM', bit: 0, width: 6, description: 'address mask: invalidate 2^AM pages' },
  { name: 'IH', bit: 6, width: 1, description: 'invalidation hint: leaf entries only' },
  { name: 'ADDR', bit: 12, width: 52, addressShift: 12, description: 'page address' },
] as const);

export const FRCD_LO_FIELDS = defineFields('FRCD.lo', 64, [
  { name: 'FI', bit: 12, width: 52, addressShift: 12, description: 'fault information: faulting page address' },
] as const);

export const FRCD_HI_FIELDS = defineFields('FRCD.hi', 64, [
  { name: 'SID', bit: 0, width: 16, description: 'source id of the faulting request' },
  { name: 'PRIV', bit: 29, width: 1, description: 'privileged (supervisor) request' },
  { name: 'EXE', bit: 30, width: 1, description: 'execute request' },
  { name: 'PP', bit: 31, width: 1, description: 'PASID present' },
  { name: 'FR', bit: 32, width: 8, description: 'fault reason' },
  { name: 'PV', bit: 40, width: 20, description: 'PASID value' },
  { name: 'AT', bit: 60, width: 2, description: 'address type' },
  { name: 'T', bit: 62, width: 1, description: 'type: 0 write, 1 read', values: { 0: 'write', 1: 'read' } },
  { name: 'F', bit: 63, width: 1, description: 'fault recorded (write 1 to clear)' },
] as const);

export const MSI_DATA_FIELDS = defineFields('FEDATA/IEDATA/PEDATA', 32, [
  { name: 'IMD', bit: 0, width: 16, description: 'interrupt message data' },
  { name: 'EIMD', bit: 16, width: 16, description: 'extended message data (with ECAP.EIM)' },
] as const);

export const MSI_ADDRESS_FIELDS = defineFields('FEADDR/IEADDR/PEADDR', 32, [
  { name: 'MA', bit: 2, width: 30, description: 'message address bits 31:2' },
] as const);

// ---- the register file ----

/** Capability values that registers take their reset value from; computed from the configuration. */
export interface CapabilityValues {
  readonly cap: bigint;
  readonly ecap: bigint;
  readonly vccap: bigint;
}

export type RegisterWidth = 32 | 64;

export interface RegisterSpec {
  readonly name: RegisterName;
  readonly offset: number;
  readonly width: RegisterWidth;
  /** A constant, or the capability register the value comes from. */
  readonly reset: bigint | keyof CapabilityValues;
  /** Bits software can change. */
  readonly writable: bigint;
  /** Bits software clears by writing 1 (they are not in `writable`). */
  readonly writeOneToClear: bigint;
  /** Bits that always read as 0 although they are written (command registers). */
  readonly writeOnly: bigint;
  /** The register exists only with this ECAP feature; otherwise it reads 0 and ignores writes. */
  readonly presentWith?: 'PRS' | 'VCS';
  readonly fields?: FieldTable;
  readonly notes: string;
}

/** QEMU 7.2 uses one fault-recording register; CAP.NFR and CAP.FRO are derived from these. */
const FAULT_RECORD_INDICES = [0] as const;
export const FAULT_RECORD_COUNT = FAULT_RECORD_INDICES.length;
export const FAULT_RECORD_OFFSET = 0x220;
/** ECAP.IRO is derived from this (QEMU: IVA at 0xf0, IOTLB at 0xf8). */
export const IOTLB_REGISTERS_OFFSET = 0xf0;
/** The MMIO window the unit decodes; the virtual-command registers sit near its end. */
export const REGISTER_WINDOW_SIZE = 0x1000;

type Row<N extends string = string> = readonly [
  name: N,
  offset: number,
  width: RegisterWidth,
  reset: bigint | keyof CapabilityValues,
  writable: bigint,
  writeOneToClear: bigint,
  writeOnly: bigint,
  fields: FieldTable | undefined,
  notes: string,
];

/** Keeps each row's name as a literal type, so the names below are derived from the rows themselves. */
function registerRows<const R extends readonly Row[]>(rows: R): R {
  return rows;
}

const fixedRows = registerRows([
  // name        offset width reset      writable               W1C                    write-only
  ['VER', 0x00, 32, 0x10n, 0n, 0n, 0n, undefined, 'architecture version 1.0'],
  ['CAP', 0x08, 64, 'cap', 0n, 0n, 0n, CAP_FIELDS, 'capabilities, read-only'],
  ['ECAP', 0x10, 64, 'ecap', 0n, 0n, 0n, ECAP_FIELDS, 'extended capabilities, read-only'],
  ['GCMD', 0x18, 32, 0n, 0xff800000n, 0n, 0xff800000n, GCMD_FIELDS, 'commands; reads 0; the unit mirrors effects into GSTS'],
  ['GSTS', 0x1c, 32, 0n, 0n, 0n, 0n, GSTS_FIELDS, 'status, set by the unit'],
  ['RTADDR', 0x20, 64, 0n, 0xfffffffffffffc00n, 0n, 0n, RTADDR_FIELDS, 'latched by GCMD.SRTP; QEMU reads back the latched value'],
  ['CCMD', 0x28, 64, 0n, 0xe0000003ffffffffn, 0n, 0x3ffff0000n, CCMD_FIELDS, 'acts on a 64-bit write or a write of the upper dword'],
  ['FSTS', 0x34, 32, 0n, 0n, 0x11n, 0n, FSTS_FIELDS, 'PFO and IQE are W1C; PPF and FRI are kept by the unit'],
  ['FECTL', 0x38, 32, 0x80000000n, 0x80000000n, 0n, 0n, EVENT_CONTROL_FIELDS, 'IM resets to 1; IP is set by the unit'],
  ['FEDATA', 0x3c, 32, 0n, 0x0000ffffn, 0n, 0n, MSI_DATA_FIELDS, 'fault event MSI data'],
  ['FEADDR', 0x40, 32, 0n, 0xfffffffcn, 0n, 0n, MSI_ADDRESS_FIELDS, 'fault event MSI address'],
  ['FEUADDR', 0x44, 32, 0n, 0n, 0n, 0n, undefined, 'QEMU: reserved-zero even with EIM (spec: writable with ECAP.EIM)'],
  ['AFLOG', 0x58, 64, 0n, 0n, 0n, 0n, undefined, 'advanced fault log: not offered, reads 0'],
  ['PMEN', 0x64, 32, 0n, 0n, 0n, 0n, undefined, 'protected memory: CAP.PLMR/PHMR are 0, reads 0'],
  ['PLMBASE', 0x68, 32, 0n, 0n, 0n, 0n, undefined, 'protected low-memory base, reads 0'],
  ['PLMLIMIT', 0x6c, 32, 0n, 0n, 0n, 0n, undefined, 'protected low-memory limit, reads 0'],
  ['PHMBASE', 0x70, 64, 0n, 0n, 0n, 0n, undefined, 'protected high-memory base, reads 0'],
  ['PHMLIMIT', 0x78, 64, 0n, 0n, 0n, 0n, undefined, 'protected high-memory limit, reads 0'],
  ['IQH', 0x80, 64, 0n, 0n, 0n, 0n, QUEUE_POINTER_FIELDS, 'queue head, advanced by the unit'],
  ['IQT', 0x88, 64, 0n, 0x7fff0n, 0n, 0n, QUEUE_POINTER_FIELDS, 'queue tail; a write makes the unit fetch'],
  ['IQA', 0x90, 64, 0n, 0xfffffffffffff807n, 0n, 0n, IQA_FIELDS, 'QEMU 7.2 reads back base | QS, dropping DW'],
  ['ICS', 0x9c, 32, 0n, 0n, 0x1n, 0n, ICS_FIELDS, 'IWC is W1C'],
  ['IECTL', 0xa0, 32, 0x80000000n, 0x80000000n, 0n, 0n, EVENT_CONTROL_FIELDS, 'IM resets to 1; IP is set by the unit'],
  ['IEDATA', 0xa4, 32, 0n, 0xffffffffn, 0n, 0n, MSI_DATA_FIELDS, 'invalidation event MSI data'],
  ['IEADDR', 0xa8, 32, 0n, 0xfffffffcn, 0n, 0n, MSI_ADDRESS_FIELDS, 'invalidation event MSI address'],
  ['IEUADDR', 0xac, 32, 0n, 0n, 0n, 0n, undefined, 'QEMU: reserved-zero even with EIM (spec: writable with ECAP.EIM)'],
  ['IRTA', 0xb8, 64, 0n, 0xfffffffffffff80fn, 0n, 0n, IRTA_FIELDS, 'latched by GCMD.SIRTP'],
  ['IVA', IOTLB_REGISTERS_OFFSET, 64, 0n, 0xfffffffffffff07fn, 0n, 0xfffffffffffff07fn, IVA_FIELDS, 'page-selective invalidation address; reads 0'],
  ['IOTLB', IOTLB_REGISTERS_OFFSET + 8, 64, 0n, 0xb003ffff00000000n, 0n, 0n, IOTLB_FIELDS, 'acts on a 64-bit write or a write of the upper dword'],
]);

/** Only with ECAP.PRS (QEMU 7.2 has none): masks follow the spec. */
const pageRequestRows = registerRows([
  ['PQH', 0xc0, 64, 0n, 0x7ffe0n, 0n, 0n, undefined, 'page request queue head (bits 18:5)'],
  ['PQT', 0xc8, 64, 0n, 0n, 0n, 0n, undefined, 'page request queue tail, advanced by the unit'],
  ['PQA', 0xd0, 64, 0n, 0xfffffffffffff007n, 0n, 0n, undefined, 'page request queue base and size'],
  ['PRS', 0xdc, 32, 0n, 0n, 0x3n, 0n, undefined, 'PPR and PRO are W1C'],
  ['PECTL', 0xe0, 32, 0x80000000n, 0x80000000n, 0n, 0n, EVENT_CONTROL_FIELDS, 'IM resets to 1'],
  ['PEDATA', 0xe4, 32, 0n, 0xffffffffn, 0n, 0n, MSI_DATA_FIELDS, 'page request event MSI data'],
  ['PEADDR', 0xe8, 32, 0n, 0xfffffffcn, 0n, 0n, MSI_ADDRESS_FIELDS, 'page request event MSI address'],
  ['PEUADDR', 0xec, 32, 0n, 0n, 0n, 0n, undefined, 'page request event MSI upper address'],
]);

/** Spec 3.3 layout; only with ECAP.VCS (QEMU never offers it). */
const virtualCommandRows = registerRows([
  ['VCMD', 0xe00, 64, 0n, 0xffffffffffffffffn, 0n, 0n, VCMD_FIELDS, 'command 7:0, operand from bit 16; a write runs the command'],
  ['VCRSP', 0xe10, 64, 0n, 0n, 0n, 0n, VCRSP_FIELDS, 'IP bit 0, status 7:1, result from bit 16; set by the unit'],
  ['VCCAP', 0xe30, 64, 'vccap', 0n, 0n, 0n, VCCAP_FIELDS, 'virtual command capabilities'],
]);

const memoryTypeFixedRows = registerRows([
  ['MTRRCAP', 0x100, 64, 0n, 0n, 0n, 0n, undefined, 'ECAP.MTS is 0: MTRRs read 0'],
  ['MTRRDEF', 0x108, 64, 0n, 0n, 0n, 0n, undefined, 'reads 0'],
  ['MTRR_FIX64K_00000', 0x120, 64, 0n, 0n, 0n, 0n, undefined, 'reads 0'],
  ['MTRR_FIX16K_80000', 0x128, 64, 0n, 0n, 0n, 0n, undefined, 'reads 0'],
  ['MTRR_FIX16K_A0000', 0x130, 64, 0n, 0n, 0n, 0n, undefined, 'reads 0'],
]);
const MTRR_FIXED_4K_BASES = ['C0000', 'C8000', 'D0000', 'D8000', 'E0000', 'E8000', 'F0000', 'F8000'] as const;
const MTRR_VARIABLE_INDICES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] as const;
type MtrrVariableIndex = (typeof MTRR_VARIABLE_INDICES)[number];
type MemoryTypeRegisterName =
  | (typeof memoryTypeFixedRows)[number][0]
  | `MTRR_FIX4K_${(typeof MTRR_FIXED_4K_BASES)[number]}`
  | `MTRR_PHYSBASE${MtrrVariableIndex}`
  | `MTRR_PHYSMASK${MtrrVariableIndex}`;

function memoryTypeRows(): Row<MemoryTypeRegisterName>[] {
  const rows: Row<MemoryTypeRegisterName>[] = [...memoryTypeFixedRows];
  MTRR_FIXED_4K_BASES.forEach((base, i) => rows.push([`MTRR_FIX4K_${base}`, 0x138 + 8 * i, 64, 0n, 0n, 0n, 0n, undefined, 'reads 0']));
  for (const n of MTRR_VARIABLE_INDICES) {
    rows.push([`MTRR_PHYSBASE${n}`, 0x180 + 16 * n, 64, 0n, 0n, 0n, 0n, undefined, 'reads 0']);
    rows.push([`MTRR_PHYSMASK${n}`, 0x188 + 16 * n, 64, 0n, 0n, 0n, 0n, undefined, 'reads 0']);
  }
  return rows;
}

export type FaultRecordHalf = 'LO' | 'HI';
type FaultRecordRegisterName = `FRCD${(typeof FAULT_RECORD_INDICES)[number]}_${FaultRecordHalf}`;

function faultRecordRows(): Row<FaultRecordRegisterName>[] {
  const rows: Row<FaultRecordRegisterName>[] = [];
  for (const n of FAULT_RECORD_INDICES) {
    const offset = FAULT_RECORD_OFFSET + 16 * n;
    rows.push([`FRCD${n}_LO`, offset, 64, 0n, 0n, 0n, 0n, FRCD_LO_FIELDS, 'fault record: page address']);
    rows.push([`FRCD${n}_HI`, offset + 8, 64, 0n, 0n, 0x8000000000000000n, 0n, FRCD_HI_FIELDS, 'fault record: F is W1C']);
  }
  return rows;
}

/** Every name REGISTERS has, as a type: a misspelt register name is a compile error. */
export type RegisterName =
  | (typeof fixedRows)[number][0]
  | (typeof pageRequestRows)[number][0]
  | (typeof virtualCommandRows)[number][0]
  | MemoryTypeRegisterName
  | FaultRecordRegisterName;

function toSpec(row: Row<RegisterName>, presentWith?: 'PRS' | 'VCS'): RegisterSpec {
  const [name, offset, width, reset, writable, writeOneToClear, writeOnly, fields, notes] = row;
  return {
    name,
    offset,
    width,
    reset,
    writable,
    writeOneToClear,
    writeOnly,
    notes,
    ...(fields ? { fields } : {}),
    ...(presentWith ? { presentWith } : {}),
  };
}

/** Every register the unit decodes, sorted by offset. Masks are QEMU 7.2's (vtd_init) unless the notes say. */
export const REGISTERS: readonly RegisterSpec[] = [
  ...fixedRows.map((row) => toSpec(row)),
  ...pageRequestRows.map((row) => toSpec(row, 'PRS')),
  ...memoryTypeRows().map((row) => toSpec(row)),
  ...faultRecordRows().map((row) => toSpec(row)),
  ...virtualCommandRows.map((row) => toSpec(row, 'VCS')),
].sort((a, b) => a.offset - b.offset);

const registersByName = new Map<string, RegisterSpec>(REGISTERS.map((r) => [r.name, r]));

/** The register named `name`; every RegisterName is in the table. */
export function findRegister(name: RegisterName): RegisterSpec {
  return registersByName.get(name)!;
}

/** A register name that comes from outside the program (CLI, snapshot, qtest); undefined when REGISTERS has no such register. */
export function parseRegisterName(text: string): RegisterName | undefined {
  return registersByName.get(text)?.name;
}

/** The name of fault-recording register `index`'s low or high half; throws for an index the unit does not have. */
export function faultRecordRegister(index: number, half: FaultRecordHalf): RegisterName {
  const name = parseRegisterName(`FRCD${index}_${half}`);
  if (name === undefined) {
    throw new ViommuError('ERR_UNKNOWN_REGISTER', `no fault-recording register ${index}: the unit has ${FAULT_RECORD_COUNT} (FAULT_RECORD_COUNT)`);
  }
  return name;
}
