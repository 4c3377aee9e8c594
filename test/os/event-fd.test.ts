/** EventFd: signal, read, readiness from the event loop, and fds pinned while watched. */
import { strict as assert } from 'node:assert';
import { EventFd, MessageSocket } from '../../lib/os';
import { frame, openFdCount, waitFor } from '../helpers';

describe('EventFd', () => {
  it('counts signals until read', () => {
    const event = EventFd.create();
    assert.equal(event.read(), 0);
    event.signal();
    event.signal(4);
    assert.equal(event.read(), 5);
    assert.equal(event.read(), 0);
    event.close();
  });

  it('hands out one count per read in semaphore mode', () => {
    const event = EventFd.create(2, { semaphore: true });
    assert.equal(event.read(), 1);
    assert.equal(event.read(), 1);
    assert.equal(event.read(), 0);
    event.close();
  });

  it('wakes a watcher from the event loop when another owner of the fd signals', async () => {
    const event = EventFd.create();
    const [a, b] = MessageSocket.pair();
    const arriving = new Promise<EventFd>((resolve) => b.once('message', (_bytes, fds) => resolve(new EventFd(fds.take(0)))));
    a.send(frame('irq'), [event.fd]);
    const remote = await arriving;
    const counts: number[] = [];
    event.watch((count) => counts.push(count));
    remote.signal(3);
    await waitFor(() => counts.length === 1, 'the watcher');
    assert.deepEqual(counts, [3]);
    remote.signal();
    await waitFor(() => counts.length === 2, 'a second wakeup');
    remote.close();
    event.close();
    a.close();
    b.close();
  });

  it('pins a watched fd open: closing it underneath the watch is refused with EBUSY', () => {
    const before = openFdCount();
    const event = EventFd.create();
    event.watch(() => undefined);
    assert.throws(
      () => event.fd.close(),
      (error: any) => error.code === 'EBUSY',
    );
    event.close();
    assert.equal(event.closed, true);
    assert.equal(openFdCount(), before);
  });
});
