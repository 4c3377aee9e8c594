/** The vtd layer's public face: the DMAR unit, its configuration, and the tables its users and tests share. */
export * from './bitfield';
export * from './caches';
export * from './compat-quirks';
export * from './config';
export * from './fault-reasons';
export * from './fault-recorder';
export * from './interrupt-remap';
export * from './invalidation-queue';
export * from './legacy-walk';
export * from './register-bits';
export * from './register-file';
export * from './registers';
export * from './structures';
export * from './unit';
export * from './unit-trace';
