/**
 * Test helper: QEMU 10.0 as a second oracle beside the system's QEMU 7.2. Debian's bookworm-backports build, unpacked
 * by .ci/install-qemu10 into /opt/qemu-10.0 (or wherever $VIOMMU_QEMU10 points: the binary, or the folder it was
 * unpacked into); it runs with `-L` at its own firmware folders, never the system's.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { QemuQtest, type QemuAvailability, type QemuQtestOptions } from './qemu';

/** Where .ci/install-qemu10 unpacks it. */
export const QEMU10_DEFAULT_DIR = '/opt/qemu-10.0';
const BINARY_IN_DIR = path.join('usr', 'bin', 'qemu-system-x86_64');
/** The major.minor this oracle stands for; compat=qemu-10.0 imitates it. */
export const QEMU10_VERSION = '10.0';
/**
 * How often the first qtest line is resent until answered: QEMU 10 drops lines that arrive before its qtest
 * chardev has opened (see ChildQtestOptions.openRetryMs).
 */
const OPEN_RETRY_MS = 250;

export interface Qemu10Availability extends QemuAvailability {
  /** The `-L` folders of its own firmware (share/qemu, share/seabios), when available. */
  dataDirs?: readonly string[];
}

/** The binary: $VIOMMU_QEMU10 (a binary, or a folder holding usr/bin/qemu-system-x86_64), else /opt/qemu-10.0's. */
export function qemu10Binary(): string {
  const given = process.env.VIOMMU_QEMU10;
  if (given === undefined || given === '') return path.join(QEMU10_DEFAULT_DIR, BINARY_IN_DIR);
  return fs.existsSync(given) && fs.statSync(given).isDirectory() ? path.join(given, BINARY_IN_DIR) : given;
}

/** share/qemu and share/seabios next to the binary's bin/ (a Debian package tree), those that exist. */
function dataDirsOf(binary: string): string[] {
  const share = path.join(path.dirname(path.dirname(binary)), 'share');
  return ['qemu', 'seabios'].map((name) => path.join(share, name)).filter((dir) => fs.existsSync(dir));
}

let cached: Qemu10Availability | undefined;

export function qemu10Availability(): Qemu10Availability {
  if (cached !== undefined) return cached;
  const binary = qemu10Binary();
  const install = 'run .ci/install-qemu10, or set VIOMMU_QEMU10 to a QEMU 10.0 qemu-system-x86_64';
  if (!fs.existsSync(binary)) {
    cached = { available: false, binary, reason: `QEMU ${QEMU10_VERSION} is not installed at ${binary} (${install})` };
    return cached;
  }
  const probe = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  const version = probe.stdout?.split('\n')[0]?.trim() ?? '';
  if (probe.error !== undefined || probe.status !== 0) {
    const why = probe.error?.message ?? `exited with ${probe.status}: ${probe.stderr.trim().split('\n').slice(-3).join(' ')}`;
    cached = { available: false, binary, reason: `${binary} --version failed (${why}; a missing library? ${install})` };
  } else if (!new RegExp(`version ${QEMU10_VERSION.replace('.', '\\.')}\\.`).test(version)) {
    cached = { available: false, binary, version, reason: `${binary} is '${version}', not QEMU ${QEMU10_VERSION}.x (${install})` };
  } else {
    const dataDirs = dataDirsOf(binary);
    cached =
      dataDirs.length === 0
        ? { available: false, binary, version, reason: `no share/qemu beside ${binary} for -L (${install})` }
        : { available: true, binary, version, dataDirs };
  }
  return cached;
}

/** Skips the suite (printing why) when QEMU 10 cannot be started. Call in `before`. */
export function skipWithoutQemu10(context: Mocha.Context): void {
  const availability = qemu10Availability();
  if (!availability.available) {
    console.log(`      skipped: ${availability.reason}`);
    context.skip();
  }
}

/** QEMU 10 over qtest: QemuQtest with its binary, its own firmware folders and the retried first command. */
export async function startQemu10(options: Omit<QemuQtestOptions, 'binary'> = {}): Promise<QemuQtest> {
  const availability = qemu10Availability();
  if (!availability.available) throw new Error(`QEMU ${QEMU10_VERSION} is not available: ${availability.reason}`);
  const firmware = (availability.dataDirs ?? []).flatMap((dir) => ['-L', dir]);
  return QemuQtest.start({
    ...options,
    binary: availability.binary,
    label: options.label ?? `qemu-${QEMU10_VERSION}`,
    extraArgs: [...firmware, ...(options.extraArgs ?? [])],
    openRetryMs: options.openRetryMs ?? OPEN_RETRY_MS,
  });
}
