/**
 * Bench peers for the vfio-user and host figures: a server and our client in this process over a real UNIX socket,
 * raw message exchanges for baselines, and servers in other processes driven by a small C client (vfio.d).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MessageSocket } from '../lib/os';
import { VfioUserClient, type VfioUserClientOptions } from '../lib/vfio-user/client';
import type { VfioUserDevice } from '../lib/vfio-user/server/device';
import { VfioUserServer, type VfioUserServerOptions } from '../lib/vfio-user/server/server';
import type { VfioUserSession } from '../lib/vfio-user/server/session';

/** A fresh socket path in a private temporary directory (removed by ServedPair.close). */
export function benchSocketPath(tag: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-bench-'));
  return path.join(dir, `${tag}.sock`);
}

/** A VfioUserServer listening on a UNIX socket in this process, and the session of the client it serves now. */
export class BenchServer {
  readonly server: VfioUserServer;
  readonly path: string;

  constructor(
    readonly device: VfioUserDevice,
    tag: string,
    options: VfioUserServerOptions = {},
  ) {
    this.path = benchSocketPath(tag);
    this.server = VfioUserServer.listen(this.path, device, options);
    this.server.on('warning', (_client, message) => console.error(`bench server ${tag}: ${message}`));
  }

  get session(): VfioUserSession {
    const session = this.server.session;
    if (session === undefined) throw new Error(`bench server at ${this.path} serves no client`);
    return session;
  }

  /** Connects our client (VERSION and enumeration done when this resolves; the server's session is live). */
  connect(options: VfioUserClientOptions = {}): Promise<VfioUserClient> {
    return VfioUserClient.connect(this.path, { requestTimeoutMs: 60000, ...options });
  }

  /** Resolves once the served client has gone and the device was released. */
  disconnected(): Promise<void> {
    if (this.server.session === undefined) return Promise.resolve();
    return new Promise((resolve) => this.server.once('clientDisconnected', () => resolve()));
  }

  async close(): Promise<void> {
    await this.server.close();
    this.device.close();
    fs.rmSync(path.dirname(this.path), { recursive: true, force: true });
  }
}

/** One side of an interleaved measurement: runs until `deadlineNs` (process.hrtime.bigint()) and returns its operations. */
export type TimedSide = (deadlineNs: bigint) => Promise<number>;

/**
 * Rates of two sides measured in alternating slices of `sliceMs` for about `milliseconds` each (which side goes
 * first alternates too): on a loaded machine both sides then see the same load, where one stretch per side (the
 * harness's asyncRate) can give one side a quiet moment and the other a busy one. Each side's rate is its
 * operations over its own slices' time. (A candidate for bench/harness.ts.)
 */
export async function interleavedRates(
  subject: TimedSide,
  baseline: TimedSide,
  milliseconds: number,
  sliceMs: number,
): Promise<{ subject: number; baseline: number }> {
  const totals = { subject: { operations: 0, ns: 0n }, baseline: { operations: 0, ns: 0n } };
  const slices = Math.max(1, Math.round(milliseconds / sliceMs));
  const slice = BigInt(Math.round(sliceMs * 1e6));
  for (let i = 0; i < slices; i++) {
    const order = i % 2 === 0 ? (['subject', 'baseline'] as const) : (['baseline', 'subject'] as const);
    for (const side of order) {
      const start = process.hrtime.bigint();
      const operations = await (side === 'subject' ? subject : baseline)(start + slice);
      totals[side].ns += process.hrtime.bigint() - start;
      totals[side].operations += operations;
    }
  }
  return {
    subject: totals.subject.operations / (Number(totals.subject.ns) / 1e9),
    baseline: totals.baseline.operations / (Number(totals.baseline.ns) / 1e9),
  };
}

/** A message of `size` bytes whose u32 at offset 4 is its size (the addon's framing). */
export function framedMessage(size: number): Buffer {
  const message = Buffer.alloc(size);
  message.writeUInt32LE(size, 4);
  return message;
}

/**
 * Raw messages through the addon's MessageSocket pair, no protocol: side `a` sends `request(trip)` and side `b`
 * answers each message with `reply(received)`; a trip is one message there and its answer back. The pair lives as
 * long as the figure, so timed slices measure message traffic only. run() stops on a trip that ends with a multiple
 * of `tripsPerCheck` once the deadline has passed, with nothing in flight.
 */
export class RawExchange {
  private readonly a: MessageSocket;
  private readonly b: MessageSocket;
  private onTrip: (() => void) | undefined;
  /** Bytes that came back to `a`, for a check that nothing was lost. */
  receivedBytes = 0;

  constructor(
    private readonly request: (trip: number) => Uint8Array,
    reply: (received: Buffer) => Uint8Array,
    private readonly tripsPerCheck: number,
  ) {
    [this.a, this.b] = MessageSocket.pair();
    this.b.on('message', (bytes) => this.b.send(reply(bytes)));
    this.a.on('message', (bytes) => {
      this.receivedBytes += bytes.length;
      this.onTrip!();
    });
  }

  run(deadlineNs: bigint): Promise<number> {
    return new Promise((resolve) => {
      let trips = 0;
      this.onTrip = () => {
        trips++;
        if (trips % this.tripsPerCheck === 0 && process.hrtime.bigint() >= deadlineNs) {
          this.onTrip = undefined;
          resolve(trips);
        } else {
          this.a.send(this.request(trips));
        }
      };
      this.a.send(this.request(0));
    });
  }

  close(): void {
    this.a.close();
    this.b.close();
  }
}

// ---- peers in other processes (vfio.d) ------------------------------------------------------------------------

/** dist/bench -> the repository's bench/ (where the C sources live). */
const BENCH_SOURCES = path.resolve(__dirname, '..', '..', 'bench');
export const REGION_READ_CLIENT_SOURCE = path.join(BENCH_SOURCES, 'region-read-client.c');

/** The C compiler the bench uses: $CC, else `cc`. */
const CC = process.env.CC ?? 'cc';

/** Why a program cannot be run here (spawn error or exit status of `program args`), or undefined when it can. */
function runnable(program: string, args: readonly string[]): string | undefined {
  const trial = spawnSync(program, args, { stdio: 'ignore', timeout: 10_000 });
  if (trial.error === undefined) return undefined;
  const code = (trial.error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' ? `${program} is not on PATH` : `${program} cannot be run: ${code ?? trial.error.message}`;
}

/** Builds bench/region-read-client.c with `cc -O2` into a fresh temporary directory: the binary, or why not. */
export function buildRegionReadClient(): { binary: string } | { reason: string } {
  const missing = runnable(CC, ['--version']);
  if (missing !== undefined) return { reason: `no C compiler (${missing})` };
  if (!fs.existsSync(REGION_READ_CLIENT_SOURCE)) return { reason: `${REGION_READ_CLIENT_SOURCE} is absent` };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-bench-cc-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const binary = path.join(dir, 'region-read-client');
  const build = spawnSync(CC, ['-O2', '-o', binary, REGION_READ_CLIENT_SOURCE], { encoding: 'utf8', timeout: 60_000 });
  if (build.status !== 0)
    return { reason: `${CC} -O2 ${REGION_READ_CLIENT_SOURCE} failed: ${(build.stderr || build.error?.message || '').trim().split('\n')[0]}` };
  return { binary };
}

/** What one run of the C client measured. */
export interface RegionReadRun {
  /** The 4 bytes read, little-endian. */
  readonly value: number;
  readonly trips: number;
  /** Round trips per second over the timed part. */
  readonly rate: number;
}

/** Runs the C client against `socketPath` (without blocking this loop) and parses its line. */
export function runRegionReadClient(
  binary: string,
  socketPath: string,
  region: number,
  offset: number,
  warmupMs: number,
  measureMs: number,
): Promise<RegionReadRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, [socketPath, String(region), String(offset), String(warmupMs), String(measureMs)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), warmupMs + measureMs + 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const match = /value 0x([0-9a-f]+) trips (\d+) seconds [\d.]+ rate ([\d.]+)/.exec(output);
      if (code !== 0 || match === null) reject(new Error(`region-read-client against ${socketPath} exited with ${code ?? signal}: ${output.trim()}`));
      else resolve({ value: parseInt(match[1]!, 16), trips: Number(match[2]), rate: Number(match[3]) });
    });
  });
}

let setprivWorks: boolean | undefined;

/** A server program in another process on a fresh socket path, killed with this process (setpriv --pdeathsig KILL). */
export class PeerProcess {
  output = '';
  private constructor(
    readonly child: ChildProcess,
    readonly socketPath: string,
  ) {
    child.stdout!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    process.on('exit', () => this.kill());
  }

  /** Starts `argv(socketPath)` and waits until the socket exists. stdin stays an open pipe (libvfio-user's samples). */
  static async start(tag: string, argv: (socketPath: string) => string[]): Promise<PeerProcess> {
    setprivWorks ??= spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore', timeout: 5000 }).status === 0;
    const socketPath = benchSocketPath(tag);
    const command = setprivWorks ? ['setpriv', '--pdeathsig', 'KILL', '--', ...argv(socketPath)] : argv(socketPath);
    const peer = new PeerProcess(spawn(command[0]!, command.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] }), socketPath);
    const deadline = Date.now() + 20_000;
    while (!fs.existsSync(socketPath)) {
      if (peer.child.exitCode !== null || peer.child.signalCode !== null || Date.now() > deadline) {
        peer.kill();
        throw new Error(`${argv(socketPath).join(' ')} did not start listening: ${peer.output.trim()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return peer;
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    fs.rmSync(path.dirname(this.socketPath), { recursive: true, force: true });
  }
}
