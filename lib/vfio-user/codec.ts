/** Whole vfio-user messages: the 16-byte header, dispatch to payload codecs by command and type, and framing help. */

import { invalid, VfioUserProtocolError, type ProtocolErrorHeader } from './errors';
import type {
  CommandBodies,
  CommandMessage,
  ReplyBodies,
  DecodeContext,
  ErrorReplyMessage,
  ReplyMessage,
  VersionBody,
  VfioUserCommand,
  VfioUserMessage,
  VfioUserReply,
} from './messages';
import { fieldOffsets, isU16, isU32, readU16, readU32, writeU16, writeU32 } from '../byte-layout';
import { encodeError, PayloadReader, PayloadWriter, takeFramable, zeroedMessageBuffer } from './payload-io';
import { PAYLOAD_CODECS, type PayloadCodec } from './payloads';
import { COMMANDS, HEADER_FLAGS, HEADER_LAYOUT, HEADER_SIZE, MESSAGE_TYPES, type CommandName } from './protocol';
import { formatVersionCapabilities, parseVersionCapabilities, type VersionCapabilities } from './version';

export type { CommandMessage, DecodeContext, ErrorReplyMessage, ReplyMessage, VfioUserCommand, VfioUserMessage, VfioUserReply };

/** The header as it is on the wire. */
export interface VfioUserHeader {
  readonly msgId: number;
  readonly command: number;
  /** msg_size: the whole message, header included. */
  readonly messageSize: number;
  readonly flags: number;
  readonly error: number;
}

const TYPE_BITS = HEADER_FLAGS.bits.TYPE;
const NO_REPLY = HEADER_FLAGS.bits.NO_REPLY;
const ERROR = HEADER_FLAGS.bits.ERROR;
const MAX_MESSAGE_SIZE = 2 ** 32 - 1;

const HEADER_AT = fieldOffsets(HEADER_LAYOUT, { msgId: 2, command: 2, messageSize: 4, flags: 4, error: 4 });

/** Reads the header of the first message in `bytes`, checking only that 16 bytes are there. */
export function decodeHeader(bytes: Uint8Array): VfioUserHeader {
  if (bytes.length < HEADER_SIZE) {
    throw invalid('ERR_VFIO_USER_TRUNCATED', `a message needs a ${HEADER_SIZE}-byte header, got ${bytes.length} bytes`);
  }
  // Every message's header: read field by field into one fixed shape (offsets from HEADER_LAYOUT).
  return {
    msgId: readU16(bytes, HEADER_AT.msgId),
    command: readU16(bytes, HEADER_AT.command),
    messageSize: readU32(bytes, HEADER_AT.messageSize),
    flags: readU32(bytes, HEADER_AT.flags),
    error: readU32(bytes, HEADER_AT.error),
  };
}

export function encodeHeader(header: VfioUserHeader): Uint8Array {
  return new PayloadWriter(HEADER_SIZE).write(HEADER_LAYOUT, header).bytes;
}

/**
 * For stream framing: the size of the message that starts `bytes`, or undefined while fewer than 16 bytes have
 * arrived. A msg_size below the header size can never be framed, so it throws (the connection cannot resync).
 */
export function peekMessageSize(bytes: Uint8Array): number | undefined {
  if (bytes.length < HEADER_SIZE) return undefined;
  const { messageSize } = decodeHeader(bytes);
  if (messageSize < HEADER_SIZE) {
    throw invalid('ERR_VFIO_USER_BAD_SIZE', `msg_size ${messageSize} is below the ${HEADER_SIZE}-byte header`);
  }
  return messageSize;
}

function headerFacts(header: VfioUserHeader): ProtocolErrorHeader {
  return { msgId: header.msgId, command: header.command, isReply: (header.flags & TYPE_BITS) === MESSAGE_TYPES.values.REPLY };
}

/** Header checks, in order: bounds, size, flag bits, type, and the flag/field combinations each type allows. */
function validateHeader(bytes: Uint8Array, header: VfioUserHeader): void {
  if (header.messageSize < HEADER_SIZE) {
    throw invalid('ERR_VFIO_USER_BAD_SIZE', `msg_size ${header.messageSize} is below the ${HEADER_SIZE}-byte header`);
  }
  if (header.messageSize > bytes.length) {
    throw invalid('ERR_VFIO_USER_TRUNCATED', `msg_size ${header.messageSize} but only ${bytes.length} bytes`);
  }
  if (header.messageSize < bytes.length) {
    throw invalid('ERR_VFIO_USER_BAD_SIZE', `msg_size ${header.messageSize} but ${bytes.length} bytes were given`);
  }
  const unknown = HEADER_FLAGS.unknownBits(header.flags);
  if (unknown !== 0) throw invalid('ERR_VFIO_USER_UNKNOWN_FLAGS', `unknown header flag bits 0x${unknown.toString(16)}`);
  const type = header.flags & TYPE_BITS;
  if (MESSAGE_TYPES.nameOf(type) === undefined) throw invalid('ERR_VFIO_USER_BAD_HEADER', `unknown message type ${type}`);
  if (type === MESSAGE_TYPES.values.COMMAND) {
    if ((header.flags & ERROR) !== 0) throw invalid('ERR_VFIO_USER_BAD_HEADER', 'a command cannot carry the ERROR flag');
    if (header.error !== 0) throw invalid('ERR_VFIO_USER_RESERVED', `the error field is reserved in a command, got ${header.error}`);
  } else {
    if ((header.flags & NO_REPLY) !== 0) throw invalid('ERR_VFIO_USER_BAD_HEADER', 'a reply cannot carry NO_REPLY');
    // The spec makes `error` meaningful only with ERROR; anything else there would be lost on re-encoding.
    if ((header.flags & ERROR) === 0 && header.error !== 0) {
      throw invalid('ERR_VFIO_USER_RESERVED', `error ${header.error} in a reply without the ERROR flag`);
    }
    if ((header.flags & ERROR) !== 0 && header.messageSize !== HEADER_SIZE) {
      throw invalid('ERR_VFIO_USER_PAYLOAD_SIZE', `an error reply is the header alone, got msg_size ${header.messageSize}`);
    }
  }
}

/** What the decoder needs per command number, in an array indexed by the number (the header's command field). */
interface CommandEntry {
  readonly name: CommandName;
  readonly codec: AnyPayloadCodec;
  /** What a payload is called in errors ("DMA_MAP command"), made once per command rather than per message. */
  readonly commandWhat: string;
  readonly replyWhat: string;
}

type AnyPayloadCodec = PayloadCodec<VfioUserCommand, VfioUserReply>;

function codecFor(name: CommandName): AnyPayloadCodec {
  return PAYLOAD_CODECS[name] as unknown as AnyPayloadCodec;
}

const COMMAND_ENTRIES: readonly (CommandEntry | undefined)[] = (() => {
  const entries: (CommandEntry | undefined)[] = [];
  for (const [name, number] of Object.entries(COMMANDS.values) as [CommandName, number][]) {
    entries[number] = { name, codec: codecFor(name), commandWhat: `${name} command`, replyWhat: `${name} reply` };
  }
  // Holes would make the array slow to index; unknown numbers read as undefined either way.
  for (let i = 0; i < entries.length; i++) entries[i] ??= undefined;
  return entries;
})();

/**
 * Decodes one whole message (`bytes` must be exactly msg_size long). Bad bytes only ever throw
 * VfioUserProtocolError, carrying the errno to answer with and, once the header was readable, its msg_id and
 * command. `context` supplies what a reply's bytes cannot say alone (see DecodeContext).
 */
export function decodeMessage(bytes: Uint8Array, context: DecodeContext = {}): VfioUserMessage {
  return decodeMessageWithHeader(bytes, decodeHeader(bytes), context);
}

/**
 * decodeMessage for a caller that already read the header with decodeHeader (the connection, which must route first).
 * `owned`: the caller hands `bytes` over for good (a message its Transport delivered), so decoded data (a DMA or
 * region transfer's bytes) may be views of them rather than copies; by default they are copied, since a caller's
 * own buffer may be reused.
 */
export function decodeMessageWithHeader(bytes: Uint8Array, header: VfioUserHeader, context: DecodeContext = {}, owned = false): VfioUserMessage {
  try {
    validateHeader(bytes, header);
    const isReply = (header.flags & TYPE_BITS) === MESSAGE_TYPES.values.REPLY;
    if (isReply && (header.flags & ERROR) !== 0) {
      return { type: 'error', msgId: header.msgId, command: header.command, errno: header.error };
    }
    const entry = header.command < COMMAND_ENTRIES.length ? COMMAND_ENTRIES[header.command] : undefined;
    // libvfio-user answers an unknown command with EINVAL (command 0x7777 in the captures), and so do we.
    if (entry === undefined) throw invalid('ERR_VFIO_USER_UNKNOWN_COMMAND', `unknown command ${header.command}`);
    // A plain Uint8Array view: a Buffer's subarray() costs a FastBuffer construction on every message.
    const payloadBytes = new Uint8Array(bytes.buffer, bytes.byteOffset + HEADER_SIZE, header.messageSize - HEADER_SIZE);
    const payload = new PayloadReader(payloadBytes, isReply ? entry.replyWhat : entry.commandWhat, owned);
    if (isReply) {
      const body = tagged(entry.name, entry.codec.decodeReply(payload, context)) as VfioUserReply;
      return { type: 'reply', msgId: header.msgId, body };
    }
    const body = tagged(entry.name, entry.codec.decodeCommand(payload)) as VfioUserCommand;
    return { type: 'command', msgId: header.msgId, noReply: (header.flags & NO_REPLY) !== 0, body };
  } catch (error) {
    if (error instanceof VfioUserProtocolError && error.header === undefined) throw error.withHeader(headerFacts(header));
    throw error;
  }
}

/**
 * A decoded body with its command name. Payload decoders return a new object for every message (PayloadReader.read
 * and literals; see payloads.ts), so the name is added to it in place: copying it into `{ command, ...decoded }`
 * costs more than decoding a small struct.
 */
function tagged(name: CommandName, decoded: object): object {
  (decoded as { command: CommandName }).command = name;
  return decoded;
}

function frame(msgId: number, command: number, flags: number, error: number, payload: Uint8Array): Uint8Array {
  const messageSize = HEADER_SIZE + payload.length;
  if (messageSize > MAX_MESSAGE_SIZE) throw encodeError('message', `${messageSize} bytes do not fit the u32 msg_size`);
  // A payload built by a PayloadWriter has room for the header in front of it: no second buffer, no copy.
  const message = takeFramable(payload) ?? copyBehindHeader(payload);
  writeHeader(message, msgId, command, messageSize, flags, error);
  return message;
}

/**
 * Writes the header field by field (offsets from HEADER_LAYOUT, as decodeHeader reads them): every message passes
 * here, and building a header object for HEADER_LAYOUT.encode costs more than the rest of a small message's framing. A
 * value that does not fit its field goes to HEADER_LAYOUT.encode, which throws the layout's error.
 */
function writeHeader(message: Uint8Array, msgId: number, command: number, messageSize: number, flags: number, error: number): void {
  if (!isU16(msgId) || !isU16(command) || !isU32(messageSize) || !isU32(flags) || !isU32(error)) {
    HEADER_LAYOUT.encode({ msgId, command, messageSize, flags, error }, message);
    return;
  }
  writeU16(message, HEADER_AT.msgId, msgId);
  writeU16(message, HEADER_AT.command, command);
  writeU32(message, HEADER_AT.messageSize, messageSize);
  writeU32(message, HEADER_AT.flags, flags);
  writeU32(message, HEADER_AT.error, error);
}

function copyBehindHeader(payload: Uint8Array): Uint8Array {
  const message = zeroedMessageBuffer(HEADER_SIZE + payload.length);
  message.set(payload, HEADER_SIZE);
  return message;
}

/** Encodes one whole message; a body that cannot be put on the wire throws ViommuError ERR_VFIO_USER_ENCODE. */
export function encodeMessage(message: VfioUserMessage): Uint8Array {
  const { REPLY, COMMAND } = MESSAGE_TYPES.values;
  switch (message.type) {
    case 'command': {
      const payload = codecFor(message.body.command).encodeCommand(message.body);
      const flags = COMMAND | (message.noReply ? NO_REPLY : 0);
      return frame(message.msgId, COMMANDS.values[message.body.command], flags, 0, payload);
    }
    case 'reply': {
      const payload = codecFor(message.body.command).encodeReply(message.body);
      return frame(message.msgId, COMMANDS.values[message.body.command], REPLY, 0, payload);
    }
    case 'error':
      return frame(message.msgId, message.command, REPLY | ERROR, message.errno, new Uint8Array(0));
  }
}

export function encodeCommand(msgId: number, body: VfioUserCommand, options: { noReply?: boolean } = {}): Uint8Array {
  return encodeMessage({ type: 'command', msgId, noReply: options.noReply ?? false, body });
}

export function encodeReply(msgId: number, body: VfioUserReply): Uint8Array {
  return encodeMessage({ type: 'reply', msgId, body });
}

/** encodeCommand for a caller that holds the command name apart from the body (see encodeReplyOf). */
export function encodeCommandOf<N extends CommandName>(msgId: number, name: N, body: CommandBodies[N], noReply = false): Uint8Array {
  const flags = MESSAGE_TYPES.values.COMMAND | (noReply ? NO_REPLY : 0);
  return frame(msgId, COMMANDS.values[name], flags, 0, codecFor(name).encodeCommand(body as unknown as VfioUserCommand));
}

/**
 * encodeReply for a caller that holds the command name apart from the body (the connection answering a command):
 * the body needs no `command` member, so no tagged copy of it is made.
 */
export function encodeReplyOf<N extends CommandName>(msgId: number, name: N, body: ReplyBodies[N]): Uint8Array {
  return frame(msgId, COMMANDS.values[name], MESSAGE_TYPES.values.REPLY, 0, codecFor(name).encodeReply(body as unknown as VfioUserReply));
}

/** The one way to answer a command with an errno: the header alone, REPLY|ERROR, msg_id and command echoed. */
export function encodeErrorReply(msgId: number, command: number, errno: number): Uint8Array {
  return encodeMessage({ type: 'error', msgId, command, errno });
}

/** A VERSION body whose JSON text and parsed capabilities agree. */
export function versionBody(major: number, minor: number, capabilities: VersionCapabilities): VersionBody {
  const json = formatVersionCapabilities(capabilities);
  return { major, minor, json, capabilities: parseVersionCapabilities(json) };
}
