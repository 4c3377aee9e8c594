/** The unit's trace: each kind for a guest's programming sequence, nothing built when off, a throwing sink, and docs/trace.md. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import sinon from 'sinon';
import { encodeBig } from '../../lib/vtd/bitfield';
import { MSI_REMAPPABLE_ADDRESS } from '../../lib/vtd/interrupt-remap';
import { InvalidationQueue } from '../../lib/vtd/invalidation-queue';
import { FSTS, GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';
import { IRTA_FIELDS } from '../../lib/vtd/registers';
import { VtdUnit } from '../../lib/vtd/unit';
import {
  UNIT_TRACE_KINDS,
  UNIT_TRACE_KIND_NAMES,
  UnitTracer,
  unitTraceFieldNames,
  type TraceFaultStage,
  type UnitTraceEvent,
  type UnitTraceSink,
} from '../../lib/vtd/unit-trace';
import { FRCD, PAGE, SID, TestGuest, descriptor } from './unit-guest';
import { repositoryRoot } from '../helpers';

/** The event shape other code is written against: the derived type must stay exactly this. */
type PromisedShape =
  | { readonly kind: 'register-write'; readonly offset: number; readonly size: 4 | 8; readonly value: string; readonly register?: string }
  | { readonly kind: 'descriptor'; readonly type: string; readonly index: number; readonly fields: Readonly<Record<string, string | number>> }
  | {
      readonly kind: 'translation';
      readonly sid: number;
      readonly pasid?: number;
      readonly iova: string;
      readonly write: boolean;
      readonly ok: boolean;
      readonly address?: string;
      readonly reason?: number;
    }
  | {
      readonly kind: 'fault';
      readonly sid: number;
      readonly pasid?: number;
      readonly iova: string;
      readonly reason: number;
      readonly reasonName: string;
      readonly recording: string;
      readonly stage: TraceFaultStage;
      readonly level?: number;
      readonly secondStageLevel?: number;
      readonly entryAddress?: string;
      readonly entryValue?: string;
      readonly walkPasid?: number;
      readonly index?: number;
    }
  | {
      readonly kind: 'interrupt';
      readonly source: 'fault-event' | 'invalidation-completion' | 'device';
      readonly address: string;
      readonly data: string;
    };
type Same<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const shapeKept: Same<UnitTraceEvent, PromisedShape> = true;

const FAULT_EVENT = { address: 0xfee00000, data: 0x41 };
const COMPLETION_EVENT = { address: 0xfee01000, data: 0x42 };
const STATUS = 0x80000;
const READ_WRITE_IOVA = 0x200000;
const READ_ONLY_IOVA = 0x201000;
/** An MSI through interrupt-remapping table entry 9, which the guest left not present. */
const REMAPPABLE_MSI = Number(encodeBig(MSI_REMAPPABLE_ADDRESS, { BASE: 0xfee, IF: 1, HANDLE_LO: 9 }));

/** A TestGuest whose unit reports to `trace` (or to nothing). */
function guestWith(trace: UnitTraceSink | undefined, config = ''): TestGuest {
  const guest = new TestGuest(config);
  const unit = new VtdUnit({ memory: guest.memory, config, onInterrupt: guest.interrupts, ...(trace ? { trace } : {}) });
  return Object.assign(guest, { unit });
}

/**
 * What a driver does: tables, the enable sequence, the two event interrupts unmasked, DMA that succeeds and DMA
 * that faults, a PASID request a legacy table cannot serve, queued invalidation ending in a wait with an interrupt,
 * a device MSI, and an interrupt remapping fault.
 */
function driverSequence(guest: TestGuest): void {
  const unit = guest.unit;
  guest.setContext(SID, { did: 1 });
  guest.map(SID, READ_WRITE_IOVA, 0x300000);
  guest.map(SID, READ_ONLY_IOVA, 0x301000, { write: false });
  unit.write(OFFSET.FEDATA, 4, FAULT_EVENT.data);
  unit.write(OFFSET.FEADDR, 4, FAULT_EVENT.address);
  unit.write(OFFSET.FECTL, 4, 0);
  unit.write(OFFSET.IEDATA, 4, COMPLETION_EVENT.data);
  unit.write(OFFSET.IEADDR, 4, COMPLETION_EVENT.address);
  unit.write(OFFSET.IECTL, 4, 0);
  guest.enable();
  const space = unit.dmaSpace(SID);
  space.write(BigInt(READ_WRITE_IOVA + 0x10), Uint8Array.of(1, 2, 3, 4));
  assert.throws(() => space.write(BigInt(READ_ONLY_IOVA), Uint8Array.of(1)));
  unit.translate({ sid: SID, iova: BigInt(READ_WRITE_IOVA), write: false, pasid: 7 });
  guest.setupQueue();
  guest.submit([descriptor.iotlbPage(1, READ_WRITE_IOVA), descriptor.wait({ sw: true, if: true, data: 0x55, address: STATUS })], 0);
  assert.equal(guest.memory.readU32(STATUS), 0x55);
  space.write(0xfee00000n, new Uint8Array(new Uint32Array([0x31]).buffer));
  const table = guest.allocPage();
  unit.write(OFFSET.IRTA, 8, encodeBig(IRTA_FIELDS, { IRTA: table / PAGE, S: 7 }));
  guest.command(GCMD.SIRTP);
  guest.command(GCMD.IRE);
  assert.equal(unit.interruptRequest({ sid: SID, address: REMAPPABLE_MSI, data: 0 }).ok, false);
}

function ofKind<K extends UnitTraceEvent['kind']>(events: readonly UnitTraceEvent[], kind: K): Extract<UnitTraceEvent, { kind: K }>[] {
  return events.filter((event): event is Extract<UnitTraceEvent, { kind: K }> => event.kind === kind);
}

describe('VtdUnit trace', () => {
  it('keeps the promised event shape', () => {
    assert.equal(shapeKept, true);
  });

  it("reports every kind with its fields, in the order things happen, for a driver's sequence", () => {
    const events: UnitTraceEvent[] = [];
    const guest = guestWith((event) => events.push(event));
    driverSequence(guest);
    assert.equal(guest.unit.traceErrors, 0);

    // Every event has all the fields its kind always has and none the schema lacks; every kind occurs.
    for (const event of events) {
      const fields = UNIT_TRACE_KINDS[event.kind].fields as Record<string, { optional: boolean }>;
      const names = Object.keys(event).filter((name) => name !== 'kind');
      for (const name of names) assert.ok(name in fields, `${event.kind} has no field ${name}`);
      for (const [name, spec] of Object.entries(fields)) if (!spec.optional) assert.ok(name in event, `${event.kind} lacks ${name}`);
    }
    assert.deepEqual(new Set(events.map((event) => event.kind)), new Set(UNIT_TRACE_KIND_NAMES));

    const writes = ofKind(events, 'register-write');
    assert.deepEqual(
      writes.find((event) => event.register === 'FECTL'),
      { kind: 'register-write', offset: OFFSET.FECTL, size: 4, value: '0x0', register: 'FECTL' },
    );
    assert.deepEqual(
      writes.find((event) => event.register === 'RTADDR'),
      { kind: 'register-write', offset: OFFSET.RTADDR, size: 8, value: `0x${guest.root.toString(16)}`, register: 'RTADDR' },
    );

    const translations = ofKind(events, 'translation');
    assert.deepEqual(translations[0], { kind: 'translation', sid: SID, iova: '0x200010', write: true, ok: true, address: '0x300010' });
    assert.deepEqual(translations[1], { kind: 'translation', sid: SID, iova: '0x201000', write: true, ok: false, reason: 0x5 });
    assert.deepEqual(translations[2], { kind: 'translation', sid: SID, pasid: 7, iova: '0x200000', write: false, ok: false, reason: 0x31 });

    const faults = ofKind(events, 'fault');
    // Where and why, from the fault record: the leaf of the 4-level walk (level 1) refused the write, and its entry.
    const leaf = guest.leafAddress(SID, READ_ONLY_IOVA);
    assert.deepEqual(faults[0], {
      kind: 'fault',
      sid: SID,
      iova: '0x201000',
      reason: 0x5,
      reasonName: 'WRITE',
      recording: 'recorded',
      stage: 'second-stage',
      level: 1,
      entryAddress: `0x${leaf.toString(16)}`,
      entryValue: `0x${guest.memory.readU64(leaf).toString(16)}`,
    });
    assert.equal(faults[1]!.pasid, 7);
    assert.equal(faults[1]!.reasonName, 'SM_TTM0_PASID_REQUEST');
    assert.equal(faults[1]!.stage, 'request');
    assert.deepEqual(faults[2], {
      kind: 'fault',
      sid: SID,
      iova: `0x${REMAPPABLE_MSI.toString(16)}`,
      reason: 0x22,
      reasonName: 'IR_ENTRY_NOT_PRESENT',
      recording: 'collapsed',
      stage: 'interrupt-remapping',
      index: 9,
    });
    // A fault follows its translation at once, and the fault event it raised follows the fault.
    assert.equal(events[events.indexOf(translations[1]!) + 1], faults[0]);
    assert.deepEqual(events[events.indexOf(faults[0]!) + 1], { kind: 'interrupt', source: 'fault-event', address: '0xfee00000', data: '0x41' });

    const descriptors = ofKind(events, 'descriptor');
    assert.deepEqual(descriptors, [
      { kind: 'descriptor', type: 'iotlb', index: 0, fields: { G: 3, DW: 0, DR: 0, DID: 1, AM: 0, IH: 0, ADDR: '0x200000' } },
      { kind: 'descriptor', type: 'wait', index: 1, fields: { IF: 1, SW: 1, FN: 0, PD: 0, SDATA: 0x55, SADDR: `0x${STATUS.toString(16)}` } },
    ]);
    // The IQT write comes first, then what it causes: the descriptors, then the completion interrupt.
    const tail = events.findIndex((event) => event.kind === 'register-write' && event.register === 'IQT' && event.value !== '0x0');
    assert.equal(events[tail + 1], descriptors[0]);
    assert.equal(events[tail + 2], descriptors[1]);

    assert.deepEqual(ofKind(events, 'interrupt'), [
      { kind: 'interrupt', source: 'fault-event', address: '0xfee00000', data: '0x41' },
      { kind: 'interrupt', source: 'invalidation-completion', address: '0xfee01000', data: '0x42' },
      { kind: 'interrupt', source: 'device', address: '0xfee00000', data: '0x31' },
    ]);
    assert.equal(events[tail + 3]!.kind, 'interrupt');
    // The trace reports what the VMM saw: the interrupts delivered are exactly the traced ones.
    assert.deepEqual(guest.interrupts.args, [
      [0xfee00000, 0x41],
      [0xfee01000, 0x42],
      [0xfee00000, 0x31],
    ]);
  });

  it('builds and wraps nothing without a sink, and behaves the same as with one', () => {
    const spies = [
      sinon.spy(UnitTracer.prototype, 'emit'),
      sinon.spy(UnitTracer.prototype, 'instrument'),
      sinon.spy(UnitTracer.prototype, 'delivery'),
      sinon.spy(UnitTracer.prototype, 'queue'),
    ];
    try {
      const plain = guestWith(undefined);
      driverSequence(plain);
      for (const spy of spies) assert.equal(spy.callCount, 0, `${spy.name} ran for an untraced unit`);
      for (const method of ['write', 'translate', 'remapInterrupt'] as const) assert.ok(!Object.hasOwn(plain.unit, method));
      assert.equal(Object.getPrototypeOf((plain.unit as unknown as { queue: object }).queue), InvalidationQueue.prototype);

      const traced = guestWith(() => undefined);
      driverSequence(traced);
      for (const spy of spies) assert.ok(spy.callCount > 0, `${spy.name} never ran for a traced unit`);
      assert.ok(Object.hasOwn(traced.unit, 'translate'));
      assert.deepEqual(traced.interrupts.args, plain.interrupts.args);
      for (const offset of [OFFSET.GSTS, OFFSET.FSTS, OFFSET.IQH, FRCD, FRCD + 8]) assert.equal(traced.read64(offset), plain.read64(offset));
    } finally {
      for (const spy of spies) spy.restore();
    }
  });

  it("drops a sink at its first throw, counts it, and lets the guest's command finish", () => {
    const failure = new Error('sink broke');
    const seen: UnitTraceEvent[] = [];
    const guest = guestWith((event) => {
      seen.push(event);
      if (event.kind === 'descriptor') throw failure;
    });
    guest.setContext(SID, { did: 1 });
    guest.map(SID, READ_WRITE_IOVA, 0x300000);
    guest.enable();
    guest.setupQueue();
    guest.submit([descriptor.iotlbPage(1, READ_WRITE_IOVA), descriptor.wait({ sw: true, data: 0x66, address: STATUS })], 0);
    // The queue ran to its end although the sink threw on its first descriptor.
    assert.equal(guest.memory.readU32(STATUS), 0x66);
    assert.equal(guest.read64(OFFSET.IQH), 32n);
    assert.equal(guest.read32(OFFSET.FSTS), 0);
    assert.ok(guest.read32(OFFSET.GSTS) & GSTS.TES);
    assert.equal(guest.unit.traceErrors, 1);
    assert.equal(guest.unit.traceFailure, failure);
    // Nothing reached the sink after the throw; the unit still translates.
    const count = seen.length;
    assert.equal(seen.at(-1)!.kind, 'descriptor');
    assert.ok(guest.translate(READ_WRITE_IOVA).ok);
    assert.equal(seen.length, count);
    assert.equal(guest.unit.traceErrors, 1);
  });

  it('reports a descriptor of a type the unit does not know before the queue error it causes', () => {
    const events: UnitTraceEvent[] = [];
    const guest = guestWith((event) => events.push(event));
    guest.setupQueue();
    guest.submit([0xabcd_0000_0000_0000_0000_0000_0000_000fn], 0);
    assert.deepEqual(ofKind(events, 'descriptor'), [
      { kind: 'descriptor', type: 'unknown', index: 0, fields: { TYPE: 0xf, QW0: '0xf', QW1: '0xabcd000000000000' } },
    ]);
    assert.ok(guest.read32(OFFSET.FSTS) & FSTS.IQE);
  });

  it('docs/trace.md documents every kind and each of its fields', () => {
    const doc = fs.readFileSync(path.join(repositoryRoot(), 'docs', 'trace.md'), 'utf8');
    // Each '### kind' section runs to the next heading of any level.
    const sections = new Map(
      doc
        .split(/^(?=#{1,3} )/m)
        .filter((section) => section.startsWith('### '))
        .map((section) => {
          const [heading, ...body] = section.slice(4).split('\n');
          return [heading!.trim().replace(/`/g, ''), body.join('\n')] as const;
        }),
    );
    for (const kind of UNIT_TRACE_KIND_NAMES) {
      const section = sections.get(kind);
      assert.ok(section !== undefined, `docs/trace.md has no '### ${kind}' section`);
      for (const field of unitTraceFieldNames(kind))
        assert.ok(section.includes(`| \`${field}\` |`), `docs/trace.md: ${kind} does not list ${field} in its table`);
      // An example line of the kind, as a real run wrote it, that parses and has only the kind's fields.
      const example = /^\{"t":.*$/m.exec(section);
      assert.ok(example, `docs/trace.md: ${kind} has no example line`);
      const parsed = JSON.parse(example[0]) as Record<string, unknown>;
      assert.equal(parsed.kind, kind);
      for (const name of Object.keys(parsed))
        assert.ok(['t', 'kind', ...unitTraceFieldNames(kind)].includes(name), `docs/trace.md: the ${kind} example has ${name}`);
    }
  });
});
