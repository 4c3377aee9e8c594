/** `viommu probe`: the renderer on a capture (exact lines), PCI config decoding, and the CLI end to end against live servers. */

import assert from 'node:assert/strict';
import net from 'node:net';
import path from 'node:path';
import { describeServer, formatSize, probeToJson, renderProbe, runProbe, type ProbeDescription } from '../../../lib/cli/probe';
import { native } from '../../../lib/native';
import { MessageSocket, UnixServer } from '../../../lib/os';
import { VfioUserClient } from '../../../lib/vfio-user/client';
import { describePciConfig } from '../../../lib/vfio-user/client/pci-config';
import { InMemoryTransport, socketTransport } from '../../../lib/vfio-user/transport';
import { openFdCount, tempSocketPath, tick } from '../../helpers';
import { runViommu } from '../cli-process';
import { CaptureReplayServer, readCapture } from './capture-replay';
import { ScriptedServer, type ScriptedServerOptions } from './scripted-server';

interface CapSpec {
  at: number;
  id: number;
  next: number;
  /** Bytes after the id/next pair. */
  body?: number[];
}

/** A 256-byte type-0 config space with a capability list, written field by field. */
function configSpace(
  caps: CapSpec[],
  overrides: { vendor?: number; device?: number; classCode?: number; command?: number; bars?: number[] } = {},
): Uint8Array {
  const bytes = new Uint8Array(256);
  const view = new DataView(bytes.buffer);
  view.setUint16(0x00, overrides.vendor ?? 0x1234, true);
  view.setUint16(0x02, overrides.device ?? 0x11e8, true);
  view.setUint16(0x04, overrides.command ?? 0x0006, true);
  view.setUint16(0x06, caps.length > 0 ? 0x0010 : 0, true);
  view.setUint8(0x08, 0x10);
  view.setUint8(0x0a, (overrides.classCode ?? 0x00ff) & 0xff);
  view.setUint8(0x0b, (overrides.classCode ?? 0x00ff) >> 8);
  (overrides.bars ?? [0xfe000000, 0]).forEach((bar, i) => view.setUint32(0x10 + 4 * i, bar, true));
  view.setUint16(0x2c, 0x1af4, true);
  view.setUint16(0x2e, 0x1100, true);
  view.setUint8(0x34, caps[0]?.at ?? 0);
  view.setUint8(0x3c, 11);
  view.setUint8(0x3d, 1);
  for (const cap of caps) {
    bytes[cap.at] = cap.id;
    bytes[cap.at + 1] = cap.next;
    bytes.set(cap.body ?? [], cap.at + 2);
  }
  return bytes;
}

const MSI = { at: 0x40, id: 0x05, next: 0x50, body: [0x84, 0x00] }; // 64-bit, 4 vectors capable, disabled
const MSIX = { at: 0x50, id: 0x11, next: 0x60, body: [0x07, 0x80, 0x00, 0x20, 0, 0, 0x01, 0x30, 0, 0] }; // enabled, 8 vectors
const PM = { at: 0x60, id: 0x01, next: 0x70, body: [0x03, 0x00] };
const VENDOR = { at: 0x70, id: 0x09, next: 0, body: [0x10] };

describe('viommu probe', () => {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const run of cleanup.splice(0).reverse()) run();
  });

  async function describeScripted(options: ScriptedServerOptions): Promise<ProbeDescription> {
    const [a, b] = InMemoryTransport.pair();
    const server = new ScriptedServer(b, options);
    cleanup.push(() => server.close());
    const client = await VfioUserClient.open(a, { requestTimeoutMs: 5000 });
    cleanup.push(() => client.close());
    return describeServer(client, '/run/device.sock');
  }

  it('renders a description built from probe-server.jsonl exactly', async function () {
    const [a, b] = InMemoryTransport.pair();
    const replay = new CaptureReplayServer(b, readCapture('probe-server.jsonl'));
    cleanup.push(() => replay.close());
    const client = await VfioUserClient.open(a, { twinSocket: true, requestTimeoutMs: 5000 });
    cleanup.push(() => client.close());
    const description = await describeServer(client, '/tmp/server.sock');
    assert.deepEqual(replay.unmatched, []);
    assert.deepEqual(renderProbe(description), [
      'vfio-user server at /tmp/server.sock',
      '\tProtocol: version 0.2, twin socket+',
      '\tCapabilities sent: max_msg_fds=8 max_data_xfer_size=1048576 twin_socket+ (fd_index 0) migration=pgsize 4096',
      '\tCapability defaults (not sent): max_dma_maps=65535 pgsizes=0x1000 write_multiple-',
      '\tDevice: flags 0x3 [RESET PCI], 9 regions, 5 IRQ indexes',
      '\tRegion 0 (BAR0): size=8 [READ WRITE]',
      '\tRegion 1 (BAR1): size=16K [READ WRITE MMAP CAPS] mmap-fd',
      '\t\tSparse mmap areas: 0x0-0xfff 0x2000-0x2fff',
      '\tRegion 2 (BAR2): not present',
      '\tRegion 3 (BAR3): not present',
      '\tRegion 4 (BAR4): not present',
      '\tRegion 5 (BAR5): not present',
      '\tRegion 6 (ROM): not present',
      '\tRegion 7 (CONFIG): size=256 [READ WRITE]',
      '\tRegion 8 (VGA): not present',
      '\tIRQ 0 (INTx): count=1 [EVENTFD]',
      '\tIRQ 1 (MSI): count=0 [EVENTFD]',
      '\tIRQ 2 (MSI-X): count=0 [EVENTFD]',
      '\tIRQ 3 (ERR): count=1 [EVENTFD]',
      '\tIRQ 4 (REQ): count=1 [EVENTFD]',
      'PCI configuration space (64 of 256 bytes read):',
      '\tUnclassified device [0000]: Device dead:beef (rev 00)',
      '\tSubsystem: Device cafe:babe',
      '\tControl: I/O- Mem- BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx-',
      '\tStatus: Cap- 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-',
      '\tInterrupt: pin A routed to IRQ 0',
      '\tRegion 0: I/O ports at <unassigned> [size=8]',
      '\tRegion 1: I/O ports at <unassigned> [size=16K]',
      '\tCapabilities: none',
    ]);
    const json = JSON.parse(probeToJson(description)) as {
      regions: { size: string; flagNames: string[] }[];
      config: { bytes: string; pci: { header: { vendorId: number } } };
    };
    assert.equal(json.regions[1]!.size, '0x4000');
    assert.deepEqual(json.regions[1]!.flagNames, ['READ', 'WRITE', 'MMAP', 'CAPS']);
    assert.equal(json.config.pci.header.vendorId, 0xdead);
    assert.equal(json.config.bytes.length, 128);
    assert.deepEqual(description.capabilitiesDefaulted, ['max_dma_maps', 'pgsizes', 'write_multiple']);
  });

  it('tells the capabilities a server sent from the defaults it left to the spec', async () => {
    const sentAll = await describeScripted({
      capabilities: {
        maxMsgFds: 4,
        maxDataXferSize: 4096,
        maxDmaMaps: 16,
        pgsizes: 0x201000n,
        writeMultiple: false,
        migration: { pgsize: 4096, maxBitmapSize: 1 },
      },
      twinSocket: true,
    });
    const allLines = renderProbe(sentAll).slice(2, 4);
    assert.deepEqual(allLines, [
      '\tCapabilities sent: max_msg_fds=4 max_data_xfer_size=4096 max_dma_maps=16 pgsizes=0x201000 write_multiple- migration=pgsize 4096,max_bitmap_size 1',
      // The twin socket was not asked for, so the server did not offer one.
      '\tCapability defaults (not sent): twin_socket-',
    ]);
    // Our connection always states max_msg_fds and max_data_xfer_size, and the server side offers write_multiple.
    const sentFew = await describeScripted({});
    assert.deepEqual(renderProbe(sentFew).slice(2, 4), [
      '\tCapabilities sent: max_msg_fds=8 max_data_xfer_size=1048576 write_multiple+',
      '\tCapability defaults (not sent): max_dma_maps=65535 pgsizes=0x1000 twin_socket- migration-',
    ]);
    const json = JSON.parse(probeToJson(sentFew)) as {
      capabilitiesSent: Record<string, unknown>;
      capabilitiesDefaulted: string[];
      capabilities: { maxDmaMaps: number };
    };
    assert.deepEqual(json.capabilitiesSent, { maxMsgFds: 8, maxDataXferSize: 1048576, writeMultiple: true });
    assert.deepEqual(json.capabilitiesDefaulted, ['max_dma_maps', 'pgsizes', 'twin_socket', 'migration']);
    assert.equal(json.capabilities.maxDmaMaps, 65535);
  });

  it('walks the capability list (MSI, MSI-X, PM, vendor) and sizes BARs from the regions', async () => {
    const description = await describeScripted({ config: configSpace([MSI, MSIX, PM, VENDOR]) });
    const lines = renderProbe(description);
    const pciAt = lines.indexOf('PCI configuration space (256 of 256 bytes read):');
    assert.ok(pciAt > 0, lines.join('\n'));
    assert.deepEqual(lines.slice(pciAt + 1), [
      '\tUnclassified device [00ff]: Device 1234:11e8 (rev 10)',
      '\tSubsystem: Device 1af4:1100',
      '\tControl: I/O- Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx-',
      '\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-',
      '\tInterrupt: pin A routed to IRQ 11',
      '\tRegion 0: Memory at fe000000 (32-bit, non-prefetchable) [size=256]',
      '\tRegion 1: Memory at <unassigned> (32-bit, non-prefetchable) [size=16K]',
      '\tCapabilities: [40] MSI: Enable- Count=1/4 Maskable- 64bit+',
      '\tCapabilities: [50] MSI-X: Enable+ Count=8 Masked-',
      '\t\tVector table: BAR=0 offset=00002000',
      '\t\tPBA: BAR=1 offset=00003000',
      '\tCapabilities: [60] Power Management version 3',
      '\tCapabilities: [70] Vendor Specific Information: Len=10',
    ]);
  });

  it('stops a capability list that loops or points into the header, and says so', () => {
    const looped = describePciConfig(configSpace([MSI, { ...MSIX, next: 0x40 }]));
    assert.deepEqual(
      looped.capabilities.map((c) => c.offset),
      [0x40, 0x50],
    );
    assert.deepEqual(looped.problems, ['the capability list loops: the capability at [50] points back to [40]']);
    const selfLoop = describePciConfig(configSpace([{ at: 0x40, id: 0x05, next: 0x40 }]));
    assert.equal(selfLoop.capabilities.length, 1);
    assert.equal(selfLoop.problems.length, 1);
    const intoHeader = describePciConfig(configSpace([{ at: 0x40, id: 0x05, next: 0x10 }]));
    assert.deepEqual(intoHeader.problems, ['the capability at [40] points into the header at 0x10']);
    const short = describePciConfig(configSpace([MSI]).subarray(0, 64));
    assert.deepEqual([short.capabilities.length, short.problems, short.notes], [0, [], ['capability at [40] lies beyond the 64 bytes read']]);
  });

  it('walks extended capabilities with loop protection', () => {
    const bytes = new Uint8Array(4096);
    bytes.set(configSpace([{ at: 0x40, id: 0x10, next: 0, body: [0x02, 0x00] }]));
    const view = new DataView(bytes.buffer);
    view.setUint32(0x100, 0x0001 | (2 << 16) | (0x140 << 20), true);
    view.setUint32(0x140, 0x001b | (1 << 16) | (0x100 << 20), true);
    const pci = describePciConfig(bytes);
    assert.deepEqual(
      pci.capabilities.map((c) => [c.name, c.detail]),
      [['Express', '(v2) Endpoint, MSI 00']],
    );
    assert.deepEqual(
      pci.extendedCapabilities.map((c) => [c.offset, c.name, c.version]),
      [
        [0x100, 'Advanced Error Reporting', 2],
        [0x140, 'Process Address Space ID', 1],
      ],
    );
    assert.deepEqual(pci.problems, ['the extended capability list loops: [140] points back to [100]']);
  });

  it('formats sizes as lspci does', () => {
    assert.deepEqual([0n, 8n, 1024n, 0x3000n, 0x100000n, 1536n, 1n << 40n].map(formatSize), ['0', '8', '1K', '12K', '1M', '1536', '1T']);
  });

  describe('the CLI, end to end in a child process', () => {
    const runCli = (args: string[]) => runViommu(['probe', ...args]);

    function listen(onConnection: (socket: MessageSocket) => void): string {
      const socketPath = tempSocketPath('probe');
      const listener = UnixServer.listen(socketPath);
      listener.on('connection', onConnection);
      cleanup.push(() => listener.close());
      return socketPath;
    }

    function scripted(options: ScriptedServerOptions): string {
      return listen((socket) => {
        const server = new ScriptedServer(socketTransport(socket), options);
        cleanup.push(() => server.close());
      });
    }

    it('describes a live server and exits 0; --json gives the same facts', async function () {
      this.timeout(20000);
      const socketPath = scripted({ config: configSpace([MSI, MSIX]), twinSocket: true });
      const text = await runCli(['--socket', socketPath]);
      assert.equal(text.stderr, '');
      assert.equal(text.code, 0);
      const lines = text.stdout.trimEnd().split('\n');
      assert.equal(lines[0], `vfio-user server at ${socketPath}`);
      assert.equal(lines[1], '\tProtocol: version 0.2, twin socket+');
      assert.ok(lines.includes('\tRegion 1 (BAR1): size=16K [READ WRITE MMAP CAPS] mmap-fd'));
      assert.ok(lines.includes('\t\tRegion type: 3 subtype 1'));
      assert.ok(lines.includes('\tCapabilities: [50] MSI-X: Enable+ Count=8 Masked-'));

      const json = await runCli(['--socket', socketPath, '--json', '--no-twin-socket']);
      assert.equal(json.code, 0, json.stderr);
      const parsed = JSON.parse(json.stdout) as { twinSocket: boolean; device: { numRegions: number }; irqs: { count: number }[] };
      assert.equal(parsed.twinSocket, false);
      assert.equal(parsed.device.numRegions, 9);
      assert.deepEqual(
        parsed.irqs.map((irq) => irq.count),
        [1, 4, 0, 1, 1],
      );
    });

    it('prints what it can, then fails, when the capability list loops', async function () {
      this.timeout(20000);
      const socketPath = scripted({ config: configSpace([MSI, { ...MSIX, next: 0x40 }]) });
      const result = await runCli(['--socket', socketPath]);
      assert.equal(result.code, 1);
      assert.ok(result.stdout.includes('\tError: the capability list loops: the capability at [50] points back to [40]'), result.stdout);
      assert.match(result.stderr, /^viommu: the device's PCI configuration space is malformed: the capability list loops/);
    });

    it('gives up on a server that never answers, within the request timeout', async function () {
      this.timeout(20000);
      const held: MessageSocket[] = [];
      const socketPath = listen((socket) => held.push(socket));
      cleanup.push(() => held.forEach((socket) => socket.close()));
      const result = await runCli(['--socket', socketPath, '--timeout', '300']);
      assert.equal(result.code, 1);
      assert.equal(result.stdout, '');
      assert.equal(result.stderr, `viommu: the vfio-user server at ${socketPath} did not answer VERSION within 300 ms\n`);
    });

    it('reports a malformed reply, broken framing, and a socket nobody listens on', async function () {
      this.timeout(20000);
      const socketPath = listen((socket) => {
        socket.once('message', (bytes) => {
          // A VERSION reply without the version payload.
          const bad = Buffer.alloc(16);
          bytes.copy(bad, 0, 0, 4);
          bad.writeUInt32LE(16, 4);
          bad.writeUInt32LE(1, 8);
          socket.send(bad);
        });
        cleanup.push(() => socket.close());
      });
      const malformed = await runCli(['--socket', socketPath, '--timeout', '2000']);
      assert.equal(malformed.code, 1);
      assert.match(malformed.stderr, /^viommu: the vfio-user server at .* sent a malformed message: VERSION reply: payload is 0 bytes/);

      // msg_size 8 is below the 16-byte header: the stream cannot be framed any more (a raw socket can say it).
      const framingPath = tempSocketPath('probe');
      const raw = net.createServer((connection) => {
        connection.once('data', () => {
          const garbage = Buffer.alloc(16);
          garbage.writeUInt32LE(8, 4);
          connection.write(garbage);
        });
      });
      await new Promise<void>((resolve) => raw.listen(framingPath, resolve));
      cleanup.push(() => raw.close());
      const broken = await runCli(['--socket', framingPath, '--timeout', '2000']);
      assert.equal(broken.code, 1);
      assert.match(broken.stderr, /^viommu: the vfio-user server at .* closed the connection/);

      const nobody = await runCli(['--socket', path.join(path.dirname(socketPath), 'absent.sock')]);
      assert.equal(nobody.code, 1);
      assert.match(nobody.stderr, /^viommu: cannot connect to .*absent\.sock: ENOENT/);
    });
  });

  it('runProbe leaves no fd behind, whether it succeeds or fails', async function () {
    this.timeout(20000);
    const before = openFdCount();
    const liveBefore = native.liveFileDescriptors();
    {
      const socketPath = tempSocketPath('probe');
      const listener = UnixServer.listen(socketPath);
      const servers: ScriptedServer[] = [];
      listener.on('connection', (socket) =>
        servers.push(new ScriptedServer(socketTransport(socket), { twinSocket: true, config: configSpace([MSI]) })),
      );
      const lines: string[] = [];
      await runProbe({ socket: socketPath, timeoutMs: 5000 }, (line) => lines.push(line));
      assert.ok(lines.length > 20);
      await assert.rejects(
        runProbe({ socket: `${socketPath}.absent`, timeoutMs: 5000 }, () => undefined),
        /cannot connect/,
      );
      await tick(20);
      servers.forEach((server) => server.close());
      listener.close();
    }
    await tick(20);
    assert.equal(openFdCount(), before);
    assert.equal(native.liveFileDescriptors(), liveBefore);
  });
});
