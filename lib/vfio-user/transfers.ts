/** Region and DMA transfers of any size, split into messages that fit the peer's max_data_xfer_size. */

import { ViommuError } from '../errors';
import type { RequestOptions, VfioUserConnection } from './connection';

export interface TransferPiece {
  /** Byte offset of this piece from the start of the transfer. */
  readonly at: number;
  readonly length: number;
}

/** Cuts `length` bytes into pieces of at most `maxPiece` bytes, in order; nothing for a zero length. */
export function splitTransfer(length: number, maxPiece: number): TransferPiece[] {
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new ViommuError('ERR_INVALID_ARG_VALUE', `a transfer length is a non-negative integer, got ${length}`);
  }
  if (!Number.isSafeInteger(maxPiece) || maxPiece <= 0) {
    throw new ViommuError('ERR_INVALID_ARG_VALUE', `max_data_xfer_size is a positive integer, got ${maxPiece}`);
  }
  const pieces: TransferPiece[] = [];
  for (let at = 0; at < length; at += maxPiece) pieces.push({ at, length: Math.min(maxPiece, length - at) });
  return pieces;
}

export interface TransferOptions extends Pick<RequestOptions, 'timeoutMs'> {
  /**
   * Pieces no larger than this even when the peer accepts more: a DMA_READ's reply carries the data, so a server
   * keeps its pieces within what its own socket accepts.
   */
  readonly maxPieceSize?: number;
}

/** Pieces go one after another: a later piece must not overtake an earlier one that overlaps device state. */
async function eachPiece(
  connection: VfioUserConnection,
  length: number,
  options: TransferOptions,
  run: (piece: TransferPiece) => Promise<void>,
): Promise<void> {
  for (const piece of splitTransfer(length, pieceLimit(connection, options))) await run(piece);
}

function pieceLimit(connection: VfioUserConnection, options: TransferOptions): number {
  return Math.min(connection.peerCapabilities.maxDataXferSize, options.maxPieceSize ?? Number.MAX_SAFE_INTEGER);
}

function requestOptions(options: TransferOptions): Pick<RequestOptions, 'timeoutMs'> {
  return options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs };
}

function closeAll(fds: { close(): boolean }[]): void {
  for (const fd of fds) fd.close();
}

/**
 * A read of `length` bytes in pieces. One piece answered in full is returned as it came: a reply's data is the
 * caller's own (the connection decodes received messages without copying, see PayloadReader.copy), so it is not
 * copied once more, and it may be a view into the received message (read it through its byteOffset, not from the
 * start of its .buffer). Anything else is put together in a new buffer (a short reply leaves zeros, as before).
 */
async function readInPieces(
  connection: VfioUserConnection,
  length: number,
  options: TransferOptions,
  readPiece: (piece: TransferPiece) => Promise<Uint8Array>,
): Promise<Uint8Array> {
  if (length > 0 && length <= pieceLimit(connection, options)) {
    const data = await readPiece({ at: 0, length });
    if (data.length === length) return data;
    const result = new Uint8Array(length);
    result.set(data);
    return result;
  }
  const result = new Uint8Array(length);
  await eachPiece(connection, length, options, async (piece) => result.set(await readPiece(piece), piece.at));
  return result;
}

/** REGION_READ of `length` bytes at `offset` of `region` (client to server); see readInPieces for the result. */
export async function regionRead(
  connection: VfioUserConnection,
  region: number,
  offset: bigint,
  length: number,
  options: TransferOptions = {},
): Promise<Uint8Array> {
  const readPiece = async (piece: TransferPiece): Promise<Uint8Array> => {
    const reply = await connection.request(
      'REGION_READ',
      { offset: offset + BigInt(piece.at), region, count: piece.length },
      requestOptions(options),
    );
    closeAll(reply.fds);
    return reply.body.data;
  };
  return readInPieces(connection, length, options, readPiece);
}

/** REGION_WRITE of `data` at `offset` of `region` (client to server). */
export async function regionWrite(
  connection: VfioUserConnection,
  region: number,
  offset: bigint,
  data: Uint8Array,
  options: TransferOptions = {},
): Promise<void> {
  await eachPiece(connection, data.length, options, async (piece) => {
    const chunk = data.subarray(piece.at, piece.at + piece.length);
    const reply = await connection.request('REGION_WRITE', { offset: offset + BigInt(piece.at), region, data: chunk }, requestOptions(options));
    closeAll(reply.fds);
  });
}

/** DMA_READ of `length` bytes at IOVA `address` (server to client); see readInPieces for the result. */
export async function dmaRead(connection: VfioUserConnection, address: bigint, length: number, options: TransferOptions = {}): Promise<Uint8Array> {
  const readPiece = async (piece: TransferPiece): Promise<Uint8Array> => {
    const reply = await connection.request('DMA_READ', { address: address + BigInt(piece.at), count: BigInt(piece.length) }, requestOptions(options));
    closeAll(reply.fds);
    return reply.body.data;
  };
  return readInPieces(connection, length, options, readPiece);
}

/** DMA_WRITE of `data` at IOVA `address` (server to client). */
export async function dmaWrite(connection: VfioUserConnection, address: bigint, data: Uint8Array, options: TransferOptions = {}): Promise<void> {
  await eachPiece(connection, data.length, options, async (piece) => {
    const chunk = data.subarray(piece.at, piece.at + piece.length);
    const reply = await connection.request('DMA_WRITE', { address: address + BigInt(piece.at), data: chunk }, requestOptions(options));
    closeAll(reply.fds);
  });
}
