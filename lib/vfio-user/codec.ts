/** Whole vfio-user messages: the 16-byte header, dispatch to payload codecs by command and type, and framing help. */

import { invalid, VfioUserProtocolError, type ProtocolErrorHeader } from './errors';
import type {
  CommandMessage,
  DecodeContext,
  ErrorReplyMessage,
  ReplyMessage,
  VersionBody,
  VfioUserCommand,
  VfioUserMessage,
  VfioUserReply,
} from './messages';
import {
  encodeError,
  encodeStruct,
  fieldOffsets,
  PayloadReader,
  PayloadWriter,
  readU16,
  readU32,
  takeFramable,
  zeroedMessageBuffer,
} from './payload-io';
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

/** What a payload is called in errors ("DMA_MAP command"), made once per command rather than per message. */
const COMMAND_WHAT = Object.fromEntries(Object.keys(COMMANDS.values).map((name) => [name, `${name} command`])) as Record<CommandName, string>;
const REPLY_WHAT = Object.fromEntries(Object.keys(COMMANDS.values).map((name) => [name, `${name} reply`])) as Record<CommandName, string>;

type AnyPayloadCodec = PayloadCodec<VfioUserCommand, VfioUserReply>;

function codecFor(name: CommandName): AnyPayloadCodec {
  return PAYLOAD_CODECS[name] as unknown as AnyPayloadCodec;
}

/**
 * Decodes one whole message (`bytes` must be exactly msg_size long). Bad bytes only ever throw
 * VfioUserProtocolError, carrying the errno to answer with and, once the header was readable, its msg_id and
 * command. `context` supplies what a reply's bytes cannot say alone (see DecodeContext).
 */
export function decodeMessage(bytes: Uint8Array, context: DecodeContext = {}): VfioUserMessage {
  return decodeMessageWithHeader(bytes, decodeHeader(bytes), context);
}

/** decodeMessage for a caller that already read the header with decodeHeader (the connection, which must route first). */
export function decodeMessageWithHeader(bytes: Uint8Array, header: VfioUserHeader, context: DecodeContext = {}): VfioUserMessage {
  try {
    validateHeader(bytes, header);
    const isReply = (header.flags & TYPE_BITS) === MESSAGE_TYPES.values.REPLY;
    if (isReply && (header.flags & ERROR) !== 0) {
      return { type: 'error', msgId: header.msgId, command: header.command, errno: header.error };
    }
    const name = COMMANDS.nameOf(header.command);
    // libvfio-user answers an unknown command with EINVAL (command 0x7777 in the captures), and so do we.
    if (name === undefined) throw invalid('ERR_VFIO_USER_UNKNOWN_COMMAND', `unknown command ${header.command}`);
    // A plain Uint8Array view: a Buffer's subarray() costs a FastBuffer construction on every message.
    const payloadBytes = new Uint8Array(bytes.buffer, bytes.byteOffset + HEADER_SIZE, header.messageSize - HEADER_SIZE);
    const payload = new PayloadReader(payloadBytes, isReply ? REPLY_WHAT[name] : COMMAND_WHAT[name]);
    const codec = codecFor(name);
    if (isReply) {
      const body = { command: name, ...(codec.decodeReply(payload, context) as object) } as VfioUserReply;
      return { type: 'reply', msgId: header.msgId, body };
    }
    const body = { command: name, ...(codec.decodeCommand(payload) as object) } as VfioUserCommand;
    return { type: 'command', msgId: header.msgId, noReply: (header.flags & NO_REPLY) !== 0, body };
  } catch (error) {
    if (error instanceof VfioUserProtocolError && error.header === undefined) throw error.withHeader(headerFacts(header));
    throw error;
  }
}

function frame(msgId: number, command: number, flags: number, error: number, payload: Uint8Array): Uint8Array {
  const messageSize = HEADER_SIZE + payload.length;
  if (messageSize > MAX_MESSAGE_SIZE) throw encodeError('message', `${messageSize} bytes do not fit the u32 msg_size`);
  // A payload built by a PayloadWriter has room for the header in front of it: no second buffer, no copy.
  const message = takeFramable(payload) ?? copyBehindHeader(payload);
  encodeStruct(HEADER_LAYOUT, { msgId, command, messageSize, flags, error }, message);
  return message;
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

/** The one way to answer a command with an errno: the header alone, REPLY|ERROR, msg_id and command echoed. */
export function encodeErrorReply(msgId: number, command: number, errno: number): Uint8Array {
  return encodeMessage({ type: 'error', msgId, command, errno });
}

/** A VERSION body whose JSON text and parsed capabilities agree. */
export function versionBody(major: number, minor: number, capabilities: VersionCapabilities): VersionBody {
  const json = formatVersionCapabilities(capabilities);
  return { major, minor, json, capabilities: parseVersionCapabilities(json) };
}
