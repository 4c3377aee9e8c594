/** The qtest protocol, both ends: one import for the CLI, the testbed and the differential tests. */
export * from './protocol';
export * from './machine';
export * from './server';
export * from './client';
