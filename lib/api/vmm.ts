/**
 * `viommu/vmm`: the embedding contract (docs/embedding.md; defined beside the unit, in lib/vtd/embedding.ts, and
 * offered here too, where a VMM author looks for it), the host backends an embedder may add, and the testbed
 * machine built on both.
 */

// The contract: what a VMM gives the unit and what each device gets back.
export * from './contract';

// Host IOMMU backends for an embedded unit.
export { shadowBackendFor, nestingBackendFor } from '../vmm/host-backends';

// The testbed: guest RAM, PCI host on bus 0, the unit at q35's address, edu, and vfio-user devices by socket path.
export { TestbedMachine, DMAR_BASE, DMAR_WINDOW_SIZE, EDU_DEVFN } from '../vmm/testbed';
export type { TestbedOptions, TestbedIommu } from '../vmm/testbed';
export { VfioUserAttachment } from '../vmm/vfio-user-attachment';
export type { AttachOptions } from '../vmm/vfio-user-attachment';
