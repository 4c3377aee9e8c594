/** Device models that depend only on memory/: register access shapes, the DMA path, the edu DMA engine, PCI config space. */
export * from './dma';
export * from './edu';
export * from './register-access';
export * from './pci-config-space';
export * from './pci-layout';
