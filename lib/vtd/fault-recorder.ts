/** Primary fault recording: the FRCD ring, FSTS.PFO/PPF/FRI, and the fault-event MSI gated by FECTL.IM/IP. */

import { encodeBig } from './bitfield';
import type { QuirkId } from './compat-quirks';
import type { RegisterFile } from './register-file';
import { EVENT_CONTROL, FSTS, OFFSET, wordMask } from './register-bits';
import { FRCD_HI_FIELDS, FRCD_LO_FIELDS, faultRecordRegister } from './registers';

/** What a DMA-remapping fault record holds. */
export interface FaultRecord {
  readonly sid: number;
  readonly reason: number;
  /** The faulting IOVA; the record keeps its page address. */
  readonly iova: bigint;
  readonly write: boolean;
  readonly pasid?: number | undefined;
  /**
   * The fault was found at or after the page walk (address checks, paging entries), not at the root or context
   * entry. Only QEMU 7.2's PV quirk tells the two apart.
   */
  readonly pastContext?: boolean;
}

export type RecordOutcome = 'recorded' | 'overflow' | 'collapsed' | 'dropped-pfo';

const F_MASK = wordMask(FRCD_HI_FIELDS.f.F);
/** Dword (within the 128-bit record) that holds F: the upper dword of the hi register. */
const F_DWORD = 8 + 4 * FRCD_HI_FIELDS.f.F.segments[0]!.word;
const SID_MASK = FRCD_HI_FIELDS.f.SID.maxValue;
const PAGE_MASK = ~((1n << BigInt(FRCD_LO_FIELDS.f.FI.addressShift!)) - 1n) & ((1n << 64n) - 1n);
/** QEMU 7.2's PV for requests without PASID (its PCI_NO_PASID cut to 16 bits), on faults past the context entry. */
const QEMU_NO_PASID_PV = 0xffff;
/** Status bits whose presence means software has an unserviced fault condition (spec 7.3.1). */
const PENDING_CONDITIONS = FSTS.PFO | FSTS.PPF | FSTS.IQE | FSTS.ICE | FSTS.ITE;

export class FaultRecorder {
  private next = 0;
  private readonly firstOffset: number;

  constructor(
    private readonly regs: RegisterFile,
    /** Number of FRCD registers (CAP.NFR + 1). */
    readonly slotCount: number,
    frcdOffset: number,
    private readonly quirks: ReadonlySet<QuirkId>,
    private readonly deliver: (address: number, data: number) => void,
  ) {
    this.firstOffset = frcdOffset;
  }

  reset(): void {
    this.next = 0;
  }

  /** Offset of FRCD[index] (its lo register). */
  slotOffset(index: number): number {
    return this.firstOffset + 16 * index;
  }

  private slotFull(index: number): boolean {
    return (this.regs.readWordRaw(this.slotOffset(index) + F_DWORD) & F_MASK) !== 0;
  }

  private slotSid(index: number): number {
    return this.regs.readWordRaw(this.slotOffset(index) + 8) & SID_MASK;
  }

  /** Records one fault as QEMU's vtd_report_dmar_fault does (spec 7.3.1), raising the fault event if due. */
  record(fault: FaultRecord): RecordOutcome {
    const fsts = this.regs.readWordRaw(OFFSET.FSTS);
    if (fsts & FSTS.PFO) return 'dropped-pfo';
    if (this.quirks.has('collapse-faults-from-pending-source')) {
      for (let i = 0; i < this.slotCount; i++) {
        if (this.slotFull(i) && this.slotSid(i) === (fault.sid & SID_MASK)) return 'collapsed';
      }
    }
    if (this.slotFull(this.next)) {
      this.regs.updateWordRaw(OFFSET.FSTS, 0, FSTS.PFO);
      this.raiseEvent(fsts);
      return 'overflow';
    }
    const hasPasid = fault.pasid !== undefined;
    const qemuPv = fault.pastContext === true && this.quirks.has('frcd-pv-ffff-without-pasid');
    const pv = hasPasid ? fault.pasid! : qemuPv ? QEMU_NO_PASID_PV : 0;
    const hi = encodeBig(FRCD_HI_FIELDS, {
      SID: fault.sid & SID_MASK,
      FR: fault.reason,
      PV: pv,
      PP: hasPasid ? 1 : 0,
      T: fault.write ? 0 : 1,
      F: 1,
    });
    const index = this.next;
    this.regs.writeRaw(faultRecordRegister(index, 'LO'), BigInt.asUintN(64, fault.iova) & PAGE_MASK);
    this.regs.writeRaw(faultRecordRegister(index, 'HI'), hi);
    this.next = (index + 1) % this.slotCount;
    if (fsts & FSTS.PPF) {
      // Software has not serviced the earlier faults yet: no new event, FRI keeps pointing at the first one.
      return 'recorded';
    }
    this.regs.updateWordRaw(OFFSET.FSTS, FSTS.FRI, ((index << FSTS.FRI_SHIFT) & FSTS.FRI) | FSTS.PPF);
    this.raiseEvent(fsts);
    return 'recorded';
  }

  /** Invalidation queue error: FSTS.IQE plus a fault event (QEMU vtd_handle_inv_queue_error). */
  raiseQueueError(): void {
    const fsts = this.regs.readWordRaw(OFFSET.FSTS);
    this.regs.updateWordRaw(OFFSET.FSTS, 0, FSTS.IQE);
    this.raiseEvent(fsts);
  }

  /** A fault event is generated only when no earlier condition was pending (`previous` is FSTS before the change). */
  private raiseEvent(previous: number): void {
    if (previous & PENDING_CONDITIONS) return;
    const fectl = this.regs.updateWordRaw(OFFSET.FECTL, 0, EVENT_CONTROL.IP);
    if (fectl & EVENT_CONTROL.IM) return;
    this.sendEvent();
  }

  private sendEvent(): void {
    this.regs.updateWordRaw(OFFSET.FECTL, EVENT_CONTROL.IP, 0);
    this.deliver(this.regs.readWordRaw(OFFSET.FEADDR), this.regs.readWordRaw(OFFSET.FEDATA));
  }

  /** After software cleared F bits: PPF follows the records; IP clears once nothing is pending. */
  afterRecordCleared(): void {
    let any = false;
    for (let i = 0; i < this.slotCount && !any; i++) any = this.slotFull(i);
    this.regs.updateWordRaw(OFFSET.FSTS, any ? 0 : FSTS.PPF, any ? FSTS.PPF : 0);
    if (!this.quirks.has('fectl-ip-kept-when-records-cleared')) this.clearPendingIfServiced();
  }

  /** After an FSTS write (W1C of PFO/IQE). */
  afterStatusWrite(): void {
    this.clearPendingIfServiced();
  }

  /** Unmasking with IP set delivers the held event. */
  afterControlWrite(): void {
    const fectl = this.regs.readWordRaw(OFFSET.FECTL);
    if (fectl & EVENT_CONTROL.IP && !(fectl & EVENT_CONTROL.IM)) this.sendEvent();
  }

  private clearPendingIfServiced(): void {
    if (!(this.regs.readWordRaw(OFFSET.FSTS) & PENDING_CONDITIONS)) {
      this.regs.updateWordRaw(OFFSET.FECTL, EVENT_CONTROL.IP, 0);
    }
  }

  /** Whether FRCD[index].F is set (tests, explain). */
  isPending(index: number): boolean {
    return this.slotFull(index);
  }
}
