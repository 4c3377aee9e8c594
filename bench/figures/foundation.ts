/** Figures of the foundation: addon message round trips, guest-memory entry reads, bulk copies into shared memory. */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory, SharedRegion } from '../../lib/memory';
import { MessageSocket } from '../../lib/os';
import { asyncRate, rate, type Figure } from '../harness';

const ROUND_MS = 400;

function framed(size: number): Buffer {
  const message = Buffer.alloc(size, 0x61);
  message.writeUInt32LE(size, 4);
  return message;
}

/** Ping-pong of one 64-byte message through the addon over a socketpair until the deadline. */
async function addonPingPong(deadline: bigint): Promise<number> {
  const [a, b] = MessageSocket.pair();
  const message = framed(64);
  b.on('message', (bytes) => b.send(bytes));
  const trips = await new Promise<number>((resolve) => {
    let count = 0;
    a.on('message', () => {
      count++;
      if ((count & 63) === 0 && process.hrtime.bigint() >= deadline) resolve(count);
      else a.send(message);
    });
    a.send(message);
  });
  a.close();
  b.close();
  return trips;
}

/** The same ping-pong over Node's own net module on a UNIX socket, re-framing by length as a protocol would. */
async function netPingPong(deadline: bigint): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-bench-'));
  const socketPath = path.join(dir, 'net.sock');
  const server = net.createServer((connection) => {
    let pending = 0;
    const reply = framed(64);
    connection.on('data', (chunk) => {
      if (pending === 0 && chunk.length === 64) return void connection.write(chunk); // echo, as the addon side does
      pending += chunk.length;
      while (pending >= 64) {
        pending -= 64;
        connection.write(reply);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const client = net.createConnection(socketPath);
  await new Promise<void>((resolve) => client.once('connect', resolve));
  const message = framed(64);
  const trips = await new Promise<number>((resolve) => {
    let count = 0;
    let pending = 0;
    client.on('data', (chunk) => {
      pending += chunk.length;
      while (pending >= 64) {
        pending -= 64;
        count++;
        if ((count & 63) === 0 && process.hrtime.bigint() >= deadline) return resolve(count);
        client.write(message);
      }
    });
    client.write(message);
  });
  client.destroy();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  fs.rmSync(dir, { recursive: true, force: true });
  return trips;
}

function entryReadFigure(): Figure {
  const size = 2 << 20;
  const shared = SharedRegion.create('bench-entries', size);
  const memory = new GuestMemory();
  const base = 0x100000;
  memory.addSharedRegion('ram', base, shared);
  const view = new DataView(shared.buffer);
  for (let offset = 0; offset < size; offset += 4) view.setUint32(offset, (offset * 2654435761) >>> 0, true);
  // The same pseudo-random 8-byte-aligned entries for both sides, as a page walk would touch them.
  const offsets = Uint32Array.from({ length: 4096 }, (_, i) => (((i * 7919) % (size / 8)) * 8) >>> 0);
  const out = { lo: 0, hi: 0 };
  let sink = 0;
  return {
    id: 'foundation.b',
    title: 'GuestMemory 64-bit entry read',
    subject: 'GuestMemory.readEntry (region lookup + two halves)',
    baseline: 'two DataView.getUint32 on the same ArrayBuffer into the same result object',
    direction: 'cost',
    target: 1.5,
    unit: 'entries',
    async measure() {
      const subject = rate(() => {
        for (let i = 0; i < offsets.length; i++) {
          memory.readEntry(base + offsets[i]!, out);
          sink ^= out.lo ^ out.hi;
        }
        return offsets.length;
      }, ROUND_MS);
      const baseline = rate(() => {
        for (let i = 0; i < offsets.length; i++) {
          const offset = offsets[i]!;
          out.lo = view.getUint32(offset, true);
          out.hi = view.getUint32(offset + 4, true);
          sink ^= out.lo ^ out.hi;
        }
        return offsets.length;
      }, ROUND_MS);
      if (sink === 0.5) console.log(sink); // keeps the loops from being optimised away
      return { subject, baseline };
    },
  };
}

function bulkCopyFigure(): Figure {
  const size = 1 << 20;
  const shared = SharedRegion.create('bench-copy', 4 * size);
  const memory = new GuestMemory();
  memory.addSharedRegion('ram', 0, shared);
  new Uint8Array(shared.buffer).fill(1); // fault every page in before measuring
  const source = Buffer.alloc(size, 0x42);
  const destination = Buffer.alloc(4 * size, 1);
  let slot = 0;
  return {
    id: 'foundation.c',
    title: 'bulk copy of 1 MiB into guest RAM',
    subject: 'GuestMemory.write into a memfd mapping',
    baseline: 'Buffer.copy into a heap Buffer',
    direction: 'throughput',
    target: 0.9,
    unit: 'MiB',
    async measure() {
      const subject = rate(() => {
        memory.write((slot = (slot + 1) & 3) * size, source);
        return 1;
      }, ROUND_MS);
      const baseline = rate(() => {
        source.copy(destination, (slot = (slot + 1) & 3) * size);
        return 1;
      }, ROUND_MS);
      return { subject, baseline };
    },
  };
}

export function foundationFigures(): Figure[] {
  return [
    {
      id: 'foundation.a',
      title: 'round trips of a 64-byte message',
      subject: 'addon MessageSocket over a socketpair',
      baseline: 'Node net over a UNIX socket',
      direction: 'throughput',
      target: 1.5,
      unit: 'round trips',
      async measure() {
        const subject = await asyncRate(addonPingPong, ROUND_MS);
        const baseline = await asyncRate(netPingPong, ROUND_MS);
        return { subject, baseline };
      },
    },
    entryReadFigure(),
    bulkCopyFigure(),
  ];
}
