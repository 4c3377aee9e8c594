/** `viommu qtest`: the testbed machine behind the qtest line protocol on stdin/stdout, as QEMU's -qtest stdio. */
import type { Command } from 'commander';
import { FaultSnapshots } from '../explain/fault-snapshots';
import { VtdUnit } from '../vtd/unit';
import { TestbedMachine } from '../vmm/testbed';
import { QtestServer } from '../vmm/qtest/server';
import { TraceFile } from './trace-file';

export interface QtestCommandOptions {
  iommu?: string;
  ram: string;
  eduDmaMaskBits?: string;
  traceInterrupts?: boolean;
  extraEdu?: string;
  deviceSocket?: string;
  snapshotOnFault?: string;
  trace?: string;
}

export function registerQtestCommand(program: Command): void {
  program
    .command('qtest')
    .description(
      'speak the qtest line protocol on stdin/stdout to a q35-like testbed with the VT-d unit at 0xfed90000 and the edu DMA device at 00:04.0',
    )
    .option('--iommu <props>', "intel-iommu properties as QEMU takes them, e.g. 'aw-bits=48,caching-mode=on'", '')
    .option('--ram <MiB>', 'guest RAM size in MiB', '256')
    .option(
      '--trace-interrupts',
      "print every MSI the IOMMU delivers (fault and completion events, remapped device interrupts) on stderr as 'interrupt address 0x... data 0x...'",
    )
    .option('--extra-edu <slots>', "further edu devices on bus 0 at these slots, comma-separated (QEMU's -device edu,addr=SLOT)")
    .option(
      '--device-socket <path>',
      'attach the vfio-user device served on this UNIX socket (e.g. by `viommu serve`) at 00:04.0 in place of the in-process edu; its DMA and MSIs go through the IOMMU',
    )
    .option(
      '--snapshot-on-fault <dir>',
      'write a snapshot of each DMA translation fault (at most 16) into this directory, for `viommu explain FILE`; a summary goes to stderr at the end',
    )
    .option(
      '--trace <file>',
      "write the unit's events (register writes, descriptors executed, translations, faults, interrupts sent) to this file as JSON lines, each with t, milliseconds since the file was opened (docs/trace.md)",
    )
    .option('--edu-dma-mask-bits <bits>', "the edu device's DMA address mask in bits, as QEMU's -device edu,dma_mask=2^bits-1 (default 28)")
    .action(async (options: QtestCommandOptions) => {
      await runQtest(options, process.stdin, process.stdout);
    });
}

export async function runQtest(options: QtestCommandOptions, input: NodeJS.ReadableStream, output: NodeJS.WritableStream): Promise<void> {
  const ramMiB = Number(options.ram);
  if (!Number.isInteger(ramMiB) || ramMiB < 1 || ramMiB > 4096) throw new Error(`--ram ${options.ram}: a whole number of MiB from 1 to 4096`);
  const maskBits = options.eduDmaMaskBits === undefined ? undefined : Number(options.eduDmaMaskBits);
  if (maskBits !== undefined && (!Number.isInteger(maskBits) || maskBits < 1 || maskBits > 64)) {
    throw new Error(`--edu-dma-mask-bits ${options.eduDmaMaskBits}: a whole number from 1 to 64`);
  }
  const extraSlots = (options.extraEdu ?? '')
    .split(',')
    .filter((text) => text.trim() !== '')
    .map((text) => Number(text));
  if (extraSlots.some((slot) => !Number.isInteger(slot) || slot < 0 || slot > 31 || slot === 4)) {
    throw new Error(`--extra-edu ${options.extraEdu}: slot numbers from 0 to 31 other than 4 (the first edu)`);
  }
  const snapshots = options.snapshotOnFault === undefined ? undefined : new FaultSnapshots(options.snapshotOnFault);
  const trace = options.trace === undefined ? undefined : TraceFile.open(options.trace);
  const machine = new TestbedMachine({
    extraEduSlots: extraSlots,
    builtInEdu: options.deviceSocket === undefined,
    ramBytes: ramMiB << 20,
    ...(maskBits !== undefined ? { eduDmaMaskBits: maskBits } : {}),
    iommu: (memory) => {
      const unit = new VtdUnit({
        memory,
        config: options.iommu ?? '',
        onInterrupt:
          options.traceInterrupts === true
            ? (address, data) => process.stderr.write(`interrupt address 0x${(address >>> 0).toString(16)} data 0x${(data >>> 0).toString(16)}\n`)
            : () => undefined,
        ...(trace ? { trace: trace.write } : {}),
      });
      snapshots?.watch(unit, memory, 'viommu qtest');
      return unit;
    },
  });
  if (options.deviceSocket !== undefined) {
    try {
      const device = await machine.attachVfioUser(options.deviceSocket);
      device.client.on(
        'close',
        (error) =>
          device.closed ||
          process.stderr.write(`viommu qtest: the vfio-user device at ${options.deviceSocket} went away${error ? ` (${error.message})` : ''}\n`),
      );
    } catch (error) {
      machine.close();
      trace?.finish(process.stderr, 'qtest');
      throw new Error(`--device-socket ${options.deviceSocket}: ${(error as Error).message}`);
    }
  }
  const server = new QtestServer(machine, input as never, output as never, { endOutputWhenInputEnds: true });
  try {
    await server.closed;
  } finally {
    machine.close();
    // stdout carries the protocol: the summary goes to stderr.
    if (snapshots !== undefined) process.stderr.write(`viommu qtest: ${snapshots.summary()}\n`);
    trace?.finish(process.stderr, 'qtest');
  }
}
