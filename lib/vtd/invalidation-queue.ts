/** Queued invalidation: IQA/IQH/IQT, descriptor fetch and dispatch, wait descriptors and the completion event. */

import { writeU32 } from '../byte-layout';
import { PAGE_BYTES } from '../memory/geometry';
import type { EntryWords, GuestMemory } from '../memory/guest-memory';
import { fieldReader, getField, getField64, hasReservedBits, readField, readWordField, reservedWords, wordFieldReader } from './bitfield';
import type { QuirkId } from './compat-quirks';
import type { FaultRecorder } from './fault-recorder';
import type { HostCompletion } from './host-completion';
import type { RegisterFile } from './register-file';
import { EVENT_CONTROL, FSTS, GSTS, ICS, OFFSET } from './register-bits';
import { IQA_FIELDS, QUEUE_POINTER_FIELDS } from './registers';
import {
  CONTEXT_CACHE_INVALIDATE,
  INTERRUPT_ENTRY_CACHE_INVALIDATE,
  INVALIDATION_DESCRIPTORS,
  INVALIDATION_WAIT,
  IOTLB_INVALIDATE,
  PASID_CACHE_INVALIDATE,
  PASID_DEVICE_TLB_INVALIDATE,
  PASID_IOTLB_INVALIDATE,
  descriptorKind,
  type DescriptorKind,
} from './structures';

/** The cache operations invalidation requests map to (shared by register-based and queued invalidation). */
export interface InvalidationTarget {
  contextGlobal(): void;
  contextDomain(did: number): void;
  contextDevice(sid: number, fm: number): void;
  iotlbGlobal(): void;
  iotlbDomain(did: number): void;
  /** Returns false when AM exceeds CAP.MAMV (the request is invalid). */
  iotlbPages(did: number, pfn: number, am: number, ih: boolean): boolean;
  interruptEntryCache(global: boolean, index: number, mask: number): void;
  /** PASID-based IOTLB invalidation (descriptor 6), all of one PASID in a domain. */
  pasidIotlb(did: number, pasid: number): void;
  /** PASID-based IOTLB invalidation of 2^am pages; false when AM exceeds CAP.MAMV. */
  pasidIotlbPages(did: number, pasid: number, pfn: number, am: number, ih: boolean): boolean;
  /** PASID-cache invalidation (descriptor 7) by scope. */
  pasidCacheGlobal(): void;
  pasidCacheDomain(did: number): void;
  pasidCachePasid(did: number, pasid: number): void;
  /** PASID-based device-TLB invalidation (descriptor 8) of one PASID (or all, `global`) of device `sid`. */
  pasidDeviceTlb(sid: number, pasid: number, global: boolean): void;
  /** A wait descriptor was processed (its status written, its event raised): every descriptor before it is done. */
  waitCompleted(): void;
}

export interface QueueOptions {
  /** ECAP.SMTS: 256-bit descriptors are allowed. */
  readonly wideDescriptors: boolean;
  readonly features: ReadonlySet<string>;
}

const NARROW_BYTES = 16;
const WIDE_BYTES = 32;
const GRANULARITY = { GLOBAL: 1, DOMAIN: 2, SELECTIVE: 3 } as const;
/** PASID-cache invalidation granularities (G = 2 is reserved). */
const PASID_CACHE_GRANULARITY = { DOMAIN: 0, PASID: 1, GLOBAL: 3 } as const;
const NO_DESCRIPTOR = 0;
const TYPE = {
  CONTEXT: 1,
  IOTLB: 2,
  DEVICE_TLB: 3,
  INTERRUPT_ENTRY: 4,
  WAIT: 5,
  PASID_IOTLB: 6,
  PASID_CACHE: 7,
  PASID_DEVICE_TLB: 8,
  PAGE_GROUP_RESPONSE: 9,
} as const;

/** Descriptor types are 7 bits (TYPE_HI:TYPE_LO). */
const DESCRIPTOR_TYPES = 2 ** 7;
/**
 * Readers for what every descriptor is dispatched on and for the IOTLB descriptor, which guests queue by the
 * thousand (one per unmapped page): decoding them field by field through getField was most of the cost.
 * The type fields are common to every descriptor layout; IOTLB_INVALIDATE's copies serve for all.
 */
const TYPE_LO = wordFieldReader(IOTLB_INVALIDATE.f.TYPE_LO);
const TYPE_HI = wordFieldReader(IOTLB_INVALIDATE.f.TYPE_HI);
const TYPE_LO_BITS = IOTLB_INVALIDATE.f.TYPE_LO.width;
const IOTLB = {
  G: wordFieldReader(IOTLB_INVALIDATE.f.G),
  DID: wordFieldReader(IOTLB_INVALIDATE.f.DID),
  ADDR: fieldReader(IOTLB_INVALIDATE.f.ADDR),
  AM: wordFieldReader(IOTLB_INVALIDATE.f.AM),
  IH: wordFieldReader(IOTLB_INVALIDATE.f.IH),
} as const;

export class InvalidationQueue {
  private base = 0;
  private entries = 1 << 8;
  private wide = false;
  private head = 0;
  /** The descriptor being executed (a traced queue reads it too). */
  protected readonly words = new Uint32Array(8);
  private readonly entry: EntryWords = { lo: 0, hi: 0 };
  /** Reserved-bit masks and layouts by descriptor type (arrays: looked up once per descriptor). */
  private readonly reserved: (Uint32Array | undefined)[] = new Array<Uint32Array | undefined>(DESCRIPTOR_TYPES).fill(undefined);
  private readonly kinds: (DescriptorKind | undefined)[] = new Array<DescriptorKind | undefined>(DESCRIPTOR_TYPES).fill(undefined);
  private readonly status = new Uint8Array(4);

  constructor(
    private readonly regs: RegisterFile,
    private readonly memory: GuestMemory,
    private readonly recorder: FaultRecorder,
    private readonly target: InvalidationTarget,
    private readonly options: QueueOptions,
    private readonly quirks: ReadonlySet<QuirkId>,
    private readonly deliver: (address: number, data: number) => void,
    private readonly completion: HostCompletion,
  ) {
    for (const kind of INVALIDATION_DESCRIPTORS) {
      this.reserved[kind.type] = reservedWords(kind.fields, { features: options.features });
    }
    for (let type = 0; type < DESCRIPTOR_TYPES; type++) this.kinds[type] = descriptorKind(type);
  }

  reset(): void {
    this.base = 0;
    this.entries = PAGE_BYTES / NARROW_BYTES;
    this.wide = false;
    this.head = 0;
    this.tailOffset = 0;
    this.qie = false;
    this.writtenIqa = 0n;
    this.lastType = NO_DESCRIPTOR;
    this.holdToken++;
    this.heldAtWait = false;
  }

  /** Descriptors the queue holds (2^QS pages), as latched when queued invalidation was last enabled. */
  get size(): number {
    return this.entries;
  }

  get headIndex(): number {
    return this.head;
  }

  get descriptorBytes(): number {
    return this.wide ? WIDE_BYTES : NARROW_BYTES;
  }

  /** Mirrors GSTS.QIES. */
  private qie = false;
  /** IQT as the guest last wrote it, in 16-byte units. */
  private tailOffset = 0;
  /** IQA as the guest last wrote it (the register may show something else under compat=qemu-7.2). */
  private writtenIqa = 0n;
  /** Type of the last descriptor fetched (QEMU 7.2 only lets QI be disabled after a wait descriptor). */
  private lastType = NO_DESCRIPTOR;
  /** Processing stopped at a wait descriptor until host backends settle (IQH names the wait descriptor meanwhile). */
  private heldAtWait = false;
  /** Identifies the current hold: a reset or a disable makes an older hold's resumption a no-op. */
  private holdToken = 0;

  /**
   * IQA was written. Base, size and width take effect when queued invalidation is enabled (changing them while
   * it is enabled is undefined by the spec), as in QEMU.
   */
  onIqaWrite(): void {
    this.writtenIqa = this.regs.readRaw('IQA');
    this.showIqa();
  }

  /** QEMU 7.2 shows the base latched at the last enable, plus the written QS, and never DW. */
  private showIqa(): void {
    if (!this.quirks.has('iqa-readback-shows-latched-base')) return;
    const qs = BigInt(this.writtenIqa) & BigInt(IQA_FIELDS.f.QS.maxValue);
    this.regs.writeRaw('IQA', BigInt(this.base) | qs);
  }

  private wideRequested(): boolean {
    const [lo, hi] = [Number(BigInt.asUintN(32, this.writtenIqa)), Number(this.writtenIqa >> 32n)];
    return getField64(lo, hi, IQA_FIELDS.f.DW) === 1 && this.options.wideDescriptors;
  }

  /** IQT was written: take the new tail and process while enabled and no IQE is pending. */
  onIqtWrite(): void {
    const raw = Number(BigInt.asUintN(32, this.regs.readRaw('IQT')));
    const offset = getField64(raw, 0, QUEUE_POINTER_FIELDS.f.QH);
    if ((this.qie ? this.wide : this.wideRequested()) && offset % 2 !== 0) {
      // A 256-bit queue needs 32-byte aligned offsets; bit 4 set is an error (QEMU VTD_IQT_QT_256_RSV_BIT).
      this.recorder.raiseQueueError();
      return;
    }
    this.tailOffset = offset;
    if (this.qie && !this.heldAtWait && !(this.regs.readWordRaw(OFFSET.FSTS) & FSTS.IQE)) this.process();
  }

  /**
   * GCMD.QIE changed; publishes GSTS.QIES. Enabling latches IQA and processes a tail that was set before (QEMU
   * does; Windows relies on it). Disabling resets IQH to 0, or is refused under compat=qemu-7.2 unless the queue
   * is drained and ended with a wait descriptor.
   */
  setEnabled(enable: boolean): void {
    if (enable) {
      const [lo, hi] = [Number(BigInt.asUintN(32, this.writtenIqa)), Number(this.writtenIqa >> 32n)];
      this.base = getField64(lo, hi, IQA_FIELDS.f.IQA) * PAGE_BYTES;
      this.wide = this.wideRequested();
      // Shifts keep the count a small integer (QS is at most 7): with ** it is a double, and so is every index from it.
      this.entries = (PAGE_BYTES << getField64(lo, hi, IQA_FIELDS.f.QS)) / this.descriptorBytes;
      this.head %= this.entries;
      this.qie = true;
      this.regs.updateWordRaw(OFFSET.GSTS, 0, GSTS.QIES);
      this.showIqa();
      this.publishHead();
      if (this.tailOffset !== 0 && !(this.regs.readWordRaw(OFFSET.FSTS) & FSTS.IQE)) this.process();
      return;
    }
    const drained = this.head === this.tailIndex() && this.lastType === TYPE.WAIT;
    if (this.quirks.has('qi-disable-needs-drained-queue') && !drained) return;
    this.qie = false;
    this.regs.updateWordRaw(OFFSET.GSTS, GSTS.QIES, 0);
    this.holdToken++;
    this.heldAtWait = false;
    this.head = 0;
    this.publishHead();
  }

  /** The tail as a descriptor index; -1 when it cannot be one (odd offset in a 256-bit queue). */
  private tailIndex(): number {
    if (!this.wide) return this.tailOffset;
    return this.tailOffset % 2 === 0 ? this.tailOffset / 2 : -1;
  }

  private publishHead(): void {
    this.regs.writeRaw('IQH', BigInt(this.head * this.descriptorBytes));
  }

  /** Runs descriptors from head to tail: at most one pass over the queue per call, however hostile. */
  private process(): void {
    const tail = this.tailIndex();
    if (tail < 0 || tail >= this.entries) {
      this.recorder.raiseQueueError();
      return;
    }
    let budget = this.entries;
    while (this.head !== tail && budget-- > 0) {
      if (!this.fetch(this.base + this.head * this.descriptorBytes)) {
        this.publishHead();
        this.recorder.raiseQueueError();
        return;
      }
      // A wait descriptor reports completion of everything before it, host side included: the guest may reuse
      // what it unmapped once the status is written, so the device must have lost those mappings by then.
      const type = this.fetchedType();
      if (type === TYPE.WAIT && this.completion.busy) {
        this.holdAtWait();
        return;
      }
      if (!this.execute(type)) {
        this.publishHead();
        this.recorder.raiseQueueError();
        return;
      }
      // A compare, not % this.entries: cheaper per descriptor.
      this.head = this.head + 1 === this.entries ? 0 : this.head + 1;
    }
    this.publishHead();
  }

  private fetchedType(): number {
    return readWordField(this.words, TYPE_LO) | (readWordField(this.words, TYPE_HI) << TYPE_LO_BITS);
  }

  private holdAtWait(): void {
    this.publishHead();
    this.heldAtWait = true;
    const token = ++this.holdToken;
    this.completion.whenSettled(() => {
      if (token !== this.holdToken) return;
      this.heldAtWait = false;
      if (this.qie && !(this.regs.readWordRaw(OFFSET.FSTS) & FSTS.IQE)) this.process();
    });
  }

  private fetch(address: number): boolean {
    const count = this.descriptorBytes / 8;
    for (let i = 0; i < count; i++) {
      if (!this.memory.readEntry(address + i * 8, this.entry)) return false;
      this.words[2 * i] = this.entry.lo;
      this.words[2 * i + 1] = this.entry.hi;
    }
    return true;
  }

  /** Dispatches this.words, a descriptor of `type`; false means an invalid descriptor (IQE). A traced unit's queue extends it (unit-trace.ts). */
  protected execute(type: number): boolean {
    const w = this.words;
    this.lastType = type;
    const kind = this.kinds[type];
    if (kind === undefined) return false;
    if ((type === TYPE.PASID_IOTLB || type === TYPE.PASID_CACHE) && this.quirks.has('pasid-descriptors-accepted-unchecked')) {
      // QEMU 7.2 takes both as no-ops; flushing what either could name stays on the safe side.
      const did = getField(w, PASID_IOTLB_INVALIDATE.f.DID);
      if (type === TYPE.PASID_IOTLB) {
        this.target.iotlbDomain(did);
        this.target.pasidIotlb(did, getField(w, PASID_IOTLB_INVALIDATE.f.PASID));
      } else {
        this.target.pasidCacheGlobal();
      }
      return true;
    }
    if (kind.wideOnly && !this.wide) return false;
    const unchecked = type === TYPE.INTERRUPT_ENTRY && this.quirks.has('iec-descriptor-reserved-bits-ignored');
    if (!unchecked && hasReservedBits(w, this.reserved[type]!)) return false;
    if (this.wide && !unchecked && (w[4] || w[5] || w[6] || w[7])) return false;
    switch (type) {
      case TYPE.CONTEXT: {
        const f = CONTEXT_CACHE_INVALIDATE.f;
        const g = getField(w, f.G);
        if (g === GRANULARITY.GLOBAL) this.target.contextGlobal();
        else if (g === GRANULARITY.DOMAIN) this.target.contextDomain(getField(w, f.DID));
        else if (g === GRANULARITY.SELECTIVE) this.target.contextDevice(getField(w, f.SID), getField(w, f.FM));
        else return false;
        return true;
      }
      case TYPE.IOTLB: {
        const g = readWordField(w, IOTLB.G);
        if (g === GRANULARITY.GLOBAL) this.target.iotlbGlobal();
        else if (g === GRANULARITY.DOMAIN) this.target.iotlbDomain(readWordField(w, IOTLB.DID));
        else if (g === GRANULARITY.SELECTIVE) {
          return this.target.iotlbPages(
            readWordField(w, IOTLB.DID),
            readField(w, IOTLB.ADDR),
            readWordField(w, IOTLB.AM),
            readWordField(w, IOTLB.IH) === 1,
          );
        } else return false;
        return true;
      }
      case TYPE.INTERRUPT_ENTRY: {
        const f = INTERRUPT_ENTRY_CACHE_INVALIDATE.f;
        this.target.interruptEntryCache(getField(w, f.G) === 0, getField(w, f.IIDX), getField(w, f.IM));
        return true;
      }
      case TYPE.WAIT:
        return this.wait();
      case TYPE.PASID_IOTLB: {
        // G = 2: all of the PASID; G = 3: pages in the PASID. First-stage and nested entries only (spec 6.5.2.4).
        const f = PASID_IOTLB_INVALIDATE.f;
        const g = getField(w, f.G);
        const did = getField(w, f.DID);
        const pasid = getField(w, f.PASID);
        if (g === GRANULARITY.DOMAIN) this.target.pasidIotlb(did, pasid);
        else if (g === GRANULARITY.SELECTIVE)
          return this.target.pasidIotlbPages(did, pasid, getField(w, f.ADDR), getField(w, f.AM), getField(w, f.IH) === 1);
        else return false;
        return true;
      }
      case TYPE.PASID_CACHE: {
        const f = PASID_CACHE_INVALIDATE.f;
        const g = getField(w, f.G);
        if (g === PASID_CACHE_GRANULARITY.DOMAIN) this.target.pasidCacheDomain(getField(w, f.DID));
        else if (g === PASID_CACHE_GRANULARITY.PASID) this.target.pasidCachePasid(getField(w, f.DID), getField(w, f.PASID));
        else if (g === PASID_CACHE_GRANULARITY.GLOBAL) this.target.pasidCacheGlobal();
        else return false;
        return true;
      }
      case TYPE.PASID_DEVICE_TLB: {
        const f = PASID_DEVICE_TLB_INVALIDATE.f;
        this.target.pasidDeviceTlb(getField(w, f.SID), getField(w, f.PASID), getField(w, f.G) === 1);
        return true;
      }
      case TYPE.DEVICE_TLB:
      case TYPE.PAGE_GROUP_RESPONSE:
        // No device TLBs or page requests are modelled: a well-formed request has nothing to drop.
        return true;
      default:
        return false;
    }
  }

  private wait(): boolean {
    const w = this.words;
    const f = INVALIDATION_WAIT.f;
    if (getField(w, f.SW)) {
      const data = getField(w, f.SDATA);
      writeU32(this.status, 0, data);
      if (!this.memory.tryWrite(getField(w, f.SADDR) * 2 ** f.SADDR.addressShift!, this.status)) return false;
    }
    if (getField(w, f.IF)) this.completionEvent();
    this.target.waitCompleted();
    return true;
  }

  /** ICS.IWC and the invalidation-completion MSI (held in IECTL.IP while masked). */
  private completionEvent(): void {
    if (this.regs.readWordRaw(OFFSET.ICS) & ICS.IWC) return;
    this.regs.updateWordRaw(OFFSET.ICS, 0, ICS.IWC);
    const iectl = this.regs.updateWordRaw(OFFSET.IECTL, 0, EVENT_CONTROL.IP);
    if (iectl & EVENT_CONTROL.IM) return;
    this.sendCompletion();
  }

  private sendCompletion(): void {
    this.regs.updateWordRaw(OFFSET.IECTL, EVENT_CONTROL.IP, 0);
    this.deliver(this.regs.readWordRaw(OFFSET.IEADDR), this.regs.readWordRaw(OFFSET.IEDATA));
  }

  /** ICS written: clearing IWC also clears a held completion event. */
  afterIcsWrite(): void {
    if (!(this.regs.readWordRaw(OFFSET.ICS) & ICS.IWC)) this.regs.updateWordRaw(OFFSET.IECTL, EVENT_CONTROL.IP, 0);
  }

  /** IECTL written: unmasking with IP set delivers the held event. */
  afterIectlWrite(): void {
    const iectl = this.regs.readWordRaw(OFFSET.IECTL);
    if (iectl & EVENT_CONTROL.IP && !(iectl & EVENT_CONTROL.IM)) this.sendCompletion();
  }
}
