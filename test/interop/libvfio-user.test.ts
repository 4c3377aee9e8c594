/**
 * Interop with nutanix/libvfio-user's sample programs (../shared/peers/libvfio-user, or $VIOMMU_PEERS/libvfio-user):
 * our probe against its servers, its servers attached to the testbed through `viommu qtest --device-socket`, its
 * sample client against `viommu serve`, and the order of our DMA requests on a socket without a twin.
 */
import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { EDU_BUFFER_ADDRESS, EDU_REGISTERS } from '../../lib/devices/edu';
import { MessageSocket } from '../../lib/os';
import { decodeHeader } from '../../lib/vfio-user/codec';
import { VfioUserConnection } from '../../lib/vfio-user/connection';
import { negotiateVersion } from '../../lib/vfio-user/negotiation';
import { COMMANDS, HEADER_FLAGS, MESSAGE_TYPES, REGION_INDEXES } from '../../lib/vfio-user/protocol';
import { VfioUserDevice, VfioUserServer, type DmaMapping } from '../../lib/vfio-user/server';
import { socketTransport } from '../../lib/vfio-user/transport';
import { tempSocketPath, waitFor } from '../helpers';
import { PEERS } from '../peers';
import { ViommuQtest } from '../oracle/qemu';
import { runViommu, ServeProcess } from '../vfio-user/cli-process';

const SAMPLES = path.join(PEERS, 'libvfio-user');
const PROGRAMS = ['gpio-pci-idio-16', 'server', 'null', 'client'] as const;
type Program = (typeof PROGRAMS)[number];
const LIBVFIO_USER_MAX_DMA_SIZE = 8n << 40n;
/** CONFIG_ADDRESS for 00:04.0, where `viommu qtest --device-socket` puts the device, register `offset`. */
const configAddress = (offset: number) => 0x80000000 | (4 << 11) | offset;

function program(name: Program): string {
  return path.join(SAMPLES, name);
}

/** Why the samples cannot be used here, or undefined when they can. */
function unavailable(): string | undefined {
  if (!fs.existsSync(SAMPLES)) return `${SAMPLES} is absent (set VIOMMU_PEERS to a folder holding libvfio-user/)`;
  const missing = PROGRAMS.filter((name) => !fs.existsSync(program(name)));
  if (missing.length > 0) return `${SAMPLES} lacks ${missing.join(', ')}`;
  // Without its arguments `null` only complains and exits; a missing shared library stops it in the loader first.
  const trial = spawnSync(program('null'), [], { encoding: 'utf8', timeout: 10000 });
  if (trial.error !== undefined) return `${program('null')} cannot be started: ${trial.error.message}`;
  if (trial.status === 127 || /error while loading shared libraries/.test(trial.stderr)) {
    return `libvfio-user's samples cannot run here (${trial.stderr.trim().split('\n')[0]}); they need Debian's libjson-c5`;
  }
  return undefined;
}

let setprivWorks: boolean | undefined;

/** A sample program on a fresh socket, unable to outlive this process (setpriv --pdeathsig KILL where it exists). */
class Peer {
  output = '';
  readonly exited: Promise<[number | null, NodeJS.Signals | null]>;

  private constructor(
    readonly child: ChildProcess,
    readonly socketPath: string,
  ) {
    child.stdout!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (this.output += chunk.toString()));
    this.exited = once(child, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
  }

  /** `null` stops when its stdin ends, so stdin stays an open pipe for every program. */
  static async start(name: Exclude<Program, 'client'>, args: readonly string[] = []): Promise<Peer> {
    setprivWorks ??= spawnSync('setpriv', ['--pdeathsig', 'KILL', 'true'], { stdio: 'ignore', timeout: 5000 }).status === 0;
    const socketPath = tempSocketPath(name.slice(0, 6));
    const argv = [program(name), ...args, socketPath];
    const [command, ...rest] = setprivWorks ? ['setpriv', '--pdeathsig', 'KILL', '--', ...argv] : argv;
    const peer = new Peer(spawn(command!, rest, { stdio: ['pipe', 'pipe', 'pipe'] }), socketPath);
    try {
      await waitFor(() => fs.existsSync(socketPath) || peer.child.exitCode !== null, `${name} to listen (output: ${peer.output})`, 10000);
    } catch (error) {
      peer.kill();
      throw error;
    }
    assert.equal(peer.child.exitCode, null, `${name} exited at once: ${peer.output}`);
    return peer;
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/**
 * Runs libvfio-user's sample client to its end, without blocking the loop (the server may be in this process);
 * stdbuf keeps its stdout unbuffered, so an abort loses nothing.
 */
async function runSampleClient(socketPath: string): Promise<{ status: number | null; signal: NodeJS.Signals | null; output: string }> {
  const hasStdbuf = spawnSync('stdbuf', ['--version'], { stdio: 'ignore' }).status === 0;
  const argv = hasStdbuf ? ['stdbuf', '-o0', '-e0', program('client'), socketPath] : [program('client'), socketPath];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30000);
  const [status, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
  clearTimeout(timer);
  return { status, signal, output };
}

function show(title: string, text: string): void {
  console.log(
    `      ${title}:\n${text
      .trimEnd()
      .split('\n')
      .map((line) => `        ${line}`)
      .join('\n')}`,
  );
}

/** DMA_MAP sizes the peer refused in its log (libvfio-user: "DMA region size N > max M"). */
function refusedDmaSizes(log: string): { size: bigint; max: bigint }[] {
  return [...log.matchAll(/DMA region size (\d+) > max (\d+)/g)].map((match) => ({ size: BigInt(match[1]!), max: BigInt(match[2]!) }));
}

describe('interop: libvfio-user sample programs', function () {
  this.timeout(60_000);
  const peers: Peer[] = [];

  before(function () {
    const reason = unavailable();
    if (reason !== undefined) {
      console.log(`      skipped: ${reason}`);
      this.skip();
    }
  });

  afterEach(async () => {
    for (const peer of peers.splice(0)) {
      peer.kill();
      await peer.exited;
    }
  });

  async function startPeer(name: Exclude<Program, 'client'>, args: readonly string[] = []): Promise<Peer> {
    const peer = await Peer.start(name, args);
    peers.push(peer);
    return peer;
  }

  describe('viommu probe', () => {
    it('describes gpio-pci-idio-16 (494f:0dc8, BAR2 of 256 bytes), twice: it serves clients one after another', async () => {
      const gpio = await startPeer('gpio-pci-idio-16');
      const first = await runViommu(['probe', '--socket', gpio.socketPath]);
      show('gpio-pci-idio-16 offers', first.stdout);
      assert.equal(first.code, 0, first.stderr);
      assert.match(first.stdout, /Device 494f:0dc8/);
      assert.match(first.stdout, /\tRegion 2 \(BAR2\): size=256 \[READ WRITE\]\n/);
      assert.match(first.stdout, /\tRegion 2: I\/O ports at <unassigned> \[size=256\]/);
      assert.match(first.stdout, /\tIRQ 0 \(INTx\): count=1/);
      // libvfio-user states its fd and transfer limits and offers a twin socket; max_dma_maps and pgsizes are defaults.
      assert.match(first.stdout, /\tCapabilities sent: max_msg_fds=8 max_data_xfer_size=1048576 twin_socket\+ \(fd_index 0\)/);
      assert.match(first.stdout, /\tCapability defaults \(not sent\): max_dma_maps=65535 pgsizes=0x1000 write_multiple-/);
      const second = await runViommu(['probe', '--socket', gpio.socketPath, '--no-twin-socket']);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /Protocol: version 0\.2, twin socket-/);
      assert.match(second.stdout, /Device 494f:0dc8/);
    });

    it('describes null: configuration space and nothing else', async () => {
      const nullDevice = await startPeer('null');
      const result = await runViommu(['probe', '--socket', nullDevice.socketPath]);
      show('null offers', result.stdout);
      assert.equal(result.code, 0, result.stderr);
      for (const index of [0, 1, 2, 3, 4, 5]) assert.match(result.stdout, new RegExp(`\\tRegion ${index} \\(BAR${index}\\): not present\\n`));
      assert.match(result.stdout, /\tRegion 7 \(CONFIG\): size=256 \[READ WRITE\]/);
      assert.match(result.stdout, /Device 0000:0000/);
      assert.match(result.stdout, /\tIRQ 3 \(ERR\): count=1/);
    });

    it('describes server (dead:beef, BAR0 of 8 bytes, BAR1 of 16 KiB mmap-able with sparse areas), which then exits', async () => {
      const server = await startPeer('server');
      const result = await runViommu(['probe', '--socket', server.socketPath]);
      show('server offers', result.stdout);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /Device dead:beef/);
      assert.match(result.stdout, /\tSubsystem: Device cafe:babe/);
      assert.match(result.stdout, /\tRegion 0 \(BAR0\): size=8 \[READ WRITE\]\n/);
      assert.match(result.stdout, /\tRegion 1 \(BAR1\): size=16K \[READ WRITE MMAP CAPS\] mmap-fd\n\t\tSparse mmap areas: 0x0-0xfff 0x2000-0x2fff\n/);
      assert.match(result.stdout, /\tCapabilities sent: .*migration=pgsize 4096/);
      const [code] = await server.exited;
      assert.equal(code, 0, `the sample server ends after its one client: ${server.output}`);
    });
  });

  describe('viommu qtest --device-socket', () => {
    /**
     * Both samples have I/O BARs (libvfio-user makes every region without VFU_REGION_FLAG_MEM one): the testbed's
     * port bus decodes them once I/O decoding is on, so inb reaches the device's region.
     */
    async function sizeBar(qtest: ViommuQtest, offset: number, base: number): Promise<{ flags: number; sized: number; programmed: number }> {
      await qtest.outl(0xcf8, configAddress(offset));
      const flags = await qtest.inl(0xcfc);
      await qtest.outl(0xcfc, 0xffffffff);
      const sized = await qtest.inl(0xcfc);
      await qtest.outl(0xcfc, base);
      return { flags, sized, programmed: await qtest.inl(0xcfc) };
    }

    it('attaches gpio-pci-idio-16 (libvfio-user refuses DMA maps above 8 TiB) and reads its configuration and its I/O BAR through the testbed', async () => {
      const gpio = await startPeer('gpio-pci-idio-16');
      const qtest = await ViommuQtest.start({ extraArgs: ['--device-socket', gpio.socketPath], startTimeoutMs: 20000 });
      try {
        await qtest.outl(0xcf8, configAddress(0));
        assert.equal(await qtest.inl(0xcfc), 0x0dc8494f);
        assert.equal(await qtest.inw(0xcfe), 0x0dc8, 'a word at byte lane 2');
        await qtest.outl(0xcf8, configAddress(0x3c));
        assert.equal(((await qtest.inl(0xcfc)) >>> 8) & 0xff, 1, 'interrupt pin A');
        assert.deepEqual(await sizeBar(qtest, 0x18, 0xc001), { flags: 0x1, sized: 0xffffff01, programmed: 0xc001 });
        // libvfio-user marks even an absent BAR as I/O space; it takes no size and no address.
        assert.deepEqual(await sizeBar(qtest, 0x10, 0xd001), { flags: 0x1, sized: 0x1, programmed: 0x1 });
        await qtest.outl(0xcf8, configAddress(0x04));
        await qtest.outw(0xcfc, 0x0001);
        assert.equal((await qtest.inl(0xcfc)) & 0xffff, 0x0001, 'I/O decoding on');
        // gpio's BAR2 is its pin register (reads 0 here); a port nothing decodes would read 0xff.
        assert.equal(await qtest.inb(0xc000), 0x00, 'BAR2 answers through the port bus');
        assert.equal(await qtest.inb(0xc100), 0xff, 'past BAR2 nothing decodes');
        assert.doesNotMatch(qtest.stderrText, /went away/);
      } finally {
        await qtest.close();
      }
      // The DMA table learnt the limit from the refusals and never sent anything else the peer refused.
      const refused = refusedDmaSizes(gpio.output);
      assert.ok(refused.length > 0, `gpio logged the whole-space DMA_MAP it refused: ${gpio.output}`);
      for (const { size, max } of refused) assert.ok(size > max && max === LIBVFIO_USER_MAX_DMA_SIZE, `refused ${size} > ${max}`);
      assert.doesNotMatch(gpio.output, /max regions/);
      // And it still serves the next client.
      const again = await runViommu(['probe', '--socket', gpio.socketPath]);
      assert.equal(again.code, 0, again.stderr);
    });

    it("attaches server and reads its identity and both BARs' sizing through the testbed", async () => {
      const server = await startPeer('server');
      const qtest = await ViommuQtest.start({ extraArgs: ['--device-socket', server.socketPath], startTimeoutMs: 20000 });
      try {
        await qtest.outl(0xcf8, configAddress(0));
        assert.equal(await qtest.inl(0xcfc), 0xbeefdead);
        await qtest.outl(0xcf8, configAddress(0x2c));
        assert.equal(await qtest.inl(0xcfc), 0xbabecafe);
        assert.deepEqual(await sizeBar(qtest, 0x10, 0xc001), { flags: 0x1, sized: 0xfffffff9, programmed: 0xc001 });
        assert.deepEqual(await sizeBar(qtest, 0x14, 0x8001), { flags: 0x1, sized: 0xffffc001, programmed: 0x8001 });
        assert.doesNotMatch(qtest.stderrText, /went away/);
      } finally {
        await qtest.close();
      }
      for (const { size, max } of refusedDmaSizes(server.output)) assert.ok(size > max, `refused ${size} > ${max}`);
      await server.exited;
    });
  });

  describe("libvfio-user's sample client", () => {
    it('against viommu serve --device dma-engine: negotiates, enumerates, reads config space, then stops at its device ID assertion', async () => {
      // No --allow-unsealed-dma-fds: the client's DMA regions are temp files (unsealed), but it asserts the sample
      // device's IDs before it maps any (see the next test for a device it accepts).
      const served = await ServeProcess.start('dma-engine');
      try {
        const client = await runSampleClient(served.socketPath);
        show('client printed', client.output);
        assert.equal(client.signal, 'SIGABRT', `the client ends at its assertion: ${client.output}`);
        // Our EINVAL for its deliberate access to region 0xdeadbeef is what it expects.
        assert.match(client.output, /failed to read from region -559038737 0-0x3: Invalid argument/);
        assert.doesNotMatch(client.output, /expected EINVAL/);
        assert.match(client.output, /devinfo: flags 0x3, num_regions 9, num_irqs 5/);
        assert.match(client.output, /region_info\[0\] offset 0 flags 0x3 size 1048576 cap_sz 0 #FDs 0/);
        assert.match(client.output, /region_info\[7\] offset 0 flags 0x3 size 256 cap_sz 0 #FDs 0/);
        assert.match(client.output, /Assertion `config_space\.id\.vid == 0xdead' failed/);
        await waitFor(() => /client \d+ disconnected/.test(served.stderr), 'the server to see the client leave', 10000);
        // Nothing alarming: only clients coming and going.
        for (const line of served.stderr.trim().split('\n')) assert.match(line, /^viommu serve: client \d+ (connected|disconnected)$/);
        const probe = await runViommu(['probe', '--socket', served.socketPath]);
        assert.equal(probe.code, 0, probe.stderr);
        assert.match(probe.stdout, /Device 1234:11e8/);
      } finally {
        await served.stop();
        served.kill();
      }
    });

    it("against a device with the sample's IDs on our server: DMA_MAPs with its temp-file fds (unsealed: refused unless allowed), IRQs, then stops at dirty-page logging", async () => {
      const mappings: DmaMapping[] = [];
      const bar0 = new Uint8Array(8);
      const device = new VfioUserDevice({
        pci: { identity: { vendorId: 0xdead, deviceId: 0xbeef, subsystemVendorId: 0xcafe, subsystemId: 0xbabe, classCode: 0 } },
        regions: {
          BAR0: {
            size: 8,
            bar: { kind: 'io' },
            handler: {
              read: (offset, into) => void into.set(bar0.subarray(offset, offset + into.length)),
              write: (offset, data) => void bar0.set(data, offset),
            },
          },
          BAR1: {
            size: 0x4000,
            bar: { kind: 'io' },
            mmap: {
              areas: [
                { offset: 0n, size: 0x1000n },
                { offset: 0x2000n, size: 0x1000n },
              ],
            },
          },
        },
        irqs: { INTX: { count: 1, maskable: false }, MSI: { count: 0, maskable: false }, MSIX: { count: 0, maskable: false }, ERR: 1, REQ: 1 },
        onDmaMap: (mapping) => mappings.push(mapping),
      });
      try {
        for (const allowUnsealedDmaFds of [false, true]) {
          const socketPath = tempSocketPath('mirror');
          const warnings: string[] = [];
          const server = VfioUserServer.listen(socketPath, device, { allowUnsealedDmaFds });
          server.on('warning', (_client, message) => warnings.push(message));
          try {
            const client = await runSampleClient(socketPath);
            show(`client printed (allowUnsealedDmaFds ${allowUnsealedDmaFds})`, client.output);
            assert.match(client.output, /region_info\[1\] offset 0 flags 0xf size 16384 cap_sz 48 #FDs 1/);
            assert.match(client.output, /area 1 offset 0x2000 size 4096/);
            if (!allowUnsealedDmaFds) {
              assert.match(client.output, /failed to map DMA regions: Operation not permitted/);
              assert.equal(mappings.length, 0);
              continue;
            }
            // Twice our max_msg_fds (8) one-page regions of one temp file, each DMA_MAP with its fd.
            await waitFor(() => mappings.length === 16, 'the DMA maps');
            assert.ok(mappings.every((mapping) => mapping.backing === 'file' && mapping.size === 0x1000n));
            assert.match(client.output, /IRQ INTx: count=1 flags=0x1/);
            // Migration and dirty-page tracking (DEVICE_FEATURE) are not served: EINVAL, and the client stops there.
            assert.match(client.output, /failed to start dirty page logging: Invalid argument/);
            assert.equal(client.status, 1);
            assert.equal(warnings.filter((warning) => /not sealed against shrinking/.test(warning)).length, 1);
          } finally {
            await server.close();
          }
        }
      } finally {
        device.close();
      }
    });
  });
});

// Needs no libvfio-user program: a client that reads the socket in order, as libvfio-user's does, against viommu serve.
describe('interop: DMA ordering without a twin socket', function () {
  this.timeout(30_000);

  it('viommu serve answers the REGION_WRITE that starts a transfer before its DMA request', async () => {
    const served = await ServeProcess.start('dma-engine');
    const socket = MessageSocket.connect(served.socketPath);
    const arrivals: string[] = [];
    socket.on('message', (bytes: Buffer) => {
      const header = decodeHeader(bytes);
      const isReply = (header.flags & HEADER_FLAGS.bits.TYPE) === MESSAGE_TYPES.values.REPLY;
      arrivals.push(`${isReply ? 'reply' : 'command'} ${COMMANDS.nameOf(header.command)}`);
    });
    const client = new VfioUserConnection(socketTransport(socket), { role: 'client', requestTimeoutMs: 10000 });
    try {
      assert.equal((await negotiateVersion(client, { twinSocket: false })).twinSocket, false);
      const guest = new Uint8Array(0x1000);
      client.onCommand('DMA_WRITE', (command) => {
        guest.set(command.data, Number(command.address - 0x100000n));
        return { transfer: { address: command.address, count: BigInt(command.data.length) } };
      });
      client.onCommand('DMA_READ', (command) => {
        const at = Number(command.address - 0x100000n);
        return { address: command.address, data: guest.slice(at, at + Number(command.count)) };
      });
      await client.request('DMA_MAP', { argsz: 32, flags: 3, offset: 0n, address: 0x100000n, size: 0x1000n });
      guest.set(Buffer.from('ordered'), 0x10);
      const bar0 = REGION_INDEXES.values.BAR0;
      const write64 = async (offset: number, value: bigint) => {
        const data = new Uint8Array(8);
        new DataView(data.buffer).setBigUint64(0, value, true);
        await client.request('REGION_WRITE', { offset: BigInt(offset), region: bar0, data });
      };
      const transfer = async (source: bigint, destination: bigint, toRam: boolean) => {
        await write64(EDU_REGISTERS.dmaSource, source);
        await write64(EDU_REGISTERS.dmaDestination, destination);
        await write64(EDU_REGISTERS.dmaCount, 7n);
        arrivals.length = 0;
        await write64(EDU_REGISTERS.dmaCommand, toRam ? 3n : 1n);
        await waitFor(() => arrivals.length >= 2, 'the DMA request');
        assert.deepEqual(arrivals.slice(0, 2), ['reply REGION_WRITE', `command ${toRam ? 'DMA_WRITE' : 'DMA_READ'}`]);
        for (let i = 0; i < 1000; i++) {
          const reply = await client.request('REGION_READ', { offset: BigInt(EDU_REGISTERS.dmaCommand), region: bar0, count: 8 });
          if ((reply.body.data[0]! & 1) === 0) return;
        }
        assert.fail('the run bit never cleared');
      };
      await transfer(0x100010n, BigInt(EDU_BUFFER_ADDRESS), false);
      await transfer(BigInt(EDU_BUFFER_ADDRESS), 0x100800n, true);
      assert.equal(Buffer.from(guest.subarray(0x800, 0x807)).toString(), 'ordered');
    } finally {
      client.close();
      await served.stop();
      served.kill();
    }
  });
});
