/** The vfio-user server side: the device-model API, sessions, the one-client-at-a-time server and the sample device. */
export * from './device';
export * from './device-dma';
export * from './dma-engine';
export * from './dma-maps';
export * from './irqs';
export * from './regions';
export * from './server';
export * from './session';
export * from './waiting-transport';
