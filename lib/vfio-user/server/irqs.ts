/** A device's IRQ indexes (INTx, MSI, MSI-X, ERR, REQ): eventfds per vector, masks, and the SET_IRQS semantics. */

import { ViommuError } from '../../errors';
import type { FileDescriptor } from '../../native';
import { EventFd, type ReceivedFds } from '../../os';
import { VfioUserErrnoError } from '../connection-errors';
import type { IrqInfoBody, SetIrqsBody } from '../messages';
import { IRQ_INDEXES, IRQ_INFO_FLAGS, IRQ_INFO_LAYOUT, SET_IRQS_FLAGS } from '../protocol';

export type IrqName = keyof typeof IRQ_INDEXES.values;
export const IRQ_INDEX_COUNT = Object.keys(IRQ_INDEXES.values).length;

export interface IrqDefinition {
  /** Vectors (sub-indexes) of this index. */
  count: number;
  /** Supports SET_IRQS MASK/UNMASK (default: yes for INTx, MSI and MSI-X, no for ERR and REQ). */
  maskable?: boolean;
}

export type IrqDefinitions = Partial<Record<IrqName, number | IrqDefinition>>;

interface Vector {
  /** Signalled when the device triggers the vector. */
  trigger: EventFd | undefined;
  /** Watched: a signal from the client masks / unmasks the vector (the kernel's virqfd semantics). */
  maskWatch: EventFd | undefined;
  unmaskWatch: EventFd | undefined;
  masked: boolean;
  /** Triggered while masked: delivered on unmask. */
  pending: boolean;
}

interface IrqIndex {
  readonly index: number;
  readonly name: IrqName;
  readonly maskable: boolean;
  readonly vectors: Vector[];
}

const BITS = SET_IRQS_FLAGS.bits;
/** Only one of these may have trigger eventfds at a time, as with VFIO's vfio-pci (and libvfio-user). */
const EXCLUSIVE: readonly IrqName[] = ['INTX', 'MSI', 'MSIX'];
const EVENTFD_KIND = 'anon_inode:[eventfd]';

function einval(message: string): VfioUserErrnoError {
  return new VfioUserErrnoError('EINVAL', message);
}

function newVector(): Vector {
  return { trigger: undefined, maskWatch: undefined, unmaskWatch: undefined, masked: false, pending: false };
}

export interface IrqEvents {
  /** A vector was triggered by the device: delivered (an eventfd was signalled), held (masked), or lost (no eventfd). */
  onTrigger?: (name: IrqName, vector: number, outcome: 'delivered' | 'pending' | 'no-eventfd') => void;
}

export class DeviceIrqs {
  private readonly indexes: IrqIndex[] = [];

  constructor(
    definitions: IrqDefinitions,
    private readonly events: IrqEvents = {},
  ) {
    for (let index = 0; index < IRQ_INDEX_COUNT; index++) {
      const name = IRQ_INDEXES.nameOf(index)!;
      const raw = definitions[name];
      const definition = typeof raw === 'number' ? { count: raw } : (raw ?? { count: 0 });
      if (!Number.isInteger(definition.count) || definition.count < 0 || definition.count > 2048) {
        throw new ViommuError('ERR_VFIO_USER_IRQ', `${name}: vector count ${definition.count} must be an integer from 0 to 2048`);
      }
      const maskable = definition.maskable ?? EXCLUSIVE.includes(name);
      this.indexes.push({ index, name, maskable, vectors: Array.from({ length: definition.count }, newVector) });
    }
  }

  count(name: IrqName): number {
    return this.byName(name).vectors.length;
  }

  info(index: number): IrqInfoBody {
    const irq = this.indexes[index];
    if (irq === undefined) throw einval(`IRQ index ${index} does not exist (the device has ${IRQ_INDEX_COUNT})`);
    const flags = IRQ_INFO_FLAGS.bits.EVENTFD | (irq.maskable ? IRQ_INFO_FLAGS.bits.MASKABLE : 0);
    return { argsz: IRQ_INFO_LAYOUT.size, flags, index, count: irq.vectors.length };
  }

  /** The eventfd the client gave for a vector's trigger, if any (for the device's own bookkeeping and tests). */
  eventFd(name: IrqName, vector = 0): EventFd | undefined {
    return this.byName(name).vectors[vector]?.trigger;
  }

  /** True when any vector of the index has a trigger eventfd. */
  enabled(name: IrqName): boolean {
    return this.byName(name).vectors.some((vector) => vector.trigger !== undefined);
  }

  masked(name: IrqName, vector = 0): boolean {
    return this.byName(name).vectors[vector]?.masked ?? false;
  }

  /**
   * The device raises a vector: its eventfd is signalled unless the vector is masked (then it is held until
   * unmasked). Returns whether an eventfd was signalled.
   */
  trigger(name: IrqName, vector = 0): boolean {
    const state = this.byName(name).vectors[vector];
    if (state === undefined) throw new ViommuError('ERR_VFIO_USER_IRQ', `${name} has no vector ${vector}`);
    return this.fire(name, vector, state);
  }

  // ---- SET_IRQS ---------------------------------------------------------------------------------------------

  /** Applies one SET_IRQS command. Takes the eventfds it keeps from `fds` at once; the rest stay for the caller to close. */
  set(body: SetIrqsBody, fds: ReceivedFds): void {
    const irq = this.indexes[body.index];
    if (irq === undefined) throw einval(`IRQ index ${body.index} does not exist (the device has ${IRQ_INDEX_COUNT})`);
    const data = body.flags & (BITS.DATA_NONE | BITS.DATA_BOOL | BITS.DATA_EVENTFD);
    const action = body.flags & (BITS.ACTION_MASK | BITS.ACTION_UNMASK | BITS.ACTION_TRIGGER);
    if (body.count === 0) {
      // The spec's one special case: count (and start) 0 with DATA_NONE and TRIGGER turns the whole index off.
      if (data !== BITS.DATA_NONE || action !== BITS.ACTION_TRIGGER || body.start !== 0) {
        throw einval(`${irq.name}: count 0 is only meaningful with start 0, DATA_NONE and ACTION_TRIGGER (disable the index)`);
      }
      if (fds.count > 0) throw einval(`${irq.name}: disabling an index takes no fds, got ${fds.count}`);
      this.disable(irq);
      return;
    }
    const end = body.start + body.count;
    if (end > irq.vectors.length) {
      throw einval(`${irq.name}: vectors [${body.start}, ${end}) leave the index's ${irq.vectors.length}`);
    }
    if (action !== BITS.ACTION_TRIGGER && !irq.maskable) throw einval(`${irq.name} cannot be masked or unmasked`);
    if (data === BITS.DATA_EVENTFD) {
      this.assignEventFds(irq, body.start, body.count, action, fds);
      return;
    }
    if (fds.count > 0) throw einval(`${irq.name}: fds come only with DATA_EVENTFD, got ${fds.count}`);
    for (let j = 0; j < body.count; j++) {
      if (data === BITS.DATA_BOOL && body.data[j] === 0) continue;
      const vector = body.start + j;
      if (action === BITS.ACTION_TRIGGER) this.fire(irq.name, vector, irq.vectors[vector]!);
      else this.setMasked(irq, vector, action === BITS.ACTION_MASK);
    }
  }

  /** Closes every eventfd and forgets masks and pending interrupts (the client went away, or a reset). */
  releaseAll(): void {
    for (const irq of this.indexes) this.disable(irq);
  }

  // ---- internals --------------------------------------------------------------------------------------------

  private byName(name: IrqName): IrqIndex {
    return this.indexes[IRQ_INDEXES.values[name]]!;
  }

  private fire(name: IrqName, vector: number, state: Vector): boolean {
    if (state.masked) {
      state.pending = true;
      this.events.onTrigger?.(name, vector, 'pending');
      return false;
    }
    if (state.trigger === undefined || state.trigger.closed) {
      this.events.onTrigger?.(name, vector, 'no-eventfd');
      return false;
    }
    state.trigger.signal();
    this.events.onTrigger?.(name, vector, 'delivered');
    return true;
  }

  private setMasked(irq: IrqIndex, vector: number, masked: boolean): void {
    const state = irq.vectors[vector]!;
    state.masked = masked;
    if (!masked && state.pending) {
      state.pending = false;
      this.fire(irq.name, vector, state);
    }
  }

  private disable(irq: IrqIndex): void {
    for (const state of irq.vectors) {
      state.trigger?.close();
      state.maskWatch?.close();
      state.unmaskWatch?.close();
      Object.assign(state, newVector());
    }
  }

  /** DATA_EVENTFD: `count` fds assign one per vector; no fds de-assign the range (the spec's rule). */
  private assignEventFds(irq: IrqIndex, start: number, count: number, action: number, fds: ReceivedFds): void {
    if (fds.count !== 0 && fds.count !== count) {
      throw einval(`${irq.name}: DATA_EVENTFD for ${count} vectors carries ${fds.count} fds; send ${count}, or none to de-assign`);
    }
    const slot: keyof Pick<Vector, 'trigger' | 'maskWatch' | 'unmaskWatch'> =
      action === BITS.ACTION_TRIGGER ? 'trigger' : action === BITS.ACTION_MASK ? 'maskWatch' : 'unmaskWatch';
    if (fds.count === 0) {
      for (let vector = start; vector < start + count; vector++) {
        const state = irq.vectors[vector]!;
        state[slot]?.close();
        state[slot] = undefined;
      }
      return;
    }
    if (slot === 'trigger') {
      const other = EXCLUSIVE.includes(irq.name) ? EXCLUSIVE.find((name) => name !== irq.name && this.enabled(name)) : undefined;
      if (other !== undefined) throw einval(`${irq.name}: ${other} is enabled; disable it (count 0) before switching`);
    }
    const descriptions = fds.describe();
    const notEventFd = descriptions.findIndex((kind) => kind !== EVENTFD_KIND);
    if (notEventFd >= 0) throw einval(`${irq.name}: fd ${notEventFd} is ${descriptions[notEventFd]}, not an eventfd`);
    const taken: FileDescriptor[] = fds.takeAll();
    taken.forEach((fd, j) => {
      const vector = start + j;
      const state = irq.vectors[vector]!;
      state[slot]?.close();
      const eventFd = new EventFd(fd);
      state[slot] = eventFd;
      if (slot === 'maskWatch') eventFd.watch(() => this.setMasked(irq, vector, true));
      if (slot === 'unmaskWatch') eventFd.watch(() => this.setMasked(irq, vector, false));
    });
  }
}
