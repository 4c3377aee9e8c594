/** `viommu/vtd`: the emulated VT-d unit, its configuration (QEMU's property names), results, and the hardware tables. */

// The unit: a VMM routes its register window to read/write, and gives each device dmaSpace(sid).
export { VtdUnit, VtdRequestError } from '../vtd/unit';
export type { VtdUnitOptions, InterruptResult, InterruptFailure, InterruptOrigin, TracedWalk } from '../vtd/unit';
export type { TranslationRequest, TranslationResult, TranslationSuccess, TranslationFailure } from '../vtd/translation-result';
export type { PasidTag } from '../vtd/unit-dma';

// The embedding contract the unit implements (docs/embedding.md; viommu/vmm offers it too).
export * from './contract';
// What dmaSpace(sid) throws when a page does not translate: a DmaFault (viommu, viommu/memory) with the fault record.
export { TranslationDmaFault } from '../vtd/unit-dma';
export type { InterruptRequest, RemappedInterrupt, InterruptFault } from '../vtd/interrupt-remap';
export type { RecordOutcome } from '../vtd/fault-recorder';
// Where and why a translation failed (TranslationFailure.fault, TranslationDmaFault.fault, TracedWalk): stage, levels, the entry that decided.
export type { FaultRecord, FaultStage } from '../vtd/fault';

// The unit's trace (VtdUnitOptions.trace): one event per register write, descriptor, translation, fault and interrupt.
export { UNIT_TRACE_KINDS } from '../vtd/unit-trace';
export type { UnitTraceEvent, UnitTraceSink, UnitTraceKind } from '../vtd/unit-trace';

// PASIDs: the allocator a VMM may share between units (x-vcmd), and the virtual command interface's codes.
export { PasidAllocator, PasidAllocatorError, RID_PASID, PASID_SPACE } from '../vtd/pasid-allocator';
export type { PasidSet, PasidState, PasidAllocation, PasidRelease, PasidRange } from '../vtd/pasid-allocator';
export { VIRTUAL_COMMAND, VIRTUAL_COMMAND_STATUS } from '../vtd/virtual-command';

// Configuration: QEMU intel-iommu property names ('aw-bits=48,caching-mode=on'), with the list of them and their rules.
export {
  VTD_PROPERTIES,
  COMPAT_VALUES,
  resolveVtdConfig,
  parseVtdProperties,
  vtdConfigFromString,
  VtdConfigError,
  VtdPropertyError,
} from '../vtd/config';
export type { VtdConfig, VtdProperties, Compat, AddressWidth, OnOffAuto } from '../vtd/config';

// Fault reasons: one table indexed by the hardware code (FRCD.FR).
export { FAULT_REASONS, faultReason, faultCode, parseFaultReasonName, describeFaultReason, isPermissionFault } from '../vtd/fault-reasons';
export type { FaultReason, FaultReasonName, FaultMode } from '../vtd/fault-reasons';

// Domains, for host backends that follow what the guest maps (ShadowBackend is one: viommu/host).
export { MAPPING_ACCESS } from '../vtd/address-space';
export type { VtdDomain, DeviceDomainListener, DomainMappingListener, MappedRun } from '../vtd/address-space';
export type { HostPending } from '../vtd/host-completion';

// The hardware described once: registers, in-memory structures and descriptors as field tables, with their
// encoder, decoder and renderer. A guest driver (or a test, or a VMM's firmware) programs the unit with these.
export { REGISTERS, REGISTER_WINDOW_SIZE, findRegister, parseRegisterName, faultRecordRegister } from '../vtd/registers';
export {
  CAP_FIELDS,
  ECAP_FIELDS,
  GCMD_FIELDS,
  GSTS_FIELDS,
  RTADDR_FIELDS,
  CCMD_FIELDS,
  FSTS_FIELDS,
  EVENT_CONTROL_FIELDS,
  IQA_FIELDS,
  QUEUE_POINTER_FIELDS,
  ICS_FIELDS,
  IRTA_FIELDS,
  IOTLB_FIELDS,
  IVA_FIELDS,
  FRCD_LO_FIELDS,
  FRCD_HI_FIELDS,
  MSI_DATA_FIELDS,
  MSI_ADDRESS_FIELDS,
} from '../vtd/registers';
export type { RegisterSpec, RegisterName, FaultRecordHalf } from '../vtd/registers';
export { registerOffset } from '../vtd/register-bits';
export {
  LEGACY_ROOT_ENTRY,
  SCALABLE_ROOT_ENTRY,
  LEGACY_CONTEXT_ENTRY,
  SCALABLE_CONTEXT_ENTRY,
  PASID_DIRECTORY_ENTRY,
  SCALABLE_PASID_ENTRY,
  PASID_PGTT,
  SECOND_STAGE_TOP_ENTRY,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_1G_LEAF,
  FIRST_STAGE_TOP_ENTRY,
  FIRST_STAGE_TABLE_ENTRY,
  FIRST_STAGE_4K_LEAF,
  FIRST_STAGE_2M_LEAF,
  FIRST_STAGE_1G_LEAF,
  IRTE,
  CONTEXT_CACHE_INVALIDATE,
  IOTLB_INVALIDATE,
  DEVICE_TLB_INVALIDATE,
  INTERRUPT_ENTRY_CACHE_INVALIDATE,
  INVALIDATION_WAIT,
  PASID_IOTLB_INVALIDATE,
  PASID_CACHE_INVALIDATE,
  PASID_DEVICE_TLB_INVALIDATE,
  INVALIDATION_DESCRIPTORS,
  descriptorKindNamed,
} from '../vtd/structures';
export type { DescriptorKind, DescriptorName } from '../vtd/structures';
export { encodeBig, decodeBig, getFieldBig, setFieldBig, renderFields } from '../vtd/bitfield';
export type { Field, FieldTable, RenderOptions } from '../vtd/bitfield';
