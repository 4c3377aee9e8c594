/** WaitingTransport: a waiting client's messages are replayed on activate(), and no held fd outlives the replay. */
import { strict as assert } from 'node:assert';
import { EventEmitter } from 'node:events';
import type { FileDescriptor } from '../../../lib/native';
import { EventFd, ReceivedFds } from '../../../lib/os';
import type { Transport, TransportEvents } from '../../../lib/vfio-user/transport';
import { WaitingTransport } from '../../../lib/vfio-user/server/waiting-transport';

/** The accepted socket's side the wrapper sees: messages pushed in by the test. */
class PushedTransport extends EventEmitter<TransportEvents> implements Transport {
  closed = false;
  send(): void {}
  close(): void {
    this.closed = true;
  }
  push(bytes: string, fds: FileDescriptor[]): void {
    this.emit('message', Buffer.from(bytes), new ReceivedFds(fds));
  }
}

describe('vfio-user server: WaitingTransport', () => {
  it('closes the fds of the messages not replayed when a listener throws during activate()', () => {
    const inner = new PushedTransport();
    const waiting = new WaitingTransport(inner);
    const fds = [EventFd.create().fd, EventFd.create().fd, EventFd.create().fd];
    inner.push('first', [fds[0]!]);
    inner.push('second', [fds[1]!]);
    inner.push('third', [fds[2]!]);
    const seen: string[] = [];
    waiting.on('message', (bytes) => {
      seen.push(bytes.toString());
      if (seen.length === 1) throw new Error('the dispatcher broke');
    });
    assert.throws(() => waiting.activate(), /the dispatcher broke/);
    assert.deepEqual(seen, ['first']);
    assert.deepEqual(
      fds.map((fd) => fd.closed),
      [true, true, true],
      'every held fd is closed',
    );
  });

  it('replays held messages in order and hands over the fds a listener takes', () => {
    const inner = new PushedTransport();
    const waiting = new WaitingTransport(inner);
    const kept = EventFd.create().fd;
    const unclaimed = EventFd.create().fd;
    inner.push('a', [kept]);
    inner.push('b', [unclaimed]);
    const taken: FileDescriptor[] = [];
    const seen: string[] = [];
    waiting.on('message', (bytes, received) => {
      seen.push(bytes.toString());
      if (bytes.toString() === 'a') taken.push(received.take(0));
    });
    waiting.activate();
    assert.deepEqual(seen, ['a', 'b']);
    assert.equal(kept.closed, false);
    assert.equal(unclaimed.closed, true);
    for (const fd of taken) fd.close();
  });
});
