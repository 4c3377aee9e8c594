/** The guest-memory layer: addresses, shared regions, the guest-physical map and the DmaSpace interface. */
export * from './addresses';
export * from './dma-space';
export * from './guest-memory';
export * from './shared-region';
export * from './geometry';
