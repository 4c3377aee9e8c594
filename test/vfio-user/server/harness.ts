/** Test harness for the vfio-user server: a real socket, a client-role VfioUserConnection, and edu programming helpers. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { EDU_REGISTERS } from '../../../lib/devices/edu';
import { MessageSocket } from '../../../lib/os';
import { VfioUserConnection, type ConnectionOptions } from '../../../lib/vfio-user/connection';
import { negotiateVersion } from '../../../lib/vfio-user/negotiation';
import { DMA_MAP_FLAGS, REGION_INDEXES } from '../../../lib/vfio-user/protocol';
import { createDmaEngine, type DmaEngine, type DmaEngineOptions } from '../../../lib/vfio-user/server/dma-engine';
import type { VfioUserDevice } from '../../../lib/vfio-user/server/device';
import { VfioUserServer, type VfioUserServerOptions } from '../../../lib/vfio-user/server/server';
import { socketTransport } from '../../../lib/vfio-user/transport';
import { tempSocketPath, waitFor } from '../../helpers';

export const BAR0 = REGION_INDEXES.values.BAR0;
export const CONFIG = REGION_INDEXES.values.CONFIG;
export const RW = DMA_MAP_FLAGS.bits.READ | DMA_MAP_FLAGS.bits.WRITE;

/** Collects cleanups and runs them in reverse order (clients before servers before devices). */
export class Cleanup {
  private readonly steps: (() => unknown)[] = [];
  add(step: () => unknown): void {
    this.steps.push(step);
  }
  async run(): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) await step();
  }
}

/** Each open fd of this process and what it is (its /proc/self/fd link), so a leak message says what leaked. */
export function openFdTargets(): Map<string, string> {
  const targets = new Map<string, string>();
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      targets.set(fd, fs.readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // Closed between the listing and the look-up (the listing's own directory fd, at least).
    }
  }
  return targets;
}

/** Waits until the fds open now are those of `before`; the failure lists what was opened and closed meanwhile. */
export async function expectFdsBack(before: Map<string, string>): Promise<void> {
  try {
    await waitFor(() => sameFds(before), 'the fds of before the test');
  } catch {
    const now = openFdTargets();
    const opened = [...now].filter(([fd, target]) => before.get(fd) !== target).map(([fd, target]) => `${fd} -> ${target}`);
    const closed = [...before].filter(([fd, target]) => now.get(fd) !== target).map(([fd, target]) => `${fd} -> ${target}`);
    throw new Error(
      `open fds did not return to the ${before.size} of before the test (now ${now.size}); still open: [${opened.join(', ')}]; closed: [${closed.join(', ')}]`,
    );
  }
}

/** The same fd numbers point at the same things (readdir's own directory fd comes and goes). */
function sameFds(before: Map<string, string>): boolean {
  const now = openFdTargets();
  if (now.size !== before.size) return false;
  for (const [fd, target] of before) if (now.get(fd) !== target) return false;
  return true;
}

/** For a describe block: a Cleanup run after each test, which then checks that every fd the test opened is closed. */
export function cleanupAfterEachTest(): Cleanup {
  const cleanup = new Cleanup();
  let fdsBefore = new Map<string, string>();
  beforeEach(() => {
    fdsBefore = openFdTargets();
  });
  afterEach(async () => {
    await cleanup.run();
    await expectFdsBack(fdsBefore);
  });
  return cleanup;
}

export interface Served {
  readonly server: VfioUserServer;
  readonly path: string;
  readonly device: VfioUserDevice;
}

/** Listens on a fresh socket path with `device` (default: the dma-engine). */
export function serve(cleanup: Cleanup, device?: VfioUserDevice, options: VfioUserServerOptions = {}): Served & { engine?: DmaEngine } {
  const engine = device === undefined ? createDmaEngine() : undefined;
  const served = device ?? engine!.device;
  const path = tempSocketPath('vfu');
  const server = VfioUserServer.listen(path, served, options);
  cleanup.add(() => served.close());
  cleanup.add(() => server.close());
  return { server, path, device: served, ...(engine ? { engine } : {}) };
}

export function serveEngine(cleanup: Cleanup, options: DmaEngineOptions = {}, serverOptions: VfioUserServerOptions = {}) {
  const engine = createDmaEngine(options);
  const served = serve(cleanup, engine.device, serverOptions);
  return { ...served, engine };
}

export interface ClientOptions extends Partial<ConnectionOptions> {
  twinSocket?: boolean;
  /** Skip VERSION (for tests of what comes before it). */
  negotiate?: boolean;
}

/** Connects a client-role connection over a real socket and negotiates VERSION. */
export async function connect(cleanup: Cleanup, path: string, options: ClientOptions = {}): Promise<VfioUserConnection> {
  const connection = new VfioUserConnection(socketTransport(MessageSocket.connect(path)), {
    role: 'client',
    requestTimeoutMs: 10000,
    ...options,
  });
  cleanup.add(() => connection.close());
  if (options.negotiate !== false) await negotiateVersion(connection, { twinSocket: options.twinSocket ?? false });
  return connection;
}

function u64(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value, true);
  return bytes;
}

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
  return bytes;
}

export async function readRegion(connection: VfioUserConnection, region: number, offset: number, count: number): Promise<Uint8Array> {
  const reply = await connection.request('REGION_READ', { offset: BigInt(offset), region, count });
  return reply.body.data;
}

export async function writeRegion(connection: VfioUserConnection, region: number, offset: number, data: Uint8Array): Promise<void> {
  await connection.request('REGION_WRITE', { offset: BigInt(offset), region, data });
}

export async function readU32(connection: VfioUserConnection, region: number, offset: number): Promise<number> {
  const data = await readRegion(connection, region, offset, 4);
  return new DataView(data.buffer, data.byteOffset).getUint32(0, true);
}

export async function readU64(connection: VfioUserConnection, region: number, offset: number): Promise<bigint> {
  const data = await readRegion(connection, region, offset, 8);
  return new DataView(data.buffer, data.byteOffset).getBigUint64(0, true);
}

export const writeU32 = (connection: VfioUserConnection, region: number, offset: number, value: number) =>
  writeRegion(connection, region, offset, u32(value));
export const writeU64 = (connection: VfioUserConnection, region: number, offset: number, value: bigint) =>
  writeRegion(connection, region, offset, u64(value));

export async function readConfig16(connection: VfioUserConnection, offset: number): Promise<number> {
  const data = await readRegion(connection, CONFIG, offset, 2);
  return data[0]! | (data[1]! << 8);
}

/** Programs one edu transfer (QEMU's register sequence) through REGION_WRITEs to BAR0. */
export async function startEduDma(
  connection: VfioUserConnection,
  transfer: { source: bigint; destination: bigint; count: number; toRam: boolean; irq?: boolean },
): Promise<void> {
  await writeU64(connection, BAR0, EDU_REGISTERS.dmaSource, transfer.source);
  await writeU64(connection, BAR0, EDU_REGISTERS.dmaDestination, transfer.destination);
  await writeU64(connection, BAR0, EDU_REGISTERS.dmaCount, BigInt(transfer.count));
  const command = 1n | (transfer.toRam ? 2n : 0n) | (transfer.irq ? 4n : 0n);
  await writeU64(connection, BAR0, EDU_REGISTERS.dmaCommand, command);
}

/** Polls the run bit, as a guest driver does. */
export async function waitForEduIdle(connection: VfioUserConnection): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    if (((await readU64(connection, BAR0, EDU_REGISTERS.dmaCommand)) & 1n) === 0n) return;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  assert.fail('the edu run bit never cleared');
}

export function dmaMapBody(address: bigint, size: bigint, flags = RW, offset = 0n) {
  return { argsz: 32, flags, offset, address, size };
}

/** Resolves once the server serves nobody and holds no DMA state for the device. */
export async function serverIdle(served: Served): Promise<void> {
  await waitFor(() => served.server.session === undefined && !served.device.dma.attached, 'the server to release its client');
}

export function socketGone(path: string): boolean {
  return !fs.existsSync(path);
}
