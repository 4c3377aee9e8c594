/** A test guest programming the unit in scalable mode: root/context/PASID structures and paging from the field tables, a 256-bit queue. */
import { encodeBig } from '../../lib/vtd/bitfield';
import { GCMD, OFFSET } from '../../lib/vtd/register-bits';
import {
  PASID_CACHE_INVALIDATE,
  PASID_DEVICE_TLB_INVALIDATE,
  PASID_DIRECTORY_ENTRY,
  PASID_IOTLB_INVALIDATE,
  PASID_PGTT,
  SCALABLE_CONTEXT_ENTRY,
  SCALABLE_PASID_ENTRY,
  SCALABLE_ROOT_ENTRY,
} from '../../lib/vtd/structures';
import type { TranslationResult } from '../../lib/vtd/translation-result';
import { PAGE, TableWriter } from './paging-builder';
import { FRCD, SID, TestGuest, descriptor } from './unit-guest';

type Values = Partial<Record<string, number | bigint>>;

export const TTM_SCALABLE = 1n << 10n;
/** Where PASID directory and tables live: one directory per device, PASID tables allocated on first use. */
const TABLES_FROM = 0x1000000;

export class ScalableGuest extends TestGuest {
  readonly writer: TableWriter;
  readonly contexts: { lower: number; upper: number };
  private readonly directories = new Map<number, number>();
  private readonly pasidTables = new Map<string, number>();
  private wideTail = 0;

  constructor(config: string) {
    super(config);
    this.writer = new TableWriter(this.memory, TABLES_FROM);
    this.contexts = { lower: this.writer.page(), upper: this.writer.page() };
    this.rootEntry(0);
  }

  rootEntry(bus: number, values: Values = {}, extra = 0n): void {
    this.writer.writeStructure(
      this.root + bus * 16,
      SCALABLE_ROOT_ENTRY,
      {
        LP: 1,
        LCTP: this.contexts.lower / PAGE,
        UP: 1,
        UCTP: this.contexts.upper / PAGE,
        ...values,
      },
      extra,
    );
  }

  directoryOf(sid: number): number {
    let directory = this.directories.get(sid);
    if (directory === undefined) {
      directory = this.writer.page();
      this.directories.set(sid, directory);
    }
    return directory;
  }

  contextAddress(sid: number): number {
    const devfn = sid & 0xff;
    return (devfn >= 128 ? this.contexts.upper : this.contexts.lower) + (devfn % 128) * 32;
  }

  scalableContext(sid = SID, values: Values = {}, extra = 0n): void {
    this.writer.writeStructure(
      this.contextAddress(sid),
      SCALABLE_CONTEXT_ENTRY,
      {
        P: 1,
        PASIDE: 1,
        PDTS: 0,
        PASIDDIRPTR: this.directoryOf(sid) / PAGE,
        ...values,
      },
      extra,
    );
  }

  /** The PASID table for `pasid >> 6` of `sid`, with its directory entry (present) written on first use. */
  pasidTable(sid: number, pasid: number): number {
    const key = `${sid}/${pasid >> 6}`;
    let table = this.pasidTables.get(key);
    if (table === undefined) {
      table = this.writer.page();
      this.pasidTables.set(key, table);
      this.directoryEntry(sid, pasid >> 6, { PTP: table / PAGE });
    }
    return table;
  }

  directoryEntry(sid: number, index: number, values: Values = {}, extra = 0n): void {
    const table = this.pasidTables.get(`${sid}/${index}`) ?? 0;
    this.writer.writeStructure(this.directoryOf(sid) + index * 8, PASID_DIRECTORY_ENTRY, { P: 1, PTP: table / PAGE, ...values }, extra);
  }

  pasidEntryAddress(sid: number, pasid: number): number {
    return this.pasidTable(sid, pasid) + (pasid % 64) * 64;
  }

  pasidEntry(sid: number, pasid: number, values: Values, extra = 0n): void {
    this.writer.writeStructure(this.pasidEntryAddress(sid, pasid), SCALABLE_PASID_ENTRY, { P: 1, ...values }, extra);
  }

  /** A second-stage domain: a new top table with `levels` levels (AW = levels - 2). */
  secondStage(sid: number, pasid: number, did: number, levels = 4, values: Values = {}): number {
    const top = this.writer.page();
    this.pasidEntry(sid, pasid, { PGTT: PASID_PGTT.SECOND_STAGE, AW: levels - 2, SSPTPTR: top / PAGE, DID: did, ...values });
    return top;
  }

  /** A first-stage domain (4-level): a new top table. */
  firstStage(sid: number, pasid: number, did: number, values: Values = {}): number {
    const top = this.writer.page();
    this.pasidEntry(sid, pasid, { PGTT: PASID_PGTT.FIRST_STAGE, FSPTPTR: top / PAGE, DID: did, ...values });
    return top;
  }

  enableScalable(ttm = TTM_SCALABLE): void {
    this.unit.write(OFFSET.RTADDR, 8, BigInt(this.root) | ttm);
    this.command(GCMD.SRTP);
    this.globalContextInvalidate();
    this.globalIotlbInvalidate();
    this.command(GCMD.TE);
  }

  request(
    iova: number | bigint,
    options: { write?: boolean; pasid?: number; supervisor?: boolean; execute?: boolean; sid?: number } = {},
  ): TranslationResult {
    const { write = false, sid = SID, ...rest } = options;
    return this.unit.translate({ sid, iova: BigInt(iova), write, ...rest });
  }

  /** The address a request reaches, or a description of its fault. */
  reach(iova: number | bigint, options: Parameters<ScalableGuest['request']>[1] = {}): string {
    const result = this.request(iova, options);
    return result.ok ? `0x${result.address.toString(16)}` : `fault 0x${result.fault.reason.toString(16)}`;
  }

  frcdHi(): bigint {
    return this.read64(FRCD + 8);
  }

  clearFault(): void {
    this.unit.write(FRCD + 12, 4, 0x80000000);
  }

  // ---- 256-bit invalidation queue ----

  setupWideQueue(): void {
    this.setupQueue(0, 1);
    this.wideTail = 0;
  }

  /** Submits descriptors (each 128 bits, upper half zero) and a wait, in a 256-bit queue. */
  invalidate(...descriptors: bigint[]): void {
    this.submit([...descriptors, descriptor.wait({})], this.wideTail, 32);
    // One page holds 128 descriptors: plenty for a test.
    this.wideTail += descriptors.length + 1;
  }
}

export const pasidDescriptor = {
  iotlbPasid: (did: number, pasid: number): bigint => encodeBig(PASID_IOTLB_INVALIDATE, { TYPE_LO: 6, G: 2, DID: did, PASID: pasid }),
  iotlbPages: (did: number, pasid: number, iova: number, am = 0, ih = 0): bigint =>
    encodeBig(PASID_IOTLB_INVALIDATE, { TYPE_LO: 6, G: 3, DID: did, PASID: pasid, ADDR: iova / PAGE, AM: am, IH: ih }),
  cacheDomain: (did: number): bigint => encodeBig(PASID_CACHE_INVALIDATE, { TYPE_LO: 7, G: 0, DID: did }),
  cachePasid: (did: number, pasid: number): bigint => encodeBig(PASID_CACHE_INVALIDATE, { TYPE_LO: 7, G: 1, DID: did, PASID: pasid }),
  cacheGlobal: (): bigint => encodeBig(PASID_CACHE_INVALIDATE, { TYPE_LO: 7, G: 3 }),
  cache: (g: number): bigint => encodeBig(PASID_CACHE_INVALIDATE, { TYPE_LO: 7, G: g }),
  deviceTlb: (sid: number, pasid: number): bigint => encodeBig(PASID_DEVICE_TLB_INVALIDATE, { TYPE_LO: 8, SID: sid, PASID: pasid }),
};

/** FRCD hi for a recorded fault: F, T (1 = read), PV/PP when the request had a PASID, FR and SID. */
export function frcdHi(reason: number, options: { read?: boolean; pasid?: number; sid?: number } = {}): bigint {
  const pasid = options.pasid;
  return (
    (1n << 63n) |
    (options.read ? 1n << 62n : 0n) |
    (BigInt(pasid ?? 0) << 40n) |
    (BigInt(reason) << 32n) |
    (pasid === undefined ? 0n : 1n << 31n) |
    BigInt(options.sid ?? SID)
  );
}
