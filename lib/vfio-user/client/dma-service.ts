/** Serves the server's DMA_READ/DMA_WRITE from the DmaSpace the VMM supplies (where a vIOMMU plugs in). */

import { DmaFault, type DmaAccess } from '../../memory';
import { VfioUserErrnoError } from '../connection-errors';
import type { VfioUserConnection } from '../connection';
import { ERRNO, type ErrnoName } from '../errors';
import type { DmaDataBody, DmaWriteReplyBody } from '../messages';

/** A DmaSpace whose accesses may complete later (a translation that waits on something); a plain DmaSpace is one. */
export interface AsyncDmaSpace {
  read(address: bigint, into: Uint8Array): void | Promise<void>;
  write(address: bigint, data: Uint8Array): void | Promise<void>;
}

/** One failed server DMA, as reported to the VMM. */
export interface DmaFaultEvent {
  readonly access: DmaAccess;
  readonly address: bigint;
  readonly length: number;
  readonly errno: number;
  readonly reason: string;
}

export interface DmaServiceHooks {
  /** The space to use now (read at every access, so the VMM can swap it). */
  space(): AsyncDmaSpace | undefined;
  /** Why this access is refused before it reaches the space (e.g. nothing mapped there), or undefined. */
  refuse(address: bigint, length: number, access: DmaAccess): string | undefined;
  onFault(event: DmaFaultEvent): void;
}

const ERRNO_NAMES = new Map<number, ErrnoName>(Object.entries(ERRNO).map(([name, value]) => [value, name as ErrnoName]));

/** A DmaFault's errno as a typed error the connection answers with; errnos we have no name for become EFAULT. */
function errnoError(errno: number, message: string): VfioUserErrnoError {
  return new VfioUserErrnoError(ERRNO_NAMES.get(errno) ?? 'EFAULT', message);
}

function isPromiseLike(value: unknown): value is PromiseLike<void> {
  return typeof (value as PromiseLike<void> | undefined)?.then === 'function';
}

/** Registers the DMA_READ and DMA_WRITE handlers on a client connection. */
export function serveDma(connection: VfioUserConnection, hooks: DmaServiceHooks): void {
  const fail = (access: DmaAccess, address: bigint, length: number, errno: number, reason: string): never => {
    hooks.onFault({ access, address, length, errno, reason });
    throw errnoError(errno, `DMA ${access} of ${length} bytes at 0x${address.toString(16)}: ${reason}`);
  };
  const failed = (access: DmaAccess, address: bigint, length: number) => (error: unknown): never => {
    if (error instanceof DmaFault) return fail(access, address, length, error.errno, error.reason);
    throw error;
  };

  /** Runs the access: synchronously when the space is synchronous, so a plain DmaSpace costs no promise. */
  const run = <T>(access: DmaAccess, address: bigint, length: number, perform: (space: AsyncDmaSpace) => void | Promise<void>, reply: () => T): T | Promise<T> => {
    const space = hooks.space();
    if (space === undefined) return fail(access, address, length, ERRNO.EFAULT, 'the VMM supplied no DMA space');
    const refusal = hooks.refuse(address, length, access);
    if (refusal !== undefined) return fail(access, address, length, ERRNO.EFAULT, refusal);
    let pending: void | Promise<void>;
    try {
      pending = perform(space);
    } catch (error) {
      return failed(access, address, length)(error);
    }
    if (isPromiseLike(pending)) return Promise.resolve(pending).then(reply, failed(access, address, length));
    return reply();
  };

  connection.onCommand('DMA_READ', (command) => {
    // The connection already refused counts above our max_data_xfer_size, so this allocation is bounded.
    const length = Number(command.count);
    const data = new Uint8Array(length);
    return run<DmaDataBody>('read', command.address, length, (space) => space.read(command.address, data), () => ({ address: command.address, data }));
  });

  connection.onCommand('DMA_WRITE', (command) => {
    const length = command.data.length;
    return run<DmaWriteReplyBody>(
      'write',
      command.address,
      length,
      (space) => space.write(command.address, command.data),
      () => ({ transfer: { address: command.address, count: BigInt(length) } }),
    );
  });
}
