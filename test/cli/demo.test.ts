/** `viommu demo` as a user runs it: a separate process that starts its own DMA engine server, runs every mode and exits 0; a failed check exits non-zero. */
import { strict as assert } from 'node:assert';
import { PassThrough } from 'node:stream';
import { runDemo } from '../../lib/cli/demo';
import { DEMO_TRANSLATIONS, SCALABLE_IOMMU, scenarioMode } from '../../lib/vmm/demo-modes';
import { runViommu } from '../vfio-user/cli-process';

/** The lines of one mode's block: from its heading to its result line. */
function block(out: string, heading: string): string {
  const start = out.indexOf(`[${heading}]`);
  assert.ok(start >= 0, `no block [${heading}] in:\n${out}`);
  const end = out.indexOf('  result ', start);
  return out.slice(start, out.indexOf('\n', end) + 1);
}

function collect(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  let text = '';
  stream.on('data', (chunk: Buffer) => (text += chunk.toString()));
  return { stream, text: () => text };
}

const READ_DMA =
  /^ {2}DMA {11}256 bytes IOVA 0xa000000 -> engine -> IOVA 0xa001800, directly in guest RAM \(shared memory\): bytes match; 2 MSIs 0xfee00000\/0x41 delivered$/m;
const SHADOW =
  /^ {2}device table {2}2 DMA_MAPs of guest RAM \(fd \+ offset\): \[0xa000000, \+0x2000\) \[0xa010000, \+0x1000\); the rest by message$/m;
const UNMAPPED_FAULT = /^ {2}fault {9}engine reads IOVA 0xb000000 \(unmapped\): device got errno 14; FSTS 0x2 \(PPF\)$/m;
const DEVICE_AFTER_UNMAP = /^ {16}device table now: \[0xa000000, \+0x1000\) \[0xa010000, \+0x1000\)$/m;
const PASSED = /^ {2}result {8}all checks passed$/m;

describe('cli: viommu demo', function () {
  this.timeout(60_000);

  it('runs the DMA engine behind the unit in legacy, scalable second-stage, first-stage and nested modes and exits 0', async () => {
    const result = await runViommu(['demo']);
    assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
    const out = result.stdout;
    assert.match(out, /^viommu demo: the DMA engine runs as a vfio-user server in process \d+ /m);
    assert.deepEqual(out.match(/^\[.*\]$/gm), [
      '[legacy (caching mode on, 4-level second stage, queued invalidation)]',
      '[scalable second stage (PGTT 2, 256-bit queue)]',
      '[scalable first stage (PGTT 1, 4-level IA-32e paging)]',
      '[nested (PGTT 3: first stage in nested-guest space, through the second stage)]',
      '[bind (a guest first-stage PASID table bound to the host IOMMU through iommufd nesting)]',
    ]);

    const legacy = block(out, 'legacy (caching mode on, 4-level second stage, queued invalidation)');
    for (const pattern of [
      /^ {2}unit {10}intel-iommu,caching-mode=on,aw-bits=48$/m,
      /^ {2}guest maps {4}SID 00:04\.0 -> DID 1, 4-level second stage: IOVA 0xa000000\+0x2000 -> GPA 0x2000000 \(rw\)/m,
      SHADOW,
      READ_DMA,
      UNMAPPED_FAULT,
      DEVICE_AFTER_UNMAP,
      PASSED,
      /^ {16}FRCD\[0\] read by 00:04\.0 at IOVA 0xb000000, reason 0x6 READ \(PTE Read access is not set\)$/m,
      /^ {2}unmap {9}guest clears IOVA 0xa001000: page-selective IOTLB invalidation \(DID 1\)$/m,
      /^ {16}a write there afterwards: blocked, FRCD\[0\] write by 00:04\.0 at IOVA 0xa001000, reason 0x5 WRITE/m,
    ])
      assert.match(legacy, pattern);

    const scalableUnit = /^ {2}unit {10}intel-iommu,caching-mode=on,x-scalable-mode=on,x-flts=on,x-nested=on,aw-bits=48$/m;
    const second = block(out, 'scalable second stage (PGTT 2, 256-bit queue)');
    for (const pattern of [
      scalableUnit,
      SHADOW,
      READ_DMA,
      UNMAPPED_FAULT,
      DEVICE_AFTER_UNMAP,
      PASSED,
      /^ {2}guest maps {4}SID 00:04\.0 -> scalable context entry -> RID_PASID 0 \(no PASID in the requests\) -> PASID entry: PGTT 2 \(second stage\), DID 2$/m,
      /^ {16}4-level second stage: IOVA 0xa000000\+0x2000 -> GPA 0x2000000 \(rw\), IOVA 0xa010000\+0x1000 -> GPA 0x2100000 \(r\)$/m,
      /^ {16}FRCD\[0\] read by 00:04\.0 at IOVA 0xb000000, reason 0x86 SM_READ /m,
      /^ {2}unmap {9}guest clears IOVA 0xa001000: page-selective IOTLB invalidation \(DID 2\)$/m,
      /^ {16}a write there afterwards: blocked, FRCD\[0\] write by 00:04\.0 at IOVA 0xa001000, reason 0x85 SM_WRITE /m,
    ])
      assert.match(second, pattern);

    const first = block(out, 'scalable first stage (PGTT 1, 4-level IA-32e paging)');
    for (const pattern of [
      scalableUnit,
      SHADOW,
      READ_DMA,
      UNMAPPED_FAULT,
      DEVICE_AFTER_UNMAP,
      PASSED,
      /PGTT 1 \(first stage\), DID 3$/m,
      /^ {16}4-level IA-32e first stage: IOVA 0xa000000\+0x2000 -> GPA 0x2000000 \(rw, user\), IOVA 0xa010000\+0x1000 -> GPA 0x2100000 \(r, user\),\n {18}IOVA 0xb002000 -> GPA 0x2200000 \(rw, supervisor\)$/m,
      /the engine sends no PASID and RID_PRIV is 0, so its requests are user requests/,
      /^ {16}FRCD\[0\] read by 00:04\.0 at IOVA 0xb000000, reason 0x71 SM_FIRST_STAGE_NOT_PRESENT /m,
      /^ {2}fault {9}engine reads IOVA 0xb002000 \(a supervisor page, U\/S = 0\): device got errno 1;/m,
      /^ {16}FRCD\[0\] read by 00:04\.0 at IOVA 0xb002000, reason 0x81 SM_USER_SUPERVISOR /m,
      /^ {2}unmap {9}guest clears IOVA 0xa001000: PASID-based IOTLB invalidation \(DID 3, PASID 0, one page\)$/m,
      /^ {16}a write there afterwards: blocked, FRCD\[0\] write by 00:04\.0 at IOVA 0xa001000, reason 0x71 SM_FIRST_STAGE_NOT_PRESENT /m,
    ])
      assert.match(first, pattern);

    const nested = block(out, 'nested (PGTT 3: first stage in nested-guest space, through the second stage)');
    for (const pattern of [
      scalableUnit,
      SHADOW,
      READ_DMA,
      UNMAPPED_FAULT,
      DEVICE_AFTER_UNMAP,
      PASSED,
      /PGTT 3 \(nested\), DID 4$/m,
      /^ {16}first stage \(4-level IA-32e; FSPTPTR and its 5 tables at L2-GPA 0x80000000\.\.\): IOVA 0xa000000\+0x2000 -> L2-GPA 0x90000000 \(rw\),\n {18}IOVA 0xa010000\+0x1000 -> L2-GPA 0x90100000 \(r\), IOVA 0xb001000 -> L2-GPA 0x9f000000$/m,
      /^ {16}second stage \(4-level\): L2-GPA 0x80000000\+0x5000 -> the tables' RAM pages \(rw\), L2-GPA 0x90000000\+0x2000 -> GPA 0x2000000 \(rw\),\n {18}L2-GPA 0x90100000\+0x1000 -> GPA 0x2100000 \(r\); nothing at L2-GPA 0x9f000000$/m,
      /^ {16}FRCD\[0\] read by 00:04\.0 at IOVA 0xb000000, reason 0x71 SM_FIRST_STAGE_NOT_PRESENT .*; first stage$/m,
      /^ {2}fault {9}engine reads IOVA 0xb001000 \(first stage maps it to L2-GPA 0x9f000000, which the second stage does not map\): device got errno 14/m,
      /^ {16}FRCD\[0\] read by 00:04\.0 at IOVA 0xb001000, reason 0x86 SM_READ .*; second stage, translating the first stage's output$/m,
      /^ {2}unmap {9}guest clears IOVA 0xa001000: first-stage leaf \(in L2-GPA space\) cleared, PASID-based IOTLB invalidation \(DID 4, PASID 0, one page\)$/m,
      /^ {16}a write there afterwards: blocked, FRCD\[0\] write by 00:04\.0 at IOVA 0xa001000, reason 0x71 SM_FIRST_STAGE_NOT_PRESENT .*; first stage$/m,
    ])
      assert.match(nested, pattern);

    assert.match(
      out,
      /^unit configuration intel-iommu,caching-mode=on,x-scalable-mode=on,x-flts=on,x-nested=on,aw-bits=48: scalable second stage, scalable first stage, nested$/m,
    );
    assert.match(out, /^viommu demo: every mode passed$/m);
    assert.doesNotMatch(out, /CHECK FAILED|not available/);
    assert.equal(result.stderr, '');
  });

  it('reports a check that fails, names it, and resolves to exit code 1', async () => {
    const stdout = collect();
    const stderr = collect();
    const wrongExpectation = scenarioMode('first stage, wrong expectation', SCALABLE_IOMMU, () => ({
      ...DEMO_TRANSLATIONS.scalableFirstStage(),
      unmappedWriteReason: 'SM_WRITE',
    }));
    const code = await runDemo({ stdout: stdout.stream, stderr: stderr.stream }, [wrongExpectation]);
    assert.equal(code, 1);
    const out = stdout.text();
    assert.match(out, /^ {2}CHECK FAILED: a DMA write to the unmapped page was not blocked and recorded as 0x85 SM_WRITE \(recorded: 0x71\)$/m);
    assert.match(out, /^ {2}result {8}1 check\(s\) failed$/m);
    assert.match(out, /^viommu demo: 1 mode\(s\) failed$/m);
  });

  it('reports a mode whose guest-driver sequence stops, and goes on with the next mode', async () => {
    const stdout = collect();
    const stopping = scenarioMode('stops', SCALABLE_IOMMU, () => ({
      ...DEMO_TRANSLATIONS.nested(),
      setUp: async () => {
        throw new Error('the guest driver gave up');
      },
    }));
    const code = await runDemo({ stdout: stdout.stream, stderr: collect().stream }, [
      stopping,
      scenarioMode('second stage', SCALABLE_IOMMU, DEMO_TRANSLATIONS.scalableSecondStage),
    ]);
    assert.equal(code, 1);
    const out = stdout.text();
    assert.match(out, /^\[stops\]\n {2}CHECK FAILED: the mode stopped: the guest driver gave up$/m);
    assert.match(out, /^\[scalable second stage \(PGTT 2, 256-bit queue\)\]$/m);
    assert.match(out, /^viommu demo: 1 mode\(s\) failed$/m);
  });
});
