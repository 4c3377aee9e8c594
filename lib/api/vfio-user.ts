/** `viommu/vfio-user`: the vfio-user protocol's two ends, the client a VMM drives and the server a device model sits behind. */

// The client (VMM side): connect, enumerate, region I/O, DMA maps, IRQs, and the server's DMA served from a DmaSpace.
export { VfioUserClient, VfioUserDmaOutcomeError, DEFAULT_CLIENT_TIMEOUT_MS } from '../vfio-user/client/client';
export type {
  VfioUserClientOptions,
  RegionAccessOptions,
  RegionWriteOptions,
  DmaMapRequest,
  ClientDescription,
  ClientEvents,
} from '../vfio-user/client/client';
export { VfioUserClientError } from '../vfio-user/client/errors';
export type { VfioUserClientErrorCode } from '../vfio-user/client/errors';
export { ClientRegion } from '../vfio-user/client/region';
export type { RegionDescription, MappedArea } from '../vfio-user/client/region';
export type { DmaFaultEvent } from '../vfio-user/client/dma-service';

// The server (device side): a device model (config space, regions, IRQs, DMA) served on a UNIX socket.
export { VfioUserServer } from '../vfio-user/server/server';
export type { VfioUserServerOptions, ClientInfo, ServerEvents } from '../vfio-user/server/server';
export { VfioUserDevice } from '../vfio-user/server/device';
export type { VfioUserDeviceOptions, ResetReason } from '../vfio-user/server/device';
export { registerRegion, bufferRegion } from '../vfio-user/server/regions';
export type { RegionHandler, RegionDefinition, RegionDefinitions, RegionName } from '../vfio-user/server/regions';
export type { IrqDefinition, IrqDefinitions, IrqName } from '../vfio-user/server/irqs';
export { VfioUserDeviceDma } from '../vfio-user/server/device-dma';
export { DEFAULT_SERVER_CAPABILITIES } from '../vfio-user/server/session';
export type { VfioUserSession, SessionOptions } from '../vfio-user/server/session';
export { createDmaEngine, SAMPLE_DEVICES } from '../vfio-user/server/dma-engine';
export type { DmaEngine, DmaEngineOptions, SampleDevice } from '../vfio-user/server/dma-engine';
export type { PciIdentity, PciCapabilityDefinition, PciExtendedCapabilityDefinition, PciBarDefinition } from '../devices/pci-config-space';

// The transport both ends speak over: a UNIX socket, or an in-memory pair for tests.
export { InMemoryTransport, socketTransport } from '../vfio-user/transport';
export type { Transport } from '../vfio-user/transport';

// Errors: every one carries a code; protocol errors and refusals carry the errno a peer is told.
export { VfioUserProtocolError } from '../vfio-user/errors';
export { ERRNO, errnoName, type ErrnoName } from '../errno';
export {
  VfioUserRemoteError,
  VfioUserTimeoutError,
  VfioUserClosedError,
  VfioUserLimitError,
  VfioUserErrnoError,
  errnoOf,
} from '../vfio-user/connection-errors';
