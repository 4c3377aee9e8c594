/** Snapshot files: a round trip keeps everything; a bad or foreign file is refused with an error that says what is wrong. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readSnapshot, writeSnapshot } from '../../lib/explain/snapshot-file';
import {
  SnapshotError,
  configString,
  parseSnapshot,
  restoreSnapshot,
  serializeSnapshot,
  takeSnapshot,
  type UnitSnapshot,
} from '../../lib/vtd/unit-snapshot';
import { vtdConfigFromString } from '../../lib/vtd/config';
import { SID } from '../vtd/unit-guest';
import { NESTED_IOVA, NESTED_PASID, nestedGuest } from './fault-guests';

function nestedSnapshot(): UnitSnapshot {
  const { guest } = nestedGuest({ unmappedTableLevel: 2 });
  const request = { sid: SID, iova: BigInt(NESTED_IOVA), write: true, pasid: NESTED_PASID, supervisor: false, execute: false };
  const live = guest.unit.translate(request);
  assert.equal(live.ok, false);
  return takeSnapshot(guest.unit, guest.memory, request, { observed: live.ok ? undefined : live, source: 'snapshot-file test' });
}

describe('explain: snapshot files', () => {
  let directory: string;
  beforeEach(() => (directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-snapshot-'))));
  afterEach(() => fs.rmSync(directory, { recursive: true, force: true }));

  it('reads back what it wrote: configuration, registers, request, observed fault and every page', () => {
    const snapshot = nestedSnapshot();
    const file = path.join(directory, 'nested.json');
    writeSnapshot(file, snapshot);
    const read = readSnapshot(file);
    assert.deepEqual(read, snapshot);
    assert.ok(read.observed !== undefined && 'fault' in read.observed);
    assert.equal(read.observed.fault.reason, 0x76);
    assert.equal(typeof read.observed.fault.entryAddress, 'number');
    assert.equal(read.registers.translationEnabled, true);
    assert.equal(read.registers.rtaddr & 0xc00n, 0x400n, 'RTADDR.TTM as latched: scalable');
    // The pages the walk read: root, context, PASID directory and table, the second-stage tables, two first-stage tables.
    assert.ok(read.pages.size >= 8, `${read.pages.size} pages`);
  });

  it('spells out every property, so that the configuration round-trips', () => {
    for (const text of ['', 'aw-bits=39,caching-mode=on', 'x-scalable-mode=on,x-flts=on,aw-bits=48,x-pasid-mode=on,x-nested=on', 'compat=qemu-7.2']) {
      const config = vtdConfigFromString(text);
      assert.deepEqual(vtdConfigFromString(configString(config)), config, text);
    }
  });

  const corruptions: Array<[string, (text: string) => string, RegExp]> = [
    ['text that is not JSON', () => 'not json {', /: not a viommu fault snapshot \(not JSON: /],
    [
      'JSON of another kind',
      () => JSON.stringify({ name: 'viommu', version: '1.0.0' }),
      /: not a viommu fault snapshot \(format null, expected 'viommu-fault-snapshot'\)/,
    ],
    ['another version', (text) => text.replace('"version": 2', '"version": 99'), /: snapshot version 99; this viommu reads versions 1 and 2/],
    [
      'an observed fault at a stage that does not exist',
      (text) => text.replace(/"stage": "second-stage"/, '"stage": "third-stage"'),
      /: observed\.fault\.stage should be request, root, context, pasid-directory, pasid-table, first-stage, second-stage, output, found "third-stage"/,
    ],
    [
      'an observed entry address that is not hex',
      (text) => text.replace(/"entryAddress": "0x[0-9a-f]+"/, '"entryAddress": 12'),
      /: observed\.fault\.entryAddress should be a hex number below 0x[0-9a-f]+, found 12/,
    ],
    [
      'a version 2 observed fault without its record',
      (text) => text.replace(/"fault": \{[^}]*\},/, '"reason": 118,'),
      /: observed\.fault should be an object, found nothing/,
    ],
    [
      'a page cut short',
      (text) => text.replace(/"data": "[A-Za-z0-9+/]{8}/, '"data": "'),
      /: pages\[0\]\.data should be 4096 bytes in base64, found/,
    ],
    [
      'a page address that is not aligned',
      (text) => text.replace(/"address": "0x([0-9a-f]+)000"/, '"address": "0x$1008"'),
      /: pages\[0\]\.address should be a 4 KiB-aligned address/,
    ],
    [
      'a request without its IOVA',
      (text) => text.replace(/"iova": "0x[0-9a-f]+",/, ''),
      /: request\.iova should be a hex number below 0x10000000000000000, found nothing/,
    ],
    [
      'a requester id out of range',
      (text) => text.replace(/"sid": \d+/, '"sid": 70000'),
      /: request\.sid should be an integer from 0 to 65535, found 70000/,
    ],
    ['registers missing', (text) => text.replace(/"registers": \{[^}]*\},/, ''), /: registers should be an object, found nothing/],
  ];
  for (const [what, corrupt, message] of corruptions) {
    it(`refuses ${what} with a SnapshotError that says so`, () => {
      const file = path.join(directory, 'bad.json');
      const text = corrupt(serializeSnapshot(nestedSnapshot()));
      fs.writeFileSync(file, text);
      assert.throws(
        () => readSnapshot(file),
        (error: unknown) => {
          assert.ok(error instanceof SnapshotError, String(error));
          assert.equal(error.code, 'ERR_SNAPSHOT');
          assert.ok(error.message.startsWith(file), error.message);
          assert.match(error.message, message);
          return true;
        },
      );
    });
  }

  it('reads a version 1 file, whose observed fault is its reason and level only, and writes it back as version 1', () => {
    const file = JSON.parse(serializeSnapshot(nestedSnapshot())) as Record<string, unknown>;
    const summary = { reason: 0x76, level: 2, recording: 'recorded' };
    const older = JSON.stringify({ ...file, version: 1, observed: summary });
    const read = parseSnapshot(older, 'older.json');
    assert.deepEqual(read.observed, summary);
    const written = serializeSnapshot(read);
    assert.equal((JSON.parse(written) as { version: unknown }).version, 1);
    assert.deepEqual(parseSnapshot(written), read);
    // A version 1 file has no record to read.
    assert.throws(
      () => parseSnapshot(JSON.stringify({ ...file, version: 1 }), 'mixed.json'),
      /mixed\.json: observed\.reason should be an integer from 0 to 255, found nothing/,
    );
  });

  it('names a missing file and a directory', () => {
    assert.throws(() => readSnapshot(path.join(directory, 'none.json')), /none\.json: no such file/);
    assert.throws(() => readSnapshot(directory), /a directory, not a snapshot file/);
  });

  it('refuses a configuration the unit refuses, on restore', () => {
    const text = serializeSnapshot(nestedSnapshot()).replace(/"config": "[^"]*"/, '"config": "aw-bits=40"');
    const snapshot = parseSnapshot(text, 'edited.json');
    assert.throws(() => restoreSnapshot(snapshot), /the snapshot's unit configuration 'aw-bits=40' is refused: /);
  });
});
