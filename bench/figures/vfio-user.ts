/**
 * Figures of vfio-user: a 4-byte REGION_READ round trip and 1 MiB of device DMA by messages and through a mapped fd,
 * with server and client in this process over a real UNIX socket (VfioUserServer.listen + VfioUserClient.connect);
 * and a 4-byte REGION_READ round trip from a small C client to `viommu serve` and to libvfio-user's gpio sample.
 *
 * The in-process figures measure subject and baseline in alternating slices (interleavedRates), so that both see
 * the same load on a busy machine.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EDU_IDENTIFICATION, EDU_PCI_IDENTITY } from '../../lib/devices/edu';
import { GuestMemory, SharedRegion } from '../../lib/memory';
import type { VfioUserClient } from '../../lib/vfio-user/client';
import { REGION_INDEXES } from '../../lib/vfio-user/protocol';
import { VfioUserDevice } from '../../lib/vfio-user/server/device';
import { createDmaEngine } from '../../lib/vfio-user/server/dma-engine';
import { bufferRegion } from '../../lib/vfio-user/server/regions';
import { PEERS } from '../../test/peers';
import { ServeProcess } from '../../test/vfio-user/cli-process';
import { rate, type Figure } from '../harness';
import {
  BenchServer,
  buildRegionReadClient,
  framedMessage,
  interleavedRates,
  PeerProcess,
  RawExchange,
  runRegionReadClient,
  type RegionReadRun,
} from '../vfio-peers';

const ROUND_MS = 400;
/** Slices of the interleaved figures: short enough to alternate often, long enough to hold many round trips. */
const SLICE_MS = 20;
const DMA_SLICE_MS = 40;
/** Untimed interleaved stretch before the first round of the in-process figures. */
const WARMUP_MS = 300;
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

/**
 * The raw exchange a REGION_READ of 4 bytes is on the wire: a 32-byte request (header + region access struct)
 * answered by a 36-byte reply (header + struct + data), through the addon's MessageSocket pair.
 */
function rawRegionReads(): RawExchange {
  const request = framedMessage(16 + 16);
  const reply = framedMessage(16 + 16 + 4);
  return new RawExchange(
    () => request,
    () => reply,
    64,
  );
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

/** Awaited 4-byte reads of BAR0 offset 0, 64 between looks at the clock, until the deadline. */
function regionReads(client: VfioUserClient): (deadline: bigint) => Promise<number> {
  return async (deadline) => {
    let count = 0;
    do {
      for (let i = 0; i < 64; i++) await client.regionRead(0, 0, 4);
      count += 64;
    } while (process.hrtime.bigint() < deadline);
    return count;
  };
}

/** vfio.a: VfioUserClient.regionRead of a 4-byte register against the same-sized raw ping-pong. */
function regionReadFigure(): Figure {
  const peers = lazily(async () => {
    const server = new BenchServer(registerDevice(), 'region-read');
    const client = await server.connect();
    const value = await client.regionRead(0, 0, 4);
    check(new DataView(value.buffer, value.byteOffset).getUint32(0, true) === REGISTER_VALUE, 'BAR0 offset 0 does not hold the register value');
    const raw = rawRegionReads();
    // One untimed stretch of each side first, so that the first round does not time V8 compiling the stack.
    await interleavedRates(regionReads(client), (deadline) => raw.run(deadline), WARMUP_MS, SLICE_MS);
    return { server, client, raw };
  });
  return {
    id: 'vfio.a',
    title: '4-byte REGION_READ round trip (our client and server in this process, over a UNIX socket)',
    subject: 'await VfioUserClient.regionRead(BAR0, 0, 4) served by VfioUserServer (a plain 4 KiB register BAR)',
    baseline: 'raw 32-byte request / 36-byte reply ping-pong through a MessageSocket pair (interleaved 20 ms slices)',
    direction: 'cost',
    target: 1.5,
    unit: 'round trips',
    async measure() {
      const { client, raw } = await peers();
      return interleavedRates(regionReads(client), (deadline) => raw.run(deadline), ROUND_MS, SLICE_MS);
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
  check(
    mapping !== undefined && (mapping.memory !== undefined) === (shared !== undefined),
    `the server's mapping is not ${shared ? 'mapped through the fd' : 'by message'}`,
  );
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

/** Header (16) + DMA access struct (16): what a DMA_WRITE command and a DMA_READ reply carry in front of their data. */
const DMA_FRAMING = 16 + 16;

/**
 * The raw exchanges a 1 MiB DMA_WRITE and a 1 MiB DMA_READ are on the wire, through the addon's MessageSocket pair
 * with no protocol: a (32 + 1 MiB)-byte message answered by a 32-byte one, then a 32-byte message answered by a
 * (32 + 1 MiB)-byte one. Messages are built once; each received one is the addon's own allocation, as for the
 * subject. A trip moves 1 MiB of data; a run ends after a whole write-then-read pair.
 */
function rawDmaMessages(): RawExchange {
  const big = framedMessage(DMA_FRAMING + MIB);
  const small = framedMessage(DMA_FRAMING);
  // The device side sends the big message first (DMA_WRITE), then the small one (DMA_READ); the client side answers
  // a big message with a small one and a small one with a big one, as the DmaSpace would.
  return new RawExchange(
    (trip) => (trip % 2 === 0 ? big : small),
    (received) => (received.length === small.length ? big : small),
    2,
  );
}

/** vfio.b: the device writes then reads 1 MiB by DMA_WRITE/DMA_READ messages, served by the client from GuestMemory. */
function dmaByMessageFigure(): Figure {
  const peers = lazily(() => dmaPeers('dma-message', undefined));
  let rawDma: RawExchange | undefined;
  return {
    id: 'vfio.b',
    title: '1 MiB of device DMA by message (DMA_WRITE then DMA_READ, pieces of max_data_xfer_size = 1 MiB)',
    subject: "VfioUserDevice.dma.write + .read of 1 MiB each, served by our client's DmaSpace (GuestMemory)",
    baseline:
      'raw messages of the same sizes through a MessageSocket pair, no protocol (32 B + 1 MiB answered by 32 B, then 32 B answered by 32 B + 1 MiB; interleaved 40 ms slices)',
    direction: 'throughput',
    target: 0.8,
    unit: 'MiB',
    async measure() {
      const { server, source, target } = await peers();
      const dma = server.device.dma;
      const subject = async (deadline: bigint) => {
        let mebibytes = 0;
        do {
          await dma.write(BigInt(DMA_IOVA), source);
          await dma.read(BigInt(DMA_IOVA), target);
          mebibytes += 2;
        } while (process.hrtime.bigint() < deadline);
        return mebibytes;
      };
      if (rawDma === undefined) {
        rawDma = rawDmaMessages();
        // One untimed stretch of each side first (V8's compiler, the allocator's first large blocks).
        await interleavedRates(subject, (deadline) => rawDma!.run(deadline), WARMUP_MS, DMA_SLICE_MS);
      }
      const raw = rawDma;
      const bytesBefore = raw.receivedBytes;
      const rates = await interleavedRates(subject, (deadline) => raw.run(deadline), ROUND_MS, DMA_SLICE_MS);
      check((raw.receivedBytes - bytesBefore) % (2 * DMA_FRAMING + MIB) === 0, 'the raw exchange lost bytes');
      return rates;
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

// ---- vfio.d: another process, driven by a C client ----------------------------------------------------------

const GPIO = path.join(PEERS, 'libvfio-user', 'gpio-pci-idio-16');
const CLIENT_WARMUP_MS = 200;
const CLIENT_MEASURE_MS = 400;

/** A figure that could not be measured here: says why in its title; every round reports NaN for both sides (as machine.ts). */
function notMeasured(figure: Figure, reason: string): Figure {
  console.log(`${figure.id}: not measured: ${reason}`);
  return { ...figure, title: `NOT MEASURED (${reason}): ${figure.title}`, measure: () => Promise.resolve({ subject: NaN, baseline: NaN }) };
}

/** Why libvfio-user's gpio sample cannot run here, or undefined when it can. */
function gpioUnavailable(): string | undefined {
  if (!fs.existsSync(GPIO)) return `${GPIO} is absent (set VIOMMU_PEERS to a folder holding libvfio-user/)`;
  // Without its socket argument it only complains and exits; a missing libjson-c stops it in the loader first.
  const trial = spawnSync(GPIO, [], { encoding: 'utf8', timeout: 10_000 });
  if (trial.error !== undefined) return `${GPIO} cannot be started: ${trial.error.message}`;
  if (trial.status === 127 || /error while loading shared libraries/.test(trial.stderr)) {
    return `libvfio-user's gpio sample cannot run here (${trial.stderr.trim().split('\n')[0]}); it needs Debian's libjson-c5`;
  }
  return undefined;
}

/**
 * A floor for any server built on the addon and Node's loop: a process that answers VERSION and then each
 * REGION_READ with a fixed 36-byte reply (msg_id and access echoed), with no protocol stack at all.
 */
function rawEchoServerScript(): string {
  const os = JSON.stringify(path.resolve(__dirname, '..', '..', 'lib', 'os'));
  return `
const { UnixServer } = require(${os});
const server = UnixServer.listen(process.argv[1]);
server.on('connection', (socket) => {
  let negotiated = false;
  socket.on('message', (bytes) => {
    if (!negotiated) {
      negotiated = true;
      const json = Buffer.from('{"capabilities":{}}\\0');
      const reply = Buffer.alloc(20 + json.length);
      reply.writeUInt16LE(bytes.readUInt16LE(0), 0); reply.writeUInt16LE(1, 2); reply.writeUInt32LE(reply.length, 4); reply.writeUInt32LE(1, 8);
      reply.writeUInt16LE(2, 18); json.copy(reply, 20);
      return socket.send(reply);
    }
    const reply = Buffer.alloc(36);
    bytes.copy(reply, 0, 0, 32); reply.writeUInt32LE(36, 4); reply.writeUInt32LE(1, 8); reply.writeUInt32LE(${EDU_IDENTIFICATION}, 32);
    socket.send(reply);
  });
});`;
}

interface ProcessPeers {
  readonly client: string;
  readonly ours: ServeProcess;
  readonly gpio: PeerProcess;
  readonly floor: PeerProcess;
}

/**
 * vfio.d: 4-byte REGION_READ round trips from one small C client (bench/region-read-client.c, built here with
 * cc -O2), against `viommu serve --device dma-engine` (BAR0 offset 0, edu's identification register) and against
 * libvfio-user's gpio sample (BAR2 offset 0), each a separate process. The same client, the same message sizes and
 * one round trip at a time: the difference is the server.
 */
export function serverProcessFigure(): Figure {
  const figure: Figure = {
    id: 'vfio.d',
    title:
      '4-byte REGION_READ round trips from a C client (bench/region-read-client.c: VERSION, then REGION_READ one at a time) ' +
      `to a server in another process; ${CLIENT_WARMUP_MS} ms untimed, then ${CLIENT_MEASURE_MS} ms timed per run, the servers' order alternating`,
    subject: '`viommu serve --device dma-engine`, BAR0 offset 0 (edu identification, checked)',
    baseline: "libvfio-user's gpio-pci-idio-16 sample (C), BAR2 offset 0",
    direction: 'throughput',
    target: 1.0,
    unit: 'round trips',
    measure: () => Promise.reject(new Error('unreachable')),
  };
  const missing = gpioUnavailable();
  if (missing !== undefined) return notMeasured(figure, missing);
  const built = buildRegionReadClient();
  if ('reason' in built) return notMeasured(figure, built.reason);
  const peers = lazily<ProcessPeers>(async () => {
    const ours = await ServeProcess.start('dma-engine');
    process.on('exit', () => ours.kill());
    const gpio = await PeerProcess.start('gpio', (socket) => [GPIO, socket]);
    const floor = await PeerProcess.start('floor', (socket) => [process.execPath, '-e', rawEchoServerScript(), socket]);
    return { client: built.binary, ours, gpio, floor };
  });
  const bar0 = REGION_INDEXES.values.BAR0;
  const bar2 = REGION_INDEXES.values.BAR2;
  let round = 0;
  figure.measure = async () => {
    const { client, ours, gpio, floor } = await peers();
    const runOurs = async (): Promise<RegionReadRun> => {
      const run = await runRegionReadClient(client, ours.socketPath, bar0, 0, CLIENT_WARMUP_MS, CLIENT_MEASURE_MS);
      check(run.value === EDU_IDENTIFICATION, `viommu serve's BAR0 offset 0 read 0x${run.value.toString(16)}, not edu's identification`);
      return run;
    };
    const runGpio = () => runRegionReadClient(client, gpio.socketPath, bar2, 0, CLIENT_WARMUP_MS, CLIENT_MEASURE_MS);
    const oursFirst = round++ % 2 === 0;
    let subject: RegionReadRun;
    let baseline: RegionReadRun;
    if (oursFirst) {
      subject = await runOurs();
      baseline = await runGpio();
    } else {
      baseline = await runGpio();
      subject = await runOurs();
    }
    const raw = await runRegionReadClient(client, floor.socketPath, bar0, 0, CLIENT_WARMUP_MS, CLIENT_MEASURE_MS);
    console.log(
      `  round ${round}: viommu serve ${(subject.rate / 1e3).toFixed(1)} k/s, gpio ${(baseline.rate / 1e3).toFixed(1)} k/s; ` +
        `for scale, an addon echo server with no protocol (the floor of a Node server here) ${(raw.rate / 1e3).toFixed(1)} k/s`,
    );
    return { subject: subject.rate, baseline: baseline.rate };
  };
  return figure;
}
