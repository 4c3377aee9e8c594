/** Our client against `viommu serve --device dma-engine` in another process: enumeration, MSI, edu DMA mapped and by message (chunked too), faults, probe. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { EDU_BUFFER_ADDRESS, EDU_DMA_COMMAND, EDU_IDENTIFICATION, EDU_INTERRUPTS, EDU_PCI_IDENTITY, EDU_REGISTERS } from '../../lib/devices/edu';
import { MSI_CONTROL, PCI_CAPABILITY_IDS, PCI_COMMAND, TYPE0_HEADER } from '../../lib/devices/pci-layout';
import { EFAULT, GuestMemory, SharedRegion, type DmaAccess, type DmaSpace } from '../../lib/memory';
import { native } from '../../lib/native';
import { EventFd } from '../../lib/os';
import { VfioUserClient, type DmaFaultEvent } from '../../lib/vfio-user/client';
import { describePciConfig } from '../../lib/vfio-user/client/pci-config';
import { PROTOCOL_VERSION, REGION_INDEXES, REGION_INFO_FLAGS } from '../../lib/vfio-user/protocol';
import { openFdCount, waitFor } from '../helpers';
import { runViommu, ServeProcess } from '../vfio-user/cli-process';

const BAR0 = REGION_INDEXES.values.BAR0;
const CONFIG = REGION_INDEXES.values.CONFIG;
/** Guest RAM as the VMM lays it out; with no IOMMU in between, IOVAs are guest-physical addresses. */
const RAM_BASE = 0x100000;
const RAM_SIZE = 0x10000;
/** Never mapped, never RAM. */
const UNMAPPED_IOVA = 0x200000n;
/** Mapped (without an fd), but no guest RAM backs it. */
const HOLE_IOVA = 0x300000n;

function le(value: bigint, width: 4 | 8): Uint8Array {
  const bytes = new Uint8Array(width);
  const view = new DataView(bytes.buffer);
  if (width === 8) view.setBigUint64(0, value, true);
  else view.setUint32(0, Number(value), true);
  return bytes;
}

function fromLe(bytes: Uint8Array): bigint {
  return bytes.reduceRight((value, byte) => (value << 8n) | BigInt(byte), 0n);
}

/** GuestMemory.dma, telling `record` of each access: the server's DMA_READ/DMA_WRITE as the client serves them. */
function recordingDma(memory: GuestMemory, record: (access: DmaAccess, address: bigint, length: number) => void): DmaSpace {
  return {
    read: (address, into) => {
      record('read', address, into.length);
      memory.dma.read(address, into);
    },
    write: (address, data) => {
      record('write', address, data.length);
      memory.dma.write(address, data);
    },
  };
}

/** What a guest driver does, through the client's region I/O. */
class EduDriver {
  constructor(private readonly client: VfioUserClient) {}

  async read(register: number, width: 4 | 8 = 4): Promise<bigint> {
    return fromLe(await this.client.regionRead(BAR0, register, width));
  }

  async write(register: number, value: bigint, width: 4 | 8 = 4): Promise<void> {
    await this.client.regionWrite(BAR0, register, le(value, width));
  }

  /** QEMU's edu sequence: source, destination, count, then the command with RUN; polls RUN until clear. */
  async transfer(source: bigint, destination: bigint, count: number, toRam: boolean): Promise<void> {
    await this.write(EDU_REGISTERS.dmaSource, source, 8);
    await this.write(EDU_REGISTERS.dmaDestination, destination, 8);
    await this.write(EDU_REGISTERS.dmaCount, BigInt(count), 8);
    const command = EDU_DMA_COMMAND.RUN | EDU_DMA_COMMAND.IRQ | (toRam ? EDU_DMA_COMMAND.TO_RAM : 0);
    await this.write(EDU_REGISTERS.dmaCommand, BigInt(command), 8);
    for (let polls = 0; (await this.read(EDU_REGISTERS.dmaCommand, 8)) & BigInt(EDU_DMA_COMMAND.RUN); polls++) {
      if (polls > 5000) assert.fail('the edu run bit never cleared');
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  async acknowledge(): Promise<void> {
    const status = await this.read(EDU_REGISTERS.interruptStatus);
    assert.equal(status, BigInt(EDU_INTERRUPTS.DMA_DONE), 'the completion interrupt is the one raised');
    await this.write(EDU_REGISTERS.acknowledgeInterrupt, status);
  }
}

describe('interop: our client against `viommu serve --device dma-engine` in another process', function () {
  this.timeout(30000);

  it('enumerates, takes MSIs, drives edu DMA mapped and by message, survives faults, is probed, and stops cleanly', async () => {
    const fdsBeforeServer = openFdCount();
    const server = await ServeProcess.start('dma-engine');
    try {
      assert.equal(server.stdout, `viommu serve: dma-engine listening on ${server.socketPath}\n`);
      const fdsBeforeClient = openFdCount();
      const nativeFdsBeforeClient = native.liveFileDescriptors();

      // The VMM side: guest RAM on a memfd, its DmaSpace behind the client (counted, to tell the two DMA paths apart).
      const memory = new GuestMemory();
      const ram = SharedRegion.create('guest-ram', RAM_SIZE);
      memory.addSharedRegion('ram', RAM_BASE, ram);
      const byMessage: string[] = [];
      const countedDma = recordingDma(memory, (access, address, length) => byMessage.push(`${access} 0x${address.toString(16)}+${length}`));
      const msi = EventFd.create();
      let msiCount = 0;
      msi.watch((count) => (msiCount += count));
      const faults: DmaFaultEvent[] = [];
      const client = await VfioUserClient.connect(server.socketPath, { twinSocket: true, dmaSpace: countedDma, requestTimeoutMs: 10000 });
      client.on('dmaFault', (event) => faults.push(event));
      const edu = new EduDriver(client);
      try {
        // ---- enumeration --------------------------------------------------------------------------------------
        const description = client.description;
        assert.deepEqual(description.version, PROTOCOL_VERSION);
        assert.equal(description.twinSocket, true);
        assert.deepEqual(
          description.regions.map((region) => [region.index, region.size, region.flags]),
          [
            [0, 1n << 20n, REGION_INFO_FLAGS.bits.READ | REGION_INFO_FLAGS.bits.WRITE],
            [1, 0n, 0],
            [2, 0n, 0],
            [3, 0n, 0],
            [4, 0n, 0],
            [5, 0n, 0],
            [6, 0n, 0],
            [7, 256n, REGION_INFO_FLAGS.bits.READ | REGION_INFO_FLAGS.bits.WRITE],
            [8, 0n, 0],
          ],
        );
        assert.deepEqual(
          description.irqs.map((irq) => [irq.name, irq.count]),
          [
            ['INTX', 1],
            ['MSI', 1],
            ['MSIX', 0],
            ['ERR', 1],
            ['REQ', 1],
          ],
        );
        const pci = describePciConfig(
          await client.regionRead(CONFIG, 0, 256),
          client.regions.map((region) => region.size),
        );
        assert.deepEqual(
          [pci.header.vendorId, pci.header.deviceId, pci.header.revisionId],
          [EDU_PCI_IDENTITY.vendorId, EDU_PCI_IDENTITY.deviceId, EDU_PCI_IDENTITY.revision],
        );
        assert.deepEqual(
          pci.bars.map((bar) => [bar.index, bar.kind, bar.width, bar.size]),
          [[0, 'memory', 32, 1n << 20n]],
        );
        const msiCapability = pci.capabilities.find((capability) => capability.id === PCI_CAPABILITY_IDS.MSI);
        assert.ok(msiCapability, 'the MSI capability is listed');
        assert.deepEqual(pci.problems, []);
        assert.equal(await edu.read(EDU_REGISTERS.identification), BigInt(EDU_IDENTIFICATION));

        // ---- the driver's set-up: memory decoding and bus mastering, an eventfd for MSI 0, MSI enabled in config --
        const command = TYPE0_HEADER.field('command').offset;
        await client.regionWrite(CONFIG, command, le(BigInt(PCI_COMMAND.bits.MEMORY_SPACE | PCI_COMMAND.bits.BUS_MASTER), 4).subarray(0, 2));
        await client.enableMsi([msi]);
        const control = msiCapability.offset + 2;
        const controlValue = Number(fromLe(await client.regionRead(CONFIG, control, 2)));
        await client.regionWrite(CONFIG, control, le(BigInt(controlValue | MSI_CONTROL.bits.ENABLE), 4).subarray(0, 2));
        assert.match(
          describePciConfig(await client.regionRead(CONFIG, 0, 256)).capabilities.find((c) => c.id === PCI_CAPABILITY_IDS.MSI)!.detail!,
          /^Enable\+ Count=1\/1/,
        );

        /** RAM -> device buffer -> elsewhere in RAM, one MSI per transfer. */
        async function roundTrip(label: string, from: number, to: number, length: number): Promise<void> {
          const pattern = Uint8Array.from({ length }, (_, i) => (i * 13 + label.length) & 0xff);
          memory.write(from, pattern);
          const msisBefore = msiCount;
          await edu.transfer(BigInt(from), BigInt(EDU_BUFFER_ADDRESS), length, false);
          await waitFor(() => msiCount === msisBefore + 1, `the MSI of ${label}'s read from RAM`);
          await edu.acknowledge();
          await edu.transfer(BigInt(EDU_BUFFER_ADDRESS), BigInt(to), length, true);
          await waitFor(() => msiCount === msisBefore + 2, `the MSI of ${label}'s write to RAM`);
          await edu.acknowledge();
          assert.deepEqual(memory.read(to, length), pattern, `${label}: the bytes went through the device and back`);
        }

        // ---- (a) mapped: the server reaches guest RAM through the memfd, no DMA message crosses the socket ------
        await client.dmaMap({ address: BigInt(RAM_BASE), size: BigInt(RAM_SIZE), fd: ram.fd, offset: 0n });
        await roundTrip('mapped', RAM_BASE + 0x10, RAM_BASE + 0x2000, 256);
        assert.deepEqual(byMessage, []);
        await client.dmaUnmap(BigInt(RAM_BASE), BigInt(RAM_SIZE));

        // ---- (b) by message: the same range without an fd; the server asks, the client serves from GuestMemory --
        await client.dmaMap({ address: BigInt(RAM_BASE), size: BigInt(RAM_SIZE) });
        await roundTrip('by message', RAM_BASE + 0x400, RAM_BASE + 0x3000, 256);
        assert.deepEqual(byMessage, [`read 0x${(RAM_BASE + 0x400).toString(16)}+256`, `write 0x${(RAM_BASE + 0x3000).toString(16)}+256`]);
        const lastPattern = memory.read(RAM_BASE + 0x3000, 256);

        // ---- (c) an IOVA the client never mapped: the server refuses it itself and logs it -----------------------
        // The edu register file has no error bit: the transfer completes without data, and still interrupts.
        byMessage.length = 0;
        let msisBefore = msiCount;
        await edu.transfer(UNMAPPED_IOVA, BigInt(EDU_BUFFER_ADDRESS), 16, false);
        await waitFor(() => msiCount === msisBefore + 1, 'the MSI of the refused transfer');
        await edu.acknowledge();
        await waitFor(
          () => /dma-engine: DMA of 16 bytes from 0x200000 to 0x40000 failed: 0x200000 is not in any DMA mapping \(errno 14\)/.test(server.stderr),
          `the server's log of the refused DMA (stderr: ${server.stderr})`,
        );
        assert.deepEqual([byMessage, faults], [[], []], 'nothing reached the client');

        // ---- (c') mapped without RAM behind it: the client answers EFAULT and tells the VMM; the server logs it --
        await client.dmaMap({ address: HOLE_IOVA, size: 0x1000n });
        msisBefore = msiCount;
        await edu.transfer(BigInt(EDU_BUFFER_ADDRESS), HOLE_IOVA, 16, true);
        await waitFor(() => msiCount === msisBefore + 1, 'the MSI of the faulted transfer');
        await edu.acknowledge();
        assert.deepEqual(
          faults.map((fault) => [fault.access, fault.address, fault.length, fault.errno]),
          [['write', HOLE_IOVA, 16, EFAULT]],
        );
        await waitFor(
          () => /dma-engine: DMA of 16 bytes from 0x40000 to 0x300000 failed: the client refused the DMA_WRITE \(errno 14\)/.test(server.stderr),
          `the server's log of the faulted DMA (stderr: ${server.stderr})`,
        );

        // The server keeps serving: the buffer still holds what (b) put there, and moves it again.
        await edu.transfer(BigInt(EDU_BUFFER_ADDRESS), BigInt(RAM_BASE + 0x5000), 256, true);
        assert.deepEqual(memory.read(RAM_BASE + 0x5000, 256), lastPattern);
        await edu.acknowledge();
        assert.equal(await edu.read(EDU_REGISTERS.identification), BigInt(EDU_IDENTIFICATION));
      } finally {
        client.close();
        msi.close();
        ram.close();
      }
      await waitFor(() => /client 1 disconnected/.test(server.stderr), `the server to see the client go (stderr: ${server.stderr})`);
      await waitFor(() => openFdCount() === fdsBeforeClient, `the client's fds to be closed (${openFdCount()} open, ${fdsBeforeClient} before)`);
      assert.equal(native.liveFileDescriptors(), nativeFdsBeforeClient);

      // ---- `viommu probe` against the same server ------------------------------------------------------------
      const probe = await runViommu(['probe', '--socket', server.socketPath]);
      assert.equal(probe.code, 0, probe.stderr);
      assert.equal(probe.stderr, '');
      const lines = probe.stdout.trimEnd().split('\n');
      for (const line of [
        `vfio-user server at ${server.socketPath}`,
        '\tProtocol: version 0.2, twin socket+',
        '\tDevice: flags 0x3 [RESET PCI], 9 regions, 5 IRQ indexes',
        '\tRegion 0 (BAR0): size=1M [READ WRITE]',
        '\tRegion 7 (CONFIG): size=256 [READ WRITE]',
        '\tIRQ 1 (MSI): count=1 [EVENTFD MASKABLE]',
        'PCI configuration space (256 of 256 bytes read):',
        '\tUnclassified device [00ff]: Device 1234:11e8 (rev 10)',
        '\tSubsystem: Device 1af4:1100',
        // The client's departure reset the device: decoding, bus mastering and MSI are off again.
        '\tControl: I/O- Mem- BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx-',
        '\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-',
        '\tRegion 0: Memory at <unassigned> (32-bit, non-prefetchable) [size=1M]',
        '\tCapabilities: [40] MSI: Enable- Count=1/1 Maskable- 64bit+',
      ]) {
        assert.ok(lines.includes(line), `probe prints ${JSON.stringify(line)}:\n${probe.stdout}`);
      }
      await waitFor(() => /client 2 disconnected/.test(server.stderr), `the server to see the probe go (stderr: ${server.stderr})`);

      // ---- SIGTERM -------------------------------------------------------------------------------------------
      assert.deepEqual(await server.stop(), [0, null], server.stderr);
      assert.ok(!fs.existsSync(server.socketPath), 'the socket file is removed');
      assert.match(server.stderr, /viommu serve: stopped\n$/);
      await waitFor(
        () => openFdCount() === fdsBeforeServer,
        `every fd of the session to be closed (${openFdCount()} open, ${fdsBeforeServer} before)`,
      );
    } finally {
      server.kill();
    }
  });

  it('without a twin socket and with 1 KiB transfers, splits a 4095-byte DMA by message into pieces both ways', async () => {
    const server = await ServeProcess.start('dma-engine', ['--no-twin-socket']);
    const memory = new GuestMemory();
    const ram = SharedRegion.create('guest-ram', RAM_SIZE);
    memory.addSharedRegion('ram', RAM_BASE, ram);
    const pieces: string[] = [];
    const dmaSpace = recordingDma(memory, (access, _address, length) => pieces.push(`${access} ${length}`));
    try {
      const client = await VfioUserClient.connect(server.socketPath, {
        twinSocket: true,
        dmaSpace,
        capabilities: { maxDataXferSize: 1024 },
        requestTimeoutMs: 10000,
      });
      try {
        assert.equal(client.description.twinSocket, false, 'the server declined the twin socket');
        const edu = new EduDriver(client);
        await client.dmaMap({ address: BigInt(RAM_BASE), size: BigInt(RAM_SIZE) });
        const pattern = Uint8Array.from({ length: 4095 }, (_, i) => (i * 31) & 0xff);
        memory.write(RAM_BASE, pattern);
        await edu.transfer(BigInt(RAM_BASE), BigInt(EDU_BUFFER_ADDRESS), pattern.length, false);
        await edu.transfer(BigInt(EDU_BUFFER_ADDRESS), BigInt(RAM_BASE + 0x8000), pattern.length, true);
        assert.deepEqual(memory.read(RAM_BASE + 0x8000, pattern.length), pattern);
        assert.deepEqual(pieces, ['read 1024', 'read 1024', 'read 1024', 'read 1023', 'write 1024', 'write 1024', 'write 1024', 'write 1023']);
      } finally {
        client.close();
      }
      assert.deepEqual(await server.stop(), [0, null], server.stderr);
    } finally {
      server.kill();
      ram.close();
    }
  });
});
