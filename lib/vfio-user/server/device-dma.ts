/** The device's DMA path: the client's fds directly (mapped, or pread/pwrite when unsealed), DMA_READ/DMA_WRITE otherwise. */

import { ERRNO } from '../../errno';
import { DmaFault, EFAULT, EPERM, type AsyncDmaSpace, type DmaAccess } from '../../memory';
import type { VfioUserConnection } from '../connection';
import { VfioUserRemoteError } from '../connection-errors';
import { dmaRead, dmaWrite, type TransferOptions } from '../transfers';
import type { DmaMapTable, TableMapping } from './dma-maps';

const U64_END = 1n << 64n;

function hex(value: bigint): string {
  return `0x${value.toString(16)}`;
}

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
  readonly mapping: TableMapping;
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
 * flags, fails the whole access with a DmaFault (EFAULT, EPERM) and transfers nothing. Pieces the server reaches
 * directly (a mapped fd of any size, or an unsealed file by pread/pwrite) are copied at once; one that cannot be
 * reached any more (the client shrank its unsealed file) fails the access with EFAULT (a read leaves the caller's
 * buffer as it was; a write spanning two mappings may already have moved the piece before). If any piece needs
 * messages, the call returns a Promise and the pieces go out in order, each split to the client's
 * max_data_xfer_size, on the twin socket when one was negotiated.
 *
 * Without a twin socket our DMA_READ/DMA_WRITE share the main socket with the client's commands, and a client that
 * waits for a reply (libvfio-user's own) cannot take a command of ours in its place. A device usually starts DMA
 * from a register write, inside the REGION_WRITE handler, before the reply is sent; so the first message waits for
 * the next turn of the event loop, after the reply of a command answered synchronously (or within its microtasks).
 * QEMU's edu does the same with its DMA timer. On the twin socket the messages go out at once.
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
    const pieces = this.plan(path, address, into.length, 'read');
    const byMessage: Piece[] = [];
    // With several pieces, direct ones are read aside first: one failing must not leave the others in `into`.
    const target = pieces.length === 1 ? into : new Uint8Array(into.length);
    const direct: Piece[] = [];
    for (const piece of pieces) {
      const access = this.alwaysByMessage ? undefined : piece.mapping.direct;
      if (access === undefined) {
        byMessage.push(piece);
        continue;
      }
      const failure = access.read(Number(piece.address - piece.mapping.address), target.subarray(piece.position, piece.position + piece.length));
      if (failure !== undefined) throw new DmaFault(address, into.length, 'read', `${hex(piece.address)}: ${failure}`, EFAULT);
      direct.push(piece);
    }
    if (target !== into) for (const piece of direct) into.set(target.subarray(piece.position, piece.position + piece.length), piece.position);
    if (byMessage.length === 0) return undefined;
    return (async () => {
      await this.afterCurrentReply(path);
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
      const access = this.alwaysByMessage ? undefined : piece.mapping.direct;
      if (access === undefined) {
        byMessage.push(piece);
        continue;
      }
      const failure = access.write(Number(piece.address - piece.mapping.address), data.subarray(piece.position, piece.position + piece.length));
      if (failure !== undefined) throw new DmaFault(address, data.length, 'write', `${hex(piece.address)}: ${failure}`, EFAULT);
    }
    if (byMessage.length === 0) return undefined;
    // The device may reuse its buffer as soon as we return.
    const copies = byMessage.map((piece) => data.slice(piece.position, piece.position + piece.length));
    return (async () => {
      await this.afterCurrentReply(path);
      for (const [i, piece] of byMessage.entries()) {
        try {
          await dmaWrite(path.connection, piece.address, copies[i]!, this.options(path));
        } catch (error) {
          throw faultFrom(error, piece.address, piece.length, 'write');
        }
      }
    })();
  }

  private afterCurrentReply(path: DmaPath): Promise<void> | undefined {
    if (path.connection.hasTwin) return undefined;
    return new Promise((resolve) => setImmediate(resolve));
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
    for (let at = address; at < end;) {
      const mapping = path.table.lookup(at);
      if (mapping === undefined) throw new DmaFault(address, length, access, `0x${at.toString(16)} is not in any DMA mapping`, EFAULT);
      if (access === 'read' ? !mapping.readable : !mapping.writable) {
        throw new DmaFault(address, length, access, `the mapping at 0x${mapping.address.toString(16)} does not allow ${access}s`, EPERM);
      }
      const mappingEnd = mapping.address + mapping.size;
      const pieceEnd = end < mappingEnd ? end : mappingEnd;
      pieces.push({ mapping, address: at, position: Number(at - address), length: Number(pieceEnd - at) });
      at = pieceEnd;
    }
    return pieces;
  }
}
