/** Figures of the VT-d unit: IOTLB-hit translation, a 4-level walk miss, and queued page-selective invalidation. */
import type { EntryWords } from '../../lib/memory/guest-memory';
import { IOTLB_CAPACITY } from '../../lib/vtd/caches';
import { FSTS } from '../../lib/vtd/register-bits';
import type { TranslationRequest } from '../../lib/vtd/translation-result';
import { rate, rateExcludingSetup, type Figure } from '../harness';
import { BenchGuest, PAGE, pageInvalidation } from '../vtd-guest';

const ROUND_MS = 400;
const SID = 0x20;
const DID = 1;
/** The IOTLB's key space: DID * 2^36 + page number (IOVAs below 2^48). */
const PFN_SPAN = 2 ** 36;
/** DMA buffers live here on the IOVA side: far above 4 GiB, so the index a walk takes at every level is non-zero. */
const IOVA_BASE = 0x1234_5000_0000;
const TARGET_BASE = 0x40000;

let sink = 0;

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`vtd bench setup: ${what}`);
}

function requestsFor(pages: number): TranslationRequest[] {
  return Array.from({ length: pages }, (_, i) => ({ sid: SID, iova: BigInt(IOVA_BASE + i * PAGE + (i % 64) * 8), write: (i & 1) === 1 }));
}

/** vtd.a: translations that hit the IOTLB against Map.get over the same DID/page keys. */
function iotlbHitFigure(): Figure {
  const pages = 512;
  const guest = new BenchGuest(8 << 20);
  guest.addDevice(SID, DID);
  for (let i = 0; i < pages; i++) guest.map(SID, IOVA_BASE + i * PAGE, TARGET_BASE + i * PAGE);
  guest.enable();
  const unit = guest.unit;
  const requests = requestsFor(pages);
  for (const request of requests) check(unit.translate(request).ok, 'warm-up translation failed');
  check(unit.iotlb.size === pages, `IOTLB holds ${unit.iotlb.size} entries, expected ${pages}`);
  for (const request of requests) {
    const result = unit.translate(request);
    check(result.ok && result.address === TARGET_BASE + Number(request.iova - BigInt(IOVA_BASE)), 'wrong translation');
  }
  check(unit.iotlb.size === pages, 'a repeated translation missed the IOTLB');

  const pfns = Float64Array.from({ length: pages }, (_, i) => Math.floor((IOVA_BASE + i * PAGE) / PAGE));
  const map = new Map<number, { did: number; pfn: number; address: number; pageSize: number; readable: boolean; writable: boolean }>();
  for (let i = 0; i < pages; i++) {
    map.set(DID * PFN_SPAN + pfns[i]!, { did: DID, pfn: pfns[i]!, address: TARGET_BASE + i * PAGE, pageSize: PAGE, readable: true, writable: true });
  }
  return {
    id: 'vtd.a',
    title: 'IOTLB-hit translation (512 cached 4 KiB pages, one device)',
    subject: 'VtdUnit.translate({sid, iova, write}) hitting the IOTLB',
    baseline: 'Map.get(DID * 2^36 + page) over the same 512 keys',
    direction: 'cost',
    target: 3,
    unit: 'translations',
    async measure() {
      const subject = rate(() => {
        for (let i = 0; i < requests.length; i++) {
          const result = unit.translate(requests[i]!);
          if (result.ok) sink ^= result.address;
        }
        return requests.length;
      }, ROUND_MS);
      const baseline = rate(() => {
        for (let i = 0; i < pfns.length; i++) {
          const entry = map.get(DID * PFN_SPAN + pfns[i]!);
          if (entry !== undefined) sink ^= entry.address;
        }
        return pfns.length;
      }, ROUND_MS);
      return { subject, baseline };
    },
  };
}

/** vtd.b: every translation walks 4 levels (4x more pages cycled than the IOTLB holds) against 4 raw entry reads. */
function walkMissFigure(): Figure {
  const pages = 4 * IOTLB_CAPACITY;
  const guest = new BenchGuest(8 << 20);
  guest.addDevice(SID, DID);
  // A plain array of numbers, as a walk computes them (a Float64Array would make every address a double).
  const entries: number[] = [];
  for (let i = 0; i < pages; i++) entries.push(...guest.map(SID, IOVA_BASE + i * PAGE, TARGET_BASE + (i % 256) * PAGE));
  guest.enable();
  const unit = guest.unit;
  const requests = requestsFor(pages);
  // Two full cycles: the second proves that no page is still cached when its turn comes again.
  for (let pass = 0; pass < 2; pass++) {
    for (const request of requests) {
      const pfn = Math.floor(Number(request.iova) / PAGE);
      check(pass === 0 || unit.iotlb.lookup(DID, pfn) === undefined, 'a cycled page was still in the IOTLB');
      check(unit.translate(request).ok, 'translation failed');
    }
  }
  const memory = guest.memory;
  const out: EntryWords = { lo: 0, hi: 0 };
  return {
    id: 'vtd.b',
    title: '4-level second-stage walk on an IOTLB miss (aw-bits=48, 4,096 pages cycled through a 1,024-entry IOTLB)',
    subject: 'VtdUnit.translate missing the IOTLB: walk, checks, IOTLB insert',
    baseline: 'four GuestMemory.readEntry at the same entry addresses',
    direction: 'cost',
    target: 4,
    unit: 'walks',
    async measure() {
      const subject = rate(() => {
        for (let i = 0; i < requests.length; i++) {
          const result = unit.translate(requests[i]!);
          if (result.ok) sink ^= result.address;
        }
        return requests.length;
      }, ROUND_MS);
      const baseline = rate(() => {
        for (let i = 0; i < entries.length; i += 4) {
          memory.readEntry(entries[i]!, out);
          memory.readEntry(entries[i + 1]!, out);
          memory.readEntry(entries[i + 2]!, out);
          memory.readEntry(entries[i + 3]!, out);
          sink ^= out.lo;
        }
        return entries.length / 4;
      }, ROUND_MS);
      return { subject, baseline };
    },
  };
}

/**
 * vtd.c: one tail write makes the unit process 10,000 page-selective IOTLB descriptors. Before each batch (untimed)
 * the IOTLB is refilled to its 1,024 entries: 512 pages the batch invalidates and 512 pages of a second device's
 * domain that stay cached, as on a host where other devices keep translating.
 */
function queuedInvalidationFigure(): Figure {
  const batch = 10_000;
  const qs = 6; // 2^6 pages of 16-byte descriptors: 16,384 slots, room for a batch anywhere in the ring
  const slots = (2 ** qs * PAGE) / 16;
  const otherSid = 0x28;
  const otherDid = 2;
  const cachedPerDomain = IOTLB_CAPACITY / 2;
  const guest = new BenchGuest(16 << 20);
  guest.addDevice(SID, DID);
  guest.addDevice(otherSid, otherDid);
  for (let slot = 0; slot < slots; slot++) guest.map(SID, IOVA_BASE + slot * PAGE, TARGET_BASE);
  for (let i = 0; i < cachedPerDomain; i++) guest.map(otherSid, IOVA_BASE + i * PAGE, TARGET_BASE);
  guest.enable();
  const queue = guest.setupQueue(qs);
  for (let slot = 0; slot < slots; slot++) guest.putDescriptor(slot, pageInvalidation(DID, IOVA_BASE + slot * PAGE));
  const unit = guest.unit;
  const memory = guest.memory;
  const otherRequests = Array.from({ length: cachedPerDomain }, (_, i) => ({ sid: otherSid, iova: BigInt(IOVA_BASE + i * PAGE), write: false }));
  const slotRequests = Array.from({ length: slots }, (_, slot) => ({ sid: SID, iova: BigInt(IOVA_BASE + slot * PAGE), write: false }));
  let head = 0;
  const refill = (): void => {
    for (const request of otherRequests) unit.translate(request);
    for (let i = 0; i < cachedPerDomain; i++) unit.translate(slotRequests[(head + i) % slots]!);
  };
  const process = (): number => {
    head = (head + batch) % slots;
    guest.moveTail(head);
    return batch;
  };

  refill();
  check(unit.iotlb.size === IOTLB_CAPACITY, `IOTLB holds ${unit.iotlb.size} entries before a batch, expected ${IOTLB_CAPACITY}`);
  process();
  check(guest.queueHead === head && (guest.faultStatus & FSTS.IQE) === 0, 'the queue did not process the batch cleanly');
  check(unit.iotlb.size === cachedPerDomain, `IOTLB holds ${unit.iotlb.size} entries after a batch, expected ${cachedPerDomain}`);

  const out: EntryWords = { lo: 0, hi: 0 };
  let readHead = 0;
  return {
    id: 'vtd.c',
    title: 'queued invalidation: 10,000 page-selective IOTLB descriptors per tail write (IOTLB full before each batch)',
    subject: 'VtdUnit processing the descriptors after one IQT write',
    baseline: 'a loop reading the same 10,000 descriptors (two GuestMemory.readEntry each)',
    direction: 'cost',
    target: 3,
    unit: 'descriptors',
    async measure() {
      const subject = rateExcludingSetup(refill, process, ROUND_MS);
      const baseline = rateExcludingSetup(
        refill,
        () => {
          for (let i = 0; i < batch; i++) {
            const address = queue + ((readHead + i) % slots) * 16;
            memory.readEntry(address, out);
            sink ^= out.lo;
            memory.readEntry(address + 8, out);
            sink ^= out.hi;
          }
          readHead = (readHead + batch) % slots;
          return batch;
        },
        ROUND_MS,
      );
      if (sink === 0.5) console.log(sink); // keeps the loops from being optimised away
      return { subject, baseline };
    },
  };
}

/** One factory per figure: each builds only its own unit, so one figure's setup cannot shape another's code. */
export const VTD_FIGURES: Readonly<Record<string, () => Figure>> = {
  'vtd.a': iotlbHitFigure,
  'vtd.b': walkMissFigure,
  'vtd.c': queuedInvalidationFigure,
};
