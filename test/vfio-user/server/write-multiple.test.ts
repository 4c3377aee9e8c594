/** write_multiple: the server offers REGION_WRITE_MULTI in VERSION (the spec's boolean capability) and serves it. */

import assert from 'node:assert/strict';
import { EDU_REGISTERS } from '../../../lib/devices/edu';
import { VfioUserConnection } from '../../../lib/vfio-user/connection';
import { negotiateVersion, serveVersion } from '../../../lib/vfio-user/negotiation';
import { InMemoryTransport } from '../../../lib/vfio-user/transport';
import { BAR0, cleanupAfterEachTest, connect, readU32, serveEngine } from './harness';

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
  return bytes;
}

describe('vfio-user server: write_multiple', () => {
  const cleanup = cleanupAfterEachTest();

  it('is offered in the VERSION reply as "write_multiple": true, and REGION_WRITE_MULTI is served', async () => {
    const { path } = serveEngine(cleanup);
    const client = await connect(cleanup, path, { negotiate: false });
    const negotiated = await negotiateVersion(client);
    assert.equal(negotiated.stated.writeMultiple, true);
    assert.equal(negotiated.peer.writeMultiple, true);
    const reply = await client.request('REGION_WRITE_MULTI', {
      writes: [
        { offset: BigInt(EDU_REGISTERS.liveness), region: BAR0, data: u32(0x12345678) },
        { offset: BigInt(EDU_REGISTERS.factorial), region: BAR0, data: u32(5) },
      ],
    });
    assert.equal(reply.body.count, 2n);
    assert.equal(await readU32(client, BAR0, EDU_REGISTERS.liveness), ~0x12345678 >>> 0);
    assert.equal(await readU32(client, BAR0, EDU_REGISTERS.factorial), 120);
  });

  it('is not offered by a server that says it does not serve REGION_WRITE_MULTI, nor asked of a client', async () => {
    const [a, b] = InMemoryTransport.pair();
    const server = new VfioUserConnection(b, { role: 'server' });
    cleanup.add(() => server.close());
    serveVersion(server, { writeMultiple: false });
    const client = new VfioUserConnection(a, { role: 'client' });
    cleanup.add(() => client.close());
    const negotiated = await negotiateVersion(client);
    assert.equal(negotiated.peer.writeMultiple, false);
    // The capability is the server's to offer: our client never states it.
    assert.equal(client.announcedCapabilities.writeMultiple, undefined);
  });
});
