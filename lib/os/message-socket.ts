/** MessageSocket: a UNIX stream socket carrying framed messages with fds, as events on the Node event loop. */
import { EventEmitter } from 'node:events';
import { native, type FdUsage, type FileDescriptor, type MessageSocketOptions, type NativeMessageSocket, type SystemCallError } from '../native';
import { ReceivedFds } from './received-fds';

export type { FdUsage, MessageSocketOptions };

/**
 * This process's open fds and its RLIMIT_NOFILE. Every fd a peer sends takes a slot, and a process with none left
 * can neither accept a connection nor receive fds, so receivers check how many they may keep.
 */
export function processFdUsage(): FdUsage {
  return native.fdUsage();
}

const NO_FDS = new ReceivedFds([]);

export interface MessageSocketEvents {
  /**
   * One whole message. Take the fds you keep from `fds` during the handler; the rest are closed right after.
   * `bytes` is the receiver's own: a fresh allocation per message that the socket never touches again.
   */
  message: [bytes: Buffer, fds: ReceivedFds];
  /** Emitted once: `error` is undefined for a clean close (by either side), set for a failure or broken framing. */
  close: [error: SystemCallError | undefined];
}

export class MessageSocket extends EventEmitter<MessageSocketEvents> {
  private readonly socket: NativeMessageSocket;
  private closeError: SystemCallError | undefined;
  private closeReported = false;
  /**
   * Set when the native socket closes: by close(), or by its onClose callback, which it calls synchronously from
   * every shutdown. Read on every send, so it stays on the JS side rather than asking the addon each time.
   */
  private isClosed = false;

  /** An open MessageSocket keeps the event loop running (its poll handle is referenced until it closes). */
  readonly keepsProcessAlive = true;

  /** Wraps a connected socket; the MessageSocket takes ownership of `fd`. */
  constructor(fd: FileDescriptor, options: MessageSocketOptions = {}) {
    super();
    this.socket = new native.MessageSocket(
      fd,
      options,
      (bytes, fds) => this.dispatch(bytes, fds),
      (error) => this.reportClose(error),
    );
  }

  static connect(path: string, options?: MessageSocketOptions): MessageSocket {
    return new MessageSocket(native.unixConnect(path), options);
  }

  static pair(options?: MessageSocketOptions): [MessageSocket, MessageSocket] {
    const [a, b] = native.unixSocketPair();
    let first: MessageSocket;
    try {
      first = new MessageSocket(a, options);
    } catch (error) {
      a.close();
      b.close();
      throw error;
    }
    try {
      return [first, new MessageSocket(b, options)];
    } catch (error) {
      b.close();
      first.close();
      throw error;
    }
  }

  /** Sends one message (its u32 at offset 4 must equal its length). The caller keeps its fds. */
  send(bytes: Uint8Array, fds?: FileDescriptor[]): void {
    this.socket.send(bytes, fds);
  }

  close(): void {
    this.isClosed = true;
    this.socket.close();
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Why the socket closed, once it has. */
  get error(): SystemCallError | undefined {
    return this.closeError;
  }

  /** Bytes accepted by send() that the kernel has not taken yet. */
  get pendingBytes(): number {
    return this.socket.pendingBytes;
  }

  private dispatch(bytes: Buffer, fds: FileDescriptor[] | undefined): void {
    if (fds === undefined) {
      this.emit('message', bytes, NO_FDS);
      return;
    }
    const received = new ReceivedFds(fds);
    try {
      this.emit('message', bytes, received);
    } finally {
      received.closeUnclaimed();
    }
  }

  private reportClose(error: SystemCallError | undefined): void {
    this.isClosed = true;
    this.closeError = error;
    // Deferred so that close() returns before listeners run, as Node's own sockets behave.
    process.nextTick(() => {
      if (this.closeReported) return;
      this.closeReported = true;
      this.emit('close', error);
    });
  }
}
