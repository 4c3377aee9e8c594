/** DeviceDmaSpace: a device's DMA path, which may complete later (DMA by message) or at once (mapped memory). */

/**
 * What a device model does DMA through. Each call either completes at once (returns undefined, like a DmaSpace)
 * or returns a Promise that settles when the transfer is done; failures are DmaFaults, thrown or rejected.
 * For an asynchronous write the callee copies `data` before returning, so the device may reuse its buffer;
 * an asynchronous read fills `into` before its Promise resolves. Every synchronous DmaSpace (memory/) is a DeviceDmaSpace.
 */
export interface DeviceDmaSpace {
  read(address: bigint, into: Uint8Array): void | Promise<void>;
  write(address: bigint, data: Uint8Array): void | Promise<void>;
}

export function isPromise(value: unknown): value is Promise<unknown> {
  return typeof (value as Promise<unknown> | undefined)?.then === 'function';
}
