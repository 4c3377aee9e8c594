/**
 * Figures of the KVM machine (lib/machine): a whole kvm-unit-tests run against QEMU's, process to process, and the
 * cost of a guest MMIO exit to an edu served by another process against one handled in this process.
 *
 * The harness has no skip: a figure whose prerequisites (KVM, QEMU, the kvm-unit-tests guest) are missing says why
 * in its title, and its rounds return NaN for both sides, the marker bench/run.ts itself writes for a figure it
 * could not measure (NaN rates and ratio; it is listed under "targets not met", never counted as met).
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { EDU_IDENTIFICATION } from '../../lib/devices/edu';
import { KvmMachine } from '../../lib/machine/kvm-machine';
import { GuestCode, multibootImage } from '../../test/machine/guest-images';
import { INTEL_IOMMU_FLAT, kvmUnusableReason, peerGuestMissingReason } from '../../test/machine/kvm-support';
import { ServeProcess } from '../../test/vfio-user/cli-process';
import type { Figure } from '../harness';
import { tail, timedProcess, type ProcessRun } from '../timed-process';

/** dist/bench/figures -> the repository's bin/viommu.js. */
const VIOMMU_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'viommu.js');
const QEMU = 'qemu-system-x86_64';
const IOMMU_PROPERTIES = 'intremap=on,eim=off';
/** A guest run that takes longer than this is killed and the figure fails (a hang, not a slow run). */
const RUN_TIMEOUT_MS = 120_000;

/** Where the machine's firmware puts edu's BAR0 (the first BAR of the PCI window), and edu's devfn. */
const EDU_BAR0 = 0xc000_0000;
const EDU_DEVFN = 4 << 3;
/** MMIO reads of the long guest of machine.b; the short guest does 1, and the difference is what is timed. */
const READS = 20_000;

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`machine bench: ${what}`);
}

/** Runs `setup` once, on first use. */
function lazily<T>(setup: () => Promise<T>): () => Promise<T> {
  let value: Promise<T> | undefined;
  return () => (value ??= setup());
}

/** A figure that could not be measured here: says why in its title, and every round reports NaN for both sides. */
function notMeasured(figure: Figure, reason: string): Figure {
  console.log(`${figure.id}: not measured: ${reason}`);
  return {
    ...figure,
    title: `NOT MEASURED (${reason}): ${figure.title}`,
    measure: () => Promise.resolve({ subject: NaN, baseline: NaN }),
  };
}

const SMOKE_ARGS = [VIOMMU_BIN, 'smoke', '--kernel', INTEL_IOMMU_FLAT, '--iommu', IOMMU_PROPERTIES];
const QEMU_ARGS = [
  '-accel',
  'kvm',
  '-cpu',
  'host,-arch-capabilities',
  '-M',
  'q35,kernel-irqchip=split',
  '-smp',
  '1',
  '-display',
  'none',
  '-serial',
  'stdio',
  '-no-reboot',
  '-device',
  'isa-debug-exit,iobase=0xf4,iosize=0x4',
  '-device',
  `intel-iommu,${IOMMU_PROPERTIES}`,
  '-device',
  'edu',
  '-kernel',
  INTEL_IOMMU_FLAT,
];

/** One `viommu smoke` of the flat; its exit code must be 0 (the guest passed and wrote 0 to isa-debug-exit). */
async function oursOnce(): Promise<number> {
  const run = await timedProcess(process.execPath, SMOKE_ARGS);
  check(run.code === 0, `viommu smoke exited with ${run.code ?? run.signal}:\n${tail(run.output)}`);
  return run.seconds;
}

/** One QEMU run of the flat: exit code 1 is the guest's 0 on isa-debug-exit ((0 << 1) | 1). */
async function qemuOnce(): Promise<ProcessRun> {
  return timedProcess(QEMU, QEMU_ARGS);
}

/** machine.a: the whole of kvm-unit-tests' intel-iommu.flat, our `viommu smoke` process against QEMU's. */
function kvmUnitTestsFigure(): Figure {
  const figure: Figure = {
    id: 'machine.a',
    title: `one run of kvm-unit-tests' intel-iommu.flat (${IOMMU_PROPERTIES}, edu in-process), wall time of the process from spawn to exit`,
    subject: `node bin/viommu.js smoke --kernel intel-iommu.flat --iommu ${IOMMU_PROPERTIES} (exit code 0)`,
    baseline: `${QEMU} -accel kvm -cpu host,-arch-capabilities -M q35,kernel-irqchip=split -device intel-iommu,${IOMMU_PROPERTIES} -device edu -kernel intel-iommu.flat (exit code 1)`,
    direction: 'cost',
    target: 1.0,
    unit: 'runs',
    measure: () => Promise.reject(new Error('unreachable')),
  };
  const missing = kvmUnusableReason() ?? peerGuestMissingReason() ?? qemuMissingReason();
  if (missing !== undefined) return notMeasured(figure, missing);
  // One untimed run of each first: the page cache holds node, QEMU, its firmware and the flat before any timing.
  let qemuUnusable: string | undefined;
  const warm = lazily(async () => {
    await oursOnce();
    const run = await qemuOnce();
    if (run.code !== 1)
      qemuUnusable = `QEMU's run of the flat exited with ${run.code ?? run.signal}, not 1: ${tail(run.output, 3).replace(/\n/g, ' | ')}`;
  });
  let round = 0;
  figure.measure = async () => {
    await warm();
    if (qemuUnusable !== undefined) {
      if (round++ === 0) {
        console.log(`machine.a: not measured: ${qemuUnusable}`);
        figure.title = `NOT MEASURED (${qemuUnusable}): ${figure.title}`;
      }
      return { subject: NaN, baseline: NaN };
    }
    // Alternate which side goes first, so neither always runs right after the other's exit.
    const first = round++ % 2 === 0;
    let ours = 0;
    if (first) ours = await oursOnce();
    const qemu = await qemuOnce();
    check(qemu.code === 1, `QEMU exited with ${qemu.code ?? qemu.signal}, not 1:\n${tail(qemu.output)}`);
    if (!first) ours = await oursOnce();
    console.log(`  round ${round}: ours ${ours.toFixed(3)} s, QEMU ${qemu.seconds.toFixed(3)} s`);
    return { subject: 1 / ours, baseline: 1 / qemu.seconds };
  };
  return figure;
}

function qemuMissingReason(): string | undefined {
  const probe = spawnSync(QEMU, ['--version'], { stdio: 'ignore', timeout: 10_000 });
  if (probe.error !== undefined) {
    const code = (probe.error as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? `${QEMU} is not on PATH` : `${QEMU} cannot be run: ${code ?? probe.error.message}`;
  }
  return probe.status === 0 ? undefined : `${QEMU} --version exited with ${probe.status ?? probe.signal}`;
}

/**
 * A guest that enables edu's memory decoding, reads its identification register `reads` times (one MMIO exit each),
 * keeps the last value in EBX and exits with 0.
 */
function readingGuest(reads: number): Uint8Array {
  const code = new GuestCode().pciConfigWrite(EDU_DEVFN, 0x04, 0x0006).readRepeatedly(EDU_BAR0, reads);
  code.bytes.push(0x89, 0xc3); // mov ebx, eax
  return multibootImage(code.exit(0));
}

interface TimedRun {
  readonly ns: number;
  readonly exits: number;
}

/** Builds a machine (untimed), runs `image` on it (timed: machine.run() to its end) and checks what the guest read. */
async function timedGuest(image: Uint8Array, deviceSocket: string | undefined): Promise<TimedRun> {
  const created = await KvmMachine.create(deviceSocket === undefined ? {} : { deviceSocket });
  check(created.machine !== undefined, `KVM machine: ${created.reason}`);
  const machine = created.machine!;
  try {
    machine.load(image);
    const start = process.hrtime.bigint();
    const outcome = await machine.run(RUN_TIMEOUT_MS);
    const ns = Number(process.hrtime.bigint() - start);
    const side = deviceSocket === undefined ? 'in-process edu' : 'served edu';
    check(outcome.end.kind === 'debug-exit' && outcome.end.written === 0, `${side}: the guest ended with ${JSON.stringify(outcome.end)}`);
    check(machine.deviceErrors.size === 0, `${side}: device errors: ${[...machine.deviceErrors.keys()].join('; ')}`);
    const ebx = outcome.registers === undefined ? undefined : Number(outcome.registers.regs.rbx & 0xffff_ffffn);
    check(ebx === EDU_IDENTIFICATION, `${side}: the guest read ${ebx?.toString(16)} from edu's identification register`);
    return { ns, exits: outcome.exits };
  } finally {
    machine.close();
  }
}

/** Nanoseconds per MMIO exit: the long guest's run less the short one's, over the exits it has more. */
async function perExitNs(long: Uint8Array, short: Uint8Array, deviceSocket: string | undefined): Promise<number> {
  const longRun = await timedGuest(long, deviceSocket);
  const shortRun = await timedGuest(short, deviceSocket);
  check(
    longRun.exits - shortRun.exits === READS - 1,
    `the long guest took ${longRun.exits - shortRun.exits} more exits than the short one, not ${READS - 1}`,
  );
  return (longRun.ns - shortRun.ns) / (READS - 1);
}

/** machine.b: a guest MMIO read of edu's BAR0 served by a `viommu serve` process against the in-process edu. */
function mmioExitFigure(): Figure {
  const figure: Figure = {
    id: 'machine.b',
    title:
      `guest MMIO read of edu's identification register (BAR0 + 0), one KVM exit each: (run of ${READS} reads - run of 1 read) / ${READS - 1}, ` +
      'from KvmMachine.run() to its end; a report, not a goal: the target (<= 20) is a generous bound on what a ' +
      'vfio-user REGION_READ round trip to another process (two UNIX-socket messages, two process wake-ups) may add to an exit handled in-process',
    subject: 'edu of `viommu serve --device dma-engine` in another process (KvmMachine deviceSocket), one server reused across rounds',
    baseline: "the in-process edu (KvmMachine's built-in edu)",
    direction: 'cost',
    target: 20,
    unit: 'exits',
    measure: () => Promise.reject(new Error('unreachable')),
  };
  const missing = kvmUnusableReason();
  if (missing !== undefined) return notMeasured(figure, missing);
  const long = readingGuest(READS);
  const short = readingGuest(1);
  const server = lazily(async () => {
    const served = await ServeProcess.start('dma-engine');
    check(served.child.exitCode === null, `viommu serve exited: ${served.stderr}`);
    process.on('exit', () => served.kill());
    // One untimed run of each side: the addon, V8's code for the exit path and the server's warmed up.
    await timedGuest(short, served.socketPath);
    await timedGuest(short, undefined);
    return served;
  });
  let round = 0;
  figure.measure = async () => {
    const served = await server();
    // Alternate which side goes first, as machine.a does.
    const servedFirst = round++ % 2 === 0;
    let remote = 0;
    if (servedFirst) remote = await perExitNs(long, short, served.socketPath);
    const local = await perExitNs(long, short, undefined);
    if (!servedFirst) remote = await perExitNs(long, short, served.socketPath);
    console.log(`  round ${round}: per exit ${(remote / 1000).toFixed(2)} us served, ${(local / 1000).toFixed(2)} us in-process`);
    return { subject: 1e9 / remote, baseline: 1e9 / local };
  };
  return figure;
}

export const MACHINE_FIGURES: Readonly<Record<string, () => Figure>> = {
  'machine.a': kvmUnitTestsFigure,
  'machine.b': mmioExitFigure,
};
