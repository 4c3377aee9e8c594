/** Plays the server side of a recorded vfio-user session to a client: each command gets the recorded reply. */

import { native, type FileDescriptor } from '../../../lib/native';
import { MessageSocket } from '../../../lib/os';
import { decodeHeader, decodeMessage, encodeErrorReply } from '../../../lib/vfio-user/codec';
import { ERRNO } from '../../../lib/errno';
import type { VfioUserCommand, VfioUserMessage } from '../../../lib/vfio-user/messages';
import { HEADER_FLAGS, MESSAGE_TYPES } from '../../../lib/vfio-user/protocol';
import { socketTransport, type Transport } from '../../../lib/vfio-user/transport';
import { CAPTURES, readCapture, type CaptureRecord } from '../../captures';
export { CAPTURES, readCapture, type CaptureRecord };

export interface RecordedExchange {
  readonly command: CaptureRecord;
  readonly reply: CaptureRecord;
  /** Both decoded; undefined when our codec refuses the recorded bytes (the peer answered with an error then). */
  readonly request: VfioUserCommand | undefined;
  readonly answer: VfioUserMessage | undefined;
}

const isReply = (record: CaptureRecord) => (record.flags & HEADER_FLAGS.bits.TYPE) === MESSAGE_TYPES.values.REPLY;

function tryDecode(hex: string, command?: VfioUserCommand): VfioUserMessage | undefined {
  try {
    return decodeMessage(new Uint8Array(Buffer.from(hex, 'hex')), command === undefined ? {} : { command });
  } catch {
    return undefined;
  }
}

/** Pairs every command with its reply by channel, msg_id and command number, in recorded order. */
export function exchanges(records: CaptureRecord[], direction: 'c2s' | 's2c' = 'c2s'): RecordedExchange[] {
  const open = new Map<string, CaptureRecord[]>();
  const out: RecordedExchange[] = [];
  for (const record of records) {
    const key = `${record.chan}/${record.msg_id}/${record.cmd}`;
    if (!isReply(record)) {
      if (record.dir === direction) open.set(key, [...(open.get(key) ?? []), record]);
      continue;
    }
    const command = open.get(key)?.shift();
    if (command === undefined) continue;
    const decoded = tryDecode(command.hex);
    const request = decoded?.type === 'command' ? decoded.body : undefined;
    out.push({ command, reply: record, request, answer: tryDecode(record.hex, request) });
  }
  return out;
}

/** Whether a recorded exchange answers `command` as well as the peer answered its own. */
function matches(recorded: RecordedExchange, command: VfioUserCommand): boolean {
  const request = recorded.request;
  if (request === undefined || request.command !== command.command) return false;
  switch (command.command) {
    case 'DEVICE_GET_REGION_INFO': {
      const original = request as typeof command;
      if (original.index !== command.index) return false;
      // A reply's argsz is what the full answer needs: match a request that was big enough exactly when ours is.
      const answer = recorded.answer;
      const needed = answer?.type === 'reply' && answer.body.command === 'DEVICE_GET_REGION_INFO' ? answer.body.argsz : 0;
      return original.argsz >= needed === command.argsz >= needed;
    }
    case 'DEVICE_GET_IRQ_INFO':
      return (request as typeof command).index === command.index;
    case 'REGION_READ': {
      const original = request as typeof command;
      return original.region === command.region && original.offset === command.offset && original.count === command.count;
    }
    case 'REGION_WRITE': {
      const original = request as typeof command;
      return original.region === command.region && original.offset === command.offset && original.data.length === command.data.length;
    }
    case 'DMA_MAP':
    case 'DMA_UNMAP': {
      const original = request as typeof command;
      return original.address === command.address && original.size === command.size;
    }
    default:
      return true;
  }
}

/**
 * The server side of a capture. Replies keep their recorded bytes but take the client's msg_id; fds are made up to
 * match the recorded kinds (a socket pair end for the twin socket, a memfd of the region's size for region fds).
 */
export class CaptureReplayServer {
  /** Commands that no recorded exchange answers (they got EINVAL). */
  readonly unmatched: VfioUserCommand[] = [];
  /** Every command the client sent, decoded. */
  readonly received: VfioUserCommand[] = [];
  /** The server end of the twin socket, once one was handed out. */
  twin: Transport | undefined;
  private readonly used = new Set<RecordedExchange>();
  private readonly exchanges: RecordedExchange[];

  constructor(
    readonly transport: Transport,
    records: CaptureRecord[],
  ) {
    this.exchanges = exchanges(records).filter((exchange) => exchange.command.chan === 'main');
    transport.on('message', (bytes) => this.answer(bytes));
  }

  private answer(bytes: Buffer): void {
    const header = decodeHeader(bytes);
    const message = tryDecode(bytes.toString('hex'));
    if (message?.type !== 'command') {
      this.transport.send(encodeErrorReply(header.msgId, header.command, ERRNO.EINVAL));
      return;
    }
    this.received.push(message.body);
    const candidates = this.exchanges.filter((exchange) => matches(exchange, message.body));
    const chosen = candidates.find((exchange) => !this.used.has(exchange)) ?? candidates[0];
    if (chosen === undefined) {
      this.unmatched.push(message.body);
      this.transport.send(encodeErrorReply(header.msgId, header.command, ERRNO.EINVAL));
      return;
    }
    this.used.add(chosen);
    const reply = Buffer.from(chosen.reply.hex, 'hex');
    reply.writeUInt16LE(header.msgId, 0);
    const fds = this.fdsFor(chosen);
    try {
      this.transport.send(reply, fds);
    } finally {
      for (const fd of fds) fd.close();
    }
  }

  private fdsFor(exchange: RecordedExchange): FileDescriptor[] {
    return (exchange.reply.fds ?? []).map(({ kind }) => {
      if (kind.startsWith('socket:')) {
        const [mine, theirs] = native.unixSocketPair();
        this.twin?.close();
        this.twin = socketTransport(new MessageSocket(mine));
        return theirs;
      }
      if (kind.includes('eventfd')) return native.eventfdCreate();
      const answer = exchange.answer;
      const size =
        answer?.type === 'reply' && answer.body.command === 'DEVICE_GET_REGION_INFO' ? Number(answer.body.offset + answer.body.size) : 4096;
      const pageSize = native.pageSize;
      return native.memfdCreate('replayed-region', Math.max(pageSize, Math.ceil(size / pageSize) * pageSize));
    });
  }

  close(): void {
    this.transport.close();
    this.twin?.close();
  }
}
