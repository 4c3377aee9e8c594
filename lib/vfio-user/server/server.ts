/** VfioUserServer: listens on a UNIX socket and serves one device to its clients one after another. */

import { EventEmitter } from 'node:events';
import { MessageSocket, UnixServer, type MessageSocketOptions } from '../../os';
import type { SystemCallError } from '../../native';
import { HEADER_SIZE, REGION_ACCESS_LAYOUT } from '../protocol';
import { socketTransport, type Transport } from '../transport';
import type { VfioUserDevice } from './device';
import { DEFAULT_SERVER_CAPABILITIES, VfioUserSession, type SessionOptions } from './session';
import { DEFAULT_WAITING_LIMITS, WaitingTransport, type WaitingLimits } from './waiting-transport';

export interface VfioUserServerOptions extends SessionOptions {
  /** Clients allowed to wait for their turn (default 8); one more is closed at once. */
  readonly maxWaitingClients?: number;
  /** What a waiting client may send before its turn. */
  readonly waitingLimits?: WaitingLimits;
  /** Socket limits for accepted connections (default: room for our max_data_xfer_size plus headers). */
  readonly socket?: MessageSocketOptions;
}

/** A client as the server's events describe it. */
export interface ClientInfo {
  /** Increases with every client the server accepted. */
  readonly id: number;
}

export interface ServerEvents {
  /** A client connected while another is served; it is answered when its turn comes. */
  clientWaiting: [client: ClientInfo, waiting: number];
  /** A client's turn began: its session is live. */
  clientConnected: [client: ClientInfo, session: VfioUserSession];
  /** A served client left (error undefined for a clean close) and the device was released. */
  clientDisconnected: [client: ClientInfo, error: Error | undefined];
  /** A client was closed without being served: too many waiting, or it sent too much while waiting. */
  clientRefused: [client: ClientInfo, reason: string];
  /** A session's warning (e.g. an unsealed DMA fd) or a device handler's untyped error. */
  warning: [client: ClientInfo, message: string];
  /** accept() failed (e.g. EMFILE); the server keeps listening. */
  error: [error: SystemCallError];
  /** After close(): no session, no waiting client, no listening socket. */
  close: [];
}

interface Queued {
  readonly info: ClientInfo;
  readonly transport: WaitingTransport;
}

const DEFAULT_MAX_WAITING = 8;
/** Slack for headers and the largest non-data payloads (VERSION JSON, region info with capabilities). */
const MESSAGE_SLACK = 64 * 1024;

/**
 * libvfio-user serves one client per device context and accepts the next only after the first detached, so a
 * second client's connect() succeeds (the kernel queues it) and waits. We do the same: a client arriving while
 * another is served waits (its messages held until its turn), up to maxWaitingClients.
 */
export class VfioUserServer extends EventEmitter<ServerEvents> {
  private listener: UnixServer | undefined;
  private current: { info: ClientInfo; session: VfioUserSession } | undefined;
  private readonly queue: Queued[] = [];
  private nextClientId = 1;
  private closing = false;
  private closedEmitted = false;

  constructor(
    readonly device: VfioUserDevice,
    private readonly options: VfioUserServerOptions = {},
  ) {
    super();
  }

  /** Listens on `path` (a stale socket file from a dead process is replaced) and serves `device` there. */
  static listen(path: string, device: VfioUserDevice, options: VfioUserServerOptions = {}): VfioUserServer {
    const server = new VfioUserServer(device, options);
    const maxDataXferSize = options.capabilities?.maxDataXferSize ?? DEFAULT_SERVER_CAPABILITIES.maxDataXferSize!;
    const socketOptions: MessageSocketOptions = {
      maxMessageSize: HEADER_SIZE + REGION_ACCESS_LAYOUT.size + maxDataXferSize + MESSAGE_SLACK,
      ...options.socket,
    };
    server.listener = UnixServer.listen(path, socketOptions);
    server.listener.on('connection', (socket: MessageSocket) => server.accept(socketTransport(socket)));
    server.listener.on('error', (error) => server.emit('error', error));
    return server;
  }

  get path(): string | undefined {
    return this.listener?.path;
  }

  /** The session being served, if any. */
  get session(): VfioUserSession | undefined {
    return this.current?.session;
  }

  get waitingClients(): number {
    return this.queue.length;
  }

  /** Serves a connected transport as if it had been accepted on the socket (e.g. one end of a socket pair). */
  accept(transport: Transport): ClientInfo {
    const info: ClientInfo = { id: this.nextClientId++ };
    if (this.closing) {
      transport.close();
      return info;
    }
    const waiting = new WaitingTransport(transport, this.options.waitingLimits ?? DEFAULT_WAITING_LIMITS);
    if (this.current !== undefined && this.queue.length >= (this.options.maxWaitingClients ?? DEFAULT_MAX_WAITING)) {
      waiting.close();
      this.emit('clientRefused', info, `${this.queue.length} clients are already waiting`);
      return info;
    }
    const queued: Queued = { info, transport: waiting };
    this.queue.push(queued);
    waiting.once('close', () => {
      const at = this.queue.indexOf(queued);
      if (at < 0) return;
      this.queue.splice(at, 1);
      this.emit('clientRefused', info, waiting.overflowed ? 'it sent too much while waiting for its turn' : 'it left while waiting for its turn');
    });
    if (this.current === undefined) this.serveNext();
    else this.emit('clientWaiting', info, this.queue.length);
    return info;
  }

  /** Stops listening, disconnects the client and every waiting one; resolves once the device is released. */
  close(): Promise<void> {
    this.closing = true;
    this.listener?.close();
    this.listener = undefined;
    for (const queued of this.queue.splice(0)) queued.transport.close();
    const current = this.current;
    if (current === undefined) {
      this.emitClose();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.once('close', () => resolve());
      current.session.close();
    });
  }

  private serveNext(): void {
    const next = this.queue.shift();
    if (next === undefined) {
      if (this.closing) this.emitClose();
      return;
    }
    const { info, transport } = next;
    transport.removeAllListeners('close');
    const session = new VfioUserSession(transport, this.device, this.options);
    this.current = { info, session };
    session.on('warning', (message) => this.emit('warning', info, message));
    session.on('handlerError', (error, failed) => this.emit('warning', info, `command ${failed.command} failed inside the device: ${String(error)}`));
    session.once('close', (error) => {
      this.current = undefined;
      this.emit('clientDisconnected', info, error);
      if (this.closing) {
        for (const queued of this.queue.splice(0)) queued.transport.close();
        this.emitClose();
        return;
      }
      this.serveNext();
    });
    this.emit('clientConnected', info, session);
    transport.activate();
  }

  private emitClose(): void {
    if (this.closedEmitted) return;
    this.closedEmitted = true;
    process.nextTick(() => this.emit('close'));
  }
}
