/**
 * `viommu smoke --snapshot-on-fault DIR` as a user runs it: a tiny guest on the KVM machine leaves edu's context
 * entry out and starts a DMA; the fault is snapshotted as it happens, and `viommu explain` shows the walk stopping there.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { PAGE_BYTES } from '../../lib/memory/geometry';
import { DMAR_BASE, EDU_DEVFN } from '../../lib/vmm/testbed';
import { encodeBig } from '../../lib/vtd/bitfield';
import { FSTS, OFFSET } from '../../lib/vtd/register-bits';
import { LEGACY_CONTEXT_ENTRY, LEGACY_ROOT_ENTRY } from '../../lib/vtd/structures';
import { GuestCode, multibootImage } from '../machine/guest-images';
import { requireKvm } from '../machine/kvm-support';
import { runViommu } from '../vfio-user/cli-process';

/** The guest's root table, and the context table its bus 0 entry points at: zeroed RAM, so no context entry is present. */
const ROOT_TABLE = 0x20_0000;
const CONTEXT_TABLE = 0x20_1000;
const DMA_IOVA = 0x1000;
/** Bus 0's root entry: present, pointing at the empty context table. */
const ROOT_ENTRY = encodeBig(LEGACY_ROOT_ENTRY, { P: 1, CTP: CONTEXT_TABLE / PAGE_BYTES });
/** Where the context table would hold edu's entry (00:04.0, indexed by devfn). */
const EDU_CONTEXT_ENTRY = CONTEXT_TABLE + EDU_DEVFN * (LEGACY_CONTEXT_ENTRY.sizeBits / 8);

/** Translation on with a present root entry for bus 0 over an empty context table, then one edu DMA read; exits once the fault is recorded. */
function missingContextEntryGuest(): GuestCode {
  return new GuestCode()
    .store64(ROOT_TABLE, ROOT_ENTRY)
    .enableDmaRemapping(ROOT_TABLE)
    .eduDmaRead(DMA_IOVA, 4)
    .waitFor(DMAR_BASE + OFFSET.FSTS, FSTS.PPF)
    .exit(0);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

describe('cli: viommu smoke --snapshot-on-fault', function () {
  this.timeout(60_000);

  it('snapshots the DMA fault a guest provokes, and viommu explain shows the walk stopping at the context entry the guest left out', async function () {
    requireKvm(this);
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-smoke-snapshot-'));
    try {
      const kernel = path.join(directory, 'no-context.bin');
      fs.writeFileSync(kernel, multibootImage(missingContextEntryGuest()));
      const faults = path.join(directory, 'faults');
      const smoke = await runViommu(['smoke', '--kernel', kernel, '--snapshot-on-fault', faults, '--timeout', '20']);
      assert.equal(smoke.code, 0, `stdout:\n${smoke.stdout}\nstderr:\n${smoke.stderr}`);
      assert.match(smoke.stdout, /^end: the guest wrote 0 to isa-debug-exit/m, 'the guest saw FSTS.PPF and ended itself');
      assert.match(smoke.stdout, /^ {2}FRCD0: 00:04\.0 read 0x1000: reason 0x2 /m);
      assert.match(smoke.stdout, new RegExp(`^fault snapshots: 1 fault snapshot\\(s\\) in ${escapeRegExp(faults)}$`, 'm'));

      const files = fs.readdirSync(faults);
      assert.deepEqual(files, ['fault-001-smoke-no-context-bin-00-04-0-iova-1000-context_entry_not_present.json']);
      const snapshot = path.join(faults, files[0]!);
      const explained = await runViommu(['explain', snapshot]);
      assert.equal(explained.code, 0, `stdout:\n${explained.stdout}\nstderr:\n${explained.stderr}`);
      const hex = (value: number | bigint) => `0x${value.toString(16)}`;
      for (const line of [
        new RegExp(`^snapshot: ${escapeRegExp(snapshot)} \\(taken \\S+ by viommu smoke no-context\\.bin, \\d+ page\\(s\\)\\)$`),
        /^live unit: 0x2 CONTEXT_ENTRY_NOT_PRESENT: Present bit in context entry is clear; the context entry, before either paging stage; fault record: recorded$/,
        /^request: read by 00:04\.0 \(SID 0x20\) without PASID at IOVA 0x1000$/,
        /^translation: legacy mode \(RTADDR\.TTM = 00\)$/,
        // The root entry the guest wrote passes; the context entry it left out stops the walk.
        new RegExp(`^ {2}root entry \\[bus 0x0\\] at ${hex(ROOT_TABLE)} = ${hex(ROOT_ENTRY)}$`),
        new RegExp(`^ {6}P=1 CTP=${hex(CONTEXT_TABLE)}$`),
        new RegExp(`^ {2}context entry \\[devfn ${hex(EDU_DEVFN)}\\] at ${hex(EDU_CONTEXT_ENTRY)} = 0x0 {2}<== stopped here$`),
        /^stopped: the context entry, before either paging stage$/,
        /^reason: {2}0x2 CONTEXT_ENTRY_NOT_PRESENT: /,
      ])
        assert.match(explained.stdout, new RegExp(line.source, 'm'));
      assert.doesNotMatch(explained.stdout, /second stage|first stage/, 'no paging-stage entry was read');
    } finally {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  });
});
