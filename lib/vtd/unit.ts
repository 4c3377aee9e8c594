/** VtdUnit: one emulated DMAR unit in legacy and scalable mode, wiring registers and commands to translation, caches, invalidation, faults and IR. */

import { ViommuError } from '../errors';
import type { DmaSpace } from '../memory/dma-space';
import { PAGE_BYTES } from '../memory/geometry';
import type { GuestMemory } from '../memory/guest-memory';
import { bigToNumber, getField64, getFieldBig, setFieldBig } from './bitfield';
import type { DeviceDomainListener } from './address-space';
import { ContextCache, Iotlb, POWERS_OF_TWO, PagingStructureCache, alignDown } from './caches';
import { quirksFor, type QuirkId } from './compat-quirks';
import {
  capabilityField,
  computeCapabilities,
  enabledFeatures,
  resolveVtdConfig,
  vtdConfigFromString,
  MAX_PASID_BITS,
  type VtdConfig,
} from './config';
import { DomainRegistry, type DomainDescriptor } from './domains';
import type { EmbeddedIommu, IommuHost } from './embedding';
import { FaultRecorder, type RecordOutcome } from './fault-recorder';
import { faultCode } from './fault-reasons';
import { faultRecord, type FaultRecord } from './fault';
import { InterruptEntryCache } from './interrupt-entry-cache';
import { InterruptRemapper, type InterruptFault, type InterruptRequest, type RemappedInterrupt } from './interrupt-remap';
import { HostCompletion, type HostPending } from './host-completion';
import { InvalidationQueue, type InvalidationTarget } from './invalidation-queue';
import { LegacyTranslator } from './legacy-translator';
import { FR, LegacyWalker } from './legacy-walk';
import { MappingEnumerator } from './mapping-enumerator';
import { RegisterFile, type AccessSize, type RegisterWriteEvent } from './register-file';
import { ScalableTranslator } from './scalable-translation';
import {
  BEYOND_INPUT,
  TranslationFaults,
  failure,
  interruptRangeRefusal,
  requestInput,
  type TranslationRequest,
  type TranslationResult,
  type TranslationSuccess,
} from './translation-result';
import { translatedDmaSpace, type PasidTag, type UnitDmaPort } from './unit-dma';
import { VirtualCommandInterface, type VirtualCommandOptions } from './virtual-command';
import { UnitTracer, type UnitTraceSink } from './unit-trace';
import type { WalkTraceSink } from './walk-trace';
import { GCMD, GSTS, OFFSET } from './register-bits';
import { CCMD_FIELDS, IOTLB_FIELDS, IVA_FIELDS, RTADDR_FIELDS, type CapabilityValues } from './registers';

/** What a VMM gives the unit (IommuHost: guest memory, the interrupt sink, host errors), and how to build it. */
export interface VtdUnitOptions extends IommuHost {
  /** A resolved configuration, or QEMU-style properties such as 'aw-bits=48,caching-mode=on'. */
  readonly config?: VtdConfig | string;
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

/** The page-selective invalidation's page number to the paging-structure cache's 2 MiB region. */
const INVERSE_PAGES_PER_REGION = PAGE_BYTES / 2 ** 21;
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

export class VtdUnit implements EmbeddedIommu, InvalidationTarget {
  readonly config: VtdConfig;
  readonly capabilities: CapabilityValues;
  readonly quirks: ReadonlySet<QuirkId>;
  readonly registers: RegisterFile;
  /** Shared by both translators: entries carry the PASID and the kind of translation. */
  readonly iotlb = new Iotlb();
  /** Legacy-mode lookup, walk and caches. */
  private readonly legacy: LegacyTranslator;
  /** The legacy context cache (legacy.contexts), for inspection. */
  readonly contextCache: ContextCache;
  /** Leaf tables of the legacy second-stage walk by domain and 2 MiB region (legacy.pagingStructures); invalidated with the IOTLB. */
  readonly pagingStructures: PagingStructureCache;
  readonly interruptEntries = new InterruptEntryCache();
  private readonly memory: GuestMemory;
  private readonly recorder: FaultRecorder;
  private readonly faults: TranslationFaults;
  /** What dmaSpace() views reach the unit through. */
  private readonly dmaPort: UnitDmaPort;
  private readonly queue: InvalidationQueue;
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
  /** TE on with a legacy root table: translate()'s fast path, kept in step with the two by command(). */
  private legacyTranslation = false;
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
    const secondStage = new LegacyWalker(
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
    const hitWithoutPermissionUnrecorded = this.quirks.has('iotlb-hit-without-permission-not-recorded');
    this.faults = new TranslationFaults(this.recorder, this.quirks, this.config.compat);
    this.legacy = new LegacyTranslator(secondStage, this.iotlb, this.faults, {
      addressWidth: this.config['aw-bits'],
      hitWithoutPermissionUnrecorded,
    });
    this.contextCache = this.legacy.contexts;
    this.pagingStructures = this.legacy.pagingStructures;
    this.scalableOffered = capabilityField(caps, 'ECAP', 'SMTS') === 1;
    this.virtualCommands = this.config['x-vcmd']
      ? new VirtualCommandInterface(this.registers, {
          pasidBits: this.config['x-pasid-bits'] || MAX_PASID_BITS,
          ...(options.pasids ? { pasids: options.pasids } : {}),
        })
      : undefined;
    this.scalable = new ScalableTranslator(
      this.memory,
      secondStage,
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
        hitWithoutPermissionUnrecorded,
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
    const interruptReadsReturnZeros = this.quirks.has('interrupt-range-read-returns-zeros');
    this.dmaPort = {
      memory: this.memory,
      translate: (request) => this.translate(request),
      interruptWritten: (request) => void this.interruptRequest(request, 'dma-write'),
      interruptReadsReturnZeros,
    };
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
    this.legacy.invalidateAll();
    this.scalable.invalidateAll();
    this.iotlb.invalidateAll();
    this.interruptEntries.invalidateAll();
    this.queue.reset();
    this.recorder.reset();
    this.virtualCommands?.reset();
    this.rootTable = 0;
    this.rootMode = 0;
    this.translationEnabled = false;
    this.legacyTranslation = false;
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
      this.rootTable = getField64(lo, hi, RTADDR_FIELDS.f.RTA) * PAGE_BYTES;
      this.rootMode = getField64(lo, hi, RTADDR_FIELDS.f.TTM);
      if (this.quirks.has('srtp-flushes-caches')) {
        this.legacy.invalidateAll();
        this.scalable.invalidateAll();
        this.iotlb.invalidateAll();
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
    this.legacyTranslation = te && this.rootMode === TTM.LEGACY;
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

  /** A wait descriptor completed: everything queued before it is done, so PASIDs invalidated before it (before or after their free) may be reused. */
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
    if (this.rootMode === TTM.SCALABLE && this.scalableOffered)
      return this.scalable.resolveDomain(this.rootTable, sid, pasid, this.config['aw-bits']);
    if (this.rootMode !== TTM.LEGACY || !withoutPasid) return undefined;
    return this.legacy.resolveDomain(this.rootTable, sid);
  }

  // ---- translation ----

  /** Translates one request; a failure has already been recorded (unless FPD, TE off or the ring says otherwise). */
  translate(request: TranslationRequest): TranslationResult {
    requireSource(request.sid, request.pasid);
    if (this.legacyTranslation && request.pasid === undefined) return this.legacy.translate(this.rootTable, request);
    return this.translateOther(request);
  }

  /** Everything but a legacy request without PASID under translation: TE off, PASIDs under legacy tables, scalable mode, a bad root. */
  private translateOther(request: TranslationRequest): TranslationResult {
    const input = requestInput(request.iova);
    const refused = interruptRangeRefusal(request, input);
    if (refused !== undefined) return refused;
    if (!this.translationEnabled) return this.untranslated(request, input);
    if (this.rootMode === TTM.LEGACY) return this.legacyPasidRequest(request);
    if (this.rootMode === TTM.SCALABLE && this.scalableOffered) {
      const result = this.scalable.translate(this.rootTable, request);
      return result.ok ? result : this.faults.reportScalable(request, result);
    }
    // TTM 10 is reserved and 11 (abort DMA) needs ECAP.ADMS: the root table pointer is invalid.
    return this.faults.report(request, this.invalidRoot(request));
  }

  /**
   * Walks `request` afresh, as the unit would on a cache miss, and hands every structure entry read to `trace`:
   * what `viommu explain` renders. Nothing is cached, recorded or counted; A/D flags are set as a walk sets them.
   * The result says where the walk stopped: the architectural reason (before compat quirks rename it) and level.
   */
  traceRequest(request: TranslationRequest, trace: WalkTraceSink): TracedWalk {
    requireSource(request.sid, request.pasid);
    const converted = requestInput(request.iova);
    const input = converted === BEYOND_INPUT ? Infinity : converted;
    let mode: TracedWalk['mode'];
    let result: TranslationSuccess | FaultRecord;
    if (!this.translationEnabled) {
      mode = 'off';
      result = { ok: true, address: bigToNumber(request.iova), pageSize: PAGE_BYTES, readable: true, writable: true };
    } else if (this.rootMode === TTM.LEGACY) {
      mode = 'legacy';
      result = this.legacy.trace(this.rootTable, request, input, trace);
    } else if (this.rootMode === TTM.SCALABLE && this.scalableOffered) {
      mode = 'scalable';
      result = this.scalable.translate(this.rootTable, request, trace);
    } else {
      mode = 'invalid-root';
      result = this.invalidRoot(request);
    }
    if (!result.ok) return { mode, ok: false, fault: result };
    const { address, pageSize, readable, writable } = result;
    return { mode, ok: true, address, pageSize, readable, writable };
  }

  /** With translation off an IOVA is the guest-physical address; a PASID has no table to resolve it through. */
  private untranslated(request: TranslationRequest, input: number): TranslationResult {
    if (input === BEYOND_INPUT) return failure(request, faultRecord(FR.ADDRESS_BEYOND_MGAW, 'request', false), 'none');
    if (request.pasid !== undefined) return failure(request, faultRecord(SM_TTM0_PASID_REQUEST, 'request', false, { pasid: request.pasid }), 'none');
    return { ok: true, address: input, pageSize: PAGE_BYTES, readable: true, writable: true };
  }

  /** Legacy tables have no PASID: a unit that could do scalable mode records 0x31; one that cannot never sees PASIDs. */
  private legacyPasidRequest(request: TranslationRequest): TranslationResult {
    const fault = faultRecord(SM_TTM0_PASID_REQUEST, 'request', false, { pasid: request.pasid });
    if (!this.scalableOffered) return failure(request, fault, 'none');
    return this.faults.report(request, fault);
  }

  /** The fault a root table pointer the unit cannot use (TTM reserved, or abort-DMA without ADMS) raises. */
  private invalidRoot(request: TranslationRequest): FaultRecord {
    return faultRecord(this.scalableOffered ? SM_ROOT_TABLE_ADDRESS_INVALID : FR.ROOT_TABLE_INVALID, 'root', false, { pasid: request.pasid });
  }

  // ---- DMA ----

  /**
   * A device's DMA view through this unit (see unit-dma.ts): page-by-page translation, all or nothing; DWORD
   * writes to the interrupt range are interrupt messages. With `tag`, every request carries that PASID.
   */
  dmaSpace(sid: number, tag?: PasidTag): DmaSpace {
    requireSource(sid, tag?.pasid);
    return translatedDmaSpace(this.dmaPort, sid, tag);
  }
}
