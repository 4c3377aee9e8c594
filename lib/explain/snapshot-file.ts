/** Fault snapshot files: a snapshot's JSON text (lib/vtd/unit-snapshot.ts) written to and read from disk. */

import * as fs from 'node:fs';
import { SnapshotError, parseSnapshot, serializeSnapshot, type UnitSnapshot } from '../vtd/unit-snapshot';

export function writeSnapshot(file: string, snapshot: UnitSnapshot): void {
  fs.writeFileSync(file, serializeSnapshot(snapshot));
}

/** Reads and checks a snapshot file; a SnapshotError says what is wrong with it, or that it cannot be read. */
export function readSnapshot(file: string): UnitSnapshot {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new SnapshotError(
      `${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'a directory, not a snapshot file' : (error as Error).message}`,
    );
  }
  return parseSnapshot(text, file);
}
