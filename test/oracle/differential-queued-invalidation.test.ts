/** Differential: queued invalidation (wait descriptors, completion events, IQE and recovery), QEMU 7.2 vs viommu. */
import { GCMD } from '../../lib/vtd/register-bits';
import type { QuirkId } from '../../lib/vtd/compat-quirks';
import { descriptors as D, differential, OracleQueue, skipWithoutQemu, type OracleGuest } from './harness';

const IEC: QuirkId = 'iec-descriptor-reserved-bits-ignored';
const PASID: QuirkId = 'pasid-descriptors-accepted-unchecked';

/** Descriptors that must stop the queue (IQE), or that only QEMU 7.2 takes (tagged with the quirk). */
const BAD_DESCRIPTORS: ReadonlyArray<[string, bigint, QuirkId[]]> = [
  ['type 0', 0n, []],
  ['context-cache with granularity 0', D.context({ G: 0 }), []],
  ['context-cache with reserved bit 60', D.context({ G: 1 }) | (1n << 60n), []],
  ['context-cache with a reserved upper qword', D.context({ G: 1 }) | (1n << 64n), []],
  ['IOTLB with granularity 0', D.iotlb({ G: 0 }), []],
  ['IOTLB with reserved bit 8', D.iotlb({ G: 1 }) | (1n << 8n), []],
  ['IOTLB page with reserved bit 71', D.iotlb({ G: 3 }) | (1n << 71n), []],
  ['IOTLB page with AM 19 (above MAMV)', D.iotlb({ G: 3, AM: 19 }), []],
  ['IOTLB page with AM 63', D.iotlb({ G: 3, AM: 63 }), []],
  ['device-TLB without ECAP.DT', 3n, []],
  ['interrupt entry cache with reserved bit 5', D.interruptEntry({}) | (1n << 5n), [IEC]],
  ['interrupt entry cache with a reserved upper qword', D.interruptEntry({ G: 1 }) | (1n << 64n), [IEC]],
  ['wait with PD (no ECAP.PDS)', D.wait({ PD: 1 }), []],
  ['wait with reserved bit 8', D.wait({}) | (1n << 8n), []],
  ['wait with status address bits 1:0 set', D.wait({ SW: 1 }) | (1n << 64n), []],
  ['wait with a status address outside RAM', D.wait({ SW: 1, address: 0x40000000 }), []],
  ['PASID-based IOTLB in a 128-bit queue', 0x26n, [PASID]],
  ['PASID cache in a 128-bit queue', 0x37n, [PASID]],
  ['PASID-based device-TLB', 0x08n, []],
  ['page group response', 0x09n, []],
  ['type 0x10 (bits 11:9)', 0x200n, []],
];

async function queueScenario(guest: OracleGuest): Promise<void> {
  const status = guest.allocPage();
  const statusValue = async () => guest.peer.readl(status);
  const queue = await OracleQueue.create(guest, 1);
  await guest.observe('IQA', 'IQA before QIE', ['iqa-readback-shows-latched-base']);
  await guest.gcmd(GCMD.QIE);
  await guest.observe('GSTS', 'GSTS after QIE');
  await guest.observe('IQA', 'IQA after QIE');
  await guest.observe('IQH', 'IQH after QIE');
  const after = async (label: string, quirks: QuirkId[] = []) => {
    await guest.observe('IQH', `${label}: IQH`, quirks);
    await guest.observe('FSTS', `${label}: FSTS`, quirks);
    guest.note(`${label}: status`, await statusValue(), quirks, 'data');
  };

  // Every valid descriptor type, then a wait with status write.
  await queue.submit(D.context({ G: 1 }), D.iotlb({ G: 1, DW: 1, DR: 1 }), D.wait({ SW: 1, SDATA: 5, address: status }));
  await after('context + IOTLB + wait');
  await queue.submit(
    D.context({ G: 2, DID: 7 }),
    D.context({ G: 3, SID: 0x20, FM: 1 }),
    D.iotlb({ G: 2, DID: 9 }),
    D.iotlb({ G: 3, DID: 9, ADDR: 0x200, AM: 1, IH: 1 }),
    D.interruptEntry({ G: 0 }),
    D.interruptEntry({ G: 1, IIDX: 0x40, IM: 3 }),
    D.wait({ SW: 1, SDATA: 6, address: status }),
  );
  await after('every granularity');

  // IF: ICS.IWC, IECTL.IP while masked, the completion MSI once unmasked.
  await guest.setReg('IEDATA', 0x4567);
  await guest.setReg('IEADDR', 0xfee01000);
  await queue.submit(D.wait({ IF: 1 }));
  await after('wait with IF, masked');
  await guest.observe('ICS', 'ICS after IF');
  await guest.observe('IECTL', 'IECTL after IF (masked)');
  await guest.observeInterrupts('MSIs while masked');
  await guest.setReg('IECTL', 0);
  await guest.observe('IECTL', 'IECTL after unmasking');
  await guest.observeInterrupts('MSIs after unmasking');
  await queue.submit(D.wait({ IF: 1 }));
  await guest.observe('IECTL', 'IECTL after IF while IWC is still set');
  await guest.observeInterrupts('MSIs for IF while IWC is still set');
  await guest.setReg('ICS', 1);
  await guest.observe('ICS', 'ICS after W1C');
  // QEMU 7.2 aborts on a wait descriptor with both SW and IF (an assertion in vtd_process_wait_desc): one each.
  await queue.submit(D.wait({ IF: 1 }), D.wait({ SW: 1, SDATA: 7, address: status }));
  await after('wait with IF, then wait with SW, unmasked');
  await guest.observe('ICS', 'ICS');
  await guest.observe('IECTL', 'IECTL');
  await guest.observeInterrupts('MSIs for IF, unmasked');
  await guest.setReg('ICS', 1);
  await guest.setReg('IECTL', 0x80000000);
  await queue.submit(D.wait({ IF: 1 }));
  await guest.setReg('ICS', 1);
  await guest.observe('IECTL', 'IECTL after clearing IWC while masked');
  await guest.setReg('IECTL', 0);
  await guest.observeInterrupts('MSIs after unmasking a cleared completion');
  await queue.submit(D.wait({ FN: 1, SW: 1, SDATA: 8, address: status }));
  await after('wait with FN and SW');

  // Invalid descriptors: IQE, IQH parked on the bad one, further IQT writes ignored until IQE is cleared.
  await guest.setReg('FEDATA', 0x99);
  await guest.setReg('FEADDR', 0xfee02000);
  await guest.setReg('FECTL', 0);
  let serial = 0x100;
  for (const [label, value, quirks] of BAD_DESCRIPTORS) {
    const at = queue.tail;
    await queue.submit(value, D.wait({ SW: 1, SDATA: serial++, address: status }));
    await after(label, quirks);
    await guest.observe('FECTL', `${label}: FECTL`, quirks);
    await guest.observeInterrupts(`${label}: MSIs`, quirks);
    await queue.rewrite(at, D.context({ G: 1 }));
    await guest.setReg('IQT', BigInt(queue.tail * 16));
    await after(`${label}: IQT written again before clearing IQE`, quirks);
    await guest.setReg('FSTS', 0x10);
    await guest.observe('FECTL', `${label}: FECTL after clearing IQE`, quirks);
    await after(`${label}: after clearing IQE`, quirks);
    await guest.setReg('IQT', BigInt(queue.tail * 16));
    await after(`${label}: recovered`);
  }

  // A tail at or past the end of the queue, and tail bits below 4.
  await guest.setReg('IQT', BigInt(queue.entries * 16));
  await after('tail at the queue size');
  await guest.observeInterrupts('MSIs for a bad tail');
  await guest.setReg('FSTS', 0x10);
  await guest.setReg('IQT', BigInt(queue.tail * 16) | 0xfn);
  await guest.observe('IQT', 'IQT with bits 3:0 written');
  await after('tail back in the queue');

  // Wrapping around the end of the queue.
  const left = queue.entries - queue.tail;
  for (let i = 0; i < left - 1; i++) await queue.place(D.context({ G: 1 }));
  await queue.submit(D.iotlb({ G: 1 }), D.context({ G: 1 }), D.wait({ SW: 1, SDATA: 0x200, address: status }));
  await after('across the end of the queue');

  // Disabling: QEMU 7.2 refuses unless the last descriptor was a wait and the queue is drained.
  await guest.gcmd(0);
  await guest.observe('GSTS', 'GSTS after QIE off (drained, last was a wait)');
  await guest.observe('IQH', 'IQH after QIE off');
  await guest.gcmd(GCMD.QIE);
  await guest.observe('IQH', 'IQH after QIE on again');
  await guest.setReg('IQT', 0n);
  queue.moveTo(0);
  await queue.submit(D.context({ G: 1 }));
  await after('a context invalidation, no wait');
  await guest.gcmd(0);
  await guest.observe('GSTS', 'GSTS after QIE off (last was not a wait)', ['qi-disable-needs-drained-queue']);
  await guest.observe('IQH', 'IQH after that', ['qi-disable-needs-drained-queue']);
  await guest.setReg('CCMD', 0xa000000000000000n);
  await guest.observe('CCMD', 'register invalidation then', ['qi-disable-needs-drained-queue']);
}

/** IQT written before QIE: QEMU processes it on enable (Windows does this), and so do we. */
async function tailBeforeEnable(guest: OracleGuest): Promise<void> {
  const status = guest.allocPage();
  const queue = await OracleQueue.create(guest, 0);
  await queue.submit(D.context({ G: 1 }), D.wait({ SW: 1, SDATA: 0x55, address: status }));
  guest.note('status before QIE', await guest.peer.readl(status), [], 'data');
  await guest.gcmd(GCMD.QIE);
  await guest.observe('IQH', 'IQH after QIE with a tail already set');
  guest.note('status after QIE', await guest.peer.readl(status), [], 'data');
  // A register invalidation while QI is on is ignored: the busy bit stays.
  await guest.setReg('CCMD', 0xa000000000000000n);
  await guest.observe('CCMD', 'CCMD written under QI');
  await guest.setReg('IOTLB', 0x9000000000000000n);
  await guest.observe('IOTLB', 'IOTLB written under QI');
}

describe('differential: queued invalidation, QEMU 7.2 vs viommu', function () {
  this.timeout(60_000);
  before(function () {
    skipWithoutQemu(this);
  });

  it('agrees on wait descriptors, completion events, IQE with recovery, wrap-around and disabling', async () => {
    await differential(queueScenario, { checkSpecMode: true });
  });

  it('agrees on a tail set before QI is enabled and on register invalidation under QI', async () => {
    await differential(tailBeforeEnable, { checkSpecMode: true });
  });
});
