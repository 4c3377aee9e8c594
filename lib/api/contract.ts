/**
 * The embedding contract's public names (docs/embedding.md): what a VMM gives the unit and what each device gets
 * back. viommu/vtd offers them beside the unit that implements the contract, viommu/vmm beside the host backends
 * and the testbed built on it.
 */
export {
  DeviceRegistry,
  registerWindow,
  requesterId,
  splitRequesterId,
  formatRequesterId,
  IOMMU_WINDOW_SIZE,
  INTERRUPT_ADDRESS_RANGE,
} from '../vtd/embedding';
export type { IommuHost, EmbeddedIommu, RegisterWindow, AttachedDevice, DeviceInterrupt, DeviceRegistryOptions } from '../vtd/embedding';
