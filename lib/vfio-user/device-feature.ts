/** The data part of DEVICE_FEATURE for the features vfio-user defines: migration, device state, DMA logging. */

import { invalid } from './errors';
import { PayloadReader, PayloadWriter } from './payload-io';
import {
  FEATURE_DMA_LOGGING_CONTROL_LAYOUT,
  FEATURE_DMA_LOGGING_RANGE_LAYOUT,
  FEATURE_DMA_LOGGING_REPORT_LAYOUT,
  FEATURE_MIG_STATE_LAYOUT,
  FEATURE_MIGRATION_LAYOUT,
  MIGRATION_FLAGS,
} from './protocol';

export interface MigrationFeature {
  readonly flags: bigint;
}

export interface MigrationStateFeature {
  /** A MIGRATION_STATES value. */
  readonly deviceState: number;
  /** Unused by vfio-user (migration data travels in MIG_DATA_READ/WRITE); libvfio-user sends 0xffffffff. */
  readonly dataFd: number;
}

export interface DmaLoggingRange {
  readonly iova: bigint;
  readonly length: bigint;
}

export interface DmaLoggingStart {
  readonly pageSize: bigint;
  /** Empty means: log every write. */
  readonly ranges: readonly DmaLoggingRange[];
}

export interface DmaLoggingReport {
  readonly iova: bigint;
  readonly length: bigint;
  readonly pageSize: bigint;
  /** Present in the reply only: one bit per page, in u64 words. */
  readonly bitmap: Uint8Array;
}

function reader(data: Uint8Array, what: string): PayloadReader {
  return new PayloadReader(data, `DEVICE_FEATURE ${what} data`);
}

export function decodeMigrationFeature(data: Uint8Array): MigrationFeature {
  const payload = reader(data, 'MIGRATION');
  payload.requireExactly(FEATURE_MIGRATION_LAYOUT.size);
  const feature = payload.read(FEATURE_MIGRATION_LAYOUT);
  if (feature.flags >= 2n ** 32n) throw invalid('ERR_VFIO_USER_UNKNOWN_FLAGS', `${payload.what}: unknown migration flags`);
  payload.requireKnownFlags(Number(feature.flags), MIGRATION_FLAGS);
  return feature;
}

export function encodeMigrationFeature(feature: MigrationFeature): Uint8Array {
  return new PayloadWriter(FEATURE_MIGRATION_LAYOUT.size).write(FEATURE_MIGRATION_LAYOUT, feature).bytes;
}

export function decodeMigrationStateFeature(data: Uint8Array): MigrationStateFeature {
  const payload = reader(data, 'MIG_DEVICE_STATE');
  payload.requireExactly(FEATURE_MIG_STATE_LAYOUT.size);
  return payload.read(FEATURE_MIG_STATE_LAYOUT);
}

export function encodeMigrationStateFeature(feature: MigrationStateFeature): Uint8Array {
  return new PayloadWriter(FEATURE_MIG_STATE_LAYOUT.size).write(FEATURE_MIG_STATE_LAYOUT, feature).bytes;
}

export function decodeDmaLoggingStart(data: Uint8Array): DmaLoggingStart {
  const payload = reader(data, 'DMA_LOGGING_START');
  payload.requireAtLeast(FEATURE_DMA_LOGGING_CONTROL_LAYOUT.size);
  const control = payload.read(FEATURE_DMA_LOGGING_CONTROL_LAYOUT);
  payload.requireExactly(
    FEATURE_DMA_LOGGING_CONTROL_LAYOUT.size + control.numRanges * FEATURE_DMA_LOGGING_RANGE_LAYOUT.size,
    `num_ranges ${control.numRanges}`,
  );
  const ranges: DmaLoggingRange[] = [];
  for (let i = 0; i < control.numRanges; i++) {
    ranges.push(payload.read(FEATURE_DMA_LOGGING_RANGE_LAYOUT, FEATURE_DMA_LOGGING_CONTROL_LAYOUT.size + i * FEATURE_DMA_LOGGING_RANGE_LAYOUT.size));
  }
  return { pageSize: control.pageSize, ranges };
}

export function encodeDmaLoggingStart(start: DmaLoggingStart): Uint8Array {
  const writer = new PayloadWriter(FEATURE_DMA_LOGGING_CONTROL_LAYOUT.size + start.ranges.length * FEATURE_DMA_LOGGING_RANGE_LAYOUT.size);
  writer.write(FEATURE_DMA_LOGGING_CONTROL_LAYOUT, { pageSize: start.pageSize, numRanges: start.ranges.length });
  start.ranges.forEach((range, i) =>
    writer.write(FEATURE_DMA_LOGGING_RANGE_LAYOUT, range, FEATURE_DMA_LOGGING_CONTROL_LAYOUT.size + i * FEATURE_DMA_LOGGING_RANGE_LAYOUT.size),
  );
  return writer.bytes;
}

/** The request has no bitmap; the reply appends it after the 24-byte struct. */
export function decodeDmaLoggingReport(data: Uint8Array): DmaLoggingReport {
  const payload = reader(data, 'DMA_LOGGING_REPORT');
  payload.requireAtLeast(FEATURE_DMA_LOGGING_REPORT_LAYOUT.size);
  return { ...payload.read(FEATURE_DMA_LOGGING_REPORT_LAYOUT), bitmap: payload.copy(FEATURE_DMA_LOGGING_REPORT_LAYOUT.size) };
}

export function encodeDmaLoggingReport(report: DmaLoggingReport): Uint8Array {
  return new PayloadWriter(FEATURE_DMA_LOGGING_REPORT_LAYOUT.size + report.bitmap.length)
    .write(FEATURE_DMA_LOGGING_REPORT_LAYOUT, report)
    .put(report.bitmap, FEATURE_DMA_LOGGING_REPORT_LAYOUT.size).bytes;
}
