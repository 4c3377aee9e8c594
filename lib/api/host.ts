/**
 * `viommu/host`: host backends that follow the unit's domains behind one interface (HostIommuBackend): shadow
 * (vfio-user DMA tables kept equal to the guest's mappings) and iommufd nesting.
 */
// The interface the testbed, the vfio-user attachment and the KVM machine depend on, and its two implementations.
export { ShadowHostBackend } from '../host/shadow-host-backend';
export { NestingHostBackend } from '../host/nesting-host-backend';
export type {
  HostIommuBackend,
  HostIommuBackendEvents,
  HostBackendName,
  HostBacking,
  HostAttachRequest,
  HostAttachKind,
  HostDeviceAttachment,
} from '../host/host-backend';
export { ShadowBackend } from '../host/shadow-backend';
export type { ShadowAttachment, ShadowBackendEvents, ShadowTarget, DomainSource } from '../host/shadow-backend';
export { ShadowMappings, SHADOW_ACCESS } from '../host/shadow-mappings';
export type { ShadowExtent, ShadowChanges, ShadowMappingsOptions } from '../host/shadow-mappings';

// iommufd nesting: a guest's first-stage tables bound under a host nest parent (HWPT alloc/attach/invalidate).
export { NestingBackend, nestingConfigProblems, firstStageTableOf } from '../host/nesting-backend';
export type { NestingBackendEvents, NestingBackendOptions, NestingDomainSource, GuestFaultWalk } from '../host/nesting-backend';
export { IommufdNesting, IommufdIoctlError, NestingRefusal, INVALIDATE_ALL } from '../host/iommufd-nesting';
export type {
  IommufdChannel,
  IoctlOptions,
  PayloadPointer,
  HostCapabilities,
  FirstStageTable,
  InvalidateRange,
  InvalidateSelector,
  HostFault,
  BindingInfo,
  IommufdNestingOptions,
  GuestRamRange,
} from '../host/iommufd-nesting';
// The 2019-2021 VFIO bind-guest-PASID format, with the review's extension rules on decode.
export { decodeGpasidBind, encodeGpasidBind, decodeCacheInvalidate, encodeCacheInvalidate } from '../host/vfio-gpasid-uapi';
