/** VtdUnit: one emulated DMAR unit in legacy and scalable mode, wiring registers and commands to translation, caches, invalidation, faults and IR. */

import { ViommuError } from '../errors';
import { MAX_GUEST_ADDRESS } from '../memory/addresses';
import { DmaFault, EFAULT, EPERM, type DmaAccess, type DmaSpace } from '../memory/dma-space';
import type { GuestMemory } from '../memory/guest-memory';
import { bigToNumber, getField64, getFieldBig, setFieldBig } from './bitfield';
import type { DeviceDomainListener } from './address-space';
import { ContextCache, Iotlb, POWERS_OF_TWO, PagingStructureCache, alignDown, type CachedContext } from './caches';
import { quirksFor, type QuirkId } from './compat-quirks';
import {
  capabilityField,
  computeCapabilities,
  enabledFeatures,
  resolveVtdConfig,
  vtdConfigFromString,
  MAX_PASID_BITS,
  type Compat,
  type VtdConfig,
} from './config';
import { DomainRegistry, type DomainDescriptor } from './domains';
import { FaultRecorder, type RecordOutcome } from './fault-recorder';
import { describeFaultReason, isPermissionFault } from './fault-reasons';
import { faultLevel, faultRecord, withFault, type FaultRecord } from './fault';
import { InterruptEntryCache } from './interrupt-entry-cache';
import { InterruptRemapper, type InterruptFault, type InterruptRequest, type RemappedInterrupt } from './interrupt-remap';
import { HostCompletion, type HostPending } from './host-completion';
import { InvalidationQueue, type InvalidationTarget } from './invalidation-queue';
import { FR, INTERRUPT_RANGE_END, INTERRUPT_RANGE_START, LegacyWalker, TT, isInterruptAddress, overlapsInterruptRange } from './legacy-walk';
import { MappingEnumerator } from './mapping-enumerator';
import { RegisterFile, type AccessSize, type RegisterWriteEvent } from './register-file';
import { faultCode } from './fault-reasons';
import { ScalableTranslator, type ScalableRequestInput } from './scalable-translation';
import { VirtualCommandInterface, type VirtualCommandOptions } from './virtual-command';
import { UnitTracer, type UnitTraceSink } from './unit-trace';
import type { WalkTraceSink } from './walk-trace';
import { GCMD, GSTS, OFFSET } from './register-bits';
import { PASID_PGTT } from './structures';
import { CCMD_FIELDS, IOTLB_FIELDS, IVA_FIELDS, RTADDR_FIELDS, type CapabilityValues } from './registers';

export interface VtdUnitOptions {
  readonly memory: GuestMemory;
  /** A resolved configuration, or QEMU-style properties such as 'aw-bits=48,caching-mode=on'. */
  readonly config?: VtdConfig | string;
  /**
   * Delivers an MSI toward the CPUs: the unit's own events (fault event, invalidation completion; address and data
   * as the guest set them) and device interrupts, i.e. DMA writes to 0xfee00000-0xfeefffff, after remapping.
   */
  readonly onInterrupt: (address: number, data: number) => void;
  /**
   * A host backend following the unit's domains failed (a listener threw). The guest's command completes anyway;
   * the VMM decides what to do. Default: kept in `hostErrors`.
   */
  readonly onHostError?: (error: Error) => void;
  /**
   * With x-vcmd: the PASIDs VCMD hands out, a set of an allocator the VMM may share between units (a quota per VM).
   * Default: the unit's own allocator over its whole PASID width.
   */
  readonly pasids?: VirtualCommandOptions['pasids'];
  /**
   * Receives the unit's trace events (register writes, descriptors executed, translations, faults, interrupts sent;
   * see unit-trace.ts and docs/trace.md), synchronously, in order. Without it the unit builds no event and runs no
   * tracing code. A sink that throws is dropped after its first throw (see traceErrors); the guest's command goes on.
   */
  readonly trace?: UnitTraceSink;
}

/** What a request with PASID carries besides its address: the PASID, and privileged-mode and execute requested. */
export interface PasidTag {
  readonly pasid: number;
  readonly supervisor?: boolean;
  readonly execute?: boolean;
}

/** One DMA request: requester id (bus << 8 | devfn), input address, write or read, and the PASID it carries, if any. */
export type TranslationRequest = ScalableRequestInput;

const SOURCE_ID_MASK = 0xffff;
/** The source id QEMU 10.0 records for a request that reached it without one. */
const NO_REQUESTER_ID = 0xffff;
const HOST_ERROR_LOG_LIMIT = 64;
const PASID_MASK = 0xfffff;

/**
 * A source id outside [0, 2^16) or a PASID outside [0, 2^20) (or not an integer): the caller's mistake, since no
 * bus can carry one. Left unchecked, a PASID of 2^20 would reach the next device's cached entries.
 */
export class VtdRequestError extends ViommuError {
  constructor(
    readonly field: 'sid' | 'pasid',
    readonly value: unknown,
  ) {
    super(
      'ERR_VTD_REQUEST',
      `${field} ${String(value)} is not an integer in [0, 0x${(field === 'sid' ? SOURCE_ID_MASK + 1 : PASID_MASK + 1).toString(16)})`,
    );
    this.name = 'VtdRequestError';
  }
}

/** Throws VtdRequestError unless `sid` and `pasid` (when given) fit their fields; the masks also refuse fractions and NaN. */
function requireSource(sid: number, pasid: number | undefined): void {
  if ((sid & SOURCE_ID_MASK) !== sid) throw new VtdRequestError('sid', sid);
  if (pasid !== undefined && (pasid & PASID_MASK) !== pasid) throw new VtdRequestError('pasid', pasid);
}

export interface TranslationSuccess {
  readonly ok: true;
  /** Guest-physical address the IOVA maps to. */
  readonly address: number;
  /** Size of the page that maps it (the translation holds for the whole page). */
  readonly pageSize: number;
  readonly readable: boolean;
  readonly writable: boolean;
}

export interface TranslationFailure {
  readonly ok: false;
  /** Fault reason code (FRCD.FR), as recorded (compat quirks applied): fault.reason. */
  readonly reason: number;
  /** The level the fault names in one number (faultLevel): the paging level, or where a nested walk's output stopped. */
  readonly level?: number;
  readonly sid: number;
  readonly iova: bigint;
  readonly write: boolean;
  /** The entry that stopped the walk was not present (as opposed to a permission or programming error). */
  readonly notPresent: boolean;
  /**
   * What happened to the record: written, suppressed by FPD, or lost (collapse / overflow); 'none' when no record
   * is due (TE off, an input in the interrupt range, which is not DMA-remapped, or a QEMU 7.2 quirk).
   */
  readonly recording: RecordOutcome | 'suppressed-fpd' | 'none';
  /** Where and why: stage, levels, the entry that decided, the PASID used. */
  readonly fault: FaultRecord;
}

export type TranslationResult = TranslationSuccess | TranslationFailure;

/**
 * What traceRequest() found: the translation mode, then the page or the fault record, whose reason is the
 * architectural one (before compat quirks rename it).
 */
export type TracedWalk = { readonly mode: 'off' | 'legacy' | 'scalable' | 'invalid-root' } & (
  | { readonly ok: true; readonly address: number; readonly pageSize: number; readonly readable: boolean; readonly writable: boolean }
  | { readonly ok: false; readonly fault: FaultRecord }
);

export interface InterruptFailure extends InterruptFault {
  /** 'none' when compat=qemu-7.2 drops remapping faults unrecorded. */
  readonly recording: RecordOutcome | 'suppressed-fpd' | 'none';
}

export type InterruptResult = RemappedInterrupt | InterruptFailure;

/** How an interrupt request reached the unit: an MSI, a plain DMA write into the interrupt range, or a platform source without a requester id. */
export type InterruptOrigin = 'message' | 'dma-write' | 'platform';

const PAGE = 4096;
/** For the paging-structure cache's coordinates of an IOVA: its 2 MiB region and its page in the region (0..511). */
const INVERSE_PAGE = 1 / PAGE;
const INVERSE_REGION_BYTES = 1 / 2 ** 21;
const INVERSE_PAGES_PER_REGION = PAGE / 2 ** 21;
const PAGE_INDEX_MASK = 511;
const UNTRANSLATED_LIMIT = BigInt(MAX_GUEST_ADDRESS) + 1n;
const IOVA_LIMIT = 1n << 64n;
const INTERRUPT_RANGE_FIRST = BigInt(INTERRUPT_RANGE_START);
const INTERRUPT_RANGE_LIMIT = BigInt(INTERRUPT_RANGE_END);
/** An IOVA at or above 2^52 (or negative), as a number. */
const BEYOND = -1;
/** Interrupt messages are DWORD writes. */
const MSI_BYTES = 4;
/** Interrupt faults carry the interrupt index in FRCD.FI bits 63:48. */
const INDEX_SHIFT = 48n;
/** Requested-granularity codes shared by CCMD.CIRG and IOTLB.IIRG. */
const GRANULARITY = { GLOBAL: 1, DOMAIN: 2, SELECTIVE: 3 } as const;
/** RTADDR.TTM: 00 legacy, 01 scalable (with ECAP.SMTS); 10 reserved; 11 abort-DMA (needs ECAP.ADMS, not offered). */
const TTM = { LEGACY: 0, SCALABLE: 1 } as const;
const SM_ROOT_TABLE_ADDRESS_INVALID = faultCode('SM_ROOT_TABLE_ADDRESS_INVALID');
const SM_TTM0_PASID_REQUEST = faultCode('SM_TTM0_PASID_REQUEST');

function splitRaw(value: bigint): [lo: number, hi: number] {
  return [Number(BigInt.asUintN(32, value)), Number(value >> 32n)];
}

/** The first page of the 2^am-page block holding `pfn`, as page-selective invalidations name it. */
function alignedFirstPage(pfn: number, am: number): number {
  return alignDown(pfn, POWERS_OF_TWO[am]!);
}

export class VtdUnit implements InvalidationTarget {
  readonly config: VtdConfig;
  readonly capabilities: CapabilityValues;
  readonly quirks: ReadonlySet<QuirkId>;
  readonly registers: RegisterFile;
  readonly contextCache = new ContextCache();
  readonly iotlb = new Iotlb();
  /** Leaf tables of the legacy second-stage walk by domain and 2 MiB region; invalidated with the IOTLB. */
  readonly pagingStructures = new PagingStructureCache();
  /** The IOVA of the IOTLB miss translatePage() hands to walkPage(). */
  private readonly missInput = new Float64Array(1);
  readonly interruptEntries = new InterruptEntryCache();
  private readonly memory: GuestMemory;
  private readonly recorder: FaultRecorder;
  private readonly queue: InvalidationQueue;
  private readonly walker: LegacyWalker;
  /** Scalable-mode lookup, walks and the scalable context and PASID caches (it shares this.iotlb). */
  readonly scalable: ScalableTranslator;
  private readonly scalableOffered: boolean;
  /** The virtual command interface (x-vcmd): PASID allocation for the guest. */
  readonly virtualCommands: VirtualCommandInterface | undefined;
  /** The domains devices translate through, for host backends (see address-space.ts). */
  readonly domains: DomainRegistry;
  private readonly remapper: InterruptRemapper;
  private readonly maxAddressMask: number;
  /** Quirk iotlb-page-invalidation-mask-truncated, read once: page-selective invalidations run by the thousand. */
  private readonly pageInvalidationMaskTruncated: boolean;
  private readonly hasInterruptRemapping: boolean;
  private readonly deliver: (address: number, data: number) => void;
  private rootTable = 0;
  private rootMode = 0;
  private translationEnabled = false;
  /** IRTA as latched by SIRTP; IRTEs are read afresh for every interrupt. */
  private interruptTable = 0n;
  /** The last host backend failures (when no onHostError is given), oldest first. */
  readonly hostErrors: Error[] = [];
  private readonly onHostError: ((error: Error) => void) | undefined;
  /** Completions held while host backends apply invalidations (holdCompletionsWhile). */
  private readonly completion = new HostCompletion();
  /** Only with options.trace. */
  private readonly tracer: UnitTracer | undefined;

  constructor(options: VtdUnitOptions) {
    const config = options.config ?? resolveVtdConfig();
    this.config = typeof config === 'string' ? vtdConfigFromString(config) : config;
    this.memory = options.memory;
    this.capabilities = computeCapabilities(this.config);
    this.quirks = quirksFor(this.config);
    const caps = this.capabilities;
    const features = enabledFeatures(caps);
    const tracer = options.trace === undefined ? undefined : new UnitTracer(options.trace);
    this.tracer = tracer;
    const deliver = options.onInterrupt;
    this.registers = new RegisterFile(caps, (event) => this.onRegisterWrite(event));
    this.recorder = new FaultRecorder(
      this.registers,
      capabilityField(caps, 'CAP', 'NFR') + 1,
      capabilityField(caps, 'CAP', 'FRO') * 16,
      this.quirks,
      tracer === undefined ? deliver : tracer.delivery('fault-event', deliver),
    );
    this.walker = new LegacyWalker(
      this.memory,
      {
        addressWidth: this.config['aw-bits'],
        sagaw: capabilityField(caps, 'CAP', 'SAGAW'),
        sllps: capabilityField(caps, 'CAP', 'SLLPS'),
        deviceTlb: capabilityField(caps, 'ECAP', 'DT') === 1,
        passThrough: capabilityField(caps, 'ECAP', 'PT') === 1,
        features,
      },
      this.quirks,
    );
    this.scalableOffered = capabilityField(caps, 'ECAP', 'SMTS') === 1;
    this.virtualCommands = this.config['x-vcmd']
      ? new VirtualCommandInterface(this.registers, {
          pasidBits: this.config['x-pasid-bits'] || MAX_PASID_BITS,
          ...(options.pasids ? { pasids: options.pasids } : {}),
        })
      : undefined;
    this.scalable = new ScalableTranslator(
      this.memory,
      this.walker,
      {
        lookup: {
          addressWidth: this.config['aw-bits'],
          sagaw: capabilityField(caps, 'CAP', 'SAGAW'),
          fs5lp: capabilityField(caps, 'CAP', 'FS5LP') === 1,
          ridPasid: this.quirks.has('rid-pasid-used-without-rps'),
          features,
        },
        addressWidth: this.config['aw-bits'],
        fs1gp: capabilityField(caps, 'CAP', 'FS1GP') === 1,
        hitWithoutPermissionUnrecorded: this.quirks.has('iotlb-hit-without-permission-not-recorded'),
        quirks: this.quirks,
      },
      this.iotlb,
    );
    this.domains = new DomainRegistry({
      enumerator: new MappingEnumerator(this.memory, {
        addressWidth: this.config['aw-bits'],
        sllps: capabilityField(caps, 'CAP', 'SLLPS'),
        features,
        fs1gp: capabilityField(caps, 'CAP', 'FS1GP') === 1,
      }),
      resolve: (sid, pasid) => this.resolveDomain(sid, pasid),
      onListenerError: (error) => this.hostError(error),
    });
    this.onHostError = options.onHostError;
    const queueOptions = { wideDescriptors: capabilityField(caps, 'ECAP', 'SMTS') === 1, features };
    this.queue =
      tracer === undefined
        ? new InvalidationQueue(this.registers, this.memory, this.recorder, this, queueOptions, this.quirks, deliver, this.completion)
        : tracer.queue(
            this.registers,
            this.memory,
            this.recorder,
            this,
            queueOptions,
            this.quirks,
            tracer.delivery('invalidation-completion', deliver),
            this.completion,
          );
    this.remapper = new InterruptRemapper(
      this.memory,
      this.config['aw-bits'],
      features,
      this.quirks.has('compatibility-interrupts-pass-without-cfi'),
      this.interruptEntries,
    );
    this.deliver = tracer === undefined ? deliver : tracer.delivery('device', deliver);
    this.maxAddressMask = capabilityField(caps, 'CAP', 'MAMV');
    this.pageInvalidationMaskTruncated = this.quirks.has('iotlb-page-invalidation-mask-truncated');
    this.hasInterruptRemapping = capabilityField(caps, 'ECAP', 'IR') === 1;
    tracer?.instrument(this);
  }

  /** How many times the trace sink threw: 0, or 1 after which it is no longer called (traceFailure says why). */
  get traceErrors(): number {
    return this.tracer?.errors ?? 0;
  }

  /** What the trace sink threw, if it did. */
  get traceFailure(): unknown {
    return this.tracer?.failure;
  }

  // ---- MMIO ----

  read(offset: number, size: 4): number;
  read(offset: number, size: 8): bigint;
  read(offset: number, size: AccessSize): number | bigint;
  read(offset: number, size: AccessSize): number | bigint {
    return this.registers.read(offset, size);
  }

  write(offset: number, size: AccessSize, value: number | bigint): void {
    this.registers.write(offset, size, value);
  }

  /** Device reset: registers to reset values, caches and latched pointers dropped. */
  reset(): void {
    this.completion.reset();
    this.registers.reset();
    this.contextCache.invalidateAll();
    this.scalable.invalidateAll();
    this.iotlb.invalidateAll();
    this.pagingStructures.invalidateAll();
    this.interruptEntries.invalidateAll();
    this.queue.reset();
    this.recorder.reset();
    this.virtualCommands?.reset();
    this.rootTable = 0;
    this.rootMode = 0;
    this.translationEnabled = false;
    this.interruptTable = 0n;
    this.domains.devicesChanged();
  }

  /**
   * An interrupt request (an MSI write by device `sid`): with IRE on it is remapped through the IRTE, else it
   * passes unchanged. Faults (0x20..0x26) are recorded like DMA faults, with the index in FRCD bits 63:48.
   * `origin` 'platform' is a request that carries no requester id (QEMU q35's I/O APIC under a split irqchip):
   * there is nothing to check the IRTE's SVT against, and `sid` only fills fault records.
   */
  remapInterrupt(request: InterruptRequest, origin: InterruptOrigin = 'message'): InterruptResult {
    const ires = (this.registers.readWordRaw(OFFSET.GSTS) & GSTS.IRES) !== 0;
    const cfis = (this.registers.readWordRaw(OFFSET.GSTS) & GSTS.CFIS) !== 0;
    // With IRE off every interrupt is taken as it is (compatibility format).
    if (!ires) return this.remapper.passThrough(request);
    const result = this.remapper.remap(request, {
      irta: this.interruptTable,
      compatibilityAllowed: cfis,
      verifySource: origin === 'message' || (origin === 'dma-write' && !this.quirks.has('interrupt-dma-writes-skip-source-id-check')),
      strictEntries: !this.quirks.has('irte-posted-and-xapic-destination-unchecked'),
    });
    if (result.ok) return result;
    if (result.fpd) return { ...result, recording: 'suppressed-fpd' };
    if (this.quirks.has('interrupt-remapping-faults-not-recorded')) return { ...result, recording: 'none' };
    // QEMU 10.0's interrupt window receives a plain DMA write without its requester id.
    const sid = origin === 'dma-write' && this.quirks.has('interrupt-dma-write-faults-recorded-with-sid-ffff') ? NO_REQUESTER_ID : request.sid;
    const recording = this.recorder.record({ sid, reason: result.reason, iova: BigInt(result.index ?? 0) << INDEX_SHIFT, write: true });
    return { ...result, recording };
  }

  /**
   * A device's interrupt request (a DWORD write to the interrupt range): remapped, then handed to the VMM.
   * `origin` says whether it came as an MSI or as a plain DMA write (only QEMU 7.2 tells them apart).
   */
  interruptRequest(request: InterruptRequest, origin: InterruptOrigin = 'message'): InterruptResult {
    const result = this.remapInterrupt(request, origin);
    if (result.ok) this.deliver(result.address, result.data);
    return result;
  }

  /** IRTA latched by the last SIRTP. */
  get interruptRemappingTable(): bigint {
    return this.interruptTable;
  }

  /** The descriptor count of the invalidation queue (2^QS pages), as latched when QI was last enabled. */
  get queueSize(): number {
    return this.queue.size;
  }

  /** What GCMD.SRTP and TE latched: the root table, RTADDR.TTM, translation on. */
  get latchedTranslation(): { readonly rootTable: number; readonly rootMode: number; readonly enabled: boolean } {
    return { rootTable: this.rootTable, rootMode: this.rootMode, enabled: this.translationEnabled };
  }

  /** Bytes per descriptor in the invalidation queue (16, or 32 with IQA.DW), as latched when QI was last enabled. */
  get queueDescriptorBytes(): number {
    return this.queue.descriptorBytes;
  }

  private onRegisterWrite(event: RegisterWriteEvent): void {
    const register = event.register;
    const upperOrWhole = event.size === 8 || event.offset === register.offset + 4;
    switch (register.offset) {
      case OFFSET.GCMD:
        this.command(Number(event.written));
        break;
      case OFFSET.CCMD:
        if (upperOrWhole) this.contextCommand();
        break;
      case OFFSET.IOTLB:
        if (upperOrWhole) this.iotlbCommand();
        break;
      case OFFSET.FSTS:
        this.recorder.afterStatusWrite();
        break;
      case OFFSET.FECTL:
        this.recorder.afterControlWrite();
        break;
      case OFFSET.IQA:
        this.queue.onIqaWrite();
        break;
      case OFFSET.IQT:
        this.queue.onIqtWrite();
        break;
      case OFFSET.ICS:
        this.queue.afterIcsWrite();
        break;
      case OFFSET.IECTL:
        this.queue.afterIectlWrite();
        break;
      case OFFSET.VCMD:
        if (upperOrWhole) this.virtualCommands?.execute();
        break;
      default:
        if (register.name.startsWith('FRCD') && register.name.endsWith('_HI')) this.recorder.afterRecordCleared();
    }
  }

  /** GCMD: one-shot commands act whenever their bit is written as 1; persistent enables follow the written value. */
  private command(value: number): void {
    const regs = this.registers;
    const wasEnabled = this.translationEnabled;
    if (value & GCMD.SRTP) {
      const [lo, hi] = splitRaw(regs.readRaw('RTADDR'));
      this.rootTable = getField64(lo, hi, RTADDR_FIELDS.f.RTA) * PAGE;
      this.rootMode = getField64(lo, hi, RTADDR_FIELDS.f.TTM);
      if (this.quirks.has('srtp-flushes-caches')) {
        this.contextCache.invalidateAll();
        this.scalable.invalidateAll();
        this.iotlb.invalidateAll();
        this.pagingStructures.invalidateAll();
      }
    }
    if (value & GCMD.SIRTP) {
      this.interruptTable = regs.readRaw('IRTA');
      regs.updateWordRaw(OFFSET.GSTS, 0, GSTS.IRTPS);
      // A new table makes every cached IRTE stale (QEMU also flushes here; later specs advertise it as ESIRTPS).
      this.interruptEntries.invalidateAll();
    }
    // WBF completes at once (CAP.RWBF is 0), so WBFS is never seen set.
    const te = (value & GCMD.TE) !== 0;
    this.translationEnabled = te;
    const qie = (value & GCMD.QIE) !== 0;
    const qies = (regs.readWordRaw(OFFSET.GSTS) & GSTS.QIES) !== 0;
    // The queue publishes QIES itself: enabling processes a tail that was set before (QEMU), so QIES must show first.
    if (qie !== qies) this.queue.setEnabled(qie);
    if (this.hasInterruptRemapping) {
      const ire = (value & GCMD.IRE) !== 0;
      regs.updateWordRaw(OFFSET.GSTS, ire ? 0 : GSTS.IRES, ire ? GSTS.IRES : 0);
      const cfi = (value & GCMD.CFI) !== 0 && !this.quirks.has('gcmd-cfi-ignored');
      regs.updateWordRaw(OFFSET.GSTS, cfi ? 0 : GSTS.CFIS, cfi ? GSTS.CFIS : 0);
    }
    // A new root table or TE toggled can move every device to another domain.
    if ((value & GCMD.SRTP) !== 0 || te !== wasEnabled) this.domains.devicesChanged();
    // RTPS and TES report the change done, host side included: a device moved away from a domain has lost its
    // mappings before the guest reads them. TES shows the latest TE, however many writes came meanwhile.
    const rootTableSet = (value & GCMD.SRTP) !== 0;
    this.completion.whenSettled(() => {
      const tes = this.translationEnabled;
      regs.updateWordRaw(OFFSET.GSTS, tes ? 0 : GSTS.TES, (tes ? GSTS.TES : 0) | (rootTableSet ? GSTS.RTPS : 0));
    });
  }

  /**
   * From now on, architectural completions wait for `pending` (a host backend's outstanding work): a wait
   * descriptor's status write and completion event, CCMD.ICC and IOTLB.IVT clearing, GSTS.RTPS and TES. Register
   * writes themselves never wait, so a guest sees progress whatever a backend costs.
   */
  holdCompletionsWhile(pending: HostPending | undefined): void {
    this.completion.follow(pending);
  }

  private hostError(error: Error): void {
    if (this.onHostError !== undefined) return this.onHostError(error);
    this.hostErrors.push(error);
    if (this.hostErrors.length > HOST_ERROR_LOG_LIMIT) this.hostErrors.shift();
  }

  private get queuedInvalidation(): boolean {
    return (this.registers.readWordRaw(OFFSET.GSTS) & GSTS.QIES) !== 0;
  }

  /** CCMD with ICC: invalidate, report the granularity done in CAIG, clear ICC. Ignored (ICC stays) under QI. */
  private contextCommand(): void {
    const raw = this.registers.readRaw('CCMD');
    const f = CCMD_FIELDS.f;
    if (getFieldBig(raw, f.ICC) === 0n || this.queuedInvalidation) return;
    const [lo, hi] = splitRaw(raw);
    const granularity = getField64(lo, hi, f.CIRG);
    let done = 0;
    if (granularity === GRANULARITY.GLOBAL) {
      this.contextGlobal();
      done = granularity;
    } else if (granularity === GRANULARITY.DOMAIN) {
      this.contextDomain(getField64(lo, hi, f.DID));
      done = this.quirks.has('context-domain-invalidation-is-global') ? GRANULARITY.GLOBAL : granularity;
    } else if (granularity === GRANULARITY.SELECTIVE) {
      this.contextDevice(getField64(lo, hi, f.SID), getField64(lo, hi, f.FM));
      done = granularity;
    }
    this.completion.whenSettled(() => this.registers.writeRaw('CCMD', setFieldBig(setFieldBig(raw, f.ICC, 0), f.CAIG, done)));
  }

  /** IOTLB with IVT: invalidate (page-selective takes IVA), report IAIG, clear IVT. Ignored (IVT stays) under QI. */
  private iotlbCommand(): void {
    const raw = this.registers.readRaw('IOTLB');
    const f = IOTLB_FIELDS.f;
    if (getFieldBig(raw, f.IVT) === 0n || this.queuedInvalidation) return;
    const [lo, hi] = splitRaw(raw);
    const granularity = getField64(lo, hi, f.IIRG);
    const did = getField64(lo, hi, f.DID);
    let done = 0;
    if (granularity === GRANULARITY.GLOBAL) {
      this.iotlbGlobal();
      done = granularity;
    } else if (granularity === GRANULARITY.DOMAIN) {
      this.iotlbDomain(did);
      done = granularity;
    } else if (granularity === GRANULARITY.SELECTIVE) {
      const [alo, ahi] = splitRaw(this.registers.readRaw('IVA'));
      const ih = getField64(alo, ahi, IVA_FIELDS.f.IH) === 1;
      const ok = this.iotlbPages(did, getField64(alo, ahi, IVA_FIELDS.f.ADDR), getField64(alo, ahi, IVA_FIELDS.f.AM), ih);
      done = ok ? granularity : 0;
    }
    this.completion.whenSettled(() => this.registers.writeRaw('IOTLB', setFieldBig(setFieldBig(raw, f.IVT, 0), f.IAIG, done)));
  }

  // ---- InvalidationTarget ----

  /*
   * Context invalidation leaves the IOTLB alone: the spec has software follow it with an IOTLB invalidation (and,
   * in scalable mode, a PASID-cache invalidation first). PASID-cache entries are found through the context entry
   * (its PASID directory), so they are dropped with it here as well: more than the spec asks, never less.
   * Scalable context entries carry no DID: a domain-selective invalidation drops them all.
   */
  contextGlobal(): void {
    this.contextCache.invalidateAll();
    this.scalable.invalidateAll();
    this.domains.devicesChanged();
  }

  contextDomain(did: number): void {
    if (this.quirks.has('context-domain-invalidation-is-global')) this.contextCache.invalidateAll();
    else this.contextCache.invalidateDomain(did);
    this.scalable.invalidateAll();
    this.domains.devicesChanged();
  }

  contextDevice(sid: number, fm: number): void {
    this.contextCache.invalidateDevice(sid, fm);
    this.scalable.contexts.invalidateDevice(sid, fm);
    this.scalable.pasidEntries.invalidateDevice(sid, fm);
    this.domains.devicesChanged({ sid, functionMask: fm });
  }

  iotlbGlobal(): void {
    this.iotlb.invalidateAll();
    this.pagingStructures.invalidateAll();
    this.domains.mappingsInvalidated();
  }

  iotlbDomain(did: number): void {
    this.iotlb.invalidateDomain(did);
    this.pagingStructures.invalidateDomain(did);
    this.domains.mappingsInvalidated(did);
  }

  /**
   * Page-selective: the IOTLB's leaves in the range, and the paging-structure entries covering it unless IH says
   * that no non-leaf entry changed (the spec lets those stay; the IOTLB holds leaves only, so IH changes nothing there).
   */
  iotlbPages(did: number, pfn: number, am: number, ih?: boolean): boolean {
    if (am > this.maxAddressMask) return false;
    this.iotlb.invalidatePages(did, pfn, am);
    if (this.pageInvalidationMaskTruncated) this.iotlb.invalidatePagesAgreeingInBitsAmTo7(did, pfn, am);
    // Asked first, so that a domain without paging-structure entries costs the descriptor one load.
    const structures = this.pagingStructures;
    if (ih !== true && structures.mayHold(did)) structures.invalidatePages(did, Math.floor(pfn * INVERSE_PAGES_PER_REGION), am);
    // Skipped while no domain is alive: the call would box the page number (a double) once per descriptor.
    if (this.domains.domainCount !== 0) this.domains.mappingsInvalidated(did, alignedFirstPage(pfn, am), POWERS_OF_TWO[am]!);
    return true;
  }

  /** PASID-based IOTLB invalidation of a whole PASID: first-stage and nested translations of (DID, PASID). */
  pasidIotlb(did: number, pasid: number): void {
    this.iotlb.invalidatePasid(did, pasid);
    this.virtualCommands?.pasids.invalidated(pasid);
    this.domains.mappingsInvalidated(did, undefined, undefined, pasid);
  }

  /** PASID-based page-selective IOTLB invalidation; false when AM exceeds CAP.MAMV. IH: only leaves are cached. */
  pasidIotlbPages(did: number, pasid: number, pfn: number, am: number): boolean {
    if (am > this.maxAddressMask) return false;
    this.iotlb.invalidatePasidPages(did, pasid, pfn, am);
    this.virtualCommands?.pasids.invalidated(pasid);
    this.domains.mappingsInvalidated(did, alignedFirstPage(pfn, am), POWERS_OF_TWO[am]!, pasid);
    return true;
  }

  pasidCacheGlobal(): void {
    this.scalable.pasidEntries.invalidateAll();
    this.virtualCommands?.pasids.invalidated('all');
    this.domains.devicesChanged();
  }

  pasidCacheDomain(did: number): void {
    this.scalable.pasidEntries.invalidateDomain(did);
    this.domains.devicesChanged();
  }

  pasidCachePasid(did: number, pasid: number): void {
    this.scalable.pasidEntries.invalidatePasid(did, pasid);
    this.virtualCommands?.pasids.invalidated(pasid);
    this.domains.devicesChanged();
  }

  /** A wait descriptor completed: everything queued before it is done, so PASIDs freed and invalidated before it may be reused. */
  waitCompleted(): void {
    this.virtualCommands?.pasids.fenceCompleted();
  }

  /** PASID-based device-TLB invalidation: the unit models no device TLBs, so a valid request has nothing to drop. */
  pasidDeviceTlb(_sid: number, _pasid: number): void {}

  interruptEntryCache(global: boolean, index: number, mask: number): void {
    if (global) this.interruptEntries.invalidateAll();
    else this.interruptEntries.invalidateIndex(index, mask);
  }

  // ---- domains (for host backends) ----

  /**
   * Follows the domain that `sid`'s requests (with `pasid`, or without PASID) translate through: `listener` hears
   * it at once and after every move (context/PASID-cache invalidation, SRTP, TE). Its mappings are re-read on each
   * IOTLB invalidation that covers it, once per domain.
   */
  watchDevice(sid: number, listener: DeviceDomainListener, pasid?: number): () => void {
    requireSource(sid, pasid);
    return this.domains.watchDevice(sid, listener, pasid);
  }

  private resolveDomain(sid: number, pasid: number | undefined): DomainDescriptor | undefined {
    const withoutPasid = pasid === undefined;
    if (!this.translationEnabled) return withoutPasid ? { kind: 'identity', did: 0, inputWidth: 52, withoutPasid } : undefined;
    if (this.rootMode === TTM.SCALABLE && this.scalableOffered) return this.resolveScalableDomain(sid, pasid);
    if (this.rootMode !== TTM.LEGACY || !withoutPasid) return undefined;
    const found = this.walker.lookupContext(this.rootTable, sid);
    if (!found.ok) return undefined;
    const context = found.context;
    if (context.tt === TT.PASS_THROUGH) return { kind: 'identity', did: context.did, inputWidth: this.config['aw-bits'], withoutPasid };
    return {
      kind: 'second-stage',
      did: context.did,
      withoutPasid,
      secondStage: { table: context.tableAddress, levels: context.levels, inputWidth: Math.log2(context.limit) },
    };
  }

  private resolveScalableDomain(sid: number, pasid: number | undefined): DomainDescriptor | undefined {
    const resolved = this.scalable.resolve(this.rootTable, sid, pasid);
    if (resolved === undefined) return undefined;
    const { context, entry } = resolved;
    const common = { did: entry.did, pasid: entry.pasid, withoutPasid: pasid === undefined };
    const secondStage = { table: entry.ssTable, levels: entry.ssLevels, inputWidth: entry.ssInputWidth };
    const firstStage = {
      table: entry.fsTable,
      levels: entry.fsLevels,
      wpe: entry.wpe,
      eafe: entry.eafe,
      supervisor: pasid === undefined && context.ridPrivileged,
    };
    switch (entry.pgtt) {
      case PASID_PGTT.FIRST_STAGE:
        return { ...common, kind: 'first-stage', firstStage };
      case PASID_PGTT.SECOND_STAGE:
        return { ...common, kind: 'second-stage', secondStage };
      case PASID_PGTT.NESTED:
        return { ...common, kind: 'nested', firstStage, secondStage };
      case PASID_PGTT.PASS_THROUGH:
        return { ...common, kind: 'identity', inputWidth: this.config['aw-bits'] };
      default:
        return undefined;
    }
  }

  // ---- translation ----

  /** Translates one request; a failure has already been recorded (unless FPD, TE off or the ring says otherwise). */
  translate(request: TranslationRequest): TranslationResult {
    const { sid, iova } = request;
    requireSource(sid, request.pasid);
    // The one BigInt step: below 2^52 the IOVA is an exact number (any MGAW is smaller); -1 stands for beyond.
    const input = iova >= 0n && iova < UNTRANSLATED_LIMIT ? bigToNumber(iova) : BEYOND;
    // Requests without PASID to the interrupt range are interrupt requests, never DMA-remapped (spec 3.14).
    if (input >= INTERRUPT_RANGE_START && input < INTERRUPT_RANGE_END && request.pasid === undefined) {
      return this.failure(request, faultRecord(FR.INTERRUPT_ADDRESS, 'request', false), 'none');
    }
    if (!this.translationEnabled) {
      if (input === BEYOND) return this.failure(request, faultRecord(FR.ADDRESS_BEYOND_MGAW, 'request', false), 'none');
      // Without remapping there is no PASID table to resolve a PASID through: such requests are unsupported.
      if (request.pasid !== undefined)
        return this.failure(request, faultRecord(SM_TTM0_PASID_REQUEST, 'request', false, { pasid: request.pasid }), 'none');
      return { ok: true, address: input, pageSize: PAGE, readable: true, writable: true };
    }
    if (this.rootMode !== TTM.LEGACY) {
      if (this.rootMode === TTM.SCALABLE && this.scalableOffered) return this.translateScalable(request);
      // TTM 10 is reserved and 11 (abort DMA) needs ECAP.ADMS: the root table pointer is invalid.
      return this.report(request, this.invalidRoot(request));
    }
    // Legacy tables have no PASID: a unit that could do scalable mode records 0x31; one that cannot never sees PASIDs.
    if (request.pasid !== undefined) return this.legacyPasidRequest(request);
    let context = this.contextCache.get(sid);
    if (context === undefined) {
      const found = this.walker.lookupContext(this.rootTable, sid);
      if (!found.ok) return this.report(request, found);
      context = found.context;
      this.contextCache.set(context);
    }
    // context.limit is at most 2^MGAW, so this is also the MGAW check.
    if (input === BEYOND || input >= context.limit) return this.report(request, beyondWidth(context.fpd));
    if (context.tt === TT.PASS_THROUGH) return { ok: true, address: input, pageSize: PAGE, readable: true, writable: true };
    return this.translatePage(request, context, input);
  }

  /**
   * Walks `request` afresh, as the unit would on a cache miss, and hands every structure entry read to `trace`:
   * what `viommu explain` renders. Nothing is cached, recorded or counted; A/D flags are set as a walk sets them.
   * The result says where the walk stopped: the architectural reason (before compat quirks rename it) and level.
   */
  traceRequest(request: TranslationRequest, trace: WalkTraceSink): TracedWalk {
    requireSource(request.sid, request.pasid);
    const mode = !this.translationEnabled
      ? 'off'
      : this.rootMode === TTM.LEGACY
        ? 'legacy'
        : this.rootMode === TTM.SCALABLE && this.scalableOffered
          ? 'scalable'
          : 'invalid-root';
    if (mode === 'scalable') {
      const result = this.scalable.translate(this.rootTable, request, trace);
      if (result.ok)
        return { mode, ok: true, address: result.address, pageSize: result.pageSize, readable: result.readable, writable: result.writable };
      return { mode, ok: false, fault: result };
    }
    if (mode === 'legacy') {
      const found = this.walker.lookupContext(this.rootTable, request.sid, trace);
      if (!found.ok) return { mode, ok: false, fault: found };
      const input = request.iova >= 0n && request.iova < UNTRANSLATED_LIMIT ? bigToNumber(request.iova) : Infinity;
      if (input >= found.context.limit) return { mode, ok: false, fault: beyondWidth(found.context.fpd) };
      if (found.context.tt === TT.PASS_THROUGH) return { mode, ok: true, address: input, pageSize: PAGE, readable: true, writable: true };
      const page = this.walker.walk(found.context, input, request.write, trace);
      if (!page.ok) return { mode, ok: false, fault: page };
      return {
        mode,
        ok: true,
        address: page.address + (input % page.pageSize),
        pageSize: page.pageSize,
        readable: page.readable,
        writable: page.writable,
      };
    }
    if (mode === 'off') return { mode, ok: true, address: bigToNumber(request.iova), pageSize: PAGE, readable: true, writable: true };
    return { mode, ok: false, fault: this.invalidRoot(request) };
  }

  private legacyPasidRequest(request: TranslationRequest): TranslationResult {
    const fault = faultRecord(SM_TTM0_PASID_REQUEST, 'request', false, { pasid: request.pasid });
    if (!this.scalableOffered) return this.failure(request, fault, 'none');
    return this.report(request, fault);
  }

  /** The IOTLB hit, kept small so that it compiles into translate(); anything else goes to walkPage(). */
  private translatePage(request: TranslationRequest, context: CachedContext, input: number): TranslationResult {
    const pfn = Math.floor(input / PAGE);
    const iotlb = this.iotlb;
    const hit = iotlb.findSlot(context.did, pfn);
    if (hit >= 0 && (request.write ? iotlb.slotWritable(hit) : iotlb.slotReadable(hit))) {
      // The offset from the entry's first page, not input % pageSize: % on a double above 2^31 is slow.
      const address = iotlb.slotAddress(hit) + (input - iotlb.slotPfn(hit) * PAGE);
      return { ok: true, address, pageSize: iotlb.slotPageSize(hit), readable: iotlb.slotReadable(hit), writable: iotlb.slotWritable(hit) };
    }
    this.missInput[0] = input;
    return this.walkPage(request, context, hit >= 0);
  }

  /**
   * An IOTLB miss (or a hit without the right): walk, check, cache. V8 compiles it on its own, with the walk and
   * the IOTLB insert inlined: it is larger than V8 inlines (460 bytes of bytecode), so translate() spends its
   * inlining budget on the IOTLB hit. Hence the IOVA comes through missInput: as an argument, a double would be a
   * new heap number on every call.
   */
  private walkPage(request: TranslationRequest, context: CachedContext, cached: boolean): TranslationResult {
    const input = this.missInput[0]!;
    const pfn = Math.floor(input / PAGE);
    const write = request.write;
    if (cached && this.quirks.has('iotlb-hit-without-permission-not-recorded')) {
      return this.failure(request, faultRecord(write ? FR.WRITE : FR.READ, 'second-stage', context.fpd, { unrecorded: true }), 'none');
    }
    // The spec: a cached entry without the right is a fault like an uncached one; walking again reports it.
    const walker = this.walker;
    const failed = walker.walkLeafCached(
      context,
      Math.floor(input * INVERSE_REGION_BYTES),
      (input * INVERSE_PAGE) & PAGE_INDEX_MASK,
      write,
      this.pagingStructures,
    );
    if (failed !== undefined) return this.report(request, failed);
    const pageAddress = walker.leafAddress;
    const pageSize = walker.leafPageSize;
    const readable = walker.leafReadable;
    const writable = walker.leafWritable;
    // A 4 KiB page needs no alignment: skip the divisions a large page's first page number costs.
    const pagesPerEntry = pageSize === PAGE ? 1 : pageSize / PAGE;
    const firstPfn = pagesPerEntry === 1 ? pfn : Math.floor(pfn / pagesPerEntry) * pagesPerEntry;
    const address = pageAddress + (input - firstPfn * PAGE);
    if (isInterruptAddress(address)) return this.report(request, faultRecord(FR.INTERRUPT_ADDRESS, 'output', context.fpd));
    if (!overlapsInterruptRange(pageAddress, pageSize)) {
      this.iotlb.insertSecondStage(context.did, firstPfn, pageAddress, pageSize, readable, writable);
    }
    return { ok: true, address, pageSize, readable, writable };
  }

  private translateScalable(request: TranslationRequest): TranslationResult {
    const result = this.scalable.translate(this.rootTable, request);
    if (result.ok) return result;
    let fault = result;
    if (this.quirks.has('scalable-faults-use-legacy-reasons')) {
      const reason = legacyReason(fault.reason, this.config.compat, fault.stage === 'first-stage');
      if (reason !== fault.reason) fault = withFault(fault, { reason });
    }
    if (fault.unrecorded === true) return this.failure(request, fault, 'none');
    if (fault.fpd) return this.failure(request, fault, 'suppressed-fpd');
    // PP and PV say which PASID a request carried; requests without PASID have none (QEMU 7.2 records RID_PASID).
    const pasid = request.pasid ?? (fault.pastContext && this.quirks.has('scalable-rid-pasid-recorded-as-pasid') ? fault.pasid : undefined);
    const outcome = this.recorder.record({
      sid: request.sid,
      reason: fault.reason,
      iova: request.iova,
      write: request.write,
      pasid,
      pastContext: fault.pastContext,
    });
    return this.failure(request, fault, outcome);
  }

  /** The fault a root table pointer the unit cannot use (TTM reserved, or abort-DMA without ADMS) raises. */
  private invalidRoot(request: TranslationRequest): FaultRecord {
    return faultRecord(this.scalableOffered ? SM_ROOT_TABLE_ADDRESS_INVALID : FR.ROOT_TABLE_INVALID, 'root', false, { pasid: request.pasid });
  }

  /** Records `fault` (unless FPD) with the request's PASID. */
  private report(request: TranslationRequest, fault: FaultRecord): TranslationFailure {
    if (fault.fpd) return this.failure(request, fault, 'suppressed-fpd');
    const outcome = this.recorder.record({
      sid: request.sid,
      reason: fault.reason,
      iova: request.iova,
      write: request.write,
      pasid: request.pasid,
      pastContext: fault.pastContext,
    });
    return this.failure(request, fault, outcome);
  }

  private failure(request: TranslationRequest, fault: FaultRecord, recording: TranslationFailure['recording']): TranslationFailure {
    const base = {
      ok: false as const,
      reason: fault.reason,
      sid: request.sid,
      iova: request.iova,
      write: request.write,
      notPresent: fault.notPresent,
      recording,
      fault,
    };
    const level = faultLevel(fault);
    return level === undefined ? base : { ...base, level };
  }

  // ---- DMA ----

  /**
   * A device's DMA view through this unit: page-by-page translation, all or nothing. DWORD writes to the
   * interrupt range are interrupt messages (remapped, then delivered through onInterrupt once the whole write
   * has been accepted); reads there are illegal requests. With `tag`, every request carries that PASID (and its
   * privilege and execute bits): PCIe PASID-prefixed requests, translated through the PASID's entry; the
   * interrupt range is then ordinary input.
   */
  dmaSpace(sid: number, tag?: PasidTag): DmaSpace {
    requireSource(sid, tag?.pasid);
    return {
      read: (address, into) => {
        const staging = new Uint8Array(into.length);
        this.dma(sid, tag, address, into.length, 'read', (piece) => {
          // Zero pieces (QEMU 7.2's reads of the interrupt range) stay as the staging buffer was made.
          return piece.kind === 'zeros' || this.memory.tryRead(piece.address, staging.subarray(piece.position, piece.position + piece.count));
        });
        into.set(staging);
      },
      write: (address, data) => {
        const undo: Array<[number, Uint8Array]> = [];
        const messages: InterruptRequest[] = [];
        try {
          this.dma(sid, tag, address, data.length, 'write', (piece) => {
            const bytes = data.subarray(piece.position, piece.position + piece.count);
            if (piece.kind === 'interrupt') {
              const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
              for (let at = 0; at < piece.count; at += MSI_BYTES) {
                messages.push({ sid, address: piece.address + at, data: view.getUint32(at, true) });
              }
              return true;
            }
            const before = new Uint8Array(piece.count);
            if (!this.memory.tryRead(piece.address, before)) return false;
            if (!this.memory.tryWrite(piece.address, bytes)) return false;
            undo.push([piece.address, before]);
            return true;
          });
        } catch (error) {
          for (const [gpa, before] of undo.reverse()) this.memory.tryWrite(gpa, before);
          throw error;
        }
        // A blocked interrupt is recorded by the remapping (unless compat says otherwise), never reported to the writer.
        for (const message of messages) this.interruptRequest(message, 'dma-write');
      },
    };
  }

  /** Translates every page first (faults recorded, nothing moved), then moves the pieces. */
  private dma(sid: number, tag: PasidTag | undefined, address: bigint, length: number, access: DmaAccess, move: (piece: DmaPiece) => boolean): void {
    if (address < 0n || address + BigInt(length) > IOVA_LIMIT) {
      throw new DmaFault(address, length, access, 'beyond the 64-bit IOVA space', EFAULT);
    }
    const pieces: DmaPiece[] = [];
    const write = access === 'write';
    let position = 0;
    while (position < length) {
      const iova = address + BigInt(position);
      // Only requests without PASID can be interrupt requests; with a PASID the range is translated as any other.
      if (tag === undefined && iova >= INTERRUPT_RANGE_FIRST && iova < INTERRUPT_RANGE_LIMIT) {
        const at = Number(iova);
        const count = Math.min(length - position, INTERRUPT_RANGE_END - at);
        pieces.push({ kind: this.interruptRangePiece(address, length, access, at, count), address: at, position, count });
        position += count;
        continue;
      }
      const result = this.translate(tag === undefined ? { sid, iova, write } : { sid, iova, write, ...tag });
      if (!result.ok) {
        const permission = isPermissionFault(result.reason) && !result.notPresent;
        throw new DmaFault(address, length, access, describeFaultReason(result.reason), permission ? EPERM : EFAULT);
      }
      let count = Math.min(length - position, result.pageSize - (result.address % result.pageSize));
      // A large page may run on into the interrupt range: stop there, so that the next piece is translated (and faults).
      if (result.address < INTERRUPT_RANGE_START && result.address + count > INTERRUPT_RANGE_START) {
        count = INTERRUPT_RANGE_START - result.address;
      }
      pieces.push({ kind: 'ram', address: result.address, position, count });
      position += count;
    }
    for (const piece of pieces) {
      if (!move(piece)) {
        throw new DmaFault(address, length, access, `no ${write ? 'writable ' : ''}guest RAM at 0x${piece.address.toString(16)}`, EFAULT);
      }
    }
  }

  /** What a transfer piece inside 0xfee00000-0xfeefffff is; illegal requests (spec 3.14) throw, unrecorded. */
  private interruptRangePiece(address: bigint, length: number, access: DmaAccess, at: number, count: number): DmaPiece['kind'] {
    if (access === 'write') {
      if (at % MSI_BYTES === 0 && count % MSI_BYTES === 0) return 'interrupt';
      throw new DmaFault(address, length, access, 'a write to the interrupt address range that is not whole DWORDs', EFAULT);
    }
    if (this.quirks.has('interrupt-range-read-returns-zeros')) return 'zeros';
    throw new DmaFault(address, length, access, 'a read of the interrupt address range (an illegal request)', EFAULT);
  }
}

/**
 * The codes QEMU 7.2 records for scalable-mode faults (quirk scalable-faults-use-legacy-reasons), as measured by
 * test/oracle/differential-scalable.test.ts: legacy codes for the root, context and paging faults, and 0x58
 * (its VTD_FR_PASID_TABLE_INV) for every PASID directory and PASID entry fault.
 */
const LEGACY_REASON_IN_QEMU_7_2: ReadonlyMap<number, number> = new Map([
  [faultCode('SM_ROOT_ENTRY_NOT_PRESENT'), FR.ROOT_ENTRY_NOT_PRESENT],
  [faultCode('SM_CONTEXT_ENTRY_NOT_PRESENT'), FR.CONTEXT_ENTRY_NOT_PRESENT],
  ...(
    [
      'SM_PASID_DIRECTORY_ACCESS',
      'SM_PASID_DIRECTORY_NOT_PRESENT',
      'SM_PASID_DIRECTORY_RESERVED',
      'SM_PASID_ENTRY_ACCESS',
      'SM_PASID_ENTRY_NOT_PRESENT',
      'SM_PASID_ENTRY_RESERVED',
      'SM_PASID_ENTRY_INVALID',
    ] as const
  ).map((name) => [faultCode(name), faultCode('SM_PASID_ENTRY_ACCESS')] as const),
  [faultCode('SM_WRITE'), FR.WRITE],
  [faultCode('SM_READ'), FR.READ],
]);

/**
 * The codes QEMU 10.0.2 records for scalable-mode faults (quirk scalable-faults-use-legacy-reasons), as measured by
 * test/oracle/differential-qemu10.test.ts and differential-first-stage.test.ts: legacy codes for root and context
 * entries not present and for the read and write faults of second-stage walks; PASID-structure faults and
 * first-stage faults keep their scalable-mode codes.
 */
const LEGACY_REASON_IN_QEMU_10_0: ReadonlyMap<number, number> = new Map([
  [faultCode('SM_ROOT_ENTRY_NOT_PRESENT'), FR.ROOT_ENTRY_NOT_PRESENT],
  [faultCode('SM_CONTEXT_ENTRY_NOT_PRESENT'), FR.CONTEXT_ENTRY_NOT_PRESENT],
  [faultCode('SM_WRITE'), FR.WRITE],
  [faultCode('SM_READ'), FR.READ],
]);

/** A legacy input at or beyond the width the context entry's AW gives: the context decides, once the walk's input reaches it. */
function beyondWidth(fpd: boolean): FaultRecord {
  return faultRecord(FR.ADDRESS_BEYOND_MGAW, 'context', fpd, { pastContext: true });
}

/** The reason QEMU records for scalable-mode fault `reason` under `compat` (quirk scalable-faults-use-legacy-reasons). */
function legacyReason(reason: number, compat: Compat, firstStage: boolean): number {
  if (compat !== 'qemu-10.0') return LEGACY_REASON_IN_QEMU_7_2.get(reason) ?? reason;
  if (firstStage) return reason;
  return LEGACY_REASON_IN_QEMU_10_0.get(reason) ?? reason;
}

/** One contiguous part of a DMA transfer: guest RAM, interrupt messages, or (QEMU 7.2) zeros. */
interface DmaPiece {
  readonly kind: 'ram' | 'interrupt' | 'zeros';
  /** Guest-physical address (RAM) or interrupt-range address. */
  readonly address: number;
  /** Offset of the piece in the transfer. */
  readonly position: number;
  readonly count: number;
}
