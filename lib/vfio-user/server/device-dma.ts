/** The device's DMA path: mapped client memory directly (synchronous, zero copy), DMA_READ/DMA_WRITE messages otherwise. */

import { DmaFault, EFAULT, EPERM, type AsyncDmaSpace, type DmaAccess } from '../../memory';
import type { VfioUserConnection } from '../connection';
import { VfioUserRemoteError } from '../connection-errors';
import { ERRNO } from '../errors';
import { dmaRead, dmaWrite, type TransferOptions } from '../transfers';
import type { DmaMapping, DmaMapTable } from './dma-maps';

const U64_END = 1n << 64n;

/** What DMA goes through while a client is attached. */
export interface DmaPath {
  readonly table: DmaMapTable;
  readonly connection: VfioUserConnection;
  /** Time limit for each DMA_READ/DMA_WRITE piece; undefined waits forever. */
  readonly timeoutMs?: number;
  /** Largest piece we send or ask for, whatever the client accepts (our own socket's limit). */
  readonly maxPieceSize?: number;
}

interface Piece {
  readonly mapping: DmaMapping;
  readonly address: bigint;
  /** Offset of the piece inside the caller's buffer. */
  readonly position: number;
  readonly length: number;
}

function faultFrom(error: unknown, address: bigint, length: number, access: DmaAccess): DmaFault {
  if (error instanceof DmaFault) return error;
  const command = access === 'read' ? 'DMA_READ' : 'DMA_WRITE';
  if (error instanceof VfioUserRemoteError) return new DmaFault(address, length, access, `the client refused the ${command}`, error.errno);
  return new DmaFault(address, length, access, `the client did not complete the ${command}: ${(error as Error).message}`, ERRNO.EIO);
}

/**
 * One object for the device's whole life; sessions attach and detach their map table and connection. An access
 * is planned against the map table before anything moves: a byte not covered by a mapping, or not allowed by its
 * flags, fails the whole access with a DmaFault (EFAULT, EPERM) and transfers nothing. Mapped pieces are copied at
 * once; if any piece needs messages, the call returns a Promise and the pieces go out in order, each split to the
 * client's max_data_xfer_size, on the twin socket when one was negotiated.
 */
export class VfioUserDeviceDma implements AsyncDmaSpace {
  private path: DmaPath | undefined;
  private readonly alwaysByMessage: boolean;

  constructor(options: { alwaysByMessage?: boolean } = {}) {
    this.alwaysByMessage = options.alwaysByMessage ?? false;
  }

  attach(path: DmaPath): void {
    this.path = path;
  }

  detach(path?: DmaPath): void {
    if (path === undefined || this.path === path) this.path = undefined;
  }

  get attached(): boolean {
    return this.path !== undefined;
  }

  read(address: bigint, into: Uint8Array): void | Promise<void> {
    const path = this.requirePath(address, into.length, 'read');
    const byMessage: Piece[] = [];
    for (const piece of this.plan(path, address, into.length, 'read')) {
      const memory = this.alwaysByMessage ? undefined : piece.mapping.memory;
      if (memory === undefined) byMessage.push(piece);
      else {
        const at = Number(piece.address - piece.mapping.address);
        into.set(memory.subarray(at, at + piece.length), piece.position);
      }
    }
    if (byMessage.length === 0) return undefined;
    return (async () => {
      for (const piece of byMessage) {
        try {
          into.set(await dmaRead(path.connection, piece.address, piece.length, this.options(path)), piece.position);
        } catch (error) {
          throw faultFrom(error, piece.address, piece.length, 'read');
        }
      }
    })();
  }

  write(address: bigint, data: Uint8Array): void | Promise<void> {
    const path = this.requirePath(address, data.length, 'write');
    const byMessage: Piece[] = [];
    for (const piece of this.plan(path, address, data.length, 'write')) {
      const memory = this.alwaysByMessage ? undefined : piece.mapping.memory;
      if (memory === undefined) byMessage.push(piece);
      else memory.set(data.subarray(piece.position, piece.position + piece.length), Number(piece.address - piece.mapping.address));
    }
    if (byMessage.length === 0) return undefined;
    // The device may reuse its buffer as soon as we return.
    const copies = byMessage.map((piece) => data.slice(piece.position, piece.position + piece.length));
    return (async () => {
      for (const [i, piece] of byMessage.entries()) {
        try {
          await dmaWrite(path.connection, piece.address, copies[i]!, this.options(path));
        } catch (error) {
          throw faultFrom(error, piece.address, piece.length, 'write');
        }
      }
    })();
  }

  private options(path: DmaPath): TransferOptions {
    return {
      ...(path.timeoutMs === undefined ? {} : { timeoutMs: path.timeoutMs }),
      ...(path.maxPieceSize === undefined ? {} : { maxPieceSize: path.maxPieceSize }),
    };
  }

  private requirePath(address: bigint, length: number, access: DmaAccess): DmaPath {
    if (this.path === undefined || this.path.connection.closed) {
      throw new DmaFault(address, length, access, 'no vfio-user client is attached', EFAULT);
    }
    return this.path;
  }

  private plan(path: DmaPath, address: bigint, length: number, access: DmaAccess): Piece[] {
    const end = address + BigInt(length);
    if (address < 0n || end > U64_END) throw new DmaFault(address, length, access, 'the range leaves the 64-bit IOVA space', EFAULT);
    const pieces: Piece[] = [];
    for (let at = address; at < end; ) {
      const mapping = path.table.lookup(at);
      if (mapping === undefined) throw new DmaFault(address, length, access, `0x${at.toString(16)} is not in any DMA mapping`, EFAULT);
      if (access === 'read' ? !mapping.readable : !mapping.writable) {
        throw new DmaFault(address, length, access, `the mapping at 0x${mapping.address.toString(16)} does not allow ${access}s`, EPERM);
      }
      if (mapping.memory !== undefined && mapping.memory.byteLength === 0) {
        throw new DmaFault(address, length, access, `the mapping at 0x${mapping.address.toString(16)} was unmapped`, EFAULT);
      }
      const mappingEnd = mapping.address + mapping.size;
      const pieceEnd = end < mappingEnd ? end : mappingEnd;
      pieces.push({ mapping, address: at, position: Number(at - address), length: Number(pieceEnd - at) });
      at = pieceEnd;
    }
    return pieces;
  }
}
