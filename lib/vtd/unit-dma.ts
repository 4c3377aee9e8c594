/**
 * A device's DMA view through the unit: every page translated before any byte moves (all or nothing), and DWORD
 * writes into the interrupt window taken as interrupt requests.
 */

import { readU32 } from '../byte-layout';
import { DmaFault, EFAULT, EPERM, type DmaAccess, type DmaSpace } from '../memory/dma-space';
import type { GuestMemory } from '../memory/guest-memory';
import { INTERRUPT_WINDOW_END, INTERRUPT_WINDOW_START } from '../memory/geometry';
import type { FaultRecord } from './fault';
import { describeFaultReason, isPermissionFault } from './fault-reasons';
import type { InterruptRequest } from './interrupt-remap';
import type { TranslationRequest, TranslationResult } from './translation-result';

/** What a request with PASID carries besides its address: the PASID, and privileged-mode and execute requested. */
export interface PasidTag {
  readonly pasid: number;
  readonly supervisor?: boolean;
  readonly execute?: boolean;
}

/** What a DMA view needs of its unit. */
export interface UnitDmaPort {
  readonly memory: GuestMemory;
  /** Translates (and records the fault of) one request. */
  translate(request: TranslationRequest): TranslationResult;
  /** A DWORD written into the interrupt window by a plain DMA write, once the whole write has been accepted. */
  interruptWritten(request: InterruptRequest): void;
  /** QEMU 7.2 (quirk interrupt-range-read-returns-zeros): a read of the interrupt window completes with zeros. */
  readonly interruptReadsReturnZeros: boolean;
}

/**
 * A DMA the unit refused because one of its pages did not translate: the fault record of that page (as recorded,
 * compat quirks applied) rides along, so that a device model or VMM sees the stage, level and entry, not just an errno.
 */
export class TranslationDmaFault extends DmaFault {
  constructor(
    address: bigint,
    length: number,
    access: DmaAccess,
    readonly fault: FaultRecord,
  ) {
    // A present entry refusing the access is EPERM; anything missing or malformed on the way is EFAULT.
    super(address, length, access, describeFaultReason(fault.reason), isPermissionFault(fault.reason) && !fault.notPresent ? EPERM : EFAULT);
    this.name = 'TranslationDmaFault';
  }
}

const IOVA_LIMIT = 1n << 64n;
const INTERRUPT_RANGE_FIRST = BigInt(INTERRUPT_WINDOW_START);
const INTERRUPT_RANGE_LIMIT = BigInt(INTERRUPT_WINDOW_END);
/** Interrupt messages are DWORD writes. */
const MSI_BYTES = 4;

/** One contiguous part of a DMA transfer: guest RAM, interrupt messages, or (QEMU 7.2) zeros. */
interface DmaPiece {
  readonly kind: 'ram' | 'interrupt' | 'zeros';
  /** Guest-physical address (RAM) or interrupt-range address. */
  readonly address: number;
  /** Offset of the piece in the transfer. */
  readonly position: number;
  readonly count: number;
}

/**
 * Device `sid`'s DMA view through `port`. DWORD writes to the interrupt range are interrupt messages (handed to
 * port.interruptWritten once the whole write has been accepted); reads there are illegal requests. With `tag`,
 * every request carries that PASID (and its privilege and execute bits): PCIe PASID-prefixed requests,
 * translated through the PASID's entry; the interrupt range is then ordinary input.
 */
export function translatedDmaSpace(port: UnitDmaPort, sid: number, tag?: PasidTag): DmaSpace {
  const memory = port.memory;
  return {
    read: (address, into) => {
      const staging = new Uint8Array(into.length);
      transfer(port, sid, tag, address, into.length, 'read', (piece) => {
        // Zero pieces (QEMU 7.2's reads of the interrupt range) stay as the staging buffer was made.
        return piece.kind === 'zeros' || memory.tryRead(piece.address, staging.subarray(piece.position, piece.position + piece.count));
      });
      into.set(staging);
    },
    write: (address, data) => {
      const undo: Array<[number, Uint8Array]> = [];
      const messages: InterruptRequest[] = [];
      try {
        transfer(port, sid, tag, address, data.length, 'write', (piece) => {
          const bytes = data.subarray(piece.position, piece.position + piece.count);
          if (piece.kind === 'interrupt') {
            for (let at = 0; at < piece.count; at += MSI_BYTES) {
              messages.push({ sid, address: piece.address + at, data: readU32(bytes, at) });
            }
            return true;
          }
          const before = new Uint8Array(piece.count);
          if (!memory.tryRead(piece.address, before)) return false;
          if (!memory.tryWrite(piece.address, bytes)) return false;
          undo.push([piece.address, before]);
          return true;
        });
      } catch (error) {
        for (const [gpa, before] of undo.reverse()) memory.tryWrite(gpa, before);
        throw error;
      }
      // A blocked interrupt is recorded by the remapping (unless compat says otherwise), never reported to the writer.
      for (const message of messages) port.interruptWritten(message);
    },
  };
}

/** Translates every page first (faults recorded, nothing moved), then moves the pieces. */
function transfer(
  port: UnitDmaPort,
  sid: number,
  tag: PasidTag | undefined,
  address: bigint,
  length: number,
  access: DmaAccess,
  move: (piece: DmaPiece) => boolean,
): void {
  if (address < 0n || address + BigInt(length) > IOVA_LIMIT) {
    throw new DmaFault(address, length, access, 'beyond the 64-bit IOVA space', EFAULT);
  }
  const pieces: DmaPiece[] = [];
  const write = access === 'write';
  let position = 0;
  while (position < length) {
    const iova = address + BigInt(position);
    // Only requests without PASID can be interrupt requests; with a PASID the range is translated as any other.
    if (tag === undefined && iova >= INTERRUPT_RANGE_FIRST && iova < INTERRUPT_RANGE_LIMIT) {
      const at = Number(iova);
      const count = Math.min(length - position, INTERRUPT_WINDOW_END - at);
      pieces.push({ kind: interruptRangePiece(port, address, length, access, at, count), address: at, position, count });
      position += count;
      continue;
    }
    const result = port.translate(tag === undefined ? { sid, iova, write } : { sid, iova, write, ...tag });
    if (!result.ok) throw new TranslationDmaFault(address, length, access, result.fault);
    let count = Math.min(length - position, result.pageSize - (result.address % result.pageSize));
    // A large page may run on into the interrupt range: stop there, so that the next piece is translated (and faults).
    if (result.address < INTERRUPT_WINDOW_START && result.address + count > INTERRUPT_WINDOW_START) {
      count = INTERRUPT_WINDOW_START - result.address;
    }
    pieces.push({ kind: 'ram', address: result.address, position, count });
    position += count;
  }
  for (const piece of pieces) {
    if (!move(piece)) {
      throw new DmaFault(address, length, access, `no ${write ? 'writable ' : ''}guest RAM at 0x${piece.address.toString(16)}`, EFAULT);
    }
  }
}

/** What a transfer piece inside 0xfee00000-0xfeefffff is; illegal requests (spec 3.14) throw, unrecorded. */
function interruptRangePiece(port: UnitDmaPort, address: bigint, length: number, access: DmaAccess, at: number, count: number): DmaPiece['kind'] {
  if (access === 'write') {
    if (at % MSI_BYTES === 0 && count % MSI_BYTES === 0) return 'interrupt';
    throw new DmaFault(address, length, access, 'a write to the interrupt address range that is not whole DWORDs', EFAULT);
  }
  if (port.interruptReadsReturnZeros) return 'zeros';
  throw new DmaFault(address, length, access, 'a read of the interrupt address range (an illegal request)', EFAULT);
}
