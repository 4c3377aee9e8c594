/** What a guest programmed into the VT-d unit, read back from its registers and tables for a report: mode, tables, QI, IR, domains, faults. */
import { decodeBig, type FieldTable } from '../vtd/bitfield';
import { describeFaultReason } from '../vtd/fault-reasons';
import { OFFSET } from '../vtd/register-bits';
import { CAP_FIELDS, FRCD_HI_FIELDS, FRCD_LO_FIELDS, FSTS_FIELDS, GSTS_FIELDS, IQA_FIELDS, IRTA_FIELDS, RTADDR_FIELDS } from '../vtd/registers';
import type { VtdDomain } from '../vtd/address-space';
import { MAPPING_ACCESS } from '../vtd/address-space';
import type { VtdUnit } from '../vtd/unit';
import { PAGE_BYTES, PAGE_SHIFT } from '../memory/geometry';

export interface DomainSummary {
  readonly sid: number;
  readonly key: string;
  readonly kind: VtdDomain['kind'];
  readonly did: number;
  /** Mapped runs, IOVA order, at most MAPPING_LIMIT of them. */
  readonly mappings: readonly { readonly iova: number; readonly gpa: number; readonly bytes: number; readonly access: string }[];
  readonly truncated: boolean;
}

export interface FaultSummary {
  readonly index: number;
  readonly sid: number;
  readonly reason: number;
  readonly description: string;
  readonly access: string;
  readonly address: bigint;
  readonly pasid?: number;
}

export interface UnitSummary {
  /** GSTS bits that are set, by their spec names. */
  readonly status: readonly string[];
  readonly mode: string;
  readonly rootTable: bigint;
  readonly queue: { readonly enabled: boolean; readonly base: bigint; readonly entries: number; readonly descriptorWidth: string } | undefined;
  readonly interruptRemapping:
    { readonly enabled: boolean; readonly table: bigint; readonly entries: number; readonly extended: boolean } | undefined;
  /** FSTS bits that are set, by their spec names. */
  readonly faultStatus: readonly string[];
  readonly faults: readonly FaultSummary[];
  readonly domains: readonly DomainSummary[];
}

const MAPPING_LIMIT = 64;
const FRCD_BYTES = 16;
const FRCD_HI_BYTE = 8;
/** Table, queue and fault addresses are held as 4 KiB page numbers. */
const PAGE_SHIFT_BIG = BigInt(PAGE_SHIFT);
const DESCRIPTOR_BYTES = { '128-bit': 16, '256-bit': 32 } as const;

function setFlags(table: FieldTable, value: bigint): string[] {
  const fields = decodeBig(table, value) as Record<string, bigint>;
  return table.fields.filter((field) => field.width === 1 && fields[field.name] === 1n).map((field) => field.name);
}

function read64(unit: VtdUnit, offset: number): bigint {
  return BigInt(unit.read(offset, 8));
}

function accessName(access: number): string {
  return `${access & MAPPING_ACCESS.READ ? 'R' : '-'}${access & MAPPING_ACCESS.WRITE ? 'W' : '-'}`;
}

/** Reads the unit as a guest would see it now, and the domains of `sids` (the machine's PCI functions). */
export function summarizeUnit(unit: VtdUnit, sids: readonly number[]): UnitSummary {
  const gsts = BigInt(unit.read(OFFSET.GSTS, 4));
  const status = setFlags(GSTS_FIELDS, gsts);
  const rtaddr = decodeBig(RTADDR_FIELDS, read64(unit, OFFSET.RTADDR));
  const iqa = decodeBig(IQA_FIELDS, read64(unit, OFFSET.IQA));
  const irta = decodeBig(IRTA_FIELDS, read64(unit, OFFSET.IRTA));
  const width = (IQA_FIELDS.f.DW.values?.[Number(iqa.DW)] ?? '128-bit') as keyof typeof DESCRIPTOR_BYTES;
  return {
    status,
    mode: RTADDR_FIELDS.f.TTM.values?.[Number(rtaddr.TTM)] ?? `TTM ${rtaddr.TTM}`,
    rootTable: rtaddr.RTA << PAGE_SHIFT_BIG,
    queue:
      status.includes('QIES') || iqa.IQA !== 0n
        ? {
            enabled: status.includes('QIES'),
            base: iqa.IQA << PAGE_SHIFT_BIG,
            entries: (PAGE_BYTES << Number(iqa.QS)) / DESCRIPTOR_BYTES[width],
            descriptorWidth: width,
          }
        : undefined,
    interruptRemapping:
      status.includes('IRTPS') || status.includes('IRES')
        ? { enabled: status.includes('IRES'), table: irta.IRTA << PAGE_SHIFT_BIG, entries: 2 ** (Number(irta.S) + 1), extended: irta.EIME === 1n }
        : undefined,
    faultStatus: setFlags(FSTS_FIELDS, BigInt(unit.read(OFFSET.FSTS, 4))),
    faults: faultRecords(unit),
    domains: sids.flatMap((sid) => domainOf(unit, sid)),
  };
}

function faultRecords(unit: VtdUnit): FaultSummary[] {
  const cap = decodeBig(CAP_FIELDS, read64(unit, OFFSET.CAP));
  const first = Number(cap.FRO) * FRCD_BYTES;
  const records: FaultSummary[] = [];
  for (let index = 0; index <= Number(cap.NFR); index++) {
    const hi = decodeBig(FRCD_HI_FIELDS, read64(unit, first + index * FRCD_BYTES + FRCD_HI_BYTE));
    if (hi.F === 0n) continue;
    const lo = decodeBig(FRCD_LO_FIELDS, read64(unit, first + index * FRCD_BYTES));
    records.push({
      index,
      sid: Number(hi.SID),
      reason: Number(hi.FR),
      description: describeFaultReason(Number(hi.FR)),
      access: FRCD_HI_FIELDS.f.T.values?.[Number(hi.T)] ?? String(hi.T),
      address: lo.FI << PAGE_SHIFT_BIG,
      ...(hi.PP === 1n ? { pasid: Number(hi.PV) } : {}),
    });
  }
  return records;
}

function domainOf(unit: VtdUnit, sid: number): DomainSummary[] {
  let found: VtdDomain | undefined;
  const stop = unit.watchDevice(sid, { domainChanged: (domain) => (found = domain) });
  try {
    if (found === undefined) return [];
    // Identity domains map all of RAM: a one-line summary says more than the runs would.
    const runs = found.kind === 'identity' ? [] : found.mappings(0, found.pageLimit);
    return [
      {
        sid,
        key: found.key,
        kind: found.kind,
        did: found.did,
        mappings: runs.slice(0, MAPPING_LIMIT).map((run) => ({
          iova: run.iovaPage * PAGE_BYTES,
          gpa: run.gpaPage * PAGE_BYTES,
          bytes: run.pages * PAGE_BYTES,
          access: accessName(run.access),
        })),
        truncated: runs.length > MAPPING_LIMIT,
      },
    ];
  } finally {
    stop();
  }
}
