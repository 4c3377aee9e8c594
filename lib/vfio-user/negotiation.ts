/** VERSION on both sides: the client's negotiateVersion and the server's handler, including the twin socket. */

import { ERRNO } from '../errno';
import { native, type FileDescriptor } from '../native';
import { MessageSocket } from '../os';
import { versionBody } from './codec';
import { replyWithFds, type CommandHandler, type VfioUserConnection } from './connection';
import { VfioUserProtocolError } from './errors';
import { PROTOCOL_VERSION } from './protocol';
import { socketTransport, type Transport } from './transport';
import { resolveCapabilities, type ResolvedCapabilities, type VersionCapabilities } from './version';

export interface NegotiatedVersion {
  readonly major: number;
  readonly minor: number;
  readonly peer: ResolvedCapabilities;
  /** The capabilities as the server stated them: a member it left out is absent here (and a default in `peer`). */
  readonly stated: VersionCapabilities;
  /** True when a twin socket now carries the server's own commands. */
  readonly twinSocket: boolean;
}

/** Wraps a received or created socket fd as a Transport; takes ownership of `fd` even when it throws. */
export type TwinTransportFactory = (fd: FileDescriptor) => Transport;

function defaultTwinTransport(fd: FileDescriptor): Transport {
  try {
    return socketTransport(new MessageSocket(fd));
  } catch (error) {
    fd.close();
    throw error;
  }
}

function versionError(message: string): VfioUserProtocolError {
  return new VfioUserProtocolError('ERR_VFIO_USER_BAD_VERSION_DATA', ERRNO.EINVAL, message);
}

export interface NegotiateOptions {
  /** Ask for a twin socket for the server's DMA_READ/DMA_WRITE. */
  readonly twinSocket?: boolean;
  readonly timeoutMs?: number;
  readonly twinTransport?: TwinTransportFactory;
}

/**
 * Client side: sends our capabilities, checks the server's answer and stores the server's limits on the connection.
 * When a twin socket was asked for and the server sent one at fd_index, it becomes the connection's twin channel.
 */
export async function negotiateVersion(connection: VfioUserConnection, options: NegotiateOptions = {}): Promise<NegotiatedVersion> {
  const ours: VersionCapabilities = {
    ...connection.announcedCapabilities,
    ...(options.twinSocket ? { twinSocket: { supported: true } } : {}),
  };
  const reply = await connection.request('VERSION', versionBody(PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor, ours), {
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
  const fds: (FileDescriptor | undefined)[] = [...reply.fds];
  try {
    const { major, minor, capabilities } = reply.body;
    if (major !== PROTOCOL_VERSION.major || minor > PROTOCOL_VERSION.minor) {
      throw versionError(`the server answered version ${major}.${minor}; we speak ${PROTOCOL_VERSION.major}.${PROTOCOL_VERSION.minor}`);
    }
    const peer = resolveCapabilities(capabilities);
    let twin = false;
    const fdIndex = peer.twinSocket.fdIndex;
    // A server may offer a twin socket nobody asked for; without our request we leave it unused and closed.
    if (options.twinSocket && peer.twinSocket.supported && fdIndex !== undefined) {
      const fd = fds[fdIndex];
      if (fd === undefined) {
        throw new VfioUserProtocolError(
          'ERR_VFIO_USER_BAD_CAPABILITY',
          ERRNO.EINVAL,
          `the server named twin socket fd_index ${fdIndex} but sent ${reply.fds.length} fds`,
        );
      }
      fds[fdIndex] = undefined;
      connection.attachTwin((options.twinTransport ?? defaultTwinTransport)(fd));
      twin = true;
    }
    connection.setPeerCapabilities(peer, minor);
    return { major, minor, peer, stated: capabilities, twinSocket: twin };
  } finally {
    for (const fd of fds) fd?.close();
  }
}

export interface ServeVersionOptions {
  /** Offer a twin socket to clients that ask for one (needs a transport that can carry a socket fd). */
  readonly twinSocket?: boolean;
  /**
   * Offer REGION_WRITE_MULTI (write_multiple) unless the connection's own capabilities say otherwise. Default true:
   * VfioUserSession, the server built on this handler, serves it; a server without that handler passes false.
   */
  readonly writeMultiple?: boolean;
  /** Creates the twin socket pair; injectable for tests. */
  readonly socketPair?: () => [FileDescriptor, FileDescriptor];
  readonly twinTransport?: TwinTransportFactory;
}

/**
 * Server side: answers VERSION with major 0, minor min(client's, ours) and our capabilities (write_multiple among
 * them), and stores the client's limits. With `twinSocket` and a client that asks, one end of a new socket pair goes
 * back at fd_index 0 and the other becomes this connection's twin channel for our own commands.
 */
export function serveVersion(connection: VfioUserConnection, options: ServeVersionOptions = {}): void {
  connection.onCommand('VERSION', versionHandler(connection, options));
}

/** The VERSION handler that serveVersion registers, for servers that wrap it (e.g. to refuse a second VERSION). */
export function versionHandler(connection: VfioUserConnection, options: ServeVersionOptions = {}): CommandHandler<'VERSION'> {
  return (command) => {
    if (command.major !== PROTOCOL_VERSION.major) {
      throw versionError(`the client asked for version ${command.major}.${command.minor}; we speak ${PROTOCOL_VERSION.major}.x`);
    }
    const minor = Math.min(command.minor, PROTOCOL_VERSION.minor);
    const peer = resolveCapabilities(command.capabilities);
    connection.setPeerCapabilities(peer, minor);
    const stated = connection.announcedCapabilities;
    const ours: VersionCapabilities = { ...stated, writeMultiple: stated.writeMultiple ?? options.writeMultiple ?? true };
    if (!options.twinSocket || !peer.twinSocket.supported || connection.hasTwin || peer.maxMsgFds < 1) {
      return versionBody(PROTOCOL_VERSION.major, minor, ours);
    }
    const [mine, theirs] = (options.socketPair ?? native.unixSocketPair)();
    try {
      connection.attachTwin((options.twinTransport ?? defaultTwinTransport)(mine));
    } catch (error) {
      theirs.close();
      throw error;
    }
    const body = versionBody(PROTOCOL_VERSION.major, minor, { ...ours, twinSocket: { supported: true, fdIndex: 0 } });
    return replyWithFds<'VERSION'>(body, [theirs], { transfer: true });
  };
}
