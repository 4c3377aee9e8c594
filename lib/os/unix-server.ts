/** UnixServer: listens on a UNIX socket path and hands each accepted connection over as a MessageSocket. */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import { native, isSystemCallError, type NativeListener, type SystemCallError } from '../native';
import { MessageSocket, type MessageSocketOptions } from './message-socket';

export interface UnixServerEvents {
  connection: [socket: MessageSocket];
  /** accept() failed (e.g. EMFILE); the server keeps listening. */
  error: [error: SystemCallError];
}

export class UnixServer extends EventEmitter<UnixServerEvents> {
  private listener: NativeListener | undefined;

  private constructor(
    readonly path: string,
    private readonly socketOptions: MessageSocketOptions,
  ) {
    super();
  }

  /**
   * Listens on `path`. A leftover socket file from a dead process (nobody accepting) is replaced; a live one is
   * refused with EADDRINUSE.
   */
  static listen(path: string, socketOptions: MessageSocketOptions = {}): UnixServer {
    const server = new UnixServer(path, socketOptions);
    let fd;
    try {
      fd = native.unixListen(path);
    } catch (error) {
      if (!isSystemCallError(error) || error.code !== 'EADDRINUSE' || !isStaleSocket(path)) throw error;
      fs.unlinkSync(path);
      fd = native.unixListen(path);
    }
    try {
      server.listener = new native.Listener(
        fd,
        (connection) => server.accept(connection),
        (error) => {
          if (server.listenerCount('error') > 0) server.emit('error', error);
        },
      );
    } catch (error) {
      fd.close();
      throw error;
    }
    return server;
  }

  get listening(): boolean {
    return this.listener !== undefined;
  }

  /** Stops accepting and removes the socket file. Connections already accepted stay open. */
  close(): void {
    if (!this.listener) return;
    this.listener.close();
    this.listener = undefined;
    fs.rmSync(this.path, { force: true });
  }

  private accept(fd: ReturnType<typeof native.unixConnect>): void {
    let socket: MessageSocket;
    try {
      socket = new MessageSocket(fd, this.socketOptions);
    } catch (error) {
      fd.close();
      if (isSystemCallError(error) && this.listenerCount('error') > 0) this.emit('error', error);
      return;
    }
    if (this.listenerCount('connection') === 0) socket.close();
    else this.emit('connection', socket);
  }
}

function isStaleSocket(path: string): boolean {
  try {
    if (!fs.statSync(path).isSocket()) return false;
    native.unixConnect(path).close();
    return false;
  } catch (error) {
    return isSystemCallError(error) && error.code === 'ECONNREFUSED';
  }
}
