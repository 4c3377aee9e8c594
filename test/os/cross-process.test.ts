/** Two processes share guest-style memory: a child creates a memfd, sends its fd, and each sees the other's writes. */
import { strict as assert } from 'node:assert';
import { once } from 'node:events';
import { fork } from 'node:child_process';
import * as path from 'node:path';
import { SharedRegion } from '../../lib/memory';
import { MessageSocket, UnixServer } from '../../lib/os';
import { frame, openFdCount, tempSocketPath, waitFor } from '../helpers';

describe('shared memory across processes', () => {
  it("maps a region created by another process and both sides see each other's writes", async () => {
    const before = openFdCount();
    const socketPath = tempSocketPath();
    const server = UnixServer.listen(socketPath);
    const child = fork(path.join(__dirname, '..', 'fixtures', 'region-peer.js'), [socketPath], { stdio: 'inherit' });
    const [peer] = (await once(server, 'connection')) as [MessageSocket];
    const replies: string[] = [];
    let region: SharedRegion | undefined;
    peer.on('message', (bytes, fds) => {
      if (fds.count === 1) region = SharedRegion.fromFd(fds.take(0));
      else replies.push(bytes.subarray(16).toString());
    });
    await waitFor(() => region !== undefined, "the child's region");
    assert.match(region!.name, /memfd:child-region/);
    assert.equal(Buffer.from(region!.buffer, 0, 20).toString(), 'written by the child');
    new Uint8Array(region!.buffer).set(Buffer.from('written by the parent'), 100);
    peer.send(frame('check'));
    await waitFor(() => replies.length === 1, "the child's verdict");
    assert.equal(replies[0], 'ok');
    const [code] = await once(child, 'exit');
    assert.equal(code, 0);
    // The child exited; its memory stays valid here until we unmap.
    assert.equal(Buffer.from(region!.buffer, 0, 20).toString(), 'written by the child');
    region!.close();
    peer.close();
    server.close();
    await waitFor(() => openFdCount() === before, 'fd count back to its start');
  });
});
