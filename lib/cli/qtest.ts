/** `viommu qtest`: the testbed machine behind the qtest line protocol on stdin/stdout, as QEMU's -qtest stdio. */
import type { Command } from 'commander';
import { VtdUnit } from '../vtd/unit';
import { TestbedMachine } from '../vmm/testbed';
import { QtestServer } from '../vmm/qtest/server';

export interface QtestCommandOptions {
  iommu?: string;
  ram: string;
}

export function registerQtestCommand(program: Command): void {
  program
    .command('qtest')
    .description('speak the qtest line protocol on stdin/stdout to a q35-like testbed with the VT-d unit at 0xfed90000 and the edu DMA device at 00:04.0')
    .option('--iommu <props>', "intel-iommu properties as QEMU takes them, e.g. 'aw-bits=48,caching-mode=on'", '')
    .option('--ram <MiB>', 'guest RAM size in MiB', '256')
    .action(async (options: QtestCommandOptions) => {
      await runQtest(options, process.stdin, process.stdout);
    });
}

export async function runQtest(options: QtestCommandOptions, input: NodeJS.ReadableStream, output: NodeJS.WritableStream): Promise<void> {
  const ramMiB = Number(options.ram);
  if (!Number.isInteger(ramMiB) || ramMiB < 1 || ramMiB > 4096) throw new Error(`--ram ${options.ram}: a whole number of MiB from 1 to 4096`);
  const machine = new TestbedMachine({
    ramBytes: ramMiB << 20,
    iommu: (memory) => new VtdUnit({ memory, config: options.iommu ?? '', onInterrupt: () => undefined }),
  });
  const server = new QtestServer(machine, input as never, output as never, { endOutputWhenInputEnds: true });
  try {
    await server.closed;
  } finally {
    machine.close();
  }
}
