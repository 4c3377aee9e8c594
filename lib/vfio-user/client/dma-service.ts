/** Serves the server's DMA_READ/DMA_WRITE from the DmaSpace the VMM supplies (where a vIOMMU plugs in). */

import { DmaFault, EFAULT, isPromiseLike, type AsyncDmaSpace, type DmaAccess } from '../../memory';
import type { VfioUserConnection } from '../connection';
import type { DmaDataBody, DmaWriteReplyBody } from '../messages';

/** One failed server DMA, as reported to the VMM. */
export interface DmaFaultEvent {
  readonly access: DmaAccess;
  readonly address: bigint;
  readonly length: number;
  readonly errno: number;
  readonly reason: string;
  /** The DmaFault itself: from a vIOMMU's DMA space, a subclass may carry more (the unit's TranslationDmaFault: its fault record). */
  readonly cause: DmaFault;
}

export interface DmaServiceHooks {
  /** The space to use now (read at every access, so the VMM can swap it). */
  space(): AsyncDmaSpace | undefined;
  /** Why this access is refused before it reaches the space (e.g. nothing mapped there), or undefined. */
  refuse(address: bigint, length: number, access: DmaAccess): string | undefined;
  onFault(event: DmaFaultEvent): void;
}

/**
 * Registers the DMA_READ and DMA_WRITE handlers on a client connection. A refusal or a DmaFault from the space is
 * reported through onFault and thrown on as a DmaFault, which the connection answers with its errno.
 */
export function serveDma(connection: VfioUserConnection, hooks: DmaServiceHooks): void {
  /** Runs the access: synchronously when the space is synchronous, so a plain DmaSpace costs no promise. */
  const run = <T>(
    access: DmaAccess,
    address: bigint,
    length: number,
    perform: (space: AsyncDmaSpace) => void | Promise<void>,
    reply: () => T,
  ): T | Promise<T> => {
    // The event describes the server's request; the fault's own address may be a page inside it.
    const reported = (error: unknown): never => {
      if (error instanceof DmaFault) hooks.onFault({ access, address, length, errno: error.errno, reason: error.reason, cause: error });
      throw error;
    };
    const space = hooks.space();
    const refusal = space === undefined ? 'the VMM supplied no DMA space' : hooks.refuse(address, length, access);
    if (refusal !== undefined) return reported(new DmaFault(address, length, access, refusal, EFAULT));
    let pending: void | Promise<void>;
    try {
      pending = perform(space!);
    } catch (error) {
      return reported(error);
    }
    return isPromiseLike(pending) ? Promise.resolve(pending).then(reply, reported) : reply();
  };

  connection.onCommand('DMA_READ', (command) => {
    // The connection already refused counts above our max_data_xfer_size, so this allocation is bounded.
    const length = Number(command.count);
    const data = new Uint8Array(length);
    return run<DmaDataBody>(
      'read',
      command.address,
      length,
      (space) => space.read(command.address, data),
      () => ({ address: command.address, data }),
    );
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
