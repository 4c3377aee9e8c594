/**
 * Which compat=qemu-10.0 quirks the unit cannot act on yet. Some QEMU 10.0 quirks act in files of the unit this
 * project changes separately (lib/vtd/unit.ts, lib/vtd/scalable-translation.ts): until they are wired there, an
 * in-process probe per quirk says so, the differential harness holds our compat peer to the outcomes without them,
 * and excuses what they change (within their fields) with a note naming the change still needed. Once a probe
 * sees the quirk act, every value must be equal again, with no list to keep up to date.
 */
import type { QuirkId } from '../../lib/vtd/compat-quirks';
import { faultCode } from '../../lib/vtd/fault-reasons';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import { PASID_PGTT } from '../../lib/vtd/structures';
import { ScalableGuest } from '../vtd/scalable-guest';
import { SID } from '../vtd/unit-guest';

const FIRST_STAGE_UNIT = 'x-scalable-mode=on,x-flts=on,aw-bits=48,compat=qemu-10.0';
const A = 1n << 5n;
const D = 1n << 6n;

const WALKER_WIRING = 'lib/vtd/scalable-translation.ts: ScalableTranslatorOptions gets `readonly quirks?: ReadonlySet<QuirkId>`, '
  + 'the constructor passes it on: `new FirstStageWalker(memory, { addressWidth: options.addressWidth, fs1gp: options.fs1gp, quirks: options.quirks })`; '
  + 'lib/vtd/unit.ts adds `quirks: this.quirks` to the ScalableTranslator options';

/** A first-stage unit with RID_PASID 0 of PGTT 1 over `top`, and the 4 KiB pages `map` adds. */
function firstStageUnit(map: (guest: ScalableGuest, top: number) => void): ScalableGuest {
  const guest = new ScalableGuest(FIRST_STAGE_UNIT);
  guest.scalableContext(SID, { PASIDE: 0 });
  const top = guest.writer.page();
  guest.pasidEntry(SID, 0, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 2, FSPTPTR: top / 4096, DID: 3 });
  map(guest, top);
  guest.enableScalable();
  return guest;
}

const firstStage = (props: string): boolean => /(^|,)x-flts=on/.test(props);

interface Wiring {
  readonly quirks: readonly QuirkId[];
  /** The unit properties under which the missing part matters (the quirk may act elsewhere already). */
  readonly matters: (props: string) => boolean;
  /** What must change, for the note. */
  readonly change: string;
  /** True once the unit acts on the quirks. */
  readonly probe: () => boolean;
}

const WIRINGS: readonly Wiring[] = [
  {
    quirks: ['first-stage-rights-checked-per-level', 'first-stage-flags-written-only-when-all-clear', 'first-stage-canonical-check-uses-pasid-aw'],
    matters: firstStage,
    change: WALKER_WIRING,
    // A write through a leaf whose A is set leaves D clear once the walker has the quirks.
    probe: () => {
      let leaf = 0;
      const guest = firstStageUnit((g, top) => {
        g.writer.mapFirst(top, 4, 0x1000n, 0x400000, { extra: A });
        leaf = g.writer.firstEntryAddress(top, 4, 0x1000n, 1);
      });
      guest.request(0x1000, { write: true });
      return (guest.memory.readU64(leaf) & D) === 0n;
    },
  },
  {
    quirks: ['iotlb-hit-without-permission-not-recorded'],
    // Legacy and second-stage hits act on it already; first-stage hits do not.
    matters: firstStage,
    change: 'lib/vtd/scalable-translation.ts translatePage: the unrecorded-hit test drops `!firstStage`, i.e. '
      + '`if (hit !== undefined && this.hitWithoutPermissionUnrecorded && (write ? !hit.writable : !hit.readable))`',
    // A write hitting a read-only first-stage translation an earlier read cached goes unrecorded.
    probe: () => {
      const guest = firstStageUnit((g, top) => g.writer.mapFirst(top, 4, 0x2000n, 0x401000, { rw: false }));
      guest.request(0x2000);
      const write = guest.request(0x2000, { write: true });
      return !write.ok && write.recording === 'none';
    },
  },
  {
    quirks: ['scalable-faults-use-legacy-reasons'],
    matters: (props) => /(^|,)x-scalable-mode=on/.test(props),
    change: 'lib/vtd/unit.ts translateScalable: with compat=qemu-10.0 the quirk maps only root and context not present '
      + '(0x39 -> 1, 0x41 -> 2) and the write/read faults of second-stage walks (0x85 -> 5, 0x86 -> 6); PASID directory and PASID '
      + 'entry faults keep their own codes (QEMU 10.0 records 0x51, 0x58, 0x59, 0x5b) and so do first-stage faults (0x85 for a '
      + 'write): e.g. a map LEGACY_REASON_IN_QEMU_10_0 without the SM_PASID_* entries, chosen when this.config.compat is '
      + 'qemu-10.0, and SM_WRITE/SM_READ mapped only when the fault is not a first-stage one',
    // A PASID entry that is not present: 0x59 once the unit knows 10.0's codes (7.2's map gives 0x58).
    probe: () => {
      const guest = new ScalableGuest('x-scalable-mode=on,compat=qemu-10.0');
      guest.scalableContext(SID, { PASIDE: 0 });
      guest.pasidEntry(SID, 0, { P: 0 });
      guest.enableScalable();
      const result = guest.request(0x1000);
      return !result.ok && result.reason === faultCode('SM_PASID_ENTRY_NOT_PRESENT');
    },
  },
  {
    quirks: ['interrupt-dma-write-faults-recorded-with-sid-ffff'],
    matters: () => true,
    change: "lib/vtd/unit.ts remapInterrupt: the fault record's sid is 0xffff for origin 'dma-write' when "
      + "this.quirks.has('interrupt-dma-write-faults-recorded-with-sid-ffff') (`sid: origin === 'dma-write' && ... ? 0xffff : request.sid`)",
    // A DMA write to the interrupt range naming a not-present IRTE: recorded with SID 0xffff once wired.
    probe: () => {
      const guest = new ScalableGuest('compat=qemu-10.0');
      const table = guest.writer.page();
      guest.unit.write(OFFSET.IRTA, 8, BigInt(table) | 7n);
      guest.command(GCMD.SIRTP);
      guest.command(GCMD.IRE);
      const result = guest.unit.interruptRequest({ sid: SID, address: 0xfee0_0010, data: 0 }, 'dma-write');
      return !result.ok && (guest.frcdHi() & 0xffffn) === 0xffffn;
    },
  },
];

let probed: Array<{ wiring: Wiring; acts: boolean }> | undefined;

function probeAll(): Array<{ wiring: Wiring; acts: boolean }> {
  probed ??= WIRINGS.map((wiring) => ({ wiring, acts: wiring.probe() }));
  return probed;
}

/** The compat=qemu-10.0 quirks the unit does not act on yet under `props` (empty once everything is wired). */
export function unreproducedQemu10Quirks(props: string): QuirkId[] {
  return pendingQemu10Wiring(props).flatMap((p) => [...p.quirks]);
}

/** For each quirk not acted on yet under `props`, what must change. */
export function pendingQemu10Wiring(props: string): Array<{ quirks: readonly QuirkId[]; change: string }> {
  return probeAll().filter((p) => !p.acts && p.wiring.matters(props)).map((p) => ({ quirks: p.wiring.quirks, change: p.wiring.change }));
}
