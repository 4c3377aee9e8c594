/**
 * `viommu`: the names an embedder needs most. The rest lives in the sub-entries: viommu/vtd (the unit, its
 * properties and the hardware tables), viommu/vmm (the embedding contract and the testbed), viommu/vfio-user,
 * viommu/host, viommu/machine, viommu/memory, viommu/os and viommu/errors. docs/embedding.md shows them wired.
 */

// The unit and its configuration (QEMU's intel-iommu property names).
export { VtdUnit, VtdRequestError, VTD_PROPERTIES, resolveVtdConfig, vtdConfigFromString, describeFaultReason } from './api/vtd';
export type { VtdUnitOptions, VtdConfig, VtdProperties, TranslationRequest, TranslationResult } from './api/vtd';

// The embedding contract: what a VMM gives the unit, and each device's DMA space and interrupt function.
export { DeviceRegistry, registerWindow, requesterId, formatRequesterId, IOMMU_WINDOW_SIZE } from './api/vmm';
export type { IommuHost, EmbeddedIommu, RegisterWindow, AttachedDevice, DeviceInterrupt } from './api/vmm';

// Guest memory and the DMA view devices get.
export { GuestMemory, SharedRegion, DmaFault } from './memory';
// What a device's DMA through the unit throws when a page does not translate: a DmaFault carrying the fault record.
export { TranslationDmaFault } from './api/vtd';
export type { DmaSpace, AsyncDmaSpace, DmaAccess } from './memory';

// Errors: programmer mistakes throw these, with a stable code.
export { ViommuError, GuestMemoryError } from './errors';

// The other ends: vfio-user devices, the shadow backend that keeps their DMA tables, and the KVM machine.
export { VfioUserClient, VfioUserServer, VfioUserDevice } from './api/vfio-user';
export { ShadowBackend } from './api/host';
export { KvmMachine } from './api/machine';
