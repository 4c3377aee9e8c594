/** The unit's trace facility: the events it reports (described once, types derived), their builders, and how a traced unit is wired. */

import type { GuestMemory } from '../memory/guest-memory';
import { getField, type Field } from './bitfield';
import type { QuirkId } from './compat-quirks';
import type { FaultRecord, FaultStage } from './fault';
import { faultReason } from './fault-reasons';
import type { FaultRecorder } from './fault-recorder';
import type { HostCompletion } from './host-completion';
import type { InterruptFault, InterruptRequest } from './interrupt-remap';
import { InvalidationQueue, type InvalidationTarget, type QueueOptions } from './invalidation-queue';
import type { AccessSize, RegisterFile } from './register-file';
import { INVALIDATION_DESCRIPTORS } from './structures';
import type { TranslationRequest, TranslationResult } from './translation-result';
import type { InterruptOrigin, InterruptResult } from './unit';

declare const valueType: unique symbol;

/** One field of an event: whether it may be absent and what it means. `T` types it and exists only for the compiler. */
export interface TraceFieldSpec<T, Optional extends boolean> {
  readonly optional: Optional;
  readonly meaning: string;
  readonly [valueType]?: T;
}

/** A field every event of its kind has. */
export function always<T>(meaning: string): TraceFieldSpec<T, false> {
  return { optional: false, meaning };
}

/** A field some events of its kind have. */
export function sometimes<T>(meaning: string): TraceFieldSpec<T, true> {
  return { optional: true, meaning };
}

/** One event kind of a trace schema: when it is reported, and its fields by name. */
export interface TraceKindSpec {
  readonly when: string;
  readonly fields: { readonly [name: string]: TraceFieldSpec<unknown, boolean> };
}

/** A trace schema: event kinds by name (UNIT_TRACE_KINDS here; the bind demo's host events in lib/vmm/demo-bind.ts). */
export type TraceSchema = { readonly [kind: string]: TraceKindSpec };

/** The interrupts the unit sends: its two events, and device interrupts after remapping. */
export type UnitInterruptSource = 'fault-event' | 'invalidation-completion' | 'device';

/** Where a traced fault was found: a translation fault's stage, or interrupt remapping. */
export type TraceFaultStage = FaultStage | 'interrupt-remapping';

/**
 * Every event kind, when it is reported, and its fields: the one place the schema lives. UnitTraceEvent is derived
 * from it, and docs/trace.md is checked against it. Addresses and register values are `0x` hex strings (they may
 * exceed 2^53); counts, ids and codes are numbers.
 */
export const UNIT_TRACE_KINDS = {
  'register-write': {
    when: 'a write to the register window, before it takes effect (so what it causes follows it)',
    fields: {
      offset: always<number>('offset of the access in the register window'),
      size: always<4 | 8>('access size in bytes'),
      value: always<string>('the value written, 0x hex, cut to the access size'),
      register: sometimes<string>('the register at that offset, by its name in the register table (absent when nothing decodes the offset)'),
    },
  },
  descriptor: {
    when: 'the invalidation queue executes a descriptor it fetched (before its effects; an invalid one is reported, then IQE is set)',
    fields: {
      type: always<string>(
        "the descriptor type, named after the descriptor table ('context-cache', 'iotlb', 'wait', 'pasid-cache', ...; 'unknown' for a type the unit does not know)",
      ),
      index: always<number>('its slot in the queue (IQH in descriptors)'),
      fields: always<Readonly<Record<string, string | number>>>(
        "the descriptor's fields by their spec names, the type bits left out: numbers, or 0x hex addresses for address fields (already shifted into an address); an unknown type gives TYPE and its raw quadwords QW0, QW1",
      ),
    },
  },
  translation: {
    when: 'a DMA request was translated (a device access through dmaSpace(), or a translate() call), hit or miss',
    fields: {
      sid: always<number>('requester id (bus << 8 | devfn)'),
      pasid: sometimes<number>('the PASID the request carried, if any'),
      iova: always<string>('the input address, 0x hex'),
      write: always<boolean>('a write (true) or a read (false)'),
      ok: always<boolean>('whether it translated'),
      address: sometimes<string>('when ok: the guest-physical address, 0x hex'),
      reason: sometimes<number>('when not ok: the fault reason code (FRCD.FR)'),
    },
  },
  fault: {
    when: 'a request failed: a failed translation (right after its translation event) or an interrupt remapping fault; the fault event it raises, if any, follows it',
    fields: {
      sid: always<number>('requester id of the request'),
      pasid: sometimes<number>('the PASID the request carried, if any'),
      iova: always<string>('the input address (for an interrupt, the MSI address), 0x hex'),
      reason: always<number>('fault reason code (FRCD.FR)'),
      reasonName: always<string>("the reason's name in the fault reason table ('reserved' for a code it lacks)"),
      recording: always<string>(
        "what became of the fault record: 'recorded', 'overflow', 'collapsed', 'dropped-pfo', 'suppressed-fpd', or 'none' (no record is due)",
      ),
      stage: always<TraceFaultStage>(
        "where the fault was found: a translation fault's stage ('request', 'root', 'context', 'pasid-directory', 'pasid-table', 'first-stage', 'second-stage', 'output'), or 'interrupt-remapping'",
      ),
      level: sometimes<number>(
        'the paging level being processed: first-stage level (5..1) in first-stage and nested walks, 0 while a nested walk translated its output; the second-stage level in legacy and second-stage walks',
      ),
      secondStageLevel: sometimes<number>('nested walks at stage second-stage: the second-stage level where that walk stopped'),
      entryAddress: sometimes<string>(
        'address of the entry that decided, 0x hex (in a nested walk, the guest address of the first-stage entry whose translation failed)',
      ),
      entryValue: sometimes<string>('that entry as read, the whole entry as one 0x hex number (absent when it could not be read)'),
      walkPasid: sometimes<number>("the PASID the walk used: the request's, or the context entry's RID_PASID for a request without one"),
      index: sometimes<number>('interrupt remapping faults: the interrupt index, when the request got that far'),
    },
  },
  interrupt: {
    when: 'the unit sends an MSI toward the CPUs',
    fields: {
      source: always<UnitInterruptSource>("'fault-event', 'invalidation-completion', or 'device' (a device interrupt, after remapping)"),
      address: always<string>('MSI address, 0x hex'),
      data: always<string>('MSI data, 0x hex'),
    },
  },
} as const satisfies TraceSchema;

type ValueOf<F> = F extends TraceFieldSpec<infer T, boolean> ? T : never;
type AlwaysNames<Fs> = { [N in keyof Fs]: Fs[N] extends TraceFieldSpec<unknown, false> ? N : never }[keyof Fs];
type SometimesNames<Fs> = Exclude<keyof Fs, AlwaysNames<Fs>>;
type Flat<T> = { [P in keyof T]: T[P] };
type EventOf<Fs, K> = Flat<
  { readonly kind: K } & { readonly [N in AlwaysNames<Fs>]: ValueOf<Fs[N]> } & {
    readonly [N in SometimesNames<Fs>]?: ValueOf<Fs[N]>;
  }
>;

/** The events a schema describes: `kind`, the fields each kind always has, and the ones it may have. */
export type TraceEventOf<S extends TraceSchema> = { [K in keyof S & string]: EventOf<S[K]['fields'], K> }[keyof S & string];

export type UnitTraceKind = keyof typeof UNIT_TRACE_KINDS;
/** One event of the unit's trace (see UNIT_TRACE_KINDS and docs/trace.md). */
export type UnitTraceEvent = TraceEventOf<typeof UNIT_TRACE_KINDS>;
export type UnitTraceSink = (event: UnitTraceEvent) => void;

/** The kinds in schema order, and each kind's field names (`kind` itself not included). */
export const UNIT_TRACE_KIND_NAMES = Object.keys(UNIT_TRACE_KINDS) as readonly UnitTraceKind[];

export function unitTraceFieldNames(kind: UnitTraceKind): readonly string[] {
  return Object.keys(UNIT_TRACE_KINDS[kind].fields);
}

function hex(value: number | bigint): string {
  return value < 0 ? `-0x${(-value).toString(16)}` : `0x${value.toString(16)}`;
}

// ---- descriptors, decoded through the descriptor tables ----

const TYPE_FIELD_NAMES: ReadonlySet<string> = new Set(['TYPE_LO', 'TYPE_HI']);

interface DescriptorLayout {
  readonly type: string;
  readonly fields: readonly Field[];
}

/** 'PASID-based IOTLB' -> 'pasid-based-iotlb': the descriptor table's name as a trace name. */
export function descriptorTraceName(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-');
}

const DESCRIPTOR_LAYOUTS: ReadonlyMap<number, DescriptorLayout> = new Map(
  INVALIDATION_DESCRIPTORS.map((kind) => [
    kind.type,
    {
      type: descriptorTraceName(kind.name),
      fields: kind.fields.fields.filter((field) => !TYPE_FIELD_NAMES.has(field.name)),
    },
  ]),
);

function quadword(words: ArrayLike<number>, index: number): string {
  return hex((BigInt(words[2 * index + 1]! >>> 0) << 32n) | BigInt(words[2 * index]! >>> 0));
}

/** The descriptor of `type` in `words` (its first 128 bits), as the queue executes it from slot `index`. */
export function descriptorEvent(words: ArrayLike<number>, type: number, index: number): UnitTraceEvent {
  const layout = DESCRIPTOR_LAYOUTS.get(type);
  if (layout === undefined) {
    return { kind: 'descriptor', type: 'unknown', index, fields: { TYPE: type, QW0: quadword(words, 0), QW1: quadword(words, 1) } };
  }
  const fields: Record<string, string | number> = {};
  for (const field of layout.fields) {
    const value = getField(words, field);
    // Multiplying by a power of two is exact, however wide the address.
    fields[field.name] = field.addressShift === undefined ? value : hex(value * 2 ** field.addressShift);
  }
  return { kind: 'descriptor', type: layout.type, index, fields };
}

// ---- the other events ----

export function registerWriteEvent(registers: RegisterFile, offset: number, size: 4 | 8, value: bigint): UnitTraceEvent {
  const register = registers.registerAt(offset)?.name;
  const written = hex(BigInt.asUintN(size * 8, value));
  return register === undefined
    ? { kind: 'register-write', offset, size, value: written }
    : { kind: 'register-write', offset, size, value: written, register };
}

export function translationEvent(request: TranslationRequest, result: TranslationResult): UnitTraceEvent {
  const common = {
    kind: 'translation' as const,
    sid: request.sid,
    ...(request.pasid === undefined ? {} : { pasid: request.pasid }),
    iova: hex(request.iova),
    write: request.write,
  };
  return result.ok ? { ...common, ok: true, address: hex(result.address) } : { ...common, ok: false, reason: result.fault.reason };
}

/** What every fault event has: the request, the reason, and what became of the record. */
function faultBase(sid: number, pasid: number | undefined, iova: string, reason: number, recording: string) {
  return {
    kind: 'fault' as const,
    sid,
    ...(pasid === undefined ? {} : { pasid }),
    iova,
    reason,
    reasonName: faultReason(reason)?.name ?? 'reserved',
    recording,
  };
}

/** A failed translation's fault: the request, then where and why from its fault record. */
export function translationFaultEvent(request: TranslationRequest, fault: FaultRecord, recording: string): UnitTraceEvent {
  return {
    ...faultBase(request.sid, request.pasid, hex(request.iova), fault.reason, recording),
    stage: fault.stage,
    ...(fault.level === undefined ? {} : { level: fault.level }),
    ...(fault.secondStageLevel === undefined ? {} : { secondStageLevel: fault.secondStageLevel }),
    ...(fault.entryAddress === undefined ? {} : { entryAddress: hex(fault.entryAddress) }),
    ...(fault.entryValue === undefined ? {} : { entryValue: hex(fault.entryValue) }),
    ...(fault.pasid === undefined ? {} : { walkPasid: fault.pasid }),
  };
}

/** An interrupt request remapping refused. */
export function interruptFaultEvent(request: InterruptRequest, fault: InterruptFault, recording: string): UnitTraceEvent {
  return {
    ...faultBase(request.sid, undefined, hex(request.address >>> 0), fault.reason, recording),
    stage: 'interrupt-remapping',
    ...(fault.index === undefined ? {} : { index: fault.index }),
  };
}

export function interruptEvent(source: UnitInterruptSource, address: number, data: number): UnitTraceEvent {
  return { kind: 'interrupt', source, address: hex(address >>> 0), data: hex(data >>> 0) };
}

// ---- wiring ----

/** What the tracer wraps on a unit: its register writes, its translations and its interrupt remapping. */
export interface TraceableUnit {
  readonly registers: RegisterFile;
  write(offset: number, size: AccessSize, value: number | bigint): void;
  translate(request: TranslationRequest): TranslationResult;
  remapInterrupt(request: InterruptRequest, origin?: InterruptOrigin): InterruptResult;
}

/**
 * One unit's trace: hands events to the sink and shields the unit from it. A sink that throws is counted, kept in
 * `failure`, and never called again; the guest's command that caused the event completes as if nothing happened.
 * Only a traced unit builds one: untraced units run none of this.
 */
export class UnitTracer {
  /** How many times the sink threw: 0 or 1, since it is dropped at the first. */
  errors = 0;
  failure: unknown = undefined;
  private sink: UnitTraceSink | undefined;
  /** Interrupts sent while a request is handled, reported after the request's own events: effects follow causes. */
  private held: UnitTraceEvent[] | undefined;

  constructor(sink: UnitTraceSink) {
    this.sink = sink;
  }

  /** Whether events are still wanted; checked before building one. */
  get listening(): boolean {
    return this.sink !== undefined;
  }

  emit(event: UnitTraceEvent): void {
    const sink = this.sink;
    if (sink === undefined) return;
    try {
      sink(event);
    } catch (error) {
      this.errors++;
      this.failure = error;
      this.sink = undefined;
    }
  }

  /** `deliver`, reporting each MSI it sends as coming from `source`. */
  delivery(source: UnitInterruptSource, deliver: (address: number, data: number) => void): (address: number, data: number) => void {
    return (address, data) => {
      if (this.listening) {
        const event = interruptEvent(source, address, data);
        if (this.held !== undefined) this.held.push(event);
        else this.emit(event);
      }
      deliver(address, data);
    };
  }

  /** An invalidation queue that reports each descriptor it executes. */
  queue(...args: ConstructorParameters<typeof InvalidationQueue>): InvalidationQueue {
    return new TracedInvalidationQueue(this, ...args);
  }

  /**
   * Replaces `unit`'s write, translate and remapInterrupt with reporting versions, as properties of that instance:
   * the class's methods, which every untraced unit runs, stay as they are.
   */
  instrument(unit: TraceableUnit): void {
    const { write, translate, remapInterrupt } = unit;
    unit.write = (offset, size, value) => {
      // A value or size write() refuses is reported by its throw, not here.
      if (this.listening && (size === 4 || size === 8) && (typeof value === 'bigint' || Number.isInteger(value))) {
        this.emit(registerWriteEvent(unit.registers, offset, size, BigInt(value)));
      }
      write.call(unit, offset, size, value);
    };
    unit.translate = (request) =>
      this.request(
        () => translate.call(unit, request),
        (result) => {
          this.emit(translationEvent(request, result));
          if (!result.ok) this.emit(translationFaultEvent(request, result.fault, result.recording));
        },
      );
    unit.remapInterrupt = (request, origin) =>
      this.request(
        () => remapInterrupt.call(unit, request, origin),
        (result) => {
          if (!result.ok) this.emit(interruptFaultEvent(request, result, result.recording));
        },
      );
  }

  /** Runs `handle`, then reports what it returned, then the interrupts it sent (a fault's event). */
  private request<R>(handle: () => R, report: (result: R) => void): R {
    if (!this.listening) return handle();
    const outer = this.held;
    const held: UnitTraceEvent[] = [];
    this.held = held;
    let result: { value: R } | undefined;
    try {
      result = { value: handle() };
    } finally {
      this.held = outer;
      if (result !== undefined) report(result.value);
      for (const event of held) this.emit(event);
    }
    return result.value;
  }
}

/** The queue of a traced unit: the same queue, reporting each descriptor before executing it. */
class TracedInvalidationQueue extends InvalidationQueue {
  constructor(
    private readonly tracer: UnitTracer,
    regs: RegisterFile,
    memory: GuestMemory,
    recorder: FaultRecorder,
    target: InvalidationTarget,
    options: QueueOptions,
    quirks: ReadonlySet<QuirkId>,
    deliver: (address: number, data: number) => void,
    completion: HostCompletion,
  ) {
    super(regs, memory, recorder, target, options, quirks, deliver, completion);
  }

  protected override execute(type: number): boolean {
    if (this.tracer.listening) this.tracer.emit(descriptorEvent(this.words, type, this.headIndex));
    return super.execute(type);
  }
}
