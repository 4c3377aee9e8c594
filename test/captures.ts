/** The recorded vfio-user sessions in ../shared/captures (or $VIOMMU_CAPTURES): where they are and how to read them. */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** dist/test -> the repository's parent, where `shared/captures` lives next to the repository. */
export const CAPTURES = process.env.VIOMMU_CAPTURES ?? path.resolve(__dirname, '../../../shared/captures');

export const capturesPresent = fs.existsSync(CAPTURES);

/** One message as the capture README describes its JSON lines. */
export interface CaptureRecord {
  dir: 'c2s' | 's2c';
  seq: number;
  chan: 'main' | 'twin';
  msg_id: number;
  cmd: number;
  cmd_name: string;
  flags: number;
  error: number;
  size: number;
  nfds: number;
  fds?: { index: number; kind: string }[];
  hex: string;
}

/** The capture files, sorted by name (empty when the captures are not there). */
export function captureFiles(): string[] {
  return capturesPresent ? fs.readdirSync(CAPTURES).filter((file) => file.endsWith('.jsonl')).sort() : [];
}

export function readCapture(file: string): CaptureRecord[] {
  return fs
    .readFileSync(path.join(CAPTURES, file), 'utf8')
    .split('\n')
    .filter((line) => line.trim().length > 0)
    .map((line) => JSON.parse(line) as CaptureRecord);
}

/** The raw bytes of a recorded message. */
export function captureBytes(record: CaptureRecord): Uint8Array {
  return Uint8Array.from(Buffer.from(record.hex, 'hex'));
}
