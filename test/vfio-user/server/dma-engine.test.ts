/** The dma-engine served over a real socket: enumeration, config space, registers, DMA mapped and by message, IRQs, reset. */

import assert from 'node:assert/strict';
import { EDU_BUFFER_ADDRESS, EDU_IDENTIFICATION, EDU_REGISTERS } from '../../../lib/devices/edu';
import { MSI_CONTROL, PCI_CAPABILITY_IDS, PCI_COMMAND, PCI_STATUS, TYPE0_HEADER } from '../../../lib/devices/pci-layout';
import { SharedRegion } from '../../../lib/memory';
import { EventFd, MessageSocket } from '../../../lib/os';
import { VfioUserRemoteError } from '../../../lib/vfio-user/connection-errors';
import { ERRNO } from '../../../lib/errno';
import { DEVICE_INFO_FLAGS, IRQ_INDEXES, IRQ_INFO_FLAGS, REGION_INFO_FLAGS, SET_IRQS_FLAGS } from '../../../lib/vfio-user/protocol';
import { decodeHeader } from '../../../lib/vfio-user/codec';
import { VfioUserConnection } from '../../../lib/vfio-user/connection';
import { negotiateVersion } from '../../../lib/vfio-user/negotiation';
import { COMMANDS, HEADER_FLAGS, MESSAGE_TYPES } from '../../../lib/vfio-user/protocol';
import { socketTransport } from '../../../lib/vfio-user/transport';
import { waitFor } from '../../helpers';
import {
  BAR0,
  CONFIG,
  cleanupAfterEachTest,
  connect,
  dmaMapBody,
  readConfig16,
  readRegion,
  readU32,
  readU64,
  serveEngine,
  serverIdle,
  startEduDma,
  waitForEduIdle,
  writeRegion,
  writeU32,
} from './harness';

const { DATA_EVENTFD, DATA_NONE, ACTION_TRIGGER } = SET_IRQS_FLAGS.bits;

function setIrqsEventFd(index: number, count = 1) {
  return { argsz: 20, flags: DATA_EVENTFD | ACTION_TRIGGER, index, start: 0, count, data: new Uint8Array(0) };
}

describe('dma-engine over vfio-user', () => {
  const cleanup = cleanupAfterEachTest();

  it('describes itself: device info, nine regions, five IRQ indexes', async () => {
    const { path } = serveEngine(cleanup);
    const client = await connect(cleanup, path);
    const info = await client.request('DEVICE_GET_INFO', { argsz: 16 });
    assert.deepEqual(
      { ...info.body },
      {
        command: 'DEVICE_GET_INFO',
        argsz: 16,
        flags: DEVICE_INFO_FLAGS.bits.RESET | DEVICE_INFO_FLAGS.bits.PCI,
        numRegions: 9,
        numIrqs: 5,
      },
    );
    const sizes: bigint[] = [];
    for (let index = 0; index < 9; index++) {
      const region = await client.request('DEVICE_GET_REGION_INFO', { argsz: 32, index });
      assert.equal(region.fds.length, 0);
      assert.equal(region.body.argsz, 32);
      sizes.push(region.body.size);
      const expectedFlags = region.body.size === 0n ? 0 : REGION_INFO_FLAGS.bits.READ | REGION_INFO_FLAGS.bits.WRITE;
      assert.equal(region.body.flags, expectedFlags, `region ${index} flags`);
    }
    assert.deepEqual(sizes, [1n << 20n, 0n, 0n, 0n, 0n, 0n, 0n, 256n, 0n]);
    const counts: number[] = [];
    for (let index = 0; index < 5; index++) {
      const irq = await client.request('DEVICE_GET_IRQ_INFO', { argsz: 16, index });
      counts.push(irq.body.count);
      const maskable = index <= IRQ_INDEXES.values.MSIX ? IRQ_INFO_FLAGS.bits.MASKABLE : 0;
      assert.equal(irq.body.flags, IRQ_INFO_FLAGS.bits.EVENTFD | maskable);
    }
    assert.deepEqual(counts, [1, 1, 0, 1, 1]);
  });

  it('shows the edu PCI header, sizes BAR0 and links the MSI capability from 0x34', async () => {
    const { path } = serveEngine(cleanup);
    const client = await connect(cleanup, path);
    const header = await readRegion(client, CONFIG, 0, 64);
    const view = new DataView(header.buffer, header.byteOffset);
    assert.equal(view.getUint16(0, true), 0x1234);
    assert.equal(view.getUint16(2, true), 0x11e8);
    assert.equal(header[8], 0x10, 'revision');
    assert.equal(view.getUint32(8, true) >>> 8, 0x00ff00, 'class code');
    assert.equal(header[0x3d], 1, 'INTA#');
    assert.ok((view.getUint16(6, true) & PCI_STATUS.bits.CAPABILITIES_LIST) !== 0);
    const first = header[0x34]!;
    assert.equal(first, 0x40);
    const capability = await readRegion(client, CONFIG, first, 4);
    assert.equal(capability[0], PCI_CAPABILITY_IDS.MSI);
    assert.equal(capability[1], 0, 'the last capability');
    assert.ok(((capability[2]! | (capability[3]! << 8)) & MSI_CONTROL.bits.ADDRESS_64) !== 0);

    // BAR sizing: all ones reads back the size mask; an address sticks to its size alignment.
    await writeU32(client, CONFIG, 0x10, 0xffffffff);
    assert.equal(await readU32(client, CONFIG, 0x10), 0xfff00000);
    await writeU32(client, CONFIG, 0x10, 0xfe0abcde);
    assert.equal(await readU32(client, CONFIG, 0x10), 0xfe000000);
    // Unused BARs read zero whatever is written.
    await writeU32(client, CONFIG, 0x14, 0xffffffff);
    assert.equal(await readU32(client, CONFIG, 0x14), 0);
    // Command keeps its writable bits only; IDs are read-only.
    await writeRegion(client, CONFIG, TYPE0_HEADER.field('command').offset, Uint8Array.of(0xff, 0xff));
    assert.equal(await readConfig16(client, 4), PCI_COMMAND.writable);
    await writeU32(client, CONFIG, 0, 0);
    assert.equal(await readU32(client, CONFIG, 0), 0x11e81234);
  });

  it('answers the edu registers through BAR0 (id, liveness, factorial)', async () => {
    const { path } = serveEngine(cleanup);
    const client = await connect(cleanup, path);
    assert.equal(await readU32(client, BAR0, EDU_REGISTERS.identification), EDU_IDENTIFICATION);
    await writeU32(client, BAR0, EDU_REGISTERS.liveness, 0x12345678);
    assert.equal(await readU32(client, BAR0, EDU_REGISTERS.liveness), ~0x12345678 >>> 0);
    await writeU32(client, BAR0, EDU_REGISTERS.factorial, 6);
    assert.equal(await readU32(client, BAR0, EDU_REGISTERS.factorial), 720);
    // As in QEMU, registers below 0x80 take 4-byte accesses only: an 8-byte read there answers all ones.
    assert.equal(await readU64(client, BAR0, EDU_REGISTERS.identification), (1n << 64n) - 1n);
    // A 16-byte access is split into naturally aligned register accesses, as a CPU's memory core issues them.
    const pair = new Uint8Array(16);
    new DataView(pair.buffer).setBigUint64(0, 0x1234n, true);
    new DataView(pair.buffer).setBigUint64(8, 0x40000n, true);
    await writeRegion(client, BAR0, EDU_REGISTERS.dmaSource, pair);
    assert.equal(await readU64(client, BAR0, EDU_REGISTERS.dmaDestination), 0x40000n);
    assert.deepEqual([...(await readRegion(client, BAR0, EDU_REGISTERS.dmaSource, 16))], [...pair]);
  });

  it('DMAs through a memfd the client sent with DMA_MAP, with the INTx eventfd signalled on completion', async () => {
    const { path } = serveEngine(cleanup);
    const client = await connect(cleanup, path);
    const ram = SharedRegion.create('client-ram', 0x10000);
    cleanup.add(() => ram.close());
    const bytes = new Uint8Array(ram.buffer);
    bytes.set(Buffer.from('mapped DMA works'), 0x100);
    await client.request('DMA_MAP', dmaMapBody(0x100000n, 0x10000n), { fds: [ram.fd] });
    const intx = EventFd.create();
    cleanup.add(() => intx.close());
    await client.request('DEVICE_SET_IRQS', setIrqsEventFd(IRQ_INDEXES.values.INTX), { fds: [intx.fd] });

    await startEduDma(client, { source: 0x100100n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 16, toRam: false });
    // Mapped DMA completes within the command write: the run bit is already clear.
    assert.equal((await readU64(client, BAR0, EDU_REGISTERS.dmaCommand)) & 1n, 0n);
    await startEduDma(client, { source: BigInt(EDU_BUFFER_ADDRESS), destination: 0x100800n, count: 16, toRam: true, irq: true });
    assert.equal(Buffer.from(bytes.subarray(0x800, 0x810)).toString(), 'mapped DMA works');
    assert.equal(intx.read(), 1, 'INTx eventfd signalled once');
    assert.equal(await readU32(client, BAR0, EDU_REGISTERS.interruptStatus), 0x100);
    const status = await readConfig16(client, TYPE0_HEADER.field('status').offset);
    assert.ok((status & PCI_STATUS.bits.INTERRUPT) !== 0, 'config status shows INTx asserted');
    await writeU32(client, BAR0, EDU_REGISTERS.acknowledgeInterrupt, 0x100);
    assert.equal((await readConfig16(client, 6)) & PCI_STATUS.bits.INTERRUPT, 0);
    await client.request('DMA_UNMAP', { argsz: 24, flags: 0, address: 0x100000n, size: 0x10000n });
  });

  for (const twinSocket of [false, true]) {
    it(`DMAs by message when DMA_MAP came without an fd, keeping the run bit set until done (${twinSocket ? 'twin socket' : 'main socket'})`, async () => {
      const { path } = serveEngine(cleanup);
      const client = await connect(cleanup, path, { twinSocket });
      const guest = new Uint8Array(0x2000);
      guest.set(Buffer.from('DMA by message'), 0x10);
      const channels: string[] = [];
      let holdRead: (() => void) | undefined;
      client.onCommand('DMA_READ', async (command, _fds, info) => {
        channels.push(`read:${info.channel}`);
        await new Promise<void>((resolve) => (holdRead = resolve));
        const at = Number(command.address - 0x200000n);
        return { address: command.address, data: guest.slice(at, at + Number(command.count)) };
      });
      client.onCommand('DMA_WRITE', (command, _fds, info) => {
        channels.push(`write:${info.channel}`);
        guest.set(command.data, Number(command.address - 0x200000n));
        return { transfer: { address: command.address, count: BigInt(command.data.length) } };
      });
      await client.request('DMA_MAP', dmaMapBody(0x200000n, 0x2000n));
      const msi = EventFd.create();
      cleanup.add(() => msi.close());
      // Software enables MSI in config space; the engine then signals MSI instead of INTx.
      await writeRegion(client, CONFIG, 0x42, Uint8Array.of(MSI_CONTROL.bits.ENABLE, 0));
      await client.request('DEVICE_SET_IRQS', setIrqsEventFd(IRQ_INDEXES.values.MSI), { fds: [msi.fd] });

      await startEduDma(client, { source: 0x200010n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 14, toRam: false, irq: true });
      await waitFor(() => holdRead !== undefined, 'the DMA_READ');
      assert.equal((await readU64(client, BAR0, EDU_REGISTERS.dmaCommand)) & 1n, 1n, 'run bit set while the transfer is in flight');
      // The registers do not change while a transfer runs (QEMU's rule).
      await writeU32(client, BAR0, EDU_REGISTERS.dmaCount, 99);
      assert.equal(await readU32(client, BAR0, EDU_REGISTERS.dmaCount), 14);
      holdRead!();
      await waitForEduIdle(client);
      await waitFor(() => msi.read() > 0, 'the MSI eventfd');
      await startEduDma(client, { source: BigInt(EDU_BUFFER_ADDRESS), destination: 0x201000n, count: 14, toRam: true });
      await waitForEduIdle(client);
      assert.equal(Buffer.from(guest.subarray(0x1000, 0x100e)).toString(), 'DMA by message');
      assert.deepEqual(channels, [`read:${twinSocket ? 'twin' : 'main'}`, `write:${twinSocket ? 'twin' : 'main'}`]);
    });
  }

  it("splits DMA by message into pieces of the client's max_data_xfer_size", async () => {
    const { path } = serveEngine(cleanup);
    const client = await connect(cleanup, path, { capabilities: { maxDataXferSize: 1024 } });
    const sizes: number[] = [];
    client.onCommand('DMA_READ', (command) => {
      sizes.push(Number(command.count));
      return { address: command.address, data: new Uint8Array(Number(command.count)).fill(7) };
    });
    await client.request('DMA_MAP', dmaMapBody(0x0n, 0x10000n));
    await startEduDma(client, { source: 0x0n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 4000, toRam: false });
    await waitForEduIdle(client);
    assert.deepEqual(sizes, [1024, 1024, 1024, 928]);
  });

  it('fails a DMA outside every mapping without touching the client (DmaFault), and keeps serving', async () => {
    const outcomes: { error?: Error }[] = [];
    const { path } = serveEngine(cleanup, { onDma: (outcome) => outcomes.push(outcome) });
    const client = await connect(cleanup, path);
    let messages = 0;
    client.onCommand('DMA_READ', () => {
      messages++;
      throw new Error('not expected');
    });
    await startEduDma(client, { source: 0x300000n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 8, toRam: false });
    assert.equal(messages, 0);
    assert.match(String(outcomes[0]?.error), /not in any DMA mapping/);
    assert.equal(await readU32(client, BAR0, 0), EDU_IDENTIFICATION);
  });

  it('resets on DEVICE_RESET: config space and edu registers back to power-on values', async () => {
    const { path } = serveEngine(cleanup);
    const client = await connect(cleanup, path);
    await writeU32(client, CONFIG, 0x10, 0xfe000000);
    await writeRegion(client, CONFIG, 4, Uint8Array.of(PCI_COMMAND.bits.MEMORY_SPACE | PCI_COMMAND.bits.BUS_MASTER, 0));
    await writeU32(client, BAR0, EDU_REGISTERS.liveness, 1);
    await client.request('DEVICE_RESET', {});
    assert.equal(await readU32(client, CONFIG, 0x10), 0);
    assert.equal(await readConfig16(client, 4), 0);
    assert.equal(await readU32(client, BAR0, EDU_REGISTERS.liveness), 0xffffffff);
  });

  it('disables an IRQ index with count 0 and DATA_NONE, closing its eventfd', async () => {
    const { path, device } = serveEngine(cleanup);
    const client = await connect(cleanup, path);
    const intx = EventFd.create();
    cleanup.add(() => intx.close());
    await client.request('DEVICE_SET_IRQS', setIrqsEventFd(IRQ_INDEXES.values.INTX), { fds: [intx.fd] });
    assert.ok(device.irqs.enabled('INTX'));
    // MSI cannot be enabled while INTx holds an eventfd (VFIO's rule).
    const msi = EventFd.create();
    cleanup.add(() => msi.close());
    await assert.rejects(client.request('DEVICE_SET_IRQS', setIrqsEventFd(IRQ_INDEXES.values.MSI), { fds: [msi.fd] }), (error: unknown) => {
      return error instanceof VfioUserRemoteError && error.errno === ERRNO.EINVAL;
    });
    await client.request('DEVICE_SET_IRQS', { argsz: 20, flags: DATA_NONE | ACTION_TRIGGER, index: 0, start: 0, count: 0, data: new Uint8Array(0) });
    assert.equal(device.irqs.enabled('INTX'), false);
    await client.request('DEVICE_SET_IRQS', setIrqsEventFd(IRQ_INDEXES.values.MSI), { fds: [msi.fd] });
    assert.ok(device.irqs.enabled('MSI'));
  });

  it('DMA ordering without a twin socket: the REGION_WRITE that starts a transfer is answered before the DMA request', async () => {
    const { path } = serveEngine(cleanup);
    // What arrives, in order, as a client that waits for each reply (libvfio-user's) would read it off the socket.
    const arrivals: string[] = [];
    const socket = MessageSocket.connect(path);
    socket.on('message', (bytes: Buffer) => {
      const header = decodeHeader(bytes);
      const isReply = (header.flags & HEADER_FLAGS.bits.TYPE) === MESSAGE_TYPES.values.REPLY;
      arrivals.push(`${isReply ? 'reply' : 'command'} ${COMMANDS.nameOf(header.command)}`);
    });
    const client = new VfioUserConnection(socketTransport(socket), { role: 'client', requestTimeoutMs: 10000 });
    cleanup.add(() => client.close());
    const negotiated = await negotiateVersion(client, { twinSocket: false });
    assert.equal(negotiated.twinSocket, false);
    const guest = new Uint8Array(0x1000);
    let releaseWrite: (() => void) | undefined;
    client.onCommand('DMA_WRITE', async (command) => {
      await new Promise<void>((resolve) => (releaseWrite = resolve));
      guest.set(command.data, Number(command.address - 0x300000n));
      return { transfer: { address: command.address, count: BigInt(command.data.length) } };
    });
    client.onCommand('DMA_READ', (command) => {
      const at = Number(command.address - 0x300000n);
      return { address: command.address, data: guest.slice(at, at + Number(command.count)) };
    });
    await client.request('DMA_MAP', dmaMapBody(0x300000n, 0x1000n));
    guest.set(Buffer.from('in order'), 0x20);
    // Into the device buffer first, so the transfer under test is a DMA_WRITE the client can hold.
    await startEduDma(client, { source: 0x300020n, destination: BigInt(EDU_BUFFER_ADDRESS), count: 8, toRam: false });
    await waitForEduIdle(client);

    arrivals.length = 0;
    await startEduDma(client, { source: BigInt(EDU_BUFFER_ADDRESS), destination: 0x300800n, count: 8, toRam: true });
    await waitFor(() => releaseWrite !== undefined, 'the DMA_WRITE');
    assert.deepEqual(arrivals, ['reply REGION_WRITE', 'reply REGION_WRITE', 'reply REGION_WRITE', 'reply REGION_WRITE', 'command DMA_WRITE']);
    assert.equal((await readU64(client, BAR0, EDU_REGISTERS.dmaCommand)) & 1n, 1n, 'the run bit stays set until the transfer completes');
    releaseWrite!();
    await waitForEduIdle(client);
    assert.equal(Buffer.from(guest.subarray(0x800, 0x808)).toString(), 'in order');
  });

  it('releases DMA maps and eventfds when the client leaves, and serves the next client', async () => {
    const served = serveEngine(cleanup);
    const first = await connect(cleanup, served.path);
    const ram = SharedRegion.create('first-client', 0x4000);
    cleanup.add(() => ram.close());
    await first.request('DMA_MAP', dmaMapBody(0n, 0x4000n), { fds: [ram.fd] });
    const intx = EventFd.create();
    cleanup.add(() => intx.close());
    await first.request('DEVICE_SET_IRQS', setIrqsEventFd(0), { fds: [intx.fd] });
    assert.equal(served.server.session?.dmaMaps.size, 1);
    first.close();
    await serverIdle(served);
    assert.equal(served.device.irqs.enabled('INTX'), false);
    const second = await connect(cleanup, served.path);
    assert.equal(served.server.session?.dmaMaps.size, 0);
    assert.equal(await readU32(second, BAR0, 0), EDU_IDENTIFICATION);
  });
});
