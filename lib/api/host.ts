/** `viommu/host`: host backends that follow the unit's domains; ShadowBackend keeps vfio-user devices' DMA tables equal to the guest's mappings. */
export { ShadowBackend } from '../host/shadow-backend';
export type { ShadowAttachment, ShadowBackendEvents, ShadowTarget, DomainSource } from '../host/shadow-backend';
export { ShadowMappings, SHADOW_ACCESS } from '../host/shadow-mappings';
export type { ShadowExtent, ShadowChanges, ShadowMappingsOptions } from '../host/shadow-mappings';
