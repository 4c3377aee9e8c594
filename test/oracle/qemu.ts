/** Test helper: the two qtest peers of differential tests, real QEMU (QemuQtest) and our model's CLI (ViommuQtest). */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildQtestPeer } from './child-qtest';
import { repositoryRoot } from '../helpers';

export { ChildQtestPeer } from './child-qtest';
export type { QtestPeer, QtestAddress, QtestIrqEvent } from '../../lib/vmm/qtest/client';

/** intel-iommu properties, QEMU's spelling: `"aw-bits=48,caching-mode=on"` or `{ 'aw-bits': 48, 'caching-mode': true }`. */
export type IommuProps = string | Readonly<Record<string, string | number | boolean>>;

export function formatIommuProps(props: IommuProps | undefined): string {
  if (props === undefined) return '';
  if (typeof props === 'string') return props;
  return Object.entries(props)
    .map(([key, value]) => `${key}=${typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value)}`)
    .join(',');
}

/** The QEMU binary: $VIOMMU_QEMU if set, else qemu-system-x86_64 from PATH. */
export function qemuBinary(): string {
  return process.env.VIOMMU_QEMU ?? 'qemu-system-x86_64';
}

export interface QemuAvailability {
  available: boolean;
  binary: string;
  /** First line of `--version`, when it ran. */
  version?: string;
  /** Why it is not available, worded for a skipped test's message. */
  reason?: string;
}

let cachedAvailability: QemuAvailability | undefined;

export function qemuAvailability(): QemuAvailability {
  if (cachedAvailability !== undefined) return cachedAvailability;
  const binary = qemuBinary();
  const probe = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (probe.error !== undefined) {
    const missing = (probe.error as NodeJS.ErrnoException).code === 'ENOENT';
    cachedAvailability = {
      available: false,
      binary,
      reason: missing
        ? `${binary} is not installed (apt-get install -y qemu-system-x86, or set VIOMMU_QEMU)`
        : `${binary} --version failed: ${probe.error.message}`,
    };
  } else if (probe.status !== 0) {
    cachedAvailability = { available: false, binary, reason: `${binary} --version exited with ${probe.status}: ${probe.stderr.trim()}` };
  } else {
    cachedAvailability = { available: true, binary, version: probe.stdout.split('\n')[0]?.trim() ?? '' };
  }
  return cachedAvailability;
}

/** True when QEMU can be started; otherwise qemuAvailability().reason says why (print it when skipping). */
export function qemuAvailable(): boolean {
  return qemuAvailability().available;
}

let haltFirmwarePath: string | undefined;

/**
 * 64 KiB of HLT as the BIOS: the CPU stops at the reset vector, so no firmware DMA or register writes disturb
 * the IOMMU. One file per test process, removed when the process exits.
 */
export function haltFirmware(): string {
  if (haltFirmwarePath !== undefined && fs.existsSync(haltFirmwarePath)) return haltFirmwarePath;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-qemu-'));
  const file = path.join(dir, 'hlt.bin');
  fs.writeFileSync(file, Buffer.alloc(65536, 0xf4));
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  haltFirmwarePath = file;
  return file;
}

export interface QemuQtestOptions {
  iommuProps?: IommuProps;
  /** Extra `-device` values, e.g. `'edu,addr=0x5,dma_mask=0xffffffff'`. */
  devices?: readonly string[];
  /** `-machine` value (default `q35`); e.g. `q35,kernel-irqchip=split`. */
  machine?: string;
  /** Leave out `-device edu,addr=0x4`. */
  withoutEdu?: boolean;
  memory?: string;
  extraArgs?: readonly string[];
  binary?: string;
  commandTimeoutMs?: number;
  startTimeoutMs?: number;
  /** Resend the first qtest command this often until answered (QEMU 10 drops lines sent before its chardev opens). */
  openRetryMs?: number;
  /** Names the peer in messages instead of `qemu` (e.g. `qemu-10.0`). */
  label?: string;
}

/** The argument list for QEMU; exported so that a failing test can print the exact command to rerun by hand. */
export function qemuArguments(options: QemuQtestOptions, firmware: string): string[] {
  const props = formatIommuProps(options.iommuProps);
  const args = ['-machine', options.machine ?? 'q35', '-display', 'none', '-nodefaults', '-m', options.memory ?? '256M'];
  args.push('-bios', firmware, '-device', props.length > 0 ? `intel-iommu,${props}` : 'intel-iommu');
  if (options.withoutEdu !== true) args.push('-device', 'edu,addr=0x4');
  for (const device of options.devices ?? []) args.push('-device', device);
  // Without -qtest-log QEMU logs every command and answer to stderr, which would bury its real error messages.
  args.push(...(options.extraArgs ?? []), '-qtest', 'stdio', '-qtest-log', '/dev/null');
  return args;
}

/** Real QEMU's intel-iommu, driven over `-qtest stdio`. Always `close()` it (in an `after`/`afterEach`). */
export class QemuQtest extends ChildQtestPeer {
  static async start(options: QemuQtestOptions = {}): Promise<QemuQtest> {
    const availability = qemuAvailability();
    const binary = options.binary ?? availability.binary;
    if (options.binary === undefined && !availability.available) {
      throw new Error(`QEMU is not available: ${availability.reason}`);
    }
    return QemuQtest.launch(
      {
        name: `${options.label ?? 'qemu'}(${formatIommuProps(options.iommuProps) || 'default'})`,
        command: binary,
        args: qemuArguments(options, haltFirmware()),
        ...(options.commandTimeoutMs !== undefined ? { commandTimeoutMs: options.commandTimeoutMs } : {}),
        ...(options.startTimeoutMs !== undefined ? { startTimeoutMs: options.startTimeoutMs } : {}),
        ...(options.openRetryMs !== undefined ? { openRetryMs: options.openRetryMs } : {}),
      },
      (child, stderr, opts) => new QemuQtest(child, stderr, opts),
    );
  }
}

export interface ViommuQtestOptions {
  iommuProps?: IommuProps;
  /** Further CLI arguments after `qtest --iommu PROPS`. */
  extraArgs?: readonly string[];
  /** Replaces `node bin/viommu.js qtest ...` entirely (tests of this helper use a stand-in server script). */
  command?: { file: string; args: readonly string[] };
  commandTimeoutMs?: number;
  startTimeoutMs?: number;
}

/** Our model behind `node bin/viommu.js qtest --iommu PROPS`, speaking the same protocol as QEMU. */
export class ViommuQtest extends ChildQtestPeer {
  static async start(options: ViommuQtestOptions = {}): Promise<ViommuQtest> {
    const props = formatIommuProps(options.iommuProps);
    const command = options.command ?? {
      file: process.execPath,
      args: [path.join(repositoryRoot(), 'bin', 'viommu.js'), 'qtest', '--iommu', props, ...(options.extraArgs ?? [])],
    };
    return ViommuQtest.launch(
      {
        name: `viommu(${props || 'default'})`,
        command: command.file,
        args: command.args,
        exitGraceMs: 1000,
        ...(options.commandTimeoutMs !== undefined ? { commandTimeoutMs: options.commandTimeoutMs } : {}),
        ...(options.startTimeoutMs !== undefined ? { startTimeoutMs: options.startTimeoutMs } : {}),
      },
      (child, stderr, opts) => new ViommuQtest(child, stderr, opts),
    );
  }
}

export { repositoryRoot };
