/** Fault reason codes, indexed by the hardware code written to FRCD.FR, with one bounds-checked lookup. */

export type FaultMode = 'legacy' | 'interrupt-remapping' | 'scalable';

export interface FaultReason {
  readonly code: number;
  readonly mode: FaultMode;
  /** Stable identifier for code and traces. */
  readonly name: FaultReasonName;
  /** The condition as the specification states it. */
  readonly condition: string;
  /** What usually causes it, for `viommu explain`. */
  readonly explanation: string;
  /**
   * 'permission': the translation exists but does not grant this request's access or privilege (a device sees
   * EPERM, as for mprotect'ed memory); undefined: anything else (EFAULT).
   */
  readonly kind?: 'permission';
}

type Row<N extends string = string> = readonly [code: number, name: N, condition: string, explanation: string, kind?: 'permission'];

/** Keeps each row's name as a literal type, so FaultReasonName is derived from the rows themselves. */
function reasonRows<const R extends readonly Row[]>(rows: R): R {
  return rows;
}

const LEGACY = reasonRows([
  [0x1, 'ROOT_ENTRY_NOT_PRESENT', 'Present bit in root entry is clear', 'no context table for this bus: the root entry for the bus has P = 0'],
  [0x2, 'CONTEXT_ENTRY_NOT_PRESENT', 'Present bit in context entry is clear', 'the device (devfn) has no context entry: P = 0'],
  [0x3, 'CONTEXT_ENTRY_INVALID', 'Invalid context entry', 'context entry programmed wrongly, e.g. an AW the unit does not support or a reserved TT'],
  [0x4, 'ADDRESS_BEYOND_MGAW', 'Access beyond MGAW', 'the input address is above 2^MGAW or above the width the context entry selects'],
  [0x5, 'WRITE', 'PTE Write access is not set', 'a write to a page mapped without W (or not mapped)', 'permission'],
  [0x6, 'READ', 'PTE Read access is not set', 'a read of a page mapped without R (or not mapped)', 'permission'],
  [0x7, 'PAGING_ENTRY_INVALID', 'Next page table ptr is invalid', 'a paging-structure pointer led outside memory, or the walk could not read it'],
  [0x8, 'ROOT_TABLE_INVALID', 'Root table address invalid', 'the root table address (RTADDR) could not be read'],
  [0x9, 'CONTEXT_TABLE_INVALID', 'Context table ptr is invalid', 'the context table pointer of the root entry could not be read'],
  [
    0xa,
    'ROOT_ENTRY_RESERVED',
    'Non-zero reserved fields in root entry',
    'a present root entry has reserved bits set (including address bits above the host width)',
  ],
  [0xb, 'CONTEXT_ENTRY_RESERVED', 'Non-zero reserved fields in context entry', 'a present context entry has reserved bits set'],
  [
    0xc,
    'PAGING_ENTRY_RESERVED',
    'Non-zero reserved fields in paging entry',
    'a present paging entry has reserved bits set (e.g. SNP without snoop control, address above the host width)',
  ],
  [
    0xd,
    'CONTEXT_ENTRY_TT_BLOCKED',
    'Context entry translation type blocks the request',
    'e.g. a translated request for a device whose context entry does not allow device TLBs',
  ],
  [
    0xe,
    'INTERRUPT_ADDRESS',
    'Output address in the interrupt address range',
    'translation produced an address in 0xfee00000-0xfeefffff, which is reserved for interrupts',
  ],
]);

const INTERRUPT_REMAPPING = reasonRows([
  [
    0x20,
    'IR_REQUEST_RESERVED',
    'Detected reserved fields in the decoded interrupt-remapped request',
    'the remappable-format MSI address/data has reserved bits set',
  ],
  [0x21, 'IR_INDEX_OVER', 'Interrupt index exceeded the interrupt-remapping table size', 'handle (plus subhandle) is at or above 2^(IRTA.S+1)'],
  [0x22, 'IR_ENTRY_NOT_PRESENT', 'Present field in the IRTE entry is clear', 'the IRTE for this handle has P = 0'],
  [0x23, 'IR_TABLE_INVALID', 'Error accessing interrupt-remapping table pointed by IRTA_REG', 'the IRTE could not be read from memory'],
  [0x24, 'IR_ENTRY_RESERVED', 'Detected reserved fields in the IRTE entry', 'a present IRTE has reserved bits set'],
  [
    0x25,
    'IR_COMPATIBILITY_BLOCKED',
    'Blocked a compatibility format interrupt request',
    'a compatibility-format MSI arrived while GSTS.CFIS is 0 (or with x2APIC mode on)',
  ],
  [
    0x26,
    'IR_SOURCE_ID_MISMATCH',
    'Blocked an interrupt request due to source-id verification failure',
    'the requester id does not match the IRTE SID/SQ/SVT check',
  ],
]);

const SCALABLE = reasonRows([
  [0x30, 'SM_ROOT_TABLE_ADDRESS_INVALID', 'SM: Invalid Root Table Address', 'RTADDR in scalable mode is invalid'],
  [0x31, 'SM_TTM0_PASID_REQUEST', 'SM: TTM 0 for request with PASID', 'a request with PASID while RTADDR.TTM selects legacy mode'],
  [0x32, 'SM_TTM0_PAGE_GROUP_REQUEST', 'SM: TTM 0 for page group request', 'a page request while RTADDR.TTM selects legacy mode'],
  [0x38, 'SM_ROOT_ENTRY_ACCESS', 'SM: Error attempting to access Root Entry', 'the scalable root entry could not be read'],
  [0x39, 'SM_ROOT_ENTRY_NOT_PRESENT', 'SM: Present bit in Root Entry is clear', 'the lower (devfn < 128) or upper half of the root entry has P = 0'],
  [0x3a, 'SM_ROOT_ENTRY_RESERVED', 'SM: Non-zero reserved field set in Root Entry', 'a present scalable root entry has reserved bits set'],
  [0x40, 'SM_CONTEXT_ENTRY_ACCESS', 'SM: Error attempting to access Context Entry', 'the scalable context entry could not be read'],
  [0x41, 'SM_CONTEXT_ENTRY_NOT_PRESENT', 'SM: Present bit in Context Entry is clear', 'the device has no scalable context entry'],
  [
    0x42,
    'SM_CONTEXT_ENTRY_RESERVED',
    'SM: Non-zero reserved field set in the Context Entry',
    'a present scalable context entry has reserved bits set',
  ],
  [0x43, 'SM_CONTEXT_ENTRY_INVALID', 'SM: Invalid Context Entry', 'the scalable context entry is programmed inconsistently'],
  [
    0x44,
    'SM_CONTEXT_DTE_CLEAR',
    'SM: DTE field in Context Entry is clear',
    'a translated request or translation request while device TLBs are disabled',
  ],
  [
    0x45,
    'SM_CONTEXT_PASIDE_CLEAR',
    'SM: PASID Enable field in Context Entry is clear',
    'a request with PASID for a device whose context entry has PASIDE = 0',
  ],
  [
    0x46,
    'SM_CONTEXT_PASID_TOO_LARGE',
    'SM: PASID is larger than the max in Context Entry',
    'the PASID indexes beyond the PASID directory size (PDTS)',
  ],
  [0x47, 'SM_CONTEXT_PRE_CLEAR', 'SM: PRE field in Context-Entry is clear', 'a page request while page requests are disabled for the device'],
  [0x48, 'SM_CONTEXT_RID_PASID_ERROR', 'SM: RID_PASID field error in Context-Entry', 'the RID_PASID used for requests without PASID is invalid'],
  [0x50, 'SM_PASID_DIRECTORY_ACCESS', 'SM: Error attempting to access the PASID Directory Entry', 'the PASID directory entry could not be read'],
  [0x51, 'SM_PASID_DIRECTORY_NOT_PRESENT', 'SM: Present bit in Directory Entry is clear', 'no PASID table for this PASID >> 6'],
  [
    0x52,
    'SM_PASID_DIRECTORY_RESERVED',
    'SM: Non-zero reserved field set in PASID Directory Entry',
    'a present directory entry has reserved bits set',
  ],
  [0x58, 'SM_PASID_ENTRY_ACCESS', 'SM: Error attempting to access PASID Table Entry', 'the PASID entry could not be read'],
  [0x59, 'SM_PASID_ENTRY_NOT_PRESENT', 'SM: Present bit in PASID Table Entry is clear', 'the PASID has no entry'],
  [0x5a, 'SM_PASID_ENTRY_RESERVED', 'SM: Non-zero reserved field set in PASID Table Entry', 'a present PASID entry has reserved bits set'],
  [0x5b, 'SM_PASID_ENTRY_INVALID', 'SM: Invalid Scalable-Mode PASID Table Entry', 'e.g. a PGTT the unit does not support or an unsupported AW/FSPM'],
  [0x5c, 'SM_PASID_ENTRY_ERE_CLEAR', 'SM: ERE field is clear in PASID Table Entry', 'an execute request while the PASID entry has ERE = 0'],
  [0x5d, 'SM_PASID_ENTRY_SRE_CLEAR', 'SM: SRE field is clear in PASID Table Entry', 'a supervisor request while the PASID entry has SRE = 0'],
  [0x70, 'SM_FIRST_STAGE_ACCESS', 'SM: Error attempting to access first-level paging entry', 'a first-stage entry could not be read'],
  [0x71, 'SM_FIRST_STAGE_NOT_PRESENT', 'SM: Present bit in first-level paging entry is clear', 'first-stage entry with P = 0'],
  [
    0x72,
    'SM_FIRST_STAGE_RESERVED',
    'SM: Non-zero reserved field set in first-level paging entry',
    'a present first-stage entry has reserved bits set',
  ],
  [0x73, 'SM_FIRST_STAGE_PML4_ACCESS', 'SM: Error attempting to access FL-PML4 entry', 'the top first-stage entry could not be read'],
  [
    0x74,
    'SM_FIRST_STAGE_BEYOND_MGAW_NESTED',
    'SM: First-level entry address beyond MGAW in Nested translation',
    'in nested mode a first-stage table address is beyond the second-stage width',
  ],
  [
    0x75,
    'SM_FIRST_STAGE_PML4_READ_NESTED',
    'SM: Read permission error in FL-PML4 entry in Nested translation',
    'in nested mode the second stage does not allow reading the first-stage top table',
  ],
  [
    0x76,
    'SM_FIRST_STAGE_READ_NESTED',
    'SM: Read permission error in first-level paging entry in Nested translation',
    'in nested mode the second stage does not allow reading a first-stage table',
  ],
  [
    0x77,
    'SM_FIRST_STAGE_WRITE_NESTED',
    'SM: Write permission error in first-level paging entry in Nested translation',
    'in nested mode the second stage does not allow setting A/D in a first-stage table',
  ],
  [0x78, 'SM_SECOND_STAGE_ACCESS', 'SM: Error attempting to access second-level paging entry', 'a second-stage entry could not be read'],
  [
    0x79,
    'SM_SECOND_STAGE_PERMISSION',
    'SM: Read/Write permission error in second-level paging entry',
    'a second-stage non-leaf entry has neither R nor W',
  ],
  [
    0x7a,
    'SM_SECOND_STAGE_RESERVED',
    'SM: Non-zero reserved field set in second-level paging entry',
    'a present second-stage entry has reserved bits set',
  ],
  [
    0x7b,
    'SM_SECOND_STAGE_POINTER_INVALID',
    'SM: Invalid second-level page table pointer',
    'SSPTPTR or a second-stage table address is beyond the host width',
  ],
  [
    0x7c,
    'SM_SECOND_STAGE_AD_NO_SNOOP',
    'SM: A/D bit update needed in second-level entry when set up in no snoop',
    'SSADE with a non-snooped page walk',
  ],
  [0x80, 'SM_NON_CANONICAL', 'SM: Address in first-level translation is not canonical', 'bits above 47 (or 56) are not copies of the top bit'],
  [
    0x81,
    'SM_USER_SUPERVISOR',
    'SM: U/S set 0 for first-level translation with user privilege',
    'a user request reached a supervisor page',
    'permission',
  ],
  [0x82, 'SM_EXECUTE', 'SM: No execute permission for request with PASID and ER=1', 'an execute request to a page with XD set', 'permission'],
  [0x83, 'SM_BEYOND_HARDWARE_MAX', 'SM: Address beyond the DMA hardware max', 'the input address exceeds what the unit can translate'],
  [
    0x84,
    'SM_SECOND_STAGE_ADDRESS_BEYOND_MAX',
    'SM: Second-level entry address beyond the max',
    'a second-stage output address is beyond the host width',
  ],
  [0x85, 'SM_WRITE', 'SM: No write permission for Write/AtomicOp request', 'a write to a page mapped read-only (or not mapped)', 'permission'],
  [
    0x86,
    'SM_READ',
    'SM: No read permission for Read/AtomicOp request',
    'a read of a page mapped without read permission (or not mapped)',
    'permission',
  ],
  [0x87, 'SM_INTERRUPT_ADDRESS', 'SM: Invalid address-interrupt address', 'translation produced an address in the interrupt range'],
  [
    0x90,
    'SM_FIRST_STAGE_AD_NO_SNOOP',
    'SM: A/D bit update needed in first-level entry when set up in no snoop',
    'first-stage A/D update with a non-snooped page walk',
  ],
  [
    0x91,
    'SM_AD_UPDATE_FAILED',
    'QEMU: failed A/D bit update (not in the specification)',
    'newer QEMU records this when it cannot write A/D back to memory',
  ],
]);

/** Every reason name the table has, as a type: a misspelt reason is a compile error. */
export type FaultReasonName = (typeof LEGACY | typeof INTERRUPT_REMAPPING | typeof SCALABLE)[number][1];

function build(rows: readonly Row<FaultReasonName>[], mode: FaultMode): FaultReason[] {
  return rows.map(([code, name, condition, explanation, kind]) => ({ code, mode, name, condition, explanation, ...(kind ? { kind } : {}) }));
}

/** Fault reasons by hardware code; codes the table lacks are reserved. FRCD.FR is 8 bits wide. */
export const FAULT_REASONS: readonly (FaultReason | undefined)[] = (() => {
  const table: (FaultReason | undefined)[] = new Array(256).fill(undefined);
  for (const reason of [...build(LEGACY, 'legacy'), ...build(INTERRUPT_REMAPPING, 'interrupt-remapping'), ...build(SCALABLE, 'scalable')]) {
    table[reason.code] = reason;
  }
  return table;
})();

const reasonsByName = new Map<string, FaultReason>(FAULT_REASONS.filter((r): r is FaultReason => r !== undefined).map((r) => [r.name, r]));

/** The reason for a hardware code; undefined for reserved or out-of-range codes (never throws). */
export function faultReason(code: number): FaultReason | undefined {
  if (!Number.isInteger(code) || code < 0 || code >= FAULT_REASONS.length) return undefined;
  return FAULT_REASONS[code];
}

/** Whether `code` is a permission fault (see FaultReason.kind). */
export function isPermissionFault(code: number): boolean {
  return faultReason(code)?.kind === 'permission';
}

/** A human-readable line for any code, including unknown ones (for explain and traces). */
export function describeFaultReason(code: number): string {
  const reason = faultReason(code);
  const hex = Number.isInteger(code) && code >= 0 ? `0x${code.toString(16)}` : String(code);
  return reason ? `${hex} ${reason.name}: ${reason.condition}` : `${hex} reserved fault reason`;
}

/** The code for a reason name; for the walker, so names (not numbers) appear in its source. */
export function faultCode(name: FaultReasonName): number {
  return reasonsByName.get(name)!.code;
}

/** A reason name that comes from outside the program (CLI, snapshot, trace); undefined when the table has no such reason. */
export function parseFaultReasonName(text: string): FaultReasonName | undefined {
  return reasonsByName.get(text)?.name;
}
