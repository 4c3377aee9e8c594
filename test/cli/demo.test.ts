/** `viommu demo` as a user runs it: a separate process that starts its own DMA engine server and exits 0. */
import { strict as assert } from 'node:assert';
import { runViommu } from '../vfio-user/cli-process';

describe('cli: viommu demo', function () {
  this.timeout(60_000);

  it('runs the DMA engine behind the unit in legacy mode, prints what the guest sees, and exits 0', async () => {
    const result = await runViommu(['demo']);
    assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
    const out = result.stdout;
    for (const pattern of [
      /^viommu demo: the DMA engine runs as a vfio-user server in process \d+ /m,
      /^\[legacy \(caching mode on, 4-level second stage, queued invalidation\)\]$/m,
      /^ {2}guest maps {4}SID 00:04\.0 -> DID 1, 4-level second stage: IOVA 0xa000000\+0x2000 -> GPA 0x2000000 \(rw\)/m,
      /^ {2}device table {2}\S/m,
      /^ {2}DMA {11}256 bytes IOVA 0xa000000 -> engine -> IOVA 0xa001800, .*: bytes match; 2 MSIs 0xfee00000\/0x41 delivered$/m,
      /^ {2}fault {9}engine reads IOVA 0xb000000 \(unmapped\): device got errno 14; FSTS 0x2 \(PPF\)$/m,
      /^ {16}FRCD\[0\] read by 00:04\.0 at IOVA 0xb000000, reason 0x6 READ \(PTE Read access is not set\)$/m,
      /^ {16}a write there afterwards: blocked, FRCD\[0\] write by 00:04\.0 at IOVA 0xa001000, reason 0x5 WRITE/m,
      /^ {2}result {8}all checks passed$/m,
      /^scalable modes: /m,
      /^viommu demo: every mode passed$/m,
    ]) {
      assert.match(out, pattern);
    }
    assert.doesNotMatch(out, /CHECK FAILED/);
    assert.equal(result.stderr, '');
  });
});
