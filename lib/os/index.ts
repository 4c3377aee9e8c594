/** The OS edge in TypeScript: fd-carrying message sockets, a UNIX socket server and eventfds over the addon. */
export * from './event-fd';
export * from './message-socket';
export * from './received-fds';
export * from './unix-server';
export * from './kvm';
export * from './kvm-vm';
export * from './iommufd-device';
