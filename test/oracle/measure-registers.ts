/** Measures QEMU's VT-d register reset values per intel-iommu configuration; `node dist/test/oracle/measure-registers.js`. */
import { QemuQtest, qemuAvailability, type QemuQtestOptions } from './qemu';

export const DMAR_BASE = 0xfed90000;

/** Register names by offset, for the table only (QEMU 7.2: IRO = 0xf0, FRO = 0x220, one fault record). */
export const VTD_REGISTER_NAMES: Readonly<Record<number, string>> = {
  0x00: 'VER',
  0x08: 'CAP',
  0x10: 'ECAP',
  0x18: 'GCMD',
  0x1c: 'GSTS',
  0x20: 'RTADDR',
  0x28: 'CCMD',
  0x34: 'FSTS',
  0x38: 'FECTL',
  0x3c: 'FEDATA',
  0x40: 'FEADDR',
  0x44: 'FEUADDR',
  0x58: 'AFLOG',
  0x64: 'PMEN',
  0x68: 'PLMBASE',
  0x6c: 'PLMLIMIT',
  0x70: 'PHMBASE',
  0x78: 'PHMLIMIT',
  0x80: 'IQH',
  0x88: 'IQT',
  0x90: 'IQA',
  0x9c: 'ICS',
  0xa0: 'IECTL',
  0xa4: 'IEDATA',
  0xa8: 'IEADDR',
  0xac: 'IEUADDR',
  0xb0: 'IQERCD',
  0xb8: 'IRTA',
  0xc0: 'PQH',
  0xc8: 'PQT',
  0xd0: 'PQA',
  0xdc: 'PRS',
  0xe0: 'PECTL',
  0xe4: 'PEDATA',
  0xe8: 'PEADDR',
  0xec: 'PEUADDR',
  0xf0: 'IVA',
  0xf8: 'IOTLB',
  0x100: 'MTRRCAP',
  0x220: 'FRCD0 lo',
  0x228: 'FRCD0 hi',
  0x230: 'FRCD1 lo (past NFR)',
};

export interface MeasuredConfiguration {
  label: string;
  options: QemuQtestOptions;
}

export const MEASURED_CONFIGURATIONS: readonly MeasuredConfiguration[] = [
  { label: 'default', options: {} },
  { label: 'caching-mode=on', options: { iommuProps: 'caching-mode=on' } },
  { label: 'aw-bits=48', options: { iommuProps: 'aw-bits=48' } },
  { label: 'x-scalable-mode=on', options: { iommuProps: 'x-scalable-mode=on' } },
  { label: 'intremap=off', options: { iommuProps: 'intremap=off' } },
  { label: 'intremap=on', options: { iommuProps: 'intremap=on' } },
  { label: 'intremap=on, kernel-irqchip=split', options: { iommuProps: 'intremap=on', machine: 'q35,kernel-irqchip=split' } },
  { label: 'device-iotlb=on', options: { iommuProps: 'device-iotlb=on' } },
  { label: 'pt=off', options: { iommuProps: 'pt=off' } },
];

/** The 8-byte offsets read with readq; every 4-byte offset inside them is also read with readl. */
export function measuredQwordOffsets(): number[] {
  const offsets: number[] = [];
  for (let offset = 0x00; offset <= 0x100; offset += 8) offsets.push(offset);
  offsets.push(0x220, 0x228, 0x230);
  return offsets;
}

export interface RegisterMeasurement {
  label: string;
  /** readq value by 8-aligned offset. */
  qwords: Map<number, bigint>;
  /** readl value by 4-aligned offset. */
  dwords: Map<number, number>;
  stderr: string;
}

export async function measureConfiguration(configuration: MeasuredConfiguration): Promise<RegisterMeasurement> {
  const qemu = await QemuQtest.start(configuration.options);
  try {
    const qwords = new Map<number, bigint>();
    const dwords = new Map<number, number>();
    for (const offset of measuredQwordOffsets()) {
      qwords.set(offset, await qemu.readq(DMAR_BASE + offset));
      dwords.set(offset, await qemu.readl(DMAR_BASE + offset));
      dwords.set(offset + 4, await qemu.readl(DMAR_BASE + offset + 4));
    }
    return { label: configuration.label, qwords, dwords, stderr: qemu.stderrText.trim() };
  } finally {
    await qemu.close();
  }
}

function hex64(value: bigint): string {
  return `0x${value.toString(16).padStart(16, '0')}`;
}

/** readl pairs that do not equal the halves of the readq at the same place (registers with 4-byte-only behaviour). */
export function splitReadMismatches(measurement: RegisterMeasurement): string[] {
  const notes: string[] = [];
  for (const [offset, qword] of measurement.qwords) {
    const low = measurement.dwords.get(offset) ?? 0;
    const high = measurement.dwords.get(offset + 4) ?? 0;
    if (BigInt(low) !== (qword & 0xffffffffn) || BigInt(high) !== qword >> 32n) {
      notes.push(
        `0x${offset.toString(16)}: readq ${hex64(qword)}, readl 0x${high.toString(16).padStart(8, '0')}_${low.toString(16).padStart(8, '0')} (high_low)`,
      );
    }
  }
  return notes;
}

/** One markdown table: readq values, default in full and other configurations only where they differ. */
export function renderMarkdown(measurements: readonly RegisterMeasurement[]): string {
  const [baseline, ...others] = measurements;
  if (baseline === undefined) return '';
  const lines: string[] = [];
  lines.push(`| offset | register | ${measurements.map((m) => m.label).join(' | ')} |`);
  lines.push(`|---|---|${measurements.map(() => '---').join('|')}|`);
  for (const offset of measuredQwordOffsets()) {
    const base = baseline.qwords.get(offset) ?? 0n;
    const cells = others.map((m) => {
      const value = m.qwords.get(offset) ?? 0n;
      return value === base ? '=' : `**${hex64(value)}**`;
    });
    const halves = [VTD_REGISTER_NAMES[offset], VTD_REGISTER_NAMES[offset + 4]];
    // A name alone means a 64-bit register or one in the low half; `- / X` marks a register in the high half.
    const name = halves[1] === undefined ? (halves[0] ?? '') : `${halves[0] ?? '-'} / ${halves[1]}`;
    lines.push(`| 0x${offset.toString(16).padStart(3, '0')} | ${name} | ${hex64(base)} | ${cells.join(' | ')} |`);
  }
  lines.push('');
  for (const measurement of measurements) {
    const mismatches = splitReadMismatches(measurement);
    lines.push(
      `- ${measurement.label}: readl halves ${mismatches.length === 0 ? 'equal readq everywhere' : `differ at ${mismatches.join('; ')}`}` +
        (measurement.stderr.length > 0 ? `; QEMU stderr: \`${measurement.stderr.replace(/\n/g, ' ')}\`` : ''),
    );
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const availability = qemuAvailability();
  if (!availability.available) {
    console.error(`cannot measure: ${availability.reason}`);
    process.exitCode = 2;
    return;
  }
  const measurements: RegisterMeasurement[] = [];
  for (const configuration of MEASURED_CONFIGURATIONS) measurements.push(await measureConfiguration(configuration));
  console.log(`Measured with ${availability.version}, DMAR base 0x${DMAR_BASE.toString(16)}, readq of each offset.\n`);
  console.log(renderMarkdown(measurements));
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exitCode = 1;
  });
}
