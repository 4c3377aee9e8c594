/**
 * The client's DMA table never disagrees with the server's silently: a DMA_MAP/DMA_UNMAP that times out closes the
 * client (the server may have applied it), and an unmap of everything waits for the maps and unmaps in flight.
 */
import assert from 'node:assert/strict';
import { VfioUserClient, VfioUserClientError } from '../../../lib/vfio-user/client';
import { DMA_UNMAP_FLAGS } from '../../../lib/vfio-user/protocol';
import { InMemoryTransport } from '../../../lib/vfio-user/transport';
import { tick, waitFor } from '../../helpers';
import { ScriptedServer } from './scripted-server';

/** Long enough for enumeration on a loaded machine; the test waits it out once per timed-out request. */
const REQUEST_TIMEOUT_MS = 1000;

describe('VfioUserClient DMA table against a slow or silent server', function () {
  this.timeout(20000);
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const run of cleanup.splice(0).reverse()) run();
  });

  /** A server whose DMA table is a set of "address+size" keys; its replies can be held back. */
  async function start() {
    const [a, b] = InMemoryTransport.pair();
    const server = new ScriptedServer(b);
    cleanup.push(() => server.close());
    const table = new Set<string>();
    let hold: Promise<void> | undefined;
    server.connection.onCommand('DMA_MAP', async (command) => {
      table.add(`${command.address}+${command.size}`);
      if (hold) await hold;
      return {};
    });
    server.connection.onCommand('DMA_UNMAP', async (command) => {
      if ((command.flags & DMA_UNMAP_FLAGS.bits.ALL) !== 0) table.clear();
      else table.delete(`${command.address}+${command.size}`);
      if (hold) await hold;
      return { unmapped: command };
    });
    const client = await VfioUserClient.open(a, { requestTimeoutMs: REQUEST_TIMEOUT_MS });
    cleanup.push(() => client.close());
    const closed = new Promise<Error | undefined>((resolve) => client.once('close', resolve));
    return {
      client,
      table,
      closed,
      /** Applies requests from now on but holds their replies until the returned function is called. */
      holdReplies(): () => void {
        let release!: () => void;
        hold = new Promise((resolve) => (release = resolve));
        return () => {
          hold = undefined;
          release();
        };
      },
      /** Applies requests from now on and never answers. */
      neverReply(): void {
        hold = new Promise(() => undefined);
      },
    };
  }

  it('closes the client when a DMA_MAP times out: the server may have applied it', async () => {
    const { client, table, closed, neverReply } = await start();
    neverReply();
    await assert.rejects(client.dmaMap({ address: 0x10000n, size: 0x1000n }), {
      code: 'ERR_VFIO_USER_DMA_OUTCOME_UNKNOWN',
      message: /DMA_MAP.*may or may not have applied it/,
    });
    assert.deepEqual([...table], ['65536+4096'], 'the server did apply it');
    assert.equal(client.closed, true);
    assert.equal(((await closed) as { code?: string } | undefined)?.code, 'ERR_VFIO_USER_DMA_OUTCOME_UNKNOWN');
    await assert.rejects(client.dmaMap({ address: 0x20000n, size: 0x1000n }), { code: 'ERR_VFIO_USER_CLIENT_STATE' });
  });

  it('closes the client when a DMA_UNMAP times out, instead of calling the range mapped again', async () => {
    const { client, table, closed, neverReply } = await start();
    await client.dmaMap({ address: 0x10000n, size: 0x1000n });
    neverReply();
    await assert.rejects(client.dmaUnmap(0x10000n, 0x1000n), { code: 'ERR_VFIO_USER_DMA_OUTCOME_UNKNOWN' });
    assert.deepEqual([...table], [], 'the server did unmap it');
    assert.equal(client.closed, true);
    assert.equal(((await closed) as { code?: string } | undefined)?.code, 'ERR_VFIO_USER_DMA_OUTCOME_UNKNOWN');
  });

  it('unmaps everything only after the maps in flight are answered, and refuses new ones meanwhile', async () => {
    const { client, table, holdReplies } = await start();
    await client.dmaMap({ address: 0x10000n, size: 0x1000n });
    const release = holdReplies();
    const inFlight = client.dmaMap({ address: 0x20000n, size: 0x1000n });
    await waitFor(() => table.has(`${0x20000}+${0x1000}`), 'the server applied the second map');
    const all = client.dmaUnmapAll();
    await tick(20);
    assert.equal(table.size, 2, 'no unmap of everything went out while a map was in flight');
    await assert.rejects(
      client.dmaMap({ address: 0x30000n, size: 0x1000n }),
      (error: unknown) => error instanceof VfioUserClientError && error.code === 'ERR_VFIO_USER_CLIENT_STATE' && /dmaUnmapAll/.test(error.message),
    );
    await assert.rejects(client.dmaUnmap(0x10000n, 0x1000n), { code: 'ERR_VFIO_USER_CLIENT_STATE' });
    release();
    await inFlight;
    await all;
    assert.deepEqual([...table], []);
    assert.deepEqual(client.dmaMappings, [], 'the client agrees: nothing is mapped');
    await client.dmaMap({ address: 0x20000n, size: 0x1000n });
    assert.deepEqual([...table], ['131072+4096']);
  });
});
