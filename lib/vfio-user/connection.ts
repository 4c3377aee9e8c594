/** VfioUserConnection: requests and replies matched by msg_id, command handlers, limits and fd ownership over Transports. */

import { EventEmitter } from 'node:events';
import { ERRNO } from '../errno';
import { ViommuError } from '../errors';
import { isPromiseLike } from '../memory/dma-space';
import type { FdUsage, FileDescriptor } from '../native';
import { processFdUsage, type ReceivedFds } from '../os';
import { decodeHeader, decodeMessageWithHeader, encodeCommandOf, encodeErrorReply, encodeReplyOf, type VfioUserHeader } from './codec';
import {
  EMFILE,
  errnoOf,
  UNEXPECTED_ERROR_ERRNO,
  VfioUserClosedError,
  VfioUserLimitError,
  VfioUserRemoteError,
  VfioUserTimeoutError,
} from './connection-errors';
import { invalid, VfioUserProtocolError } from './errors';
import { releaseMessageBuffer } from './payload-io';
import type { CommandBodies, CommandMessage, CommandOf, DecodeContext, ReplyBodies, ReplyOf, VfioUserCommand } from './messages';
import { COMMANDS, HEADER_FLAGS, MESSAGE_TYPES, type CommandName } from './protocol';
import type { Transport } from './transport';
import { resolveCapabilities, type ResolvedCapabilities, type VersionCapabilities } from './version';

/** msg_id is a u16. */
const MSG_ID_COUNT = 2 ** 16;

/** What we announce when the owner states nothing: libvfio-user's own limits. */
export const DEFAULT_LOCAL_CAPABILITIES: VersionCapabilities = { maxMsgFds: 8, maxDataXferSize: 1048576 };

/**
 * Fds the process keeps free after taking a command's fds. A server must still be able to accept the next client
 * and the waiting ones (8 by default), create a twin socket pair, receive one more message's fds (max_msg_fds, 8)
 * and let Node open what it needs; 32 covers that with room to spare.
 */
export const DEFAULT_FD_HEADROOM = 32;

export type ChannelName = 'main' | 'twin';

export interface ConnectionOptions {
  /**
   * 'client' sends its commands on the main socket; 'server' sends its own (DMA_READ/DMA_WRITE) on the twin socket
   * once one is negotiated. Both serve commands arriving on any channel.
   */
  readonly role: 'client' | 'server';
  /** Our limits, announced in VERSION and enforced on what we receive; unstated members get DEFAULT_LOCAL_CAPABILITIES. */
  readonly capabilities?: VersionCapabilities;
  /** Time limit for requests that name none; undefined waits forever. */
  readonly requestTimeoutMs?: number;
  /** How DMA_READ replies are laid out by this peer (see DecodeContext). */
  readonly dmaReadReplyLayout?: DecodeContext['dmaReadReplyLayout'];
  /**
   * A command whose fds would leave the process fewer free fds than this (below its RLIMIT_NOFILE) is refused with
   * EMFILE and its fds are closed (default DEFAULT_FD_HEADROOM; 0 turns the check off).
   */
  readonly fdHeadroom?: number;
  /** Where the process's fd usage comes from; injectable for tests. */
  readonly fdUsage?: () => FdUsage;
}

export interface RequestOptions {
  /** Sent with the command. The caller keeps ownership: the kernel (or the in-memory transport) duplicates them. */
  readonly fds?: readonly FileDescriptor[];
  readonly timeoutMs?: number;
  /** Sets NO_REPLY: the peer will not answer, the promise resolves once the bytes are handed to the transport. */
  readonly noReply?: boolean;
}

/** A successful reply. The caller owns `fds` and must close (or hand on) every one of them. */
export interface ReceivedReply<N extends CommandName> {
  readonly msgId: number;
  readonly body: ReplyOf<N>;
  readonly fds: FileDescriptor[];
}

export interface CommandInfo {
  readonly msgId: number;
  readonly noReply: boolean;
  readonly channel: ChannelName;
}

/** A reply body with fds to send along. With `transfer`, the connection closes them once sent; else the caller keeps them. */
export class ReplyWithFds<N extends CommandName = CommandName> {
  constructor(
    readonly body: ReplyBodies[N],
    readonly fds: readonly FileDescriptor[],
    readonly transfer: boolean,
  ) {}
}

export function replyWithFds<N extends CommandName>(
  body: ReplyBodies[N],
  fds: readonly FileDescriptor[],
  options: { transfer?: boolean } = {},
): ReplyWithFds<N> {
  return new ReplyWithFds<N>(body, fds, options.transfer ?? false);
}

export type HandlerResult<N extends CommandName> = ReplyBodies[N] | ReplyWithFds<N>;

/**
 * Serves one command. Take the fds you keep from `fds` synchronously (before any await): the rest are closed right
 * after dispatch. Throw a typed error (VfioUserErrnoError, VfioUserProtocolError, ...) to answer with its errno.
 */
export type CommandHandler<N extends CommandName> = (
  command: CommandOf<N>,
  fds: ReceivedFds,
  info: CommandInfo,
) => HandlerResult<N> | Promise<HandlerResult<N>>;

/** Which command failed; `command` is the number, since an unknown command has no name. */
export interface FailedCommandInfo extends CommandInfo {
  readonly command: number;
}

export interface DroppedReply {
  readonly msgId: number;
  readonly command: number;
  /** 'late': the request had timed out; 'unknown-id': nothing of ours was waiting for it on that channel. */
  readonly reason: 'late' | 'unknown-id';
  /** How many fds came with it (all closed). */
  readonly fds: number;
  readonly channel: ChannelName;
}

export interface ConnectionEvents {
  /** Once, after every pending request was rejected; error is undefined for a clean close. */
  close: [error: Error | undefined];
  droppedReply: [info: DroppedReply];
  /** A handler threw something untyped (answered with UNEXPECTED_ERROR_ERRNO) or returned an unencodable reply. */
  handlerError: [error: unknown, info: FailedCommandInfo];
  /** A bad message we could not answer: a NO_REPLY command that failed, or an undecodable reply nobody waits for. */
  protocolError: [error: Error, channel: ChannelName];
}

interface Channel {
  readonly name: ChannelName;
  readonly transport: Transport;
}

interface Pending {
  readonly msgId: number;
  readonly body: VfioUserCommand;
  readonly channel: Channel;
  readonly resolve: (reply: ReceivedReply<CommandName>) => void;
  readonly reject: (error: Error) => void;
  /** performance.now() by which the reply must have come (Infinity: no limit), and the limit as asked, for the error. */
  readonly deadline: number;
  readonly timeoutMs: number;
}

type Outcome = { readonly ok: true; readonly value: unknown } | { readonly ok: false; readonly error: unknown };

const TYPE_BITS = HEADER_FLAGS.bits.TYPE;
const NO_CONTEXT: DecodeContext = {};
const NO_REPLY_BIT = HEADER_FLAGS.bits.NO_REPLY;

function isReplyHeader(header: VfioUserHeader): boolean {
  return (header.flags & TYPE_BITS) === MESSAGE_TYPES.values.REPLY;
}

/** The data size of a transfer command, which max_data_xfer_size bounds; undefined for other commands. */
export function transferSize(body: VfioUserCommand): number | undefined {
  switch (body.command) {
    case 'REGION_READ':
      return body.count;
    case 'REGION_WRITE':
    case 'DMA_WRITE':
      return body.data.length;
    case 'DMA_READ':
      return Number(body.count);
    default:
      return undefined;
  }
}

/**
 * A body tagged with its command name. The name goes first: V8 copies a spread into a literal quickly, but adding a
 * property after the spread (`{ ...body, command }`) costs hundreds of nanoseconds on every message.
 */
function withCommand<T extends object>(command: string, body: T): T & { command: string } {
  const tagged = { command, ...body };
  if (tagged.command !== command) tagged.command = command;
  return tagged;
}

export class VfioUserConnection extends EventEmitter<ConnectionEvents> {
  readonly role: 'client' | 'server';
  private readonly stated: VersionCapabilities;
  private readonly local: ResolvedCapabilities;
  private peer: ResolvedCapabilities = resolveCapabilities({});
  private negotiatedMinor: number | undefined;
  private readonly channels: Channel[] = [];
  private readonly handlers = new Map<CommandName, CommandHandler<CommandName>>();
  private readonly pending = new Map<number, Pending>();
  /** Ids of requests that timed out: kept out of use until their late reply arrives, so it cannot match a new one. */
  private readonly abandoned = new Set<number>();
  private nextId = 1;
  /**
   * One timer for every request's time limit, armed for the earliest deadline: a timer per request would cost more
   * than the rest of a small round trip.
   */
  private timeoutTimer: NodeJS.Timeout | undefined;
  private timeoutAt = Infinity;
  private timedRequests = 0;
  /** Every channel's transport keeps the process running while open (Transport.keepsProcessAlive). */
  private transportsHoldProcess = false;
  private isClosed = false;
  private closeReason: Error | undefined;

  constructor(
    transport: Transport,
    private readonly options: ConnectionOptions,
  ) {
    super();
    this.role = options.role;
    this.stated = { ...DEFAULT_LOCAL_CAPABILITIES, ...options.capabilities };
    this.local = resolveCapabilities(this.stated);
    this.attach('main', transport);
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Our limits, as enforced on what we receive. */
  get localCapabilities(): ResolvedCapabilities {
    return this.local;
  }

  /** What we say in VERSION (our stated capabilities, limits always explicit). */
  get announcedCapabilities(): VersionCapabilities {
    return this.stated;
  }

  /** The peer's limits (the spec's defaults until VERSION is done), as enforced on what we send. */
  get peerCapabilities(): ResolvedCapabilities {
    return this.peer;
  }

  /** The agreed minor version once VERSION is done. */
  get versionMinor(): number | undefined {
    return this.negotiatedMinor;
  }

  get hasTwin(): boolean {
    return this.channels.some((channel) => channel.name === 'twin');
  }

  get pendingRequests(): number {
    return this.pending.size;
  }

  /** Records the outcome of VERSION (see negotiation.ts). */
  setPeerCapabilities(peer: ResolvedCapabilities, minor: number): void {
    this.peer = peer;
    this.negotiatedMinor = minor;
  }

  /** Adds the negotiated twin socket; the connection owns it from now on and closes it with the rest. */
  attachTwin(transport: Transport): void {
    if (this.isClosed) {
      transport.close();
      throw new VfioUserClosedError('attachTwin on a closed vfio-user connection', this.closeReason);
    }
    if (this.hasTwin) {
      transport.close();
      throw new ViommuError('ERR_VFIO_USER_TWIN', 'this connection already has a twin socket; VERSION happens once');
    }
    this.attach('twin', transport);
  }

  /** Registers the handler of one command, replacing any earlier one. */
  onCommand<N extends CommandName>(command: N, handler: CommandHandler<N>): this {
    this.handlers.set(command, handler as unknown as CommandHandler<CommandName>);
    return this;
  }

  offCommand(command: CommandName): this {
    this.handlers.delete(command);
    return this;
  }

  /** Sends a command; resolves with its reply, or rejects with VfioUserRemoteError, a timeout, a limit or a close. */
  request<N extends CommandName>(command: N, body: CommandBodies[N], options: RequestOptions & { noReply: true }): Promise<void>;
  request<N extends CommandName>(command: N, body: CommandBodies[N], options?: RequestOptions): Promise<ReceivedReply<N>>;
  request<N extends CommandName>(command: N, body: CommandBodies[N], options: RequestOptions = {}): Promise<ReceivedReply<N> | void> {
    return new Promise<ReceivedReply<N> | void>((resolve, reject) => {
      if (this.isClosed) throw new VfioUserClosedError(`cannot send ${command}: the connection is closed`, this.closeReason);
      const fds = options.fds ?? [];
      if (fds.length > this.peer.maxMsgFds) {
        throw new VfioUserLimitError(
          'ERR_VFIO_USER_TOO_MANY_FDS',
          `${command} with ${fds.length} fds: the peer accepts at most ${this.peer.maxMsgFds} per message`,
        );
      }
      const tagged = withCommand(command, body) as unknown as VfioUserCommand;
      const size = transferSize(tagged);
      if (size !== undefined && size > this.peer.maxDataXferSize) {
        throw new VfioUserLimitError(
          'ERR_VFIO_USER_TRANSFER_TOO_BIG',
          `${command} of ${size} bytes: the peer's max_data_xfer_size is ${this.peer.maxDataXferSize}; split it (transfers.ts)`,
        );
      }
      const channel = this.commandChannel();
      const msgId = this.allocateId();
      const bytes = encodeCommandOf(msgId, command, body, options.noReply ?? false);
      // Transports send synchronously and duplicate what they keep, so the caller's list needs no copy.
      const sent = fds.length === 0 ? undefined : (fds as FileDescriptor[]);
      if (options.noReply) {
        channel.transport.send(bytes, sent);
        releaseMessageBuffer(bytes);
        resolve();
        return;
      }
      const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs;
      const pending: Pending = {
        msgId,
        body: tagged,
        channel,
        resolve: resolve as unknown as (reply: ReceivedReply<CommandName>) => void,
        reject,
        deadline: timeoutMs === undefined ? Infinity : performance.now() + timeoutMs,
        timeoutMs: timeoutMs ?? Infinity,
      };
      // Registered before sending: a transport may deliver the reply before send() returns.
      this.pending.set(msgId, pending);
      try {
        channel.transport.send(bytes, sent);
      } catch (error) {
        this.pending.delete(msgId);
        throw error;
      }
      // The transport is done with the bytes (Transport.send): a large message's buffer serves the next one.
      releaseMessageBuffer(bytes);
      if (this.pending.get(msgId) === pending && pending.deadline !== Infinity) {
        // A timer left armed (unreferenced) by the last request serves this one too; it holds the process again,
        // unless the transports already do.
        if (this.timedRequests++ === 0 && !this.transportsHoldProcess) this.timeoutTimer?.ref();
        this.armTimeout(pending.deadline);
      }
    });
  }

  /**
   * A request left `pending` (answered, failed or timed out): its deadline no longer counts. With none left the
   * timer stays armed but stops holding the process open, so that request after request costs no timer at all;
   * when it fires with nothing expired it is simply not re-armed.
   */
  private settled(request: Pending): void {
    if (request.deadline === Infinity || this.timedRequests === 0) return;
    if (--this.timedRequests === 0 && !this.transportsHoldProcess) this.timeoutTimer?.unref();
  }

  private armTimeout(deadline: number): void {
    if (deadline >= this.timeoutAt) return;
    if (this.timeoutTimer !== undefined) clearTimeout(this.timeoutTimer);
    this.timeoutAt = deadline;
    this.timeoutTimer = setTimeout(() => this.expireRequests(), Math.max(0, Math.ceil(deadline - performance.now())));
    // Sockets keep the process running while a reply can still come; then the timer need never hold it, and
    // request after request costs no ref/unref of it (see Transport.keepsProcessAlive).
    if (this.transportsHoldProcess || this.timedRequests === 0) this.timeoutTimer.unref();
  }

  private disarmTimeout(): void {
    if (this.timeoutTimer !== undefined) clearTimeout(this.timeoutTimer);
    this.timeoutTimer = undefined;
    this.timeoutAt = Infinity;
  }

  /** Rejects every request past its deadline and arms the timer for the earliest one left. */
  private expireRequests(): void {
    this.timeoutTimer = undefined;
    this.timeoutAt = Infinity;
    const now = performance.now();
    let next = Infinity;
    const expired: Pending[] = [];
    for (const request of this.pending.values()) {
      if (request.deadline <= now) expired.push(request);
      else if (request.deadline < next) next = request.deadline;
    }
    for (const request of expired) {
      this.pending.delete(request.msgId);
      this.abandoned.add(request.msgId);
      this.settled(request);
      request.reject(new VfioUserTimeoutError(request.body.command, request.msgId, request.timeoutMs));
    }
    if (next !== Infinity) this.armTimeout(next);
  }

  /** Closes every channel; pending requests reject with VfioUserClosedError. */
  close(): void {
    this.teardown(undefined);
  }

  // ---- channels ---------------------------------------------------------------------------------------------

  private attach(name: ChannelName, transport: Transport): void {
    const channel: Channel = { name, transport };
    this.channels.push(channel);
    const held = this.transportsHoldProcess;
    this.transportsHoldProcess = this.channels.every((each) => each.transport.keepsProcessAlive === true);
    if (held && !this.transportsHoldProcess && this.timedRequests > 0) this.timeoutTimer?.ref();
    transport.on('message', (bytes, fds) => this.receive(channel, bytes, fds));
    transport.on('close', (error) => this.teardown(error));
    if (transport.closed) this.teardown(undefined);
  }

  /** Servers send their own commands on the twin socket, so they never race the client's on the main one. */
  private commandChannel(): Channel {
    if (this.role === 'server') {
      const twin = this.channels.find((channel) => channel.name === 'twin');
      if (twin) return twin;
    }
    return this.channels[0]!;
  }

  private allocateId(): number {
    for (let attempt = 0; attempt < MSG_ID_COUNT; attempt++) {
      const id = this.nextId;
      this.nextId = (this.nextId + 1) % MSG_ID_COUNT;
      if (!this.pending.has(id) && !this.abandoned.has(id)) return id;
    }
    if (this.abandoned.size > 0) {
      // Every id is either in flight or abandoned: a reply that late is not coming, so reuse those ids.
      this.abandoned.clear();
      return this.allocateId();
    }
    throw new VfioUserLimitError('ERR_VFIO_USER_IDS_EXHAUSTED', `all ${MSG_ID_COUNT} msg_ids are waiting for replies`);
  }

  private teardown(error: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeReason = error;
    for (const channel of this.channels) {
      if (!channel.transport.closed) channel.transport.close();
    }
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.abandoned.clear();
    this.timedRequests = 0;
    this.disarmTimeout();
    for (const request of pending) {
      request.reject(new VfioUserClosedError(`the connection closed before ${request.body.command} (msg_id ${request.msgId}) was answered`, error));
    }
    process.nextTick(() => this.emit('close', error));
  }

  // ---- receiving ----------------------------------------------------------------------------------------------

  /** Runs inside the transport's 'message' event, so handlers can take fds synchronously. */
  private receive(channel: Channel, bytes: Buffer, fds: ReceivedFds): void {
    if (this.isClosed) return;
    let header: VfioUserHeader;
    try {
      header = decodeHeader(bytes);
    } catch (error) {
      // Without a header there is no msg_id to answer: this peer cannot be talked to any more.
      this.teardown(error as Error);
      return;
    }
    if (isReplyHeader(header)) {
      this.receiveReply(channel, header, bytes, fds);
      return;
    }
    let message;
    try {
      message = decodeMessageWithHeader(bytes, header, NO_CONTEXT, true);
    } catch (error) {
      this.finish(channel, header.msgId, header.command, (header.flags & NO_REPLY_BIT) !== 0, { ok: false, error });
      return;
    }
    if (message.type !== 'command') {
      this.emit('protocolError', invalid('ERR_VFIO_USER_BAD_HEADER', 'a command header decoded as a reply'), channel.name);
      return;
    }
    this.dispatch(channel, message, fds, header.command);
  }

  private receiveReply(channel: Channel, header: VfioUserHeader, bytes: Buffer, fds: ReceivedFds): void {
    const pending = this.pending.get(header.msgId);
    if (pending === undefined || pending.channel !== channel) {
      const reason = pending === undefined && this.abandoned.delete(header.msgId) ? 'late' : 'unknown-id';
      // Not taking the fds here is what closes them: ReceivedFds closes the unclaimed after dispatch.
      this.emit('droppedReply', { msgId: header.msgId, command: header.command, reason, fds: fds.count, channel: channel.name });
      return;
    }
    this.pending.delete(header.msgId);
    this.settled(pending);
    if (fds.count > this.local.maxMsgFds) {
      pending.reject(new VfioUserLimitError('ERR_VFIO_USER_TOO_MANY_FDS', `the reply carried ${fds.count} fds, we accept ${this.local.maxMsgFds}`));
      return;
    }
    let message;
    try {
      // The transport handed us the bytes for good (TransportEvents): decoded data may be views of them.
      message = decodeMessageWithHeader(bytes, header, { command: pending.body, dmaReadReplyLayout: this.options.dmaReadReplyLayout }, true);
    } catch (error) {
      pending.reject(error as Error);
      return;
    }
    if (message.type === 'error') {
      pending.reject(new VfioUserRemoteError(message.errno, message.command, message.msgId));
    } else if (message.type !== 'reply' || message.body.command !== pending.body.command) {
      pending.reject(
        new VfioUserProtocolError(
          'ERR_VFIO_USER_REPLY_MISMATCH',
          ERRNO.EINVAL,
          `msg_id ${header.msgId} was ${pending.body.command}, the reply is for command ${header.command}`,
        ),
      );
    } else {
      pending.resolve({ msgId: message.msgId, body: message.body, fds: fds.takeAll() });
    }
  }

  /** `command`: the header's command number (the decoder found `body.command` by it). */
  private dispatch(channel: Channel, message: CommandMessage, fds: ReceivedFds, command: number): void {
    const { msgId, noReply, body } = message;
    let result: unknown;
    try {
      this.checkIncomingLimits(body, fds);
      const handler = this.handlers.get(body.command);
      if (handler === undefined) throw invalid('ERR_VFIO_USER_UNKNOWN_COMMAND', `no handler for ${body.command}`);
      result = handler(body, fds, { msgId, noReply, channel: channel.name });
    } catch (error) {
      this.finish(channel, msgId, command, noReply, { ok: false, error });
      return;
    }
    if (isPromiseLike(result)) {
      result.then(
        (value) => this.finish(channel, msgId, command, noReply, { ok: true, value }),
        (error: unknown) => this.finish(channel, msgId, command, noReply, { ok: false, error }),
      );
    } else {
      this.finish(channel, msgId, command, noReply, { ok: true, value: result });
    }
  }

  private checkIncomingLimits(body: VfioUserCommand, fds: ReceivedFds): void {
    if (fds.count > this.local.maxMsgFds) {
      throw new VfioUserLimitError(
        'ERR_VFIO_USER_TOO_MANY_FDS',
        `${body.command} carried ${fds.count} fds, we announced max_msg_fds ${this.local.maxMsgFds}`,
      );
    }
    if (fds.count > 0) this.checkFdHeadroom(body, fds.count);
    const size = transferSize(body);
    if (size !== undefined && size > this.local.maxDataXferSize) {
      throw new VfioUserLimitError(
        'ERR_VFIO_USER_TRANSFER_TOO_BIG',
        `${body.command} of ${size} bytes, we announced max_data_xfer_size ${this.local.maxDataXferSize}`,
      );
    }
  }

  /**
   * A peer may send an fd with every DMA_MAP, up to max_dma_maps of them, and each one we keep takes a slot of our
   * RLIMIT_NOFILE. A process with no slot left cannot accept a connection or receive the next fd, so we refuse while
   * there is still room to answer: EMFILE ("Too many open files") names the resource that ran short and tells the
   * operator which limit to raise. ENOSPC (what Linux VFIO answers past its DMA entry limit) would point at the map
   * table, which is not what is full: the same map without an fd is still accepted. The received fds are already
   * open (counted in `open`); refusing closes them.
   */
  private checkFdHeadroom(body: VfioUserCommand, received: number): void {
    const headroom = this.options.fdHeadroom ?? DEFAULT_FD_HEADROOM;
    if (headroom <= 0) return;
    const { open, limit } = (this.options.fdUsage ?? processFdUsage)();
    if (open === undefined || limit - open >= headroom) return;
    throw new VfioUserLimitError(
      'ERR_VFIO_USER_FD_LIMIT',
      `${body.command} carried ${received} fd${received === 1 ? '' : 's'}, but keeping ${received === 1 ? 'it' : 'them'} would leave ` +
        `${Math.max(0, limit - open)} of this process's ${limit} fds (RLIMIT_NOFILE) free, fewer than the ${headroom} it keeps to go on serving`,
      EMFILE,
    );
  }

  /** Sends the reply to one command (none for NO_REPLY), and releases fds the handler gave us. */
  private finish(channel: Channel, msgId: number, command: number, noReply: boolean, outcome: Outcome): void {
    const name = COMMANDS.nameOf(command);
    if (!outcome.ok) {
      if (noReply) this.emit('protocolError', outcome.error as Error, channel.name);
      else this.replyWithError(channel, msgId, command, outcome.error, { msgId, noReply, channel: channel.name, command });
      return;
    }
    const result = outcome.value;
    const withFds = result instanceof ReplyWithFds ? result : undefined;
    try {
      if (noReply || this.isClosed || name === undefined) return;
      const body = withFds ? withFds.body : result;
      const fds = withFds ? [...withFds.fds] : [];
      let bytes: Uint8Array;
      try {
        if (fds.length > this.peer.maxMsgFds) {
          throw new VfioUserLimitError(
            'ERR_VFIO_USER_TOO_MANY_FDS',
            `the ${name} reply has ${fds.length} fds, the peer accepts ${this.peer.maxMsgFds}`,
          );
        }
        bytes = encodeReplyOf(msgId, name, body as ReplyOf<CommandName>);
      } catch (error) {
        // The handler's reply cannot go out as it is: that is our bug, not the peer's, so it is always reported.
        this.replyWithError(channel, msgId, command, error, { msgId, noReply, channel: channel.name, command }, true);
        return;
      }
      this.send(channel, bytes, fds);
    } finally {
      if (withFds?.transfer) for (const fd of withFds.fds) fd.close();
    }
  }

  /** The one place where a failure becomes an errno on the wire. */
  private replyWithError(channel: Channel, msgId: number, command: number, error: unknown, info: FailedCommandInfo, ourFault = false): void {
    const errno = errnoOf(error);
    if (errno === undefined || ourFault) this.emit('handlerError', error, info);
    this.send(channel, encodeErrorReply(msgId, command, errno ?? UNEXPECTED_ERROR_ERRNO), []);
  }

  private send(channel: Channel, bytes: Uint8Array, fds: FileDescriptor[]): void {
    if (this.isClosed || channel.transport.closed) return;
    try {
      channel.transport.send(bytes, fds);
    } catch (error) {
      // A reply that cannot be sent means the channel is broken; the close event reports why.
      this.teardown(error as Error);
    }
    releaseMessageBuffer(bytes);
  }
}
