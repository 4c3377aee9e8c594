/** MessageSocket and UnixServer: framing, fd passing, ownership of received fds, and broken peers. */
import { strict as assert } from 'node:assert';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import fc from 'fast-check';
import { native, type SystemCallError } from '../../lib/native';
import { MessageSocket, UnixServer, type ReceivedFds } from '../../lib/os';
import { SharedRegion } from '../../lib/memory';
import { frame, openFdCount, tempSocketPath, waitFor } from '../helpers';

function nextMessage(socket: MessageSocket, keepFds = false): Promise<{ bytes: Buffer; fds: ReturnType<ReceivedFds['takeAll']> }> {
  return new Promise((resolve) => {
    socket.once('message', (bytes, fds) => resolve({ bytes, fds: keepFds ? fds.takeAll() : [] }));
  });
}

/** A server whose accepted side we hold as a MessageSocket, and a raw Node socket as a misbehaving peer. */
async function rawPeer(options = {}): Promise<{ server: UnixServer; ours: MessageSocket; raw: net.Socket }> {
  const path = tempSocketPath();
  const server = UnixServer.listen(path, options);
  const accepted = once(server, 'connection');
  const raw = net.createConnection(path);
  await once(raw, 'connect');
  const [ours] = (await accepted) as [MessageSocket];
  return { server, ours, raw };
}

describe('MessageSocket', () => {
  it('delivers whole messages in order over a socketpair, header and payload intact', async () => {
    const [a, b] = MessageSocket.pair();
    const received: string[] = [];
    b.on('message', (bytes) => received.push(bytes.subarray(16).toString()));
    for (let i = 0; i < 100; i++) a.send(frame(`message ${i}`, i));
    await waitFor(() => received.length === 100, '100 messages');
    assert.deepEqual(
      received,
      Array.from({ length: 100 }, (_, i) => `message ${i}`),
    );
    a.close();
    const [error] = await once(b, 'close');
    assert.equal(error, undefined, 'a peer closing between messages is a clean close');
  });

  it("passes fds with a message: the receiver maps a memfd and sees the sender's bytes", async () => {
    const [a, b] = MessageSocket.pair();
    const region = SharedRegion.create('passed', native.pageSize);
    new Uint8Array(region.buffer).set([1, 2, 3, 4]);
    const arriving = nextMessage(b, true);
    a.send(frame('here is memory'), [region.fd]);
    const { fds } = await arriving;
    assert.equal(fds.length, 1);
    assert.match(fds[0]!.describe(), /memfd:passed/);
    const mapped = SharedRegion.fromFd(fds[0]!);
    assert.deepEqual([...new Uint8Array(mapped.buffer, 0, 4)], [1, 2, 3, 4]);
    new Uint8Array(mapped.buffer)[4] = 5;
    assert.equal(new Uint8Array(region.buffer)[4], 5);
    mapped.close();
    region.close();
    a.close();
    b.close();
  });

  it('gives fds to exactly the message they were sent with when several arrive in one read', async () => {
    const [a, b] = MessageSocket.pair();
    const seen: Array<{ text: string; fds: string[] }> = [];
    b.on('message', (bytes, fds) => seen.push({ text: bytes.subarray(16, 22).toString(), fds: fds.describe() }));
    const event = native.eventfdCreate();
    const memory = native.memfdCreate('second', native.pageSize);
    // Sent back to back, so they arrive together; a large message in the middle goes through the direct path.
    a.send(frame('first '));
    a.send(frame('second'), [memory]);
    a.send(frame('third '));
    a.send(frame(Buffer.concat([Buffer.from('large '), Buffer.alloc(100_000)])), [event, memory]);
    a.send(frame('fifth '), [event]);
    await waitFor(() => seen.length === 5, 'five messages');
    assert.deepEqual(
      seen.map((m) => m.text),
      ['first ', 'second', 'third ', 'large ', 'fifth '],
    );
    assert.deepEqual(
      seen.map((m) => m.fds.length),
      [0, 1, 0, 2, 1],
    );
    assert.match(seen[1]!.fds[0]!, /memfd:second/);
    assert.match(seen[3]!.fds[0]!, /eventfd/);
    assert.match(seen[3]!.fds[1]!, /memfd:second/);
    assert.match(seen[4]!.fds[0]!, /eventfd/);
    event.close();
    memory.close();
    a.close();
    b.close();
  });

  it('reassembles messages however the byte stream is cut (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 70_000 }), { minLength: 1, maxLength: 8 }),
        fc.array(fc.integer({ min: 1, max: 40_000 }), { minLength: 1, maxLength: 20 }),
        async (payloadSizes, cuts) => {
          const { server, ours, raw } = await rawPeer({ maxMessageSize: 1 << 20 });
          const messages = payloadSizes.map((size, i) => frame(Buffer.alloc(size, i + 1), i));
          const stream = Buffer.concat(messages);
          const received: Buffer[] = [];
          ours.on('message', (bytes) => received.push(bytes));
          let position = 0;
          for (let i = 0; position < stream.length; i++) {
            const end = Math.min(stream.length, position + cuts[i % cuts.length]!);
            raw.write(stream.subarray(position, end));
            position = end;
          }
          await waitFor(() => received.length === messages.length, 'all messages');
          received.forEach((bytes, i) => assert.ok(bytes.equals(messages[i]!), `message ${i} intact`));
          raw.destroy();
          await once(ours, 'close');
          server.close();
        },
      ),
      { numRuns: 25 },
    );
  });

  it('closes fds that no handler claimed', async () => {
    const [a, b] = MessageSocket.pair();
    const before = openFdCount();
    const eventfd = native.eventfdCreate();
    const seen = nextMessage(b, false);
    a.send(frame('unclaimed'), [eventfd, eventfd]);
    await seen;
    eventfd.close();
    assert.equal(openFdCount(), before);
    a.close();
    b.close();
  });

  it('leaves the open fd count where it started after 10,000 send/receive-with-fd cycles', async () => {
    const [a, b] = MessageSocket.pair();
    const region = SharedRegion.create('cycles', native.pageSize);
    const before = openFdCount();
    const live = native.liveFileDescriptors();
    let received = 0;
    b.on('message', (_bytes, fds) => {
      received++;
      if (received % 2 === 0) fds.take(0).close(); // half claimed and closed by us, half closed for us
    });
    for (let i = 0; i < 10_000; i++) {
      a.send(frame('x'), [region.fd]);
      if (i % 100 === 99) await waitFor(() => received === i + 1, `message ${i}`);
    }
    await waitFor(() => received === 10_000, 'all messages');
    assert.equal(openFdCount(), before);
    assert.equal(native.liveFileDescriptors(), live);
    region.close();
    a.close();
    b.close();
  });

  it('queues what the kernel cannot take yet and delivers a 4 MiB message whole', async () => {
    const [a, b] = MessageSocket.pair({ maxMessageSize: 8 << 20 });
    const payload = Buffer.alloc(4 << 20, 0x5a);
    const arriving = nextMessage(b);
    a.send(frame(payload));
    assert.ok(a.pendingBytes > 0, 'a socketpair buffer is smaller than 4 MiB');
    const { bytes } = await arriving;
    assert.equal(bytes.length, payload.length + 16);
    assert.ok(bytes.subarray(16).equals(payload));
    assert.equal(a.pendingBytes, 0);
    a.close();
    b.close();
  });

  it('refuses to send a buffer whose size field does not match, and sending after close', () => {
    const [a, b] = MessageSocket.pair();
    const bad = frame('abc');
    bad.writeUInt32LE(999, 4);
    assert.throws(
      () => a.send(bad),
      (error: any) => error.code === 'ERR_INVALID_ARG_VALUE',
    );
    assert.throws(
      () => a.send(Buffer.alloc(8)),
      (error: any) => error.code === 'ERR_INVALID_ARG_VALUE',
    );
    a.close();
    assert.throws(
      () => a.send(frame()),
      (error: any) => error.code === 'EPIPE',
    );
    b.close();
  });

  describe('broken peers: each gives a clean error event and leaks nothing', () => {
    async function expectClose(setup: (raw: net.Socket) => void, options = {}): Promise<SystemCallError> {
      const before = openFdCount();
      const { server, ours, raw } = await rawPeer(options);
      const closed = once(ours, 'close');
      ours.on('message', () => assert.fail('no message may be delivered'));
      setup(raw);
      const [error] = (await closed) as [SystemCallError];
      raw.destroy();
      server.close();
      await waitFor(() => openFdCount() === before, 'fd count back to its start');
      assert.ok(error, 'the close carries an error');
      return error;
    }

    it('a truncated header (peer closes after 8 bytes)', async () => {
      const error = await expectClose((raw) => raw.end(Buffer.alloc(8)));
      assert.equal(error.code, 'EPIPE');
      assert.match(error.message, /mid-message after 8 of at least 16 bytes/);
    });

    it('a size field below 16', async () => {
      const header = frame();
      header.writeUInt32LE(15, 4);
      const error = await expectClose((raw) => raw.write(header));
      assert.equal(error.code, 'EPROTO');
      assert.match(error.message, /below the 16-byte header/);
    });

    it('a size above the limit', async () => {
      const header = frame();
      header.writeUInt32LE(1 << 20, 4);
      const error = await expectClose((raw) => raw.write(header), { maxMessageSize: 4096 });
      assert.equal(error.code, 'EMSGSIZE');
      assert.match(error.message, /exceeds the limit of 4096/);
    });

    it('a peer that closes mid-message', async () => {
      const message = frame(Buffer.alloc(100));
      const error = await expectClose((raw) => raw.end(message.subarray(0, 50)));
      assert.equal(error.code, 'EPIPE');
      assert.match(error.message, /after 50 of 116 bytes/);
    });

    it('more fds than the socket accepts', async () => {
      const before = openFdCount();
      const [a, b] = MessageSocket.pair({ maxFds: 1 });
      const fd = native.eventfdCreate();
      const closed = once(b, 'close');
      a.send(frame('two fds'), [fd, fd]);
      const [error] = (await closed) as [SystemCallError];
      assert.equal(error.code, 'EMSGSIZE');
      fd.close();
      a.close();
      await waitFor(() => openFdCount() === before, 'fd count back to its start');
    });
  });
});

describe('UnixServer', () => {
  it('accepts connections that exchange messages both ways, and removes its path on close', async () => {
    const path = tempSocketPath();
    const server = UnixServer.listen(path);
    const accepted = once(server, 'connection');
    const client = MessageSocket.connect(path);
    const [serverSide] = (await accepted) as [MessageSocket];
    serverSide.on('message', (bytes) => serverSide.send(frame(`echo ${bytes.subarray(16).toString()}`)));
    const reply = nextMessage(client);
    client.send(frame('ping'));
    assert.equal((await reply).bytes.subarray(16).toString(), 'echo ping');
    client.close();
    await once(serverSide, 'close');
    server.close();
    assert.equal(fs.existsSync(path), false);
  });

  it('replaces a stale socket file but refuses a live one', () => {
    const path = tempSocketPath();
    const first = UnixServer.listen(path);
    assert.throws(
      () => UnixServer.listen(path),
      (error: any) => error.code === 'EADDRINUSE',
    );
    // Simulate a crashed server: the file stays, nobody listens.
    const fd = native.unixListen(`${path}.stale`);
    fd.close();
    const second = UnixServer.listen(`${path}.stale`);
    assert.equal(second.listening, true);
    second.close();
    first.close();
  });

  it('reports connect failures with the errno name, the call and the path', () => {
    assert.throws(
      () => MessageSocket.connect('/nonexistent/viommu.sock'),
      (error: any) => error.code === 'ENOENT' && error.syscall === 'connect' && /\/nonexistent\/viommu.sock/.test(error.message),
    );
  });
});
