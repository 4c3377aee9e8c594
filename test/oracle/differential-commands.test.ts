/** Differential: GCMD/GSTS command sequences and register-based invalidation read-backs, QEMU 7.2 vs viommu. */
import type { QuirkId } from '../../lib/vtd/compat-quirks';
import { encodeBig } from '../../lib/vtd/bitfield';
import { GCMD } from '../../lib/vtd/register-bits';
import { CCMD_FIELDS, IOTLB_FIELDS, IVA_FIELDS } from '../../lib/vtd/registers';
import { DMAR, differential, skipWithoutQemu, type OracleGuest } from './harness';

/** Commands one at a time and together; a GCMD write is taken as it is (no GSTS-preserving read-modify-write). */
const COMMAND_SEQUENCE: ReadonlyArray<[string, number]> = [
  ['TE before any root table', GCMD.TE],
  ['SRTP', GCMD.SRTP],
  ['SRTP | TE', GCMD.SRTP | GCMD.TE],
  ['WBF (completes at once)', GCMD.WBF],
  ['0: TE off', 0],
  ['IRE before SIRTP', GCMD.IRE],
  ['SIRTP', GCMD.SIRTP],
  ['IRE', GCMD.IRE],
  ['IRE | CFI', GCMD.IRE | GCMD.CFI],
  ['CFI alone', GCMD.CFI],
  ['SFL (no advanced fault log)', 1 << 29],
  ['EAFL (no advanced fault log)', 1 << 28],
  ['every command but QIE', 0xff800000 & ~GCMD.QIE],
  ['reserved bits 22:0', 0x007fffff],
  ['0 again', 0],
];

async function commands(guest: OracleGuest): Promise<void> {
  await guest.setReg('RTADDR', 0x123456c00n);
  await guest.observe('RTADDR', 'RTADDR before SRTP');
  await guest.setReg('IRTA', 0x7654380fn);
  await guest.observe('IRTA', 'IRTA before SIRTP');
  for (const [label, value] of COMMAND_SEQUENCE) {
    await guest.gcmd(value);
    await guest.observe('GSTS', `GSTS after ${label}`, ['gcmd-cfi-ignored']);
    await guest.observe('GCMD', `GCMD reads back after ${label}`);
  }
  // SRTP latches again on every write with the bit set, also when RTPS is already set.
  await guest.setReg('RTADDR', 0x200000n);
  await guest.gcmd(GCMD.SRTP | GCMD.TE);
  await guest.observe('GSTS', 'GSTS after a second SRTP | TE', ['srtp-acts-on-every-gcmd-write']);
  await guest.observe('RTADDR', 'RTADDR after the second SRTP', ['srtp-acts-on-every-gcmd-write']);
  // An 8-byte write at GCMD also writes the read-only GSTS.
  await guest.peer.writeq(DMAR + 0x18, 0xffffffff00000000n | BigInt(GCMD.TE));
  await guest.observe('GSTS', 'GSTS after writeq at GCMD');
  await guest.gcmd(0);
  await guest.observe('GSTS', 'GSTS after all off');
}

async function registerInvalidation(guest: OracleGuest): Promise<void> {
  const ccmd = (values: Partial<Record<'ICC' | 'CIRG' | 'DID' | 'SID' | 'FM', number>>) => encodeBig(CCMD_FIELDS, values);
  const cases: ReadonlyArray<[string, bigint, QuirkId?]> = [
    ['global', ccmd({ ICC: 1, CIRG: 1 })],
    ['domain 5 (done as global)', ccmd({ ICC: 1, CIRG: 2, DID: 5 }), 'context-domain-invalidation-is-global'],
    ['device 00:04.0 with FM 3', ccmd({ ICC: 1, CIRG: 3, SID: 0x20, FM: 3, DID: 7 })],
    ['granularity 0 (invalid)', ccmd({ ICC: 1, CIRG: 0 })],
    ['ICC clear', ccmd({ CIRG: 1 })],
  ];
  for (const [label, value, quirk] of cases) {
    await guest.setReg('CCMD', value);
    await guest.observe('CCMD', `CCMD ${label}`, quirk === undefined ? [] : [quirk]);
  }
  // CCMD acts on a write of its upper dword; a lower-dword write only stores.
  await guest.peer.writel(DMAR + 0x28, 0x12345678);
  await guest.observe('CCMD', 'CCMD after a lower-dword write');
  await guest.peer.writel(DMAR + 0x2c, 0xa0000000);
  await guest.observe('CCMD', 'CCMD after an upper-dword write');

  const iotlb = (values: Partial<Record<'IVT' | 'IIRG' | 'DID' | 'DR' | 'DW', number>>) => encodeBig(IOTLB_FIELDS, values);
  await guest.setReg('IVA', encodeBig(IVA_FIELDS, { ADDR: 0x200, AM: 1, IH: 1 }));
  await guest.observe('IVA', 'IVA reads 0 (write-only)');
  const iotlbCases: ReadonlyArray<[string, bigint]> = [
    ['global', iotlb({ IVT: 1, IIRG: 1 })],
    ['domain 5', iotlb({ IVT: 1, IIRG: 2, DID: 5 })],
    ['page in domain 5', iotlb({ IVT: 1, IIRG: 3, DID: 5 })],
    ['granularity 0 (invalid)', iotlb({ IVT: 1, IIRG: 0 })],
    ['global with DR and DW', iotlb({ IVT: 1, IIRG: 1, DR: 1, DW: 1 })],
  ];
  for (const [label, value] of iotlbCases) {
    await guest.setReg('IOTLB', value);
    await guest.observe('IOTLB', `IOTLB ${label}`);
  }
  // Page-selective with every interesting AM (MAMV is 18): beyond MAMV the request is not done (IAIG 0).
  for (const am of [0, 9, 18, 19, 63]) {
    await guest.setReg('IVA', encodeBig(IVA_FIELDS, { ADDR: 0x40000, AM: am }));
    await guest.setReg('IOTLB', iotlb({ IVT: 1, IIRG: 3, DID: 5 }));
    await guest.observe('IOTLB', `IOTLB page with AM ${am}`);
  }
  await guest.setReg('IVA', encodeBig(IVA_FIELDS, { ADDR: 0x40001, AM: 2 }));
  await guest.setReg('IOTLB', iotlb({ IVT: 1, IIRG: 3, DID: 5 }));
  await guest.observe('IOTLB', 'IOTLB page with an address not aligned to AM');
  await guest.peer.writel(DMAR + 0xf8, 0);
  await guest.peer.writel(DMAR + 0xfc, 0x90000000);
  await guest.observe('IOTLB', 'IOTLB global through two dword writes');
}

/** The fault and invalidation event registers take what the guest writes, within their masks. */
async function eventRegisters(guest: OracleGuest): Promise<void> {
  for (const name of ['FECTL', 'FEDATA', 'FEADDR', 'FEUADDR', 'IECTL', 'IEDATA', 'IEADDR', 'IEUADDR', 'FSTS', 'ICS'] as const) {
    await guest.setReg(name, 0xffffffff);
    await guest.observe(name, `${name} after writing all ones`);
  }
  await guest.setReg('FECTL', 0);
  await guest.observe('FECTL', 'FECTL after 0');
  await guest.setReg('IECTL', 0);
  await guest.observe('IECTL', 'IECTL after 0');
  await guest.observeInterrupts('no MSI from register writes alone');
}

describe('differential: GCMD/GSTS and register-based invalidation, QEMU 7.2 vs viommu', function () {
  this.timeout(60_000);
  before(function () {
    skipWithoutQemu(this);
  });

  for (const props of ['', 'aw-bits=48']) {
    it(`agrees on command sequences, invalidation read-backs and event registers (${props || 'default props'})`, async () => {
      await differential(
        async (guest) => {
          await commands(guest);
          await registerInvalidation(guest);
          await eventRegisters(guest);
        },
        { props, checkSpecMode: true },
      );
    });
  }
});
