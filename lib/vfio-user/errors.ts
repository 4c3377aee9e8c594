/** The one error type the vfio-user codec throws on bad peer bytes, with the errno a reply should carry. */

import { ERRNO } from '../errno';
import { ViommuError } from '../errors';

/** vfio-user carries Linux errno numbers (its peers are Linux): lib/errno.ts, re-exported for code that imports it from here. */

export type VfioUserProtocolErrorCode =
  /** Fewer than 16 bytes, or fewer bytes than msg_size says. */
  | 'ERR_VFIO_USER_TRUNCATED'
  /** msg_size below the header size, or not equal to the bytes given. */
  | 'ERR_VFIO_USER_BAD_SIZE'
  /** Header flags: unknown bits, unknown type, or a combination that means nothing. */
  | 'ERR_VFIO_USER_BAD_HEADER'
  | 'ERR_VFIO_USER_UNKNOWN_COMMAND'
  /** The payload is shorter or longer than the command's layout allows. */
  | 'ERR_VFIO_USER_PAYLOAD_SIZE'
  /** argsz smaller than the struct it describes. */
  | 'ERR_VFIO_USER_ARGSZ'
  | 'ERR_VFIO_USER_UNKNOWN_FLAGS'
  | 'ERR_VFIO_USER_RESERVED'
  /** A field value that the layout allows but the protocol does not (e.g. SET_IRQS with two data types). */
  | 'ERR_VFIO_USER_BAD_FIELD'
  | 'ERR_VFIO_USER_BAD_CAPABILITY'
  | 'ERR_VFIO_USER_BAD_VERSION_DATA'
  /** A reply that contradicts the command it answers. */
  | 'ERR_VFIO_USER_REPLY_MISMATCH';

/** Header facts known when the error was found, so a server can still answer the right msg_id. */
export interface ProtocolErrorHeader {
  readonly msgId: number;
  readonly command: number;
  readonly isReply: boolean;
}

export class VfioUserProtocolError extends ViommuError {
  constructor(
    code: VfioUserProtocolErrorCode,
    readonly errno: number,
    message: string,
    readonly header?: ProtocolErrorHeader,
  ) {
    super(code, message);
    this.name = 'VfioUserProtocolError';
  }

  declare readonly code: VfioUserProtocolErrorCode;

  /** The same error, now also carrying the header it was found in. */
  withHeader(header: ProtocolErrorHeader): VfioUserProtocolError {
    return new VfioUserProtocolError(this.code, this.errno, this.message, header);
  }
}

/** Shorthand for the common case: a malformed message answered with EINVAL. */
export function invalid(code: VfioUserProtocolErrorCode, message: string): VfioUserProtocolError {
  return new VfioUserProtocolError(code, ERRNO.EINVAL, message);
}
