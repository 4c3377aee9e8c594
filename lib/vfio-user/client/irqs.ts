/** SET_IRQS requests built from intent (enable with eventfds, mask, unmask, trigger, disable), split to max_msg_fds. */

import type { FileDescriptor } from '../../native';
import type { EventFd } from '../../os';
import type { SetIrqsBody } from '../messages';
import { SET_IRQS_FLAGS, SET_IRQS_LAYOUT } from '../protocol';

export type IrqData = 'none' | 'bool' | 'eventfd';
export type IrqAction = 'mask' | 'unmask' | 'trigger';

const DATA_FLAGS: Record<IrqData, number> = {
  none: SET_IRQS_FLAGS.bits.DATA_NONE,
  bool: SET_IRQS_FLAGS.bits.DATA_BOOL,
  eventfd: SET_IRQS_FLAGS.bits.DATA_EVENTFD,
};
const ACTION_FLAGS: Record<IrqAction, number> = {
  mask: SET_IRQS_FLAGS.bits.ACTION_MASK,
  unmask: SET_IRQS_FLAGS.bits.ACTION_UNMASK,
  trigger: SET_IRQS_FLAGS.bits.ACTION_TRIGGER,
};

/** An eventfd as the caller holds it: our EventFd wrapper or a bare FileDescriptor. */
export type IrqEventFd = EventFd | FileDescriptor;

export function eventFdDescriptor(eventfd: IrqEventFd): FileDescriptor {
  return 'signal' in eventfd ? eventfd.fd : eventfd;
}

/** One SET_IRQS body; argsz is the exact payload size, as libvfio-user requires. */
export function setIrqsBody(index: number, start: number, count: number, data: IrqData, action: IrqAction, bools?: readonly boolean[]): SetIrqsBody {
  const bytes = data === 'bool' ? Uint8Array.from(bools ?? [], (value) => (value ? 1 : 0)) : new Uint8Array(0);
  return {
    argsz: SET_IRQS_LAYOUT.size + bytes.length,
    flags: DATA_FLAGS[data] | ACTION_FLAGS[action],
    index,
    start,
    count,
    data: bytes,
  };
}

export interface EventFdBatch {
  readonly body: SetIrqsBody;
  readonly fds: FileDescriptor[];
}

/**
 * DATA_EVENTFD|ACTION_TRIGGER for vectors start.., one eventfd each, in as many messages as the server's
 * max_msg_fds needs (libvfio-user wants exactly `count` fds per message).
 */
export function eventFdBatches(index: number, start: number, eventfds: readonly IrqEventFd[], maxMsgFds: number): EventFdBatch[] {
  const batches: EventFdBatch[] = [];
  const perMessage = Math.max(1, maxMsgFds);
  for (let at = 0; at < eventfds.length; at += perMessage) {
    const fds = eventfds.slice(at, at + perMessage).map(eventFdDescriptor);
    batches.push({ body: setIrqsBody(index, start + at, fds.length, 'eventfd', 'trigger'), fds });
  }
  return batches;
}
