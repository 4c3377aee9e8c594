/** Queued invalidation: IQA/IQH/IQT, descriptor fetch and dispatch, wait descriptors and the completion event. */

import type { EntryWords, GuestMemory } from '../memory/guest-memory';
import { getField, getField64, hasReservedBits, reservedWords } from './bitfield';
import type { QuirkId } from './compat-quirks';
import type { FaultRecorder } from './fault-recorder';
import type { RegisterFile } from './register-file';
import { EVENT_CONTROL, FSTS, ICS, OFFSET } from './register-bits';
import { IQA_FIELDS, QUEUE_POINTER_FIELDS } from './registers';
import {
  CONTEXT_CACHE_INVALIDATE, INTERRUPT_ENTRY_CACHE_INVALIDATE, INVALIDATION_DESCRIPTORS, INVALIDATION_WAIT,
  IOTLB_INVALIDATE, PASID_IOTLB_INVALIDATE, descriptorKind, descriptorType,
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
}

export interface QueueOptions {
  /** ECAP.SMTS: 256-bit descriptors are allowed. */
  readonly wideDescriptors: boolean;
  readonly features: ReadonlySet<string>;
}

const PAGE_BYTES = 4096;
const NARROW_BYTES = 16;
const WIDE_BYTES = 32;
const GRANULARITY = { GLOBAL: 1, DOMAIN: 2, SELECTIVE: 3 } as const;
const TYPE = {
  CONTEXT: 1, IOTLB: 2, DEVICE_TLB: 3, INTERRUPT_ENTRY: 4, WAIT: 5, PASID_IOTLB: 6, PASID_CACHE: 7,
  PASID_DEVICE_TLB: 8, PAGE_GROUP_RESPONSE: 9,
} as const;

export class InvalidationQueue {
  private base = 0;
  private entries = 2 ** 8;
  private wide = false;
  private head = 0;
  private tail = 0;
  private readonly words = new Uint32Array(8);
  private readonly entry: EntryWords = { lo: 0, hi: 0 };
  private readonly reserved = new Map<number, Uint32Array>();
  private readonly status = new Uint8Array(4);

  constructor(
    private readonly regs: RegisterFile,
    private readonly memory: GuestMemory,
    private readonly recorder: FaultRecorder,
    private readonly target: InvalidationTarget,
    private readonly options: QueueOptions,
    private readonly quirks: ReadonlySet<QuirkId>,
    private readonly deliver: (address: number, data: number) => void,
  ) {
    for (const kind of INVALIDATION_DESCRIPTORS) {
      this.reserved.set(kind.type, reservedWords(kind.fields, { features: options.features }));
    }
  }

  reset(): void {
    this.base = 0;
    this.entries = PAGE_BYTES / NARROW_BYTES;
    this.wide = false;
    this.head = 0;
    this.tail = 0;
    this.qie = false;
  }

  /** Descriptors the queue holds (2^QS pages). */
  get size(): number {
    return this.entries;
  }

  get headIndex(): number {
    return this.head;
  }

  get descriptorBytes(): number {
    return this.wide ? WIDE_BYTES : NARROW_BYTES;
  }

  /** Mirrors GCMD.QIE as the unit last applied it. */
  private qie = false;

  /** IQA was written: latch base, size and width (QEMU 7.2 then shows the register without DW). */
  onIqaWrite(): void {
    const raw = this.regs.readRaw('IQA');
    const lo = Number(BigInt.asUintN(32, raw));
    const hi = Number(raw >> 32n);
    this.base = getField64(lo, hi, IQA_FIELDS.f.IQA) * PAGE_BYTES;
    this.wide = getField64(lo, hi, IQA_FIELDS.f.DW) === 1 && this.options.wideDescriptors;
    this.entries = (2 ** getField64(lo, hi, IQA_FIELDS.f.QS) * PAGE_BYTES) / this.descriptorBytes;
    // Moving an enabled queue is undefined by the spec; keeping the head inside the new queue keeps IQH meaningful.
    this.head %= this.entries;
    this.publishHead();
    if (this.quirks.has('iqa-readback-drops-dw')) {
      const dwBit = 1n << BigInt(IQA_FIELDS.f.DW.lsb);
      this.regs.writeRaw('IQA', raw & ~dwBit);
    }
  }

  /** IQT was written: take the new tail and process while enabled and no IQE is pending. */
  onIqtWrite(): void {
    const raw = Number(this.regs.readRaw('IQT'));
    const offset = getField64(raw, 0, QUEUE_POINTER_FIELDS.f.QH);
    if (this.wide && offset % 2 !== 0) {
      // A 256-bit queue needs 32-byte aligned offsets; bit 4 set is an error (QEMU VTD_IQT_QT_256_RSV_BIT).
      this.recorder.raiseQueueError();
      return;
    }
    this.tail = this.wide ? offset / 2 : offset;
    if (this.qie && !(this.regs.readWordRaw(OFFSET.FSTS) & FSTS.IQE)) this.process();
  }

  /** GCMD.QIE changed. Enabling with a tail already set processes it (QEMU); disabling resets IQH to 0. */
  setEnabled(enable: boolean): void {
    this.qie = enable;
    if (enable) {
      if (this.tail !== 0 && !(this.regs.readWordRaw(OFFSET.FSTS) & FSTS.IQE)) this.process();
    } else {
      this.head = 0;
      this.publishHead();
    }
  }

  private publishHead(): void {
    this.regs.writeRaw('IQH', BigInt(this.head * this.descriptorBytes));
  }

  /** Runs descriptors from head to tail: at most one pass over the queue per call, however hostile. */
  private process(): void {
    if (this.tail >= this.entries) {
      this.recorder.raiseQueueError();
      return;
    }
    let budget = this.entries;
    while (this.head !== this.tail && budget-- > 0) {
      if (!this.fetch(this.base + this.head * this.descriptorBytes) || !this.execute()) {
        this.publishHead();
        this.recorder.raiseQueueError();
        return;
      }
      this.head = (this.head + 1) % this.entries;
    }
    this.publishHead();
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

  /** Dispatches this.words; false means an invalid descriptor (IQE). */
  private execute(): boolean {
    const w = this.words;
    const type = descriptorType(w);
    const kind = descriptorKind(type);
    if (kind === undefined) return false;
    if (kind.qemuNeeds256Bit && !this.wide) return false;
    if (hasReservedBits(w, this.reserved.get(type)!)) return false;
    if (this.wide && (w[4] || w[5] || w[6] || w[7])) return false;
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
        const f = IOTLB_INVALIDATE.f;
        const g = getField(w, f.G);
        if (g === GRANULARITY.GLOBAL) this.target.iotlbGlobal();
        else if (g === GRANULARITY.DOMAIN) this.target.iotlbDomain(getField(w, f.DID));
        else if (g === GRANULARITY.SELECTIVE) {
          return this.target.iotlbPages(getField(w, f.DID), getField(w, f.ADDR), getField(w, f.AM), getField(w, f.IH) === 1);
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
        // Legacy-mode IOTLB entries have no PASID tag: flushing the domain covers every PASID in it.
        const f = PASID_IOTLB_INVALIDATE.f;
        const g = getField(w, f.G);
        if (g !== GRANULARITY.DOMAIN && g !== GRANULARITY.SELECTIVE) return false;
        this.target.iotlbDomain(getField(w, f.DID));
        return true;
      }
      case TYPE.DEVICE_TLB:
      case TYPE.PASID_CACHE:
      case TYPE.PASID_DEVICE_TLB:
      case TYPE.PAGE_GROUP_RESPONSE:
        // No device TLBs, PASID caches or page requests are modelled: a well-formed request has nothing to drop.
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
      new DataView(this.status.buffer).setUint32(0, data, true);
      if (!this.memory.tryWrite(getField(w, f.SADDR) * 2 ** f.SADDR.addressShift!, this.status)) return false;
    }
    if (getField(w, f.IF)) this.completionEvent();
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
    if ((iectl & EVENT_CONTROL.IP) && !(iectl & EVENT_CONTROL.IM)) this.sendCompletion();
  }
}
