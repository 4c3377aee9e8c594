/** Public entry point of the viommu package. */
export * from './errors';
export * from './memory';
export * from './os';
export { native } from './native';
export type { FileDescriptor, Mapping, SystemCallError } from './native';
