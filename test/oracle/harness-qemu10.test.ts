/**
 * The harness's QEMU 10.0 parts that need no QEMU: the retried first qtest line (QEMU 10 drops lines sent before its
 * chardev opens), quirks the unit cannot act on yet (excused only within their fields, and only with compat),
 * page-table entries compared bit by bit, and the spec-mode properties against 10.0.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encodeBig } from '../../lib/vtd/bitfield';
import { quirkRegisterMask, quirksFor } from '../../lib/vtd/compat-quirks';
import { vtdConfigFromString } from '../../lib/vtd/config';
import { FIRST_STAGE_4K_LEAF, FIRST_STAGE_TABLE_ENTRY } from '../../lib/vtd/structures';
import { ChildQtestPeer } from './child-qtest';

/** A qtest stand-in that ignores every line for `deafMs`, then answers endianness and reads (QEMU 10 before OPENED). */
function deafServer(deafMs: number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-deaf-'));
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'server.js');
  fs.writeFileSync(
    file,
    `
    const started = Date.now();
    let buffered = '';
    let ignored = 0;
    process.stdin.on('data', (chunk) => {
      buffered += chunk;
      let at;
      while ((at = buffered.indexOf('\\n')) >= 0) {
        const line = buffered.slice(0, at).trim();
        buffered = buffered.slice(at + 1);
        if (Date.now() - started < ${deafMs}) { ignored++; continue; }
        if (line === 'endianness') process.stdout.write('OK little\\n');
        else if (line.startsWith('readb')) process.stdout.write('OK 0x' + ignored.toString(16) + '\\n');
        else process.stdout.write('FAIL\\n');
      }
    });
    process.stdin.on('end', () => process.exit(0));
  `,
  );
  return file;
}

describe('differential harness: QEMU 10.0 parts', function () {
  this.timeout(20_000);

  it('resends the first qtest line until the peer answers, and every later answer belongs to its own command', async () => {
    const server = deafServer(400);
    const peer = await ChildQtestPeer.startChild({ name: 'deaf', command: process.execPath, args: [server], openRetryMs: 50, exitGraceMs: 1000 });
    try {
      // The handshake's lines were dropped (several) or answered and drained: the next answer is this command's.
      const dropped = await peer.readb(0);
      assert.ok(dropped >= 2, `lines were dropped before the peer listened (${dropped})`);
      assert.equal(await peer.send('endianness'), 'OK little');
      assert.equal(await peer.readb(0), dropped);
    } finally {
      await peer.close();
    }
  });

  it('without openRetryMs a peer that drops the first line is reported as not starting', async () => {
    const server = deafServer(400);
    await assert.rejects(
      ChildQtestPeer.startChild({ name: 'deaf', command: process.execPath, args: [server], startTimeoutMs: 800, exitGraceMs: 100 }),
      /failed to start/,
    );
  });

  it('compares page-table entries read back by their fields: the A/D quirks name A and D only', () => {
    assert.equal(quirkRegisterMask('first-stage-flags-written-only-when-all-clear', 'FS_4K_LEAF'), encodeBig(FIRST_STAGE_4K_LEAF, { A: 1, D: 1 }));
    assert.equal(quirkRegisterMask('first-stage-rights-checked-per-level', 'FS_TABLE_ENTRY'), encodeBig(FIRST_STAGE_TABLE_ENTRY, { A: 1 }));
    assert.equal(quirkRegisterMask('first-stage-flags-written-only-when-all-clear', 'FS_TABLE_ENTRY'), 0n);
  });

  it("compat=qemu-10.0 has 10.0's quirks, not 7.2's that 10.0 dropped, and defaults to aw-bits=48 like QEMU 10", () => {
    const ten = quirksFor(vtdConfigFromString('compat=qemu-10.0'));
    assert.ok(ten.has('first-stage-rights-checked-per-level') && ten.has('frcd-pv-ffff-without-pasid'));
    assert.ok(!ten.has('interrupt-remapping-faults-not-recorded') && !ten.has('iec-descriptor-reserved-bits-ignored'));
    assert.ok(!quirksFor(vtdConfigFromString('compat=qemu-7.2')).has('first-stage-rights-checked-per-level'));
    assert.equal(vtdConfigFromString('compat=qemu-10.0')['aw-bits'], 48);
    assert.equal(vtdConfigFromString('compat=qemu-7.2')['aw-bits'], 39);
  });
});
