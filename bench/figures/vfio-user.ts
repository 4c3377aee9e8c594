/**
 * Figures of vfio-user: a 4-byte REGION_READ round trip, and 1 MiB of device DMA by messages and through a mapped fd.
 * Server and client run in this process, over a real UNIX socket (VfioUserServer.listen + VfioUserClient.connect).
 */
import { EDU_PCI_IDENTITY } from '../../lib/devices/edu';
import { GuestMemory, SharedRegion } from '../../lib/memory';
import { MessageSocket } from '../../lib/os';
import type { VfioUserClient } from '../../lib/vfio-user/client';
import { VfioUserDevice } from '../../lib/vfio-user/server/device';
import { createDmaEngine } from '../../lib/vfio-user/server/dma-engine';
import { bufferRegion } from '../../lib/vfio-user/server/regions';
import { asyncRate, rate, type Figure } from '../harness';
import { BenchServer } from '../vfio-peers';

const ROUND_MS = 400;
const MIB = 1 << 20;
/** Where the DMA figures' buffer sits on the IOVA side (= guest-physical: no vIOMMU in these figures). */
const DMA_IOVA = 0x10_0000;

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`vfio-user bench setup: ${what}`);
}

/** Runs `setup` once, on first use, so that filtered-out figures open no sockets. */
function lazily<T>(setup: () => Promise<T>): () => Promise<T> {
  let value: Promise<T> | undefined;
  return () => (value ??= setup());
}

function framed(size: number): Buffer {
  const message = Buffer.alloc(size);
  message.writeUInt32LE(size, 4);
  return message;
}

/**
 * The raw exchange a REGION_READ of 4 bytes is on the wire: a 32-byte request (header + region access struct)
 * answered by a 36-byte reply (header + struct + data), through the addon's MessageSocket pair.
 */
async function rawRegionReadPingPong(deadline: bigint): Promise<number> {
  const [a, b] = MessageSocket.pair();
  const request = framed(16 + 16);
  const reply = framed(16 + 16 + 4);
  b.on('message', () => b.send(reply));
  const trips = await new Promise<number>((resolve) => {
    let count = 0;
    a.on('message', () => {
      count++;
      if ((count & 63) === 0 && process.hrtime.bigint() >= deadline) resolve(count);
      else a.send(request);
    });
    a.send(request);
  });
  a.close();
  b.close();
  return trips;
}

const REGISTER_VALUE = 0x1234_5678;

/**
 * A device whose BAR0 is 4 KiB of plain registers (bufferRegion), so that the figure weighs the vfio-user stack
 * rather than a device model's register decoding (the edu model computes every read with BigInts).
 */
function registerDevice(): VfioUserDevice {
  const registers = new Uint8Array(4096);
  new DataView(registers.buffer).setUint32(0, REGISTER_VALUE, true);
  return new VfioUserDevice({ pci: { identity: EDU_PCI_IDENTITY }, regions: { BAR0: { size: registers.length, handler: bufferRegion(registers) } } });
}

/** vfio.a: VfioUserClient.regionRead of a 4-byte register against the same-sized raw ping-pong. */
function regionReadFigure(): Figure {
  const peers = lazily(async () => {
    const server = new BenchServer(registerDevice(), 'region-read');
    const client = await server.connect();
    const value = await client.regionRead(0, 0, 4);
    check(new DataView(value.buffer, value.byteOffset).getUint32(0, true) === REGISTER_VALUE, 'BAR0 offset 0 does not hold the register value');
    return { server, client };
  });
  return {
    id: 'vfio.a',
    title: '4-byte REGION_READ round trip (our client and server in this process, over a UNIX socket)',
    subject: 'await VfioUserClient.regionRead(BAR0, 0, 4) served by VfioUserServer (a plain 4 KiB register BAR)',
    baseline: 'raw 32-byte request / 36-byte reply ping-pong through a MessageSocket pair',
    direction: 'cost',
    target: 1.5,
    unit: 'round trips',
    async measure() {
      const { client } = await peers();
      const subject = await asyncRate(async (deadline) => {
        let count = 0;
        do {
          for (let i = 0; i < 64; i++) await client.regionRead(0, 0, 4);
          count += 64;
        } while (process.hrtime.bigint() < deadline);
        return count;
      }, ROUND_MS);
      const baseline = await asyncRate(rawRegionReadPingPong, ROUND_MS);
      return { subject, baseline };
    },
  };
}

interface DmaPeers {
  readonly server: BenchServer;
  readonly client: VfioUserClient;
  readonly source: Uint8Array;
  readonly target: Uint8Array;
}

/** A served device whose client DMA_MAPs 1 MiB at DMA_IOVA: by message (no fd) or with `shared`'s fd. */
async function dmaPeers(tag: string, shared: SharedRegion | undefined): Promise<DmaPeers> {
  const memory = new GuestMemory();
  if (shared === undefined) memory.addRegion({ name: 'ram', start: DMA_IOVA, buffer: new ArrayBuffer(MIB) });
  else memory.addSharedRegion('ram', DMA_IOVA, shared);
  const server = new BenchServer(createDmaEngine().device, tag);
  const client = await server.connect({ dmaSpace: memory.dma });
  await client.dmaMap({ address: BigInt(DMA_IOVA), size: BigInt(MIB), ...(shared === undefined ? {} : { fd: shared.fd, offset: 0n }) });
  const mapping = server.session.dmaMaps.lookup(BigInt(DMA_IOVA));
  check(mapping !== undefined && (mapping.memory !== undefined) === (shared !== undefined), `the server's mapping is not ${shared ? 'mapped through the fd' : 'by message'}`);
  const source = new Uint8Array(MIB);
  for (let i = 0; i < MIB; i += 4096) source[i] = (i >>> 12) & 0xff;
  const target = new Uint8Array(MIB);
  // One checked pass: what the device writes lands in guest memory and comes back.
  const device = server.device;
  await device.dma.write(BigInt(DMA_IOVA), source);
  check(memory.readU8(DMA_IOVA + 4096 * 7) === 7, 'the device write did not reach guest memory');
  await device.dma.read(BigInt(DMA_IOVA), target);
  check(Buffer.compare(source, target) === 0, 'the device read did not return what it wrote');
  return { server, client, source, target };
}

/** Buffer.copy of 1 MiB (the same source and target sizes as the subject's), counted in MiB. */
function copyRate(source: Uint8Array, target: Uint8Array): number {
  const from = Buffer.from(source.buffer, source.byteOffset, source.length);
  const to = Buffer.from(target.buffer, target.byteOffset, target.length);
  return rate(() => {
    from.copy(to);
    return 1;
  }, ROUND_MS);
}

/** vfio.b: the device writes then reads 1 MiB by DMA_WRITE/DMA_READ messages, served by the client from GuestMemory. */
function dmaByMessageFigure(): Figure {
  const peers = lazily(() => dmaPeers('dma-message', undefined));
  return {
    id: 'vfio.b',
    title: '1 MiB of device DMA by message (DMA_WRITE then DMA_READ, pieces of max_data_xfer_size = 1 MiB)',
    subject: "VfioUserDevice.dma.write + .read of 1 MiB each, served by our client's DmaSpace (GuestMemory)",
    baseline: 'Buffer.copy of 1 MiB',
    direction: 'throughput',
    target: 0.5,
    unit: 'MiB',
    async measure() {
      const { server, source, target } = await peers();
      const dma = server.device.dma;
      const subject = await asyncRate(async (deadline) => {
        let mebibytes = 0;
        do {
          await dma.write(BigInt(DMA_IOVA), source);
          await dma.read(BigInt(DMA_IOVA), target);
          mebibytes += 2;
        } while (process.hrtime.bigint() < deadline);
        return mebibytes;
      }, ROUND_MS);
      return { subject, baseline: copyRate(source, target) };
    },
  };
}

/** vfio.c: the same transfers through the guest RAM fd the client passed with DMA_MAP (mmap'd by the server). */
function dmaMappedFigure(): Figure {
  const peers = lazily(() => dmaPeers('dma-mapped', SharedRegion.create('bench-dma-ram', MIB)));
  return {
    id: 'vfio.c',
    title: '1 MiB of device DMA through the fd of a DMA_MAP (DMA write then read)',
    subject: 'VfioUserDevice.dma.write + .read of 1 MiB each over the mmap of the memfd the client sent',
    baseline: 'Buffer.copy of 1 MiB',
    direction: 'throughput',
    target: 0.9,
    unit: 'MiB',
    async measure() {
      const { server, source, target } = await peers();
      const dma = server.device.dma;
      const address = BigInt(DMA_IOVA);
      const subject = rate(() => {
        // Mapped DMA completes synchronously (no Promise): the device's view is the client's memory itself.
        if (dma.write(address, source) !== undefined || dma.read(address, target) !== undefined) throw new Error('mapped DMA went by message');
        return 2;
      }, ROUND_MS);
      return { subject, baseline: copyRate(source, target) };
    },
  };
}

export function vfioUserFigures(): Figure[] {
  return [regionReadFigure(), dmaByMessageFigure(), dmaMappedFigure()];
}
