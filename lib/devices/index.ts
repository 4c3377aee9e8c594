/** Device models that depend only on memory/: register access shapes, the edu DMA engine, the PASID DMA engine, PCI config space tables and model. */
export * from './config-table';
export * from './edu';
export * from './pasid-dma-engine';
export * from './register-access';
export * from './pci-config-space';
export * from './pci-layout';
