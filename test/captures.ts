/** The recorded vfio-user sessions in test/fixtures/captures (or $VIOMMU_CAPTURES): where they are and how to read them. */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** dist/test -> the repository's test/fixtures/captures: copies of the shared captures, so a clone on its own replays them. */
export const CAPTURES = process.env.VIOMMU_CAPTURES ?? path.resolve(__dirname, '../../test/fixtures/captures');

/**
 * The captures are recorded data kept in the repository, so their absence is a broken checkout (or a wrong
 * $VIOMMU_CAPTURES), not a reason to skip: every test file that replays them fails to load, saying where it looked.
 */
if (!fs.existsSync(CAPTURES)) {
  throw new Error(
    `the vfio-user captures are not at ${CAPTURES}: test/fixtures/captures is part of the repository (VIOMMU_CAPTURES names another folder of *.jsonl captures)`,
  );
}

/** A capture file by name; a missing one fails the test that needs it, saying where it was looked for. */
export function captureFile(file: string): string {
  const at = path.join(CAPTURES, file);
  if (!fs.existsSync(at)) throw new Error(`the capture ${file} is not in ${CAPTURES}`);
  return at;
}

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

/** The capture files, sorted by name. */
export function captureFiles(): string[] {
  return fs
    .readdirSync(CAPTURES)
    .filter((file) => file.endsWith('.jsonl'))
    .sort();
}

export function readCapture(file: string): CaptureRecord[] {
  return fs
    .readFileSync(captureFile(file), 'utf8')
    .split('\n')
    .filter((line) => line.trim().length > 0)
    .map((line) => JSON.parse(line) as CaptureRecord);
}

/** The raw bytes of a recorded message. */
export function captureBytes(record: CaptureRecord): Uint8Array {
  return Uint8Array.from(Buffer.from(record.hex, 'hex'));
}
