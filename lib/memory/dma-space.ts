/** DmaSpace: what a device's DMA goes through (guest RAM directly, or a translation in front of it). */
import { ERRNO } from '../errno';
import { ViommuError } from '../errors';

export type DmaAccess = 'read' | 'write';

/** Why a DMA failed; errno is what a vfio-user peer is told. */
export class DmaFault extends ViommuError {
  constructor(
    readonly address: bigint,
    readonly length: number,
    readonly access: DmaAccess,
    readonly reason: string,
    readonly errno: number,
    code = 'ERR_DMA_FAULT',
  ) {
    super(code, `DMA ${access} of ${length} bytes at 0x${address.toString(16)} failed: ${reason}`);
    this.name = 'DmaFault';
  }
}

/** The errnos a DmaFault carries: no memory or translation at the address, or an access the rights forbid. */
export const EFAULT = ERRNO.EFAULT;
export const EPERM = ERRNO.EPERM;

/** A device's view of memory. Each call either completes entirely or throws a DmaFault and transfers nothing. */
export interface DmaSpace {
  read(address: bigint, into: Uint8Array): void;
  write(address: bigint, data: Uint8Array): void;
}

/**
 * A DmaSpace whose accesses may also complete later (DMA by vfio-user message, a translation that waits on
 * something): each call completes at once (returns undefined) or returns a Promise that settles when the transfer
 * is done; failures are DmaFaults, thrown or rejected. An asynchronous write copies `data` before returning, so the
 * caller may reuse its buffer; an asynchronous read fills `into` before its Promise resolves. Every DmaSpace is one.
 */
export interface AsyncDmaSpace {
  read(address: bigint, into: Uint8Array): void | Promise<void>;
  write(address: bigint, data: Uint8Array): void | Promise<void>;
}

/** Whether a maybe-asynchronous result (an AsyncDmaSpace access, a device hook) is still running. */
export function isPromiseLike(result: unknown): result is PromiseLike<unknown> {
  return typeof (result as PromiseLike<unknown> | undefined)?.then === 'function';
}
