/** `viommu smoke`: boots a Multiboot guest (kvm-unit-tests' intel-iommu.flat) on the KVM machine with the unit, passes its serial output through, and ends with a report. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { FaultSnapshots } from '../explain/fault-snapshots';
import { KvmMachine, MAX_CPUS } from '../machine/kvm-machine';
import { parseGuestChecks, renderSmokeReport, smokeExitCode } from '../machine/smoke-report';
import { summarizeUnit } from '../machine/unit-summary';
import { setCommandExitCode } from './exit-code';
import { TraceFile } from './trace-file';

export interface SmokeCommandOptions {
  kernel: string;
  iommu: string;
  deviceSocket?: string;
  timeout: string;
  trace?: string;
  ram: string;
  smp?: string;
  append?: string;
  initrd?: string;
  snapshotOnFault?: string;
}

export interface SmokeIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}

export function registerSmokeCommand(program: Command): void {
  program
    .command('smoke')
    .description(
      "boot a Multiboot guest (e.g. kvm-unit-tests' intel-iommu.flat) on a KVM machine with the VT-d unit at 0xfed90000 and edu at 00:04.0, pass its serial output through, and report its checks, what it programmed into the unit and its faults; the exit code follows the guest's status",
    )
    .requiredOption('--kernel <file>', "the Multiboot image (ELF or a.out kludge), as QEMU's -kernel")
    .option('--iommu <props>', "intel-iommu properties as QEMU takes them, e.g. 'caching-mode=on,aw-bits=48'", '')
    .option(
      '--device-socket <path>',
      'use the vfio-user device served on this UNIX socket (e.g. `viommu serve --device dma-engine`) at 00:04.0 in place of the in-process edu',
    )
    .option('--timeout <seconds>', 'stop the guest after this long and report where it was', '60')
    .option(
      '--trace <file>',
      "write events as JSON lines: the unit's (register writes, descriptors, translations, faults, interrupts sent) and the machine's (interrupt requests, deliveries, DMA, device errors); docs/trace.md",
    )
    .option('--ram <MiB>', 'guest RAM in MiB', '256')
    .option('--smp <cpus>', `vCPUs, 1 to ${MAX_CPUS} (kvm-unit-tests' own configuration of this test uses 4)`, '1')
    .option('--append <cmdline>', "the guest command line, as QEMU's -append")
    .option('--snapshot-on-fault <dir>', 'write a snapshot of each DMA translation fault (at most 16) into this directory, for `viommu explain FILE`')
    .option('--initrd <file>', "a Multiboot module, as QEMU's -initrd (kvm-unit-tests reads KEY=VALUE environment lines from it)")
    .action(async (options: SmokeCommandOptions) => {
      setCommandExitCode(await runSmoke(options, { stdout: process.stdout, stderr: process.stderr }));
    });
}

/** Runs the guest and prints its output and the report; resolves to the exit code. Bad options throw. */
export async function runSmoke(options: SmokeCommandOptions, io: SmokeIo): Promise<number> {
  const timeoutSeconds = Number(options.timeout);
  if (!Number.isFinite(timeoutSeconds) || timeoutSeconds <= 0) throw new Error(`--timeout ${options.timeout}: a positive number of seconds`);
  const ramMiB = Number(options.ram);
  if (!Number.isInteger(ramMiB) || ramMiB < 16 || ramMiB > 3072) throw new Error(`--ram ${options.ram}: a whole number of MiB from 16 to 3072`);
  const cpus = Number(options.smp ?? '1');
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_CPUS) throw new Error(`--smp ${options.smp}: a whole number of vCPUs from 1 to ${MAX_CPUS}`);
  const image = readFile(options.kernel, '--kernel');
  const modules = options.initrd === undefined ? [] : [{ bytes: readFile(options.initrd, '--initrd'), commandLine: options.initrd }];
  const snapshots = options.snapshotOnFault === undefined ? undefined : new FaultSnapshots(options.snapshotOnFault);
  const trace = options.trace === undefined ? undefined : TraceFile.open(options.trace);
  const created = await KvmMachine.create({
    iommu: options.iommu,
    ramBytes: ramMiB << 20,
    cpus,
    ...(options.deviceSocket !== undefined ? { deviceSocket: options.deviceSocket } : {}),
    onSerialOutput: (byte) => io.stdout.write(Buffer.of(byte)),
    // One clock for the whole file: the file's, not the machine's (which starts later, when the machine exists).
    ...(trace ? { onEvent: trace.write } : {}),
  }).catch((error: Error) => {
    trace?.finish(io.stderr, 'smoke');
    throw new Error(options.deviceSocket !== undefined ? `--device-socket ${options.deviceSocket}: ${error.message}` : error.message);
  });
  if (!created.machine) {
    trace?.finish(io.stderr, 'smoke');
    throw new Error(`KVM cannot run the guest here: ${created.reason}`);
  }
  const machine = created.machine;
  snapshots?.watch(machine.unit, machine.testbed.memory, `viommu smoke ${path.basename(options.kernel)}`);
  try {
    machine.load(image, { ...(options.append !== undefined ? { commandLine: options.append } : {}), modules });
    const outcome = await machine.run(timeoutSeconds * 1000);
    const sids = machine.placedFunctions.map((fn) => fn.devfn);
    io.stdout.write(
      renderSmokeReport({
        image: options.kernel,
        iommu: options.iommu,
        timeoutMs: timeoutSeconds * 1000,
        checks: parseGuestChecks(Buffer.from(machine.serialOutput).toString('latin1')),
        unit: summarizeUnit(machine.unit, sids),
        outcome,
        deviceErrors: machine.deviceErrors,
        unclaimedMmio: machine.unclaimedMmio,
        unshadowed: machine.unshadowedMappings(),
        ...(options.deviceSocket !== undefined ? { deviceSocket: options.deviceSocket } : {}),
      }),
    );
    if (snapshots !== undefined) io.stdout.write(`fault snapshots: ${snapshots.summary()}\n`);
    trace?.write({ kind: 'end', end: outcome.end });
    return smokeExitCode(outcome.end);
  } finally {
    machine.close();
    trace?.finish(io.stderr, 'smoke');
  }
}

function readFile(file: string, option: string): Uint8Array {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new Error(`${option} ${file}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
}
