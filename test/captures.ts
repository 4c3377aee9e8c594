/** The recorded vfio-user sessions in test/fixtures/captures (or $VIOMMU_CAPTURES): where they are and how to read them. */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** dist/test -> the repository's test/fixtures/captures: copies of the shared captures, so a clone on its own replays them. */
export const CAPTURES = process.env.VIOMMU_CAPTURES ?? path.resolve(__dirname, '../../test/fixtures/captures');

export const capturesPresent = fs.existsSync(CAPTURES);

/** Why the capture-dependent tests cannot run here; undefined when they can. */
export const capturesMissingReason: string | undefined = capturesPresent
  ? undefined
  : `the vfio-user captures are not at ${CAPTURES} (test/fixtures/captures in the repository; VIOMMU_CAPTURES names another folder of *.jsonl captures)`;

// Said once, when the first capture-dependent test file is loaded, so that no test skips without a word.
if (capturesMissingReason !== undefined) console.log(`note: ${capturesMissingReason}: the tests that replay them skip`);

/** Skips the suite (in `before`) or the test, printing why, when the captures are not there. */
export function skipWithoutCaptures(context: Mocha.Context): void {
  if (capturesMissingReason === undefined) return;
  console.log(`      skipped: ${capturesMissingReason}`);
  context.skip();
}

/** Skips a test that needs one capture file, printing why, when that file is not there. */
export function skipWithoutCaptureFile(context: Mocha.Context, file: string): void {
  skipWithoutCaptures(context);
  if (fs.existsSync(path.join(CAPTURES, file))) return;
  console.log(`      skipped: ${file} is not in ${CAPTURES}`);
  context.skip();
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

/** The capture files, sorted by name (empty when the captures are not there). */
export function captureFiles(): string[] {
  return capturesPresent
    ? fs
        .readdirSync(CAPTURES)
        .filter((file) => file.endsWith('.jsonl'))
        .sort()
    : [];
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
