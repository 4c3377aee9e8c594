/** Transport: what a vfio-user connection runs over (whole framed messages with fds), socket or in-memory. */
import { EventEmitter } from 'node:events';
import type { FileDescriptor } from '../native';
import { MessageSocket, ReceivedFds } from '../os';
import { ViommuError } from '../errors';

export interface TransportEvents {
  /**
   * One whole message; take the fds you keep during the handler, the rest are closed right after. `bytes` belong
   * to the receiver from then on: a transport keeps no reference to them and never writes them again (the socket
   * hands over a fresh allocation per message, the in-memory one a copy), so a decoder may return views of them.
   */
  message: [bytes: Buffer, fds: ReceivedFds];
  /** Once; error is undefined for a clean close by either side. */
  close: [error: Error | undefined];
}

/** The socket transport is MessageSocket itself; the in-memory one below has the same shape and fd semantics. */
export interface Transport extends EventEmitter<TransportEvents> {
  /**
   * Sends one message. The transport is done with `bytes` when send returns (whatever the peer has not taken yet
   * is copied: the socket's send queue, the in-memory copy), so the caller may reuse them at once.
   */
  send(bytes: Uint8Array, fds?: FileDescriptor[]): void;
  close(): void;
  readonly closed: boolean;
  /**
   * True when the open transport alone keeps the process running (a socket handle on the event loop), so that a
   * connection waiting for a reply need not hold the process with its request timer as well.
   */
  readonly keepsProcessAlive?: boolean;
}

export function socketTransport(socket: MessageSocket): Transport {
  return socket as unknown as Transport;
}

/**
 * Two connected in-memory endpoints. Messages arrive asynchronously and in order, and fds are duplicated as the
 * kernel duplicates them, so ownership rules are the same as over a socket; only framing errors cannot happen.
 */
export class InMemoryTransport extends EventEmitter<TransportEvents> implements Transport {
  private peer: InMemoryTransport | undefined;
  private isClosed = false;

  static pair(): [InMemoryTransport, InMemoryTransport] {
    const a = new InMemoryTransport();
    const b = new InMemoryTransport();
    a.peer = b;
    b.peer = a;
    return [a, b];
  }

  get closed(): boolean {
    return this.isClosed;
  }

  send(bytes: Uint8Array, fds: FileDescriptor[] = []): void {
    if (this.isClosed) throw new ViommuError('EPIPE', 'send on a closed in-memory transport');
    if (bytes.length < 16 || Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).readUInt32LE(4) !== bytes.length) {
      throw new ViommuError('ERR_INVALID_ARG_VALUE', 'send(bytes, fds): a message is at least 16 bytes and its u32 at offset 4 equals its length');
    }
    const copy = Buffer.from(bytes);
    const duplicated = fds.map((fd) => fd.dup());
    const peer = this.peer!;
    setImmediate(() => {
      if (peer.isClosed) {
        for (const fd of duplicated) fd.close();
        return;
      }
      const received = new ReceivedFds(duplicated);
      try {
        peer.emit('message', copy, received);
      } finally {
        received.closeUnclaimed();
      }
    });
  }

  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    process.nextTick(() => this.emit('close', undefined));
    const peer = this.peer;
    // The peer sees the close after every message already sent, as with a socket.
    if (peer && !peer.isClosed) {
      setImmediate(() => {
        if (peer.isClosed) return;
        peer.isClosed = true;
        peer.emit('close', undefined);
      });
    }
  }
}
