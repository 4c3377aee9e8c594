/** The vfio-user client (the VMM side): connect, enumerate, region I/O, DMA maps, IRQs, server DMA from a DmaSpace. */
export * from './client';
export * from './dma-map-table';
export * from './dma-service';
export * from './enumeration';
export * from './errors';
export * from './irqs';
export * from './region';
