/** WaitingTransport: holds a client that connected while another is served, and replays what it sent when its turn comes. */

import { EventEmitter } from 'node:events';
import type { FileDescriptor } from '../../native';
import { ReceivedFds } from '../../os';
import type { Transport, TransportEvents } from '../transport';

export interface WaitingLimits {
  /** Messages a waiting client may send before its turn (a well-behaved one sends VERSION and waits). */
  readonly messages: number;
  /** Bytes of those messages together. */
  readonly bytes: number;
}

export const DEFAULT_WAITING_LIMITS: WaitingLimits = { messages: 16, bytes: 1 << 20 };

interface Held {
  readonly bytes: Buffer;
  readonly fds: FileDescriptor[];
}

/**
 * Wraps an accepted transport. Until activate(), messages are copied and kept with their fds (a socket's receive
 * buffer may be reused); a client that sends more than the limits allow is closed. activate() replays them in
 * order, with the usual fd rule: fds nobody takes during dispatch are closed.
 */
export class WaitingTransport extends EventEmitter<TransportEvents> implements Transport {
  private held: Held[] = [];
  private heldBytes = 0;
  private active = false;
  /** True when the client was closed for sending too much while it waited. */
  overflowed = false;

  constructor(
    private readonly inner: Transport,
    private readonly limits: WaitingLimits = DEFAULT_WAITING_LIMITS,
  ) {
    super();
    inner.on('message', (bytes, fds) => this.receive(bytes, fds));
    inner.on('close', (error) => {
      this.dropHeld();
      this.emit('close', error);
    });
  }

  get closed(): boolean {
    return this.inner.closed;
  }

  get waiting(): boolean {
    return !this.active;
  }

  send(bytes: Uint8Array, fds?: FileDescriptor[]): void {
    this.inner.send(bytes, fds);
  }

  close(): void {
    this.dropHeld();
    this.inner.close();
  }

  /** From now on messages pass straight through; the held ones are delivered first, in order. */
  activate(): void {
    if (this.active) return;
    this.active = true;
    const held = this.held;
    this.held = [];
    this.heldBytes = 0;
    let next = 0;
    try {
      // A closed socket (or a listener that throws) ends the replay; the fds of what was not replayed are closed.
      while (next < held.length && !this.inner.closed) {
        const message = held[next]!;
        next++;
        const received = new ReceivedFds(message.fds);
        try {
          this.emit('message', message.bytes, received);
        } finally {
          received.closeUnclaimed();
        }
      }
    } finally {
      for (const rest of held.slice(next)) for (const fd of rest.fds) fd.close();
    }
  }

  private receive(bytes: Buffer, fds: ReceivedFds): void {
    if (this.active) {
      this.emit('message', bytes, fds);
      return;
    }
    if (this.held.length >= this.limits.messages || this.heldBytes + bytes.length > this.limits.bytes) {
      // Not taking the fds closes them; closing the socket tells the client why nothing happens.
      this.overflowed = true;
      this.inner.close();
      return;
    }
    this.held.push({ bytes: Buffer.from(bytes), fds: fds.takeAll() });
    this.heldBytes += bytes.length;
  }

  private dropHeld(): void {
    for (const message of this.held) for (const fd of message.fds) fd.close();
    this.held = [];
    this.heldBytes = 0;
  }
}
