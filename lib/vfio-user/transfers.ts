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
  const limit = Math.min(connection.peerCapabilities.maxDataXferSize, options.maxPieceSize ?? Number.MAX_SAFE_INTEGER);
  for (const piece of splitTransfer(length, limit)) await run(piece);
}

function requestOptions(options: TransferOptions): Pick<RequestOptions, 'timeoutMs'> {
  return options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs };
}

function closeAll(fds: { close(): boolean }[]): void {
  for (const fd of fds) fd.close();
}

/** REGION_READ of `length` bytes at `offset` of `region` (client to server). */
export async function regionRead(
  connection: VfioUserConnection,
  region: number,
  offset: bigint,
  length: number,
  options: TransferOptions = {},
): Promise<Uint8Array> {
  const result = new Uint8Array(length);
  await eachPiece(connection, length, options, async (piece) => {
    const reply = await connection.request('REGION_READ', { offset: offset + BigInt(piece.at), region, count: piece.length }, requestOptions(options));
    closeAll(reply.fds);
    result.set(reply.body.data, piece.at);
  });
  return result;
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

/** DMA_READ of `length` bytes at IOVA `address` (server to client). */
export async function dmaRead(
  connection: VfioUserConnection,
  address: bigint,
  length: number,
  options: TransferOptions = {},
): Promise<Uint8Array> {
  const result = new Uint8Array(length);
  await eachPiece(connection, length, options, async (piece) => {
    const reply = await connection.request('DMA_READ', { address: address + BigInt(piece.at), count: BigInt(piece.length) }, requestOptions(options));
    closeAll(reply.fds);
    result.set(reply.body.data, piece.at);
  });
  return result;
}

/** DMA_WRITE of `data` at IOVA `address` (server to client). */
export async function dmaWrite(
  connection: VfioUserConnection,
  address: bigint,
  data: Uint8Array,
  options: TransferOptions = {},
): Promise<void> {
  await eachPiece(connection, data.length, options, async (piece) => {
    const chunk = data.subarray(piece.at, piece.at + piece.length);
    const reply = await connection.request('DMA_WRITE', { address: address + BigInt(piece.at), data: chunk }, requestOptions(options));
    closeAll(reply.fds);
  });
}
