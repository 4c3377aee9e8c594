/** Scalable-mode lookup against the spec: root entry halves, 32-byte context entries, PASID directory and table, SM faults. */
import type { FaultRecord } from '../../lib/vtd/fault';
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { faultReason } from '../../lib/vtd/fault-reasons';
import { ScalableContextReader, SM_FR, type ScalableLookupOptions, type ScalableRequest, type ScalableTarget } from '../../lib/vtd/scalable-context';
import { PASID_DIRECTORY_ENTRY, PASID_PGTT, SCALABLE_CONTEXT_ENTRY, SCALABLE_PASID_ENTRY, SCALABLE_ROOT_ENTRY } from '../../lib/vtd/structures';
import { WalkTrace, type WalkStep } from '../../lib/vtd/walk-trace';
import { PAGE, TableMemory } from './paging-builder';

const ALL_FEATURES = ['FSTS', 'SSTS', 'NEST', 'PT', 'SRS', 'ERS', 'EAFS', 'SMTS', 'RPRIVS'];

function options(o: Partial<ScalableLookupOptions> = {}): ScalableLookupOptions {
  return { addressWidth: 48, sagaw: 0b110, fs5lp: true, ridPasid: true, features: new Set(ALL_FEATURES), ...o };
}

type Values<T> = T extends { f: infer F } ? Partial<Record<keyof F & string, bigint | number>> : never;

/** A guest's scalable-mode structures for one device, each written from its field table. */
class Structures {
  readonly t = new TableMemory();
  readonly root = this.t.page();
  readonly lowerContexts = this.t.page();
  readonly upperContexts = this.t.page();
  /** Large enough for the biggest directory (PDTS 7: 2^14 eight-byte entries). */
  readonly directory = this.t.page(32);
  readonly pasidTable = this.t.page();

  rootEntry(bus: number, values: Values<typeof SCALABLE_ROOT_ENTRY> = {}, extra = 0n): number {
    const address = this.root + bus * 16;
    this.t.writeStructure(
      address,
      SCALABLE_ROOT_ENTRY,
      { LP: 1, LCTP: this.lowerContexts / PAGE, UP: 1, UCTP: this.upperContexts / PAGE, ...values },
      extra,
    );
    return address;
  }

  contextEntry(devfn: number, values: Values<typeof SCALABLE_CONTEXT_ENTRY> = {}, extra = 0n): number {
    const address = (devfn >= 128 ? this.upperContexts : this.lowerContexts) + (devfn % 128) * 32;
    this.t.writeStructure(address, SCALABLE_CONTEXT_ENTRY, { P: 1, PASIDE: 1, PDTS: 0, PASIDDIRPTR: this.directory / PAGE, ...values }, extra);
    return address;
  }

  directoryEntry(index: number, values: Values<typeof PASID_DIRECTORY_ENTRY> = {}, extra = 0n): number {
    const address = this.directory + index * 8;
    this.t.writeStructure(address, PASID_DIRECTORY_ENTRY, { P: 1, PTP: this.pasidTable / PAGE, ...values }, extra);
    return address;
  }

  pasidEntry(index: number, values: Values<typeof SCALABLE_PASID_ENTRY> = {}, extra = 0n, table = this.pasidTable): number {
    const address = table + index * 64;
    this.t.writeStructure(
      address,
      SCALABLE_PASID_ENTRY,
      {
        P: 1,
        PGTT: PASID_PGTT.SECOND_STAGE,
        AW: 2,
        SSPTPTR: 0x20_0000 / PAGE,
        FSPTPTR: 0x30_0000 / PAGE,
        DID: 7,
        ...values,
      },
      extra,
    );
    return address;
  }

  /** Root, context (devfn 0x10 on bus 0), directory entry 0 and PASID entry 0. */
  standard(): this {
    this.rootEntry(0);
    this.contextEntry(0x10);
    this.directoryEntry(0);
    this.pasidEntry(0);
    return this;
  }
}

const SID = 0x0010;

function found(result: ScalableTarget | FaultRecord): ScalableTarget {
  if (!result.ok)
    assert.fail(`expected a PASID entry, got fault 0x${result.reason.toString(16)} (${faultReason(result.reason)?.name}) in ${result.stage}`);
  return result;
}

function refused(result: ScalableTarget | FaultRecord, reason: number, structure?: string): FaultRecord {
  if (result.ok) assert.fail(`expected fault 0x${reason.toString(16)} (${faultReason(reason)?.name}), got PASID ${result.pasid}`);
  assert.equal(result.reason, reason, `got 0x${result.reason.toString(16)} (${faultReason(result.reason)?.name})`);
  if (structure !== undefined) assert.equal(result.stage, structure);
  return result;
}

describe('scalable-mode lookup', () => {
  let s: Structures;
  let reader: ScalableContextReader;
  const resolve = (request: Partial<ScalableRequest> = {}, r = reader) => r.resolve(s.root, { sid: SID, ...request });
  beforeEach(() => {
    s = new Structures();
    reader = new ScalableContextReader(s.t.memory, options());
  });

  describe('root entries', () => {
    it('serves devfn 0..127 from the lower half and 128..255 from the upper half, 128 entries of 32 bytes per table', () => {
      s.rootEntry(3);
      s.contextEntry(0x08, { RID_PASID: 1 });
      s.contextEntry(0x88, { RID_PASID: 2 });
      s.directoryEntry(0);
      s.pasidEntry(1, { DID: 0x111 });
      s.pasidEntry(2, { DID: 0x222 });
      assert.equal(found(reader.resolve(s.root, { sid: 0x308 })).entry.did, 0x111);
      assert.equal(found(reader.resolve(s.root, { sid: 0x388 })).entry.did, 0x222);
    });

    it('reports the half that serves the devfn when its present bit is clear', () => {
      s.standard();
      s.rootEntry(0, { LP: 0 });
      const fault = refused(resolve(), SM_FR.ROOT_NOT_PRESENT, 'root');
      assert.equal(fault.fpd, false);
      assert.equal(fault.entryAddress, s.root);
      s.rootEntry(0, { UP: 0 });
      found(resolve());
      s.contextEntry(0x90);
      refused(reader.resolve(s.root, { sid: 0x90 }), SM_FR.ROOT_NOT_PRESENT);
    });

    it('checks reserved bits only in the half it uses, address bits above the host width included', () => {
      s.standard();
      s.rootEntry(0, {}, (1n << 65n) | (1n << 127n));
      found(resolve());
      s.rootEntry(0, {}, 1n << 1n);
      refused(resolve(), SM_FR.ROOT_RESERVED, 'root');
      s.rootEntry(0, {}, 1n << 48n);
      refused(resolve(), SM_FR.ROOT_RESERVED);
      // With a 52-bit host width the same bit is an address: legal, and it leads outside RAM.
      refused(resolve({}, new ScalableContextReader(s.t.memory, options({ addressWidth: 52 }))), SM_FR.CONTEXT_ACCESS);
    });

    it('reports an unreadable root entry as a root-entry access error that FPD cannot silence', () => {
      const fault = new ScalableContextReader(s.t.memory, options()).resolve(0x4000_0000, { sid: SID });
      refused(fault, SM_FR.ROOT_ACCESS, 'root');
      assert.equal((fault as FaultRecord).fpd, false);
    });
  });

  describe('context entries', () => {
    it('reports a clear present bit with the entry FPD, which counts whatever P says', () => {
      s.standard();
      s.contextEntry(0x10, { P: 0 });
      assert.equal(refused(resolve(), SM_FR.CONTEXT_NOT_PRESENT, 'context').fpd, false);
      s.contextEntry(0x10, { P: 0, FPD: 1 });
      assert.equal(refused(resolve(), SM_FR.CONTEXT_NOT_PRESENT).fpd, true);
    });

    it('reports reserved bits (8:5, 127:85 and the upper 128 bits) as not silenced by FPD', () => {
      s.standard();
      for (const bit of [5n, 8n, 85n, 128n, 255n]) {
        s.contextEntry(0x10, { FPD: 1 }, 1n << bit);
        const fault = refused(resolve(), SM_FR.CONTEXT_RESERVED, 'context');
        assert.equal(fault.fpd, false, `bit ${bit}`);
      }
    });

    it('reports an unreadable context table', () => {
      s.standard();
      s.rootEntry(0, { LCTP: 0x4000_0000 / PAGE });
      refused(resolve(), SM_FR.CONTEXT_ACCESS, 'context');
    });

    it('refuses requests with PASID when PASIDE is clear, and lets requests without PASID through', () => {
      s.standard();
      s.contextEntry(0x10, { PASIDE: 0 });
      refused(resolve({ pasid: 0 }), SM_FR.PASIDE_CLEAR, 'context');
      found(resolve());
    });

    it('refuses translation requests when DTE is clear', () => {
      s.standard();
      refused(resolve({ translationRequest: true }), SM_FR.DTE_CLEAR);
      s.contextEntry(0x10, { DTE: 1 });
      found(resolve({ translationRequest: true }));
    });

    it('sizes the directory by PDTS: 2^(PDTS+7) entries of 64 PASIDs each', () => {
      s.standard();
      const lastOfDirectory = 128 * 64 - 1;
      s.directoryEntry(127);
      s.pasidEntry(63, { DID: 0x63 });
      assert.equal(found(resolve({ pasid: lastOfDirectory })).entry.did, 0x63);
      refused(resolve({ pasid: lastOfDirectory + 1 }), SM_FR.PASID_TOO_LARGE, 'context');
      s.contextEntry(0x10, { PDTS: 7 });
      refused(resolve({ pasid: 0xfffff }), SM_FR.DIRECTORY_NOT_PRESENT);
    });

    it('uses RID_PASID and RID_PRIV for requests without PASID, and reports a RID_PASID the unit cannot use', () => {
      s.standard();
      s.contextEntry(0x10, { RID_PASID: 65, RID_PRIV: 1 });
      s.directoryEntry(1);
      s.pasidEntry(1, { DID: 0x65 });
      const target = found(resolve());
      assert.equal(target.pasid, 65);
      assert.equal(target.withPasid, false);
      assert.equal(target.supervisor, true);
      assert.equal(target.entry.did, 0x65);
      refused(resolve({}, new ScalableContextReader(s.t.memory, options({ ridPasid: false }))), SM_FR.RID_PASID_ERROR);
      const withoutRpriv = new ScalableContextReader(s.t.memory, options({ features: new Set(ALL_FEATURES.filter((f) => f !== 'RPRIVS')) }));
      assert.equal(found(resolve({}, withoutRpriv)).supervisor, false);
      s.contextEntry(0x10, { RID_PASID: 128 * 64 });
      refused(resolve(), SM_FR.RID_PASID_ERROR, 'context');
    });
  });

  describe('PASID directory and table', () => {
    it('indexes the directory with PASID bits 19:6 and the table with bits 5:0', () => {
      s.standard();
      const table = s.t.page();
      s.directoryEntry(0x2a, { PTP: table / PAGE });
      s.pasidEntry(0x15, { DID: 0xabc }, 0n, table);
      const target = found(resolve({ pasid: (0x2a << 6) | 0x15 }));
      assert.equal(target.entry.did, 0xabc);
      assert.equal(target.entry.address, table + 0x15 * 64);
    });

    it('reports directory entries: absent (with its FPD), reserved, unreadable', () => {
      s.standard();
      s.directoryEntry(0, { P: 0, FPD: 1 });
      const absent = refused(resolve(), SM_FR.DIRECTORY_NOT_PRESENT, 'pasid-directory');
      assert.equal(absent.fpd, true);
      assert.equal(absent.entryAddress, s.directory);
      s.directoryEntry(0, {}, 1n << 2n);
      refused(resolve(), SM_FR.DIRECTORY_RESERVED, 'pasid-directory');
      s.directoryEntry(0, {}, 1n << 50n);
      refused(resolve(), SM_FR.DIRECTORY_RESERVED);
      s.contextEntry(0x10, { PASIDDIRPTR: 0x4000_0000 / PAGE });
      refused(resolve(), SM_FR.DIRECTORY_ACCESS, 'pasid-directory');
    });

    it('reports PASID entries: absent (any FPD on the way counts), reserved, unreadable', () => {
      s.standard();
      s.pasidEntry(0, { P: 0 });
      assert.equal(refused(resolve(), SM_FR.PASID_ENTRY_NOT_PRESENT, 'pasid-table').fpd, false);
      s.pasidEntry(0, { P: 0, FPD: 1 });
      assert.equal(refused(resolve(), SM_FR.PASID_ENTRY_NOT_PRESENT).fpd, true);
      s.pasidEntry(0, { P: 0 });
      s.contextEntry(0x10, { FPD: 1 });
      assert.equal(refused(resolve(), SM_FR.PASID_ENTRY_NOT_PRESENT).fpd, true);
      s.contextEntry(0x10);
      for (const bit of [10n, 80n, 133n, 136n, 192n, 511n]) {
        s.pasidEntry(0, {}, 1n << bit);
        refused(resolve(), SM_FR.PASID_ENTRY_RESERVED, 'pasid-table');
      }
      s.directoryEntry(0, { PTP: 0x4000_0000 / PAGE });
      refused(resolve(), SM_FR.PASID_ENTRY_ACCESS, 'pasid-table');
    });

    it('reserves SRE, ERE, EAFE and SSADE unless ECAP reports SRS, ERS, EAFS and SLADS', () => {
      s.standard();
      const bare = new ScalableContextReader(s.t.memory, options({ features: new Set(['FSTS', 'SSTS', 'NEST', 'PT']) }));
      for (const field of ['SRE', 'ERE', 'EAFE', 'SSADE'] as const) {
        s.pasidEntry(0, { [field]: 1 });
        refused(resolve({}, bare), SM_FR.PASID_ENTRY_RESERVED);
      }
      s.pasidEntry(0, { SRE: 1, ERE: 1, EAFE: 1 });
      found(resolve());
    });

    it('reserves the page-table pointer bits above the host width only in the pointer the PGTT uses', () => {
      s.standard();
      s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE, SSPTPTR: 2 ** 40 });
      found(resolve());
      s.pasidEntry(0, { PGTT: PASID_PGTT.SECOND_STAGE, SSPTPTR: 2 ** 40 });
      refused(resolve(), SM_FR.PASID_ENTRY_RESERVED);
      s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE, FSPTPTR: 2 ** 40 });
      refused(resolve(), SM_FR.PASID_ENTRY_RESERVED);
      s.pasidEntry(0, { PGTT: PASID_PGTT.NESTED, FSPTPTR: 2 ** 40 });
      refused(resolve(), SM_FR.PASID_ENTRY_RESERVED);
    });

    it('calls a PASID entry invalid for a PGTT, AW or FSPM the unit does not support', () => {
      s.standard();
      for (const pgtt of [0, 5, 6, 7]) {
        s.pasidEntry(0, { PGTT: pgtt });
        refused(resolve(), SM_FR.PASID_ENTRY_INVALID, 'pasid-table');
      }
      const firstStageOnly = new ScalableContextReader(s.t.memory, options({ features: new Set(['FSTS']) }));
      s.pasidEntry(0, { PGTT: PASID_PGTT.SECOND_STAGE });
      refused(resolve({}, firstStageOnly), SM_FR.PASID_ENTRY_INVALID);
      s.pasidEntry(0, { PGTT: PASID_PGTT.NESTED });
      refused(resolve({}, firstStageOnly), SM_FR.PASID_ENTRY_INVALID);
      s.pasidEntry(0, { PGTT: PASID_PGTT.PASS_THROUGH });
      refused(resolve({}, firstStageOnly), SM_FR.PASID_ENTRY_INVALID);
      s.pasidEntry(0, { PGTT: PASID_PGTT.SECOND_STAGE, AW: 3 });
      refused(resolve(), SM_FR.PASID_ENTRY_INVALID);
      s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE, AW: 3 });
      found(resolve());
      s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE, FSPM: 1 });
      assert.equal(found(resolve()).entry.fsLevels, 5);
      refused(resolve({}, new ScalableContextReader(s.t.memory, options({ fs5lp: false }))), SM_FR.PASID_ENTRY_INVALID);
      s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE, FSPM: 2 });
      refused(resolve(), SM_FR.PASID_ENTRY_INVALID);
    });

    it('checks SRE for supervisor requests and ERE for execute requests when the first stage is used', () => {
      s.standard();
      s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE });
      refused(resolve({ pasid: 0, supervisor: true }), SM_FR.SRE_CLEAR, 'pasid-table');
      refused(resolve({ pasid: 0, execute: true }), SM_FR.ERE_CLEAR, 'pasid-table');
      s.pasidEntry(0, { PGTT: PASID_PGTT.FIRST_STAGE, SRE: 1, ERE: 1 });
      const target = found(resolve({ pasid: 0, supervisor: true, execute: true }));
      assert.equal(target.supervisor, true);
      assert.equal(target.execute, true);
      s.pasidEntry(0, { PGTT: PASID_PGTT.SECOND_STAGE });
      found(resolve({ pasid: 0, supervisor: true }));
    });

    it('decodes the PASID entry once: DID, PGTT, both table pointers, levels and the input width', () => {
      s.standard();
      s.pasidEntry(0, {
        PGTT: PASID_PGTT.NESTED,
        DID: 0x4321,
        AW: 1,
        SSPTPTR: 0x12_3000 / PAGE,
        FSPTPTR: 0x45_6000 / PAGE,
        FSPM: 1,
        WPE: 1,
        EAFE: 1,
        SRE: 1,
        PGSNP: 1,
      });
      const entry = found(resolve()).entry;
      assert.deepEqual(
        {
          did: entry.did,
          pgtt: entry.pgtt,
          ssTable: entry.ssTable,
          ssLevels: entry.ssLevels,
          ssInputWidth: entry.ssInputWidth,
          fsTable: entry.fsTable,
          fsLevels: entry.fsLevels,
          wpe: entry.wpe,
          eafe: entry.eafe,
          sre: entry.sre,
          pgsnp: entry.pgsnp,
        },
        {
          did: 0x4321,
          pgtt: 3,
          ssTable: 0x12_3000,
          ssLevels: 3,
          ssInputWidth: 39,
          fsTable: 0x45_6000,
          fsLevels: 5,
          wpe: true,
          eafe: true,
          sre: true,
          pgsnp: true,
        },
      );
    });

    it('traces root, context, directory and PASID entries as read, with their layouts', () => {
      s.standard();
      const trace = new WalkTrace();
      found(reader.resolve(s.root, { sid: SID, pasid: 0 }, trace));
      const steps = trace.records as WalkStep[];
      assert.deepEqual(
        steps.map((step) => step.structure),
        ['root', 'context', 'pasid-directory', 'pasid-table'],
      );
      assert.deepEqual(
        steps.map((step) => step.layout),
        [SCALABLE_ROOT_ENTRY, SCALABLE_CONTEXT_ENTRY, PASID_DIRECTORY_ENTRY, SCALABLE_PASID_ENTRY],
      );
      for (const step of steps) assert.equal(step.value, s.t.readStructure(step.entryAddress, step.layout));
    });
  });

  it('finds the entry of any PASID the directory covers, and no other', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 7 }), fc.nat(2 ** 20 - 1), fc.boolean(), (pdts, pasid, withPasid) => {
        s = new Structures();
        reader = new ScalableContextReader(s.t.memory, options());
        s.rootEntry(0);
        s.contextEntry(0x10, { PDTS: pdts, RID_PASID: pasid });
        const table = s.t.page();
        const directoryIndex = pasid >> 6;
        const inRange = directoryIndex < 2 ** (pdts + 7);
        if (inRange) s.directoryEntry(directoryIndex, { PTP: table / PAGE });
        s.pasidEntry(pasid & 63, { DID: pasid & 0xffff }, 0n, table);
        s.pasidEntry((pasid + 1) & 63, { DID: 0xffff - (pasid & 0xffff) }, 0n, table);
        const result = resolve(withPasid ? { pasid } : {});
        if (inRange) assert.equal(found(result).entry.did, pasid & 0xffff);
        else refused(result, withPasid ? SM_FR.PASID_TOO_LARGE : SM_FR.RID_PASID_ERROR, 'context');
      }),
      { numRuns: 300 },
    );
  });
});
