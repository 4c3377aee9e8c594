/** UnixServer: listens on a UNIX socket path and hands each accepted connection over as a MessageSocket. */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import { native, isSystemCallError, type NativeListener, type SystemCallError } from '../native';
import { MessageSocket, type MessageSocketOptions } from './message-socket';

/**
 * At most one 'error' per this interval. The native listener already reports a run of identical failures once, but
 * runs can alternate with successes (a process hovering at its fd limit), and every report becomes a log line.
 */
export const ERROR_REPORT_INTERVAL_MS = 10_000;

export interface UnixServerEvents {
  connection: [socket: MessageSocket];
  /**
   * accept() failed (e.g. EMFILE); the server keeps listening and retries by itself. Rate-limited: failures in
   * between are counted in the next report's message.
   */
  error: [error: SystemCallError];
}

export class UnixServer extends EventEmitter<UnixServerEvents> {
  private listener: NativeListener | undefined;
  private lastErrorReport = -Infinity;
  private unreportedErrors = 0;

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
        (error) => server.reportError(error),
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
      if (isSystemCallError(error)) this.reportError(error);
      return;
    }
    if (this.listenerCount('connection') === 0) socket.close();
    else this.emit('connection', socket);
  }

  private reportError(error: SystemCallError): void {
    if (this.listenerCount('error') === 0) return;
    const now = performance.now();
    if (now - this.lastErrorReport < ERROR_REPORT_INTERVAL_MS) {
      this.unreportedErrors++;
      return;
    }
    if (this.unreportedErrors > 0) {
      error.message += ` (${this.unreportedErrors} more accept failures went unreported since the last report)`;
    }
    this.lastErrorReport = now;
    this.unreportedErrors = 0;
    this.emit('error', error);
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
