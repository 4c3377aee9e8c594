/** Our vfio-user client fed the recorded replies of real libvfio-user servers: it accepts them and reads the device right. */

import assert from 'node:assert/strict';
import { GuestMemory } from '../../lib/memory';
import { VfioUserClient } from '../../lib/vfio-user/client';
import { decodeMessage } from '../../lib/vfio-user/codec';
import { REGION_INFO_FLAGS } from '../../lib/vfio-user/protocol';
import { InMemoryTransport, type Transport } from '../../lib/vfio-user/transport';
import { waitFor } from '../helpers';
import { CaptureReplayServer, exchanges, readCapture, type CaptureRecord } from '../vfio-user/client/capture-replay';

/** The files whose client enumerated the device (the migration destinations never ask). */
const ENUMERATED = ['client-server.src.jsonl', 'old-client-server.src.jsonl', 'probe-gpio.jsonl', 'probe-null.jsonl', 'probe-server.jsonl'];

/** The device as the recorded replies describe it, read straight from the capture (the fullest answer per region). */
function expectedDevice(records: CaptureRecord[]) {
  const replies = exchanges(records).flatMap(({ answer, reply }) => (answer?.type === 'reply' ? [{ body: answer.body, reply }] : []));
  const version = replies.find(({ body }) => body.command === 'VERSION')!.body as Extract<(typeof replies)[number]['body'], { command: 'VERSION' }>;
  const info = replies.find(({ body }) => body.command === 'DEVICE_GET_INFO')!.body as Extract<
    (typeof replies)[number]['body'],
    { command: 'DEVICE_GET_INFO' }
  >;
  const regions = Array.from({ length: info.numRegions }, (_, index) => {
    const answers = replies.filter(({ body }) => body.command === 'DEVICE_GET_REGION_INFO' && body.index === index);
    const fullest = answers.sort((x, y) => y.reply.size - x.reply.size)[0]!;
    const body = fullest.body as Extract<(typeof replies)[number]['body'], { command: 'DEVICE_GET_REGION_INFO' }>;
    const sparse = body.capabilities.find((cap) => cap.kind === 'sparse-mmap');
    return {
      index,
      flags: body.flags,
      size: body.size,
      argsz: body.argsz,
      sparseAreas: sparse?.kind === 'sparse-mmap' ? sparse.areas : undefined,
      hasFd: fullest.reply.nfds > 0,
    };
  });
  const irqs = replies.flatMap(({ body }) =>
    body.command === 'DEVICE_GET_IRQ_INFO' ? [{ index: body.index, flags: body.flags, count: body.count }] : [],
  );
  return {
    version: { major: version.major, minor: version.minor },
    twinSocket: version.capabilities.twinSocket?.fdIndex !== undefined,
    device: { flags: info.flags, numRegions: info.numRegions, numIrqs: info.numIrqs },
    regions,
    irqs,
  };
}

describe('interop: our client accepts the recorded server replies', function () {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const run of cleanup.splice(0).reverse()) run();
  });

  async function replayTo(file: string, options: Parameters<typeof VfioUserClient.open>[1] = {}) {
    const records = readCapture(file);
    const [ours, theirs]: [Transport, Transport] = InMemoryTransport.pair();
    const replay = new CaptureReplayServer(theirs, records);
    cleanup.push(() => replay.close());
    const client = await VfioUserClient.open(ours, { twinSocket: true, requestTimeoutMs: 5000, ...options });
    cleanup.push(() => client.close());
    return { client, replay, records };
  }

  for (const file of ENUMERATED) {
    it(`${file}: enumerates the device exactly as the capture describes it`, async function () {
      const { client, replay, records } = await replayTo(file);
      const expected = expectedDevice(records);
      const description = client.description;
      assert.deepEqual(
        {
          version: description.version,
          twinSocket: description.twinSocket,
          device: description.device,
          regions: description.regions.map((r) => ({
            index: r.index,
            flags: r.flags,
            size: r.size,
            argsz: r.argsz,
            sparseAreas: r.sparse ? r.mmapAreas : undefined,
            hasFd: r.hasFd,
          })),
          irqs: description.irqs.map((irq) => ({ index: irq.index, flags: irq.flags, count: irq.count })),
        },
        expected,
      );
      assert.deepEqual(replay.unmatched, [], 'every command the client sent has a recorded answer');
      // Regions with caps were asked twice (32, then what the server named); all others once.
      const regionRequests = replay.received.filter((c) => c.command === 'DEVICE_GET_REGION_INFO');
      const withCaps = expected.regions.filter((r) => (r.flags & REGION_INFO_FLAGS.bits.CAPS) !== 0).length;
      assert.equal(regionRequests.length, expected.device.numRegions + withCaps);
      // A region the server offers for mmap maps, with every area the capture names.
      for (const region of client.regions.filter((r) => r.mappable)) {
        const areas = client.mapRegion(region.index);
        assert.deepEqual(
          areas.map((a) => [a.offset, a.size]),
          region.description.mmapAreas.map((a) => [a.offset, a.size]),
        );
      }
    });
  }

  it("client-server.src.jsonl: the README's facts (BAR1 sparse areas with an fd, config 256 bytes, INTx 1)", async function () {
    const { client } = await replayTo('client-server.src.jsonl');
    const bar1 = client.description.regions[1]!;
    assert.deepEqual(
      { size: bar1.size, flags: bar1.flags, argsz: bar1.argsz, areas: bar1.mmapAreas, hasFd: bar1.hasFd },
      {
        size: 0x4000n,
        flags: 0xf,
        argsz: 80,
        areas: [
          { offset: 0x0n, size: 0x1000n },
          { offset: 0x2000n, size: 0x1000n },
        ],
        hasFd: true,
      },
    );
    assert.equal(client.description.regions[7]!.size, 256n);
    assert.equal(client.description.regions[0]!.size, 8n);
    assert.deepEqual(client.description.device, { flags: 3, numRegions: 9, numIrqs: 5 });
    assert.equal(client.description.twinSocket, false);
    assert.deepEqual(client.description.serverCapabilities.migration, { pgsize: 4096 });
  });

  it('probe-gpio.jsonl: BAR2 of 0x100 bytes, INTx/ERR/REQ one vector each, and the config header read back', async function () {
    const { client } = await replayTo('probe-gpio.jsonl');
    assert.deepEqual([client.description.regions[2]!.size, client.description.regions[2]!.flags], [0x100n, 3]);
    assert.deepEqual(
      client.irqs.map((irq) => irq.count),
      [1, 0, 0, 1, 1],
    );
    assert.equal(client.description.twinSocket, true);
    const header = await client.regionRead(7, 0, 64);
    assert.deepEqual([header[0], header[1], header[2], header[3]], [0x4f, 0x49, 0xc8, 0x0d]);
  });

  it("probetwin-server.jsonl: answers the server's twin-socket DMA byte for byte as the recorded client did", async function () {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(0x2000) });
    const { client, replay, records } = await replayTo('probetwin-server.jsonl', { enumerate: false, dmaSpace: memory.dma });
    assert.ok(replay.twin, 'the replayed VERSION handed out a twin socket');
    await client.dmaMap({ address: 0x0n, size: 0x1000n });
    await client.dmaMap({ address: 0x1000n, size: 0x1000n });
    const serverCommands = exchanges(records, 's2c');
    assert.equal(serverCommands.length, 6);
    const answers: Buffer[] = [];
    replay.twin.on('message', (bytes) => answers.push(Buffer.from(bytes)));
    for (const [index, { command }] of serverCommands.entries()) {
      assert.equal(command.chan, 'twin');
      replay.twin.send(Buffer.from(command.hex, 'hex'));
      await waitFor(() => answers.length === index + 1, `the reply to seq ${command.seq}`);
    }
    assert.deepEqual(
      answers.map((bytes) => bytes.toString('hex')),
      serverCommands.map(({ reply }) => reply.hex),
    );
    for (const bytes of answers) assert.equal(decodeMessage(bytes).type, 'reply');
    assert.deepEqual(memory.read(0xc00, 4), Uint8Array.of(0x44, 0x44, 0x44, 0x44));
  });
});
