/** `viommu qtest --trace FILE`: the unit's events as JSON lines in the file, while stdout carries only the qtest protocol. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { UNIT_TRACE_KIND_NAMES, unitTraceFieldNames } from '../../lib/vtd/unit-trace';
import { ViommuQtest } from '../oracle/qemu';
import { DMAR, eduDma, enableEdu, programUnit } from '../oracle/legacy-dma-scenario';

// Offsets and encodings spelled out as a guest driver would, like the scenario this test extends.
const FECTL = DMAR + 0x38;
const FEDATA = DMAR + 0x3c;
const FEADDR = DMAR + 0x40;
const IQT = DMAR + 0x88;
const IQA = DMAR + 0x90;
const IECTL = DMAR + 0xa0;
const IEDATA = DMAR + 0xa4;
const IEADDR = DMAR + 0xa8;
const GCMD = DMAR + 0x18;
const GSTS = DMAR + 0x1c;
const TE_AND_QIE = 0x84000000;
const QUEUE = 0x110000;
const STATUS = 0x120000;
/** IOTLB invalidate (type 2), global (G = 1). */
const IOTLB_GLOBAL = 0x12n;
/** Wait (type 5) with IF and SW, status data 0x77; the status address sits in bits 127:66, i.e. the high quadword as is. */
const WAIT_LO = 0x35n | (0x77n << 32n);
const WAIT_HI = BigInt(STATUS);

interface TraceLine {
  readonly t: number;
  readonly kind: string;
  readonly [field: string]: unknown;
}

describe('cli: viommu qtest --trace FILE', function () {
  this.timeout(60_000);
  let directory: string;

  beforeEach(() => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-qtest-trace-'));
  });

  afterEach(() => {
    fs.rmSync(directory, { recursive: true, force: true });
  });

  it('writes register writes, descriptors, translations, faults and interrupts as JSON lines', async () => {
    const file = path.join(directory, 'trace.jsonl');
    const peer = await ViommuQtest.start({ extraArgs: ['--trace', file] });
    try {
      await enableEdu(peer);
      await peer.writel(FEDATA, 0x41);
      await peer.writel(FEADDR, 0xfee00000);
      await peer.writel(FECTL, 0);
      await programUnit(peer);
      await eduDma(peer, 0x200000n, 0x40000n, 64n, false);
      await eduDma(peer, 0x40000n, 0x201000n, 16n, true);
      await peer.writel(IEDATA, 0x42);
      await peer.writel(IEADDR, 0xfee01000);
      await peer.writel(IECTL, 0);
      await peer.writeq(QUEUE, IOTLB_GLOBAL);
      await peer.writeq(QUEUE + 8, 0n);
      await peer.writeq(QUEUE + 16, WAIT_LO);
      await peer.writeq(QUEUE + 24, WAIT_HI);
      await peer.writeq(IQA, BigInt(QUEUE));
      await peer.writel(GCMD, TE_AND_QIE);
      await peer.writeq(IQT, 0x20n);
      // The protocol on stdout is untouched: answers still come back as QEMU's do.
      assert.equal(await peer.readl(STATUS), 0x77);
      assert.equal(((await peer.readl(GSTS)) & TE_AND_QIE) >>> 0, TE_AND_QIE);
    } finally {
      await peer.close();
    }

    const lines = fs.readFileSync(file, 'utf8').split('\n');
    assert.equal(lines.pop(), '', 'the file ends with a newline');
    const events = lines.map((line) => JSON.parse(line) as TraceLine);
    let last = 0;
    assert.ok(events.length > 0);
    for (const event of events) {
      assert.ok(typeof event.t === 'number' && event.t >= last, `t goes forward: ${JSON.stringify(event)}`);
      last = event.t;
      assert.ok(UNIT_TRACE_KIND_NAMES.includes(event.kind as never), `a known kind: ${event.kind}`);
      for (const name of Object.keys(event))
        assert.ok(['t', 'kind', ...unitTraceFieldNames(event.kind as never)].includes(name), `${event.kind} has no field ${name}`);
    }
    const find = (predicate: (event: TraceLine) => boolean, what: string): TraceLine => {
      const found = events.find(predicate);
      assert.ok(found, `the trace has ${what}`);
      return found;
    };
    find(
      (e) => e.kind === 'register-write' && e.register === 'GCMD' && e.value === '0x80000000' && e.size === 4 && e.offset === 0x18,
      'the TE command',
    );
    find((e) => e.kind === 'register-write' && e.register === 'RTADDR' && e.value === '0x100000' && e.size === 8, 'the root table address');
    find(
      (e) => e.kind === 'translation' && e.sid === 0x20 && e.iova === '0x200000' && e.ok === true && e.address === '0x300000' && e.write === false,
      'the read the edu device did',
    );
    find(
      (e) => e.kind === 'translation' && e.iova === '0x201000' && e.ok === false && e.reason === 5 && e.write === true,
      'the write it was refused',
    );
    find(
      (e) => e.kind === 'fault' && e.sid === 0x20 && e.iova === '0x201000' && e.reasonName === 'WRITE' && e.recording === 'recorded',
      'the fault recorded',
    );
    find((e) => e.kind === 'interrupt' && e.source === 'fault-event' && e.address === '0xfee00000' && e.data === '0x41', 'the fault event');
    const iotlb = find((e) => e.kind === 'descriptor' && e.type === 'iotlb', 'the IOTLB descriptor');
    assert.deepEqual(iotlb, {
      t: iotlb.t,
      kind: 'descriptor',
      type: 'iotlb',
      index: 0,
      fields: { G: 1, DW: 0, DR: 0, DID: 0, AM: 0, IH: 0, ADDR: '0x0' },
    });
    const wait = find((e) => e.kind === 'descriptor' && e.type === 'wait', 'the wait descriptor');
    assert.deepEqual(wait, {
      t: wait.t,
      kind: 'descriptor',
      type: 'wait',
      index: 1,
      fields: { IF: 1, SW: 1, FN: 0, PD: 0, SDATA: 0x77, SADDR: '0x120000' },
    });
    const completion = find((e) => e.kind === 'interrupt' && e.source === 'invalidation-completion' && e.data === '0x42', 'the completion event');
    assert.ok(events.indexOf(wait) < events.indexOf(completion));
  });

  it('says on stderr when the trace could not be written to the end, and answers the protocol as ever', async () => {
    const peer = await ViommuQtest.start({ extraArgs: ['--trace', '/dev/full'] });
    try {
      await programUnit(peer);
      assert.equal(((await peer.readl(GSTS)) & 0x80000000) >>> 0, 0x80000000, 'translation is on');
    } finally {
      await peer.close();
    }
    assert.match(peer.stderrText, /^viommu qtest: --trace \/dev\/full is incomplete: ENOSPC/m);
  });

  it('refuses a trace file it cannot create before speaking the protocol', async () => {
    const file = path.join(directory, 'no-such-directory', 'trace.jsonl');
    await assert.rejects(ViommuQtest.start({ extraArgs: ['--trace', file], startTimeoutMs: 20_000 }), /--trace .*no-such-directory.*ENOENT/);
  });
});
