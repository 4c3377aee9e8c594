/**
 * Host IOMMU backends for an embedded unit (the contract is lib/vtd/embedding.ts): the shadow backend that keeps
 * vfio-user devices' DMA tables in step with the guest's mappings, and the iommufd nesting backend.
 */
import type { GuestMemory } from '../memory';
import type { HostIommuBackend } from '../host/host-backend';
import { ShadowBackend } from '../host/shadow-backend';
import { ShadowHostBackend } from '../host/shadow-host-backend';
import type { IommufdNesting } from '../host/iommufd-nesting';
import { NestingHostBackend } from '../host/nesting-host-backend';
import type { EmbeddedIommu } from '../vtd/embedding';

/**
 * With caching mode on and an IOMMU that tells domains: the shadow host backend for vfio-user devices (their DMA
 * tables follow the guest's mappings), with the IOMMU's completions held while it settles. Otherwise undefined:
 * devices reach guest memory by message through the unit only.
 */
export function shadowBackendFor(iommu: EmbeddedIommu, memory: GuestMemory): HostIommuBackend | undefined {
  if (iommu.watchDevice === undefined || iommu.config?.['caching-mode'] !== true) return undefined;
  const backend = new ShadowHostBackend(new ShadowBackend(memory, { watchDevice: (sid, listener) => iommu.watchDevice!(sid, listener) }));
  // The guest sees its invalidations complete only once attached devices have followed them.
  iommu.holdCompletionsWhile?.(() => backend.pending());
  return backend;
}

/**
 * The iommufd nesting backend for `iommu`: the guest's first-stage tables bound under the host IOMMU through
 * `nesting` (set up, its devices added), host faults walked again through the guest's tables, and the guest's
 * PASID allocator told which PASIDs the host has attached. Undefined when `iommu` cannot say which domain a device
 * translates through or cannot translate a request. Check `configProblems(config)` before the guest runs.
 */
export function nestingBackendFor(iommu: EmbeddedIommu, nesting: IommufdNesting): NestingHostBackend | undefined {
  const { watchDevice, translate } = iommu;
  if (watchDevice === undefined || translate === undefined) return undefined;
  const allocator = iommu.virtualCommands?.allocator;
  return new NestingHostBackend(
    nesting,
    { watchDevice: (sid, listener, pasid) => watchDevice.call(iommu, sid, listener, pasid) },
    { walkGuest: (request) => translate.call(iommu, request), ...(allocator === undefined ? {} : { pasidUse: allocator }) },
  );
}
