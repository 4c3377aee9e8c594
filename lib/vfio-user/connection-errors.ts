/** Typed errors of a vfio-user connection and the one mapping from an error to the errno a reply carries. */

import { ERRNO, type ErrnoName } from '../errno';
import { GuestMemoryError, ViommuError } from '../errors';
import { DmaFault } from '../memory/dma-space';
import { VfioUserProtocolError } from './errors';

/** The peer answered our command with an error reply. */
export class VfioUserRemoteError extends ViommuError {
  constructor(
    readonly errno: number,
    /** The command number echoed in the error reply. */
    readonly command: number,
    readonly msgId: number,
  ) {
    super('ERR_VFIO_USER_REMOTE', `the peer answered command ${command} (msg_id ${msgId}) with errno ${errno}`);
    this.name = 'VfioUserRemoteError';
  }
  declare readonly code: 'ERR_VFIO_USER_REMOTE';
}

/** No reply came within the request's time limit; a late reply to the same msg_id is dropped. */
export class VfioUserTimeoutError extends ViommuError {
  constructor(
    readonly command: string,
    readonly msgId: number,
    readonly timeoutMs: number,
  ) {
    super('ERR_VFIO_USER_TIMEOUT', `no reply to ${command} (msg_id ${msgId}) within ${timeoutMs} ms`);
    this.name = 'VfioUserTimeoutError';
  }
  declare readonly code: 'ERR_VFIO_USER_TIMEOUT';
}

/** The connection closed before the request was answered (or was already closed when it was made). */
export class VfioUserClosedError extends ViommuError {
  constructor(
    message: string,
    /** Why the transport closed, when it did not close cleanly. */
    readonly reason?: Error,
  ) {
    super('ERR_VFIO_USER_CLOSED', reason ? `${message}: ${reason.message}` : message);
    this.name = 'VfioUserClosedError';
  }
  declare readonly code: 'ERR_VFIO_USER_CLOSED';
}

export type VfioUserLimitErrorCode =
  /** More fds in one message than the receiver announced in max_msg_fds. */
  | 'ERR_VFIO_USER_TOO_MANY_FDS'
  /** A data transfer above the receiver's max_data_xfer_size: split it (see transfers.ts). */
  | 'ERR_VFIO_USER_TRANSFER_TOO_BIG'
  /** Every one of the 65536 msg_ids is waiting for a reply. */
  | 'ERR_VFIO_USER_IDS_EXHAUSTED'
  /** Keeping the fds a command carried would leave this process too few free fds to go on serving (EMFILE). */
  | 'ERR_VFIO_USER_FD_LIMIT';

/** EMFILE, "Too many open files": the errno of ERR_VFIO_USER_FD_LIMIT. */
export const EMFILE: number = ERRNO.EMFILE;

/**
 * A negotiated limit was exceeded. Thrown before sending when we would break the peer's limit; when the peer broke
 * ours, the same error becomes the errno of our reply (EINVAL, as libvfio-user answers oversized requests, unless
 * the limit is one with an errno of its own).
 */
export class VfioUserLimitError extends ViommuError {
  constructor(
    code: VfioUserLimitErrorCode,
    message: string,
    readonly errno: number = ERRNO.EINVAL,
  ) {
    super(code, message);
    this.name = 'VfioUserLimitError';
  }
  declare readonly code: VfioUserLimitErrorCode;
}

/** For command handlers: fail the command with this errno (e.g. `throw new VfioUserErrnoError('EFAULT', ...)`). */
export class VfioUserErrnoError extends ViommuError {
  readonly errno: number;
  constructor(errno: ErrnoName, message: string) {
    super('ERR_VFIO_USER_ERRNO', message);
    this.name = 'VfioUserErrnoError';
    this.errno = ERRNO[errno];
  }
}

/**
 * The errno that a failed command is answered with. Unexpected exceptions (anything not typed here) get EIO rather
 * than EINVAL: every EINVAL libvfio-user sends means "your message was wrong", and a fault of ours is not the peer's.
 */
export const UNEXPECTED_ERROR_ERRNO = ERRNO.EIO;

/** The errno of a typed error, or undefined when the error was not expected (a bug in a handler). */
export function errnoOf(error: unknown): number | undefined {
  if (
    error instanceof VfioUserProtocolError ||
    error instanceof VfioUserRemoteError ||
    error instanceof VfioUserLimitError ||
    error instanceof VfioUserErrnoError
  ) {
    return error.errno;
  }
  // A DMA handler reading outside guest RAM: the device asked for an address nobody backs.
  if (error instanceof GuestMemoryError) return ERRNO.EFAULT;
  // A DmaSpace (an IOMMU in front of guest RAM) refused the access and chose the errno the device is told.
  if (error instanceof DmaFault) return error.errno;
  return undefined;
}
