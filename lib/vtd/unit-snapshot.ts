/**
 * A fault snapshot: what replaying one request through a fresh unit needs (configuration, the latched translation
 * registers, the request, the guest pages its walk read), taken without touching the live unit's memory, kept as
 * versioned JSON text, and restored as a unit programmed through its register window. (The unit never sees a file:
 * lib/explain/snapshot-file.ts reads and writes them.)
 */

import { ViommuError } from '../errors';
import { MAX_GUEST_ADDRESS } from '../memory/addresses';
import { PAGE_BYTES } from '../memory/geometry';
import { GuestMemory, type GuestRegion } from '../memory/guest-memory';
import { VTD_PROPERTIES, type VtdConfig } from './config';
import { GCMD, OFFSET } from './register-bits';
import { RTADDR_FIELDS } from './registers';
import { setFieldBig } from './bitfield';
import { FAULT_STAGES, type FaultRecord, type FaultStage } from './fault';
import type { TranslationFailure, TranslationRequest } from './translation-result';
import { VtdUnit, type TracedWalk } from './unit';
import { WalkTrace, type TraceRecord } from './walk-trace';

export const SNAPSHOT_FORMAT = 'viommu-fault-snapshot';
/** Version 2 keeps the live unit's whole fault record; version 1 kept its reason and level only (still read). */
export const SNAPSHOT_VERSION = 2;
const READABLE_VERSIONS: readonly number[] = [1, SNAPSHOT_VERSION];
export const SNAPSHOT_PAGE_BYTES = PAGE_BYTES;

/** The translation state a guest latched into the unit: what a restore writes back through RTADDR and GCMD. */
export interface SnapshotRegisters {
  /** RTADDR as GCMD.SRTP latched it (RTA and TTM): the root table the walk starts from. */
  readonly rtaddr: bigint;
  /** RTADDR as the register reads now (a guest may have written it since the last SRTP). */
  readonly rtaddrRegister: bigint;
  /** GSTS as read (TES, RTPS, QIES, IRES...), for the reader; the restore derives nothing from it. */
  readonly gsts: number;
  /** GCMD.TE as last written: translation on. */
  readonly translationEnabled: boolean;
}

/** What the live unit reported for the request when the snapshot was taken: its fault record (compat quirks applied) and the record's fate. */
export interface ObservedFault {
  readonly fault: FaultRecord;
  readonly recording: TranslationFailure['recording'];
}

/**
 * What a version 1 file kept of the observed fault: the reason and one level number (the paging level, or for a
 * nested walk's output the second-stage level where it stopped).
 */
export interface ObservedFaultSummary {
  readonly reason: number;
  readonly level?: number;
  readonly recording: TranslationFailure['recording'];
}

export interface UnitSnapshot {
  /** The unit's configuration as intel-iommu properties, every property spelled out. */
  readonly config: string;
  readonly registers: SnapshotRegisters;
  readonly request: TranslationRequest;
  /** Guest pages (4 KiB, by base address) as they were before the snapshot's own walk. */
  readonly pages: ReadonlyMap<number, Uint8Array>;
  /** Pages the walk tried to read that no guest RAM backed. */
  readonly unbacked: readonly number[];
  /** The live unit's fault; only its summary when read from a version 1 file. */
  readonly observed?: ObservedFault | ObservedFaultSummary;
  /** ISO time the snapshot was taken. */
  readonly takenAt: string;
  /** Who took it (e.g. 'viommu demo, mode nested'). */
  readonly source?: string;
}

/** A snapshot file that cannot be read: not JSON, not a snapshot, another version, or a malformed field. */
export class SnapshotError extends ViommuError {
  constructor(message: string) {
    super('ERR_SNAPSHOT', message);
    this.name = 'SnapshotError';
  }
}

function pageBase(address: number): number {
  return address - (address % SNAPSHOT_PAGE_BYTES);
}

function hex(value: number | bigint): string {
  return `0x${value.toString(16)}`;
}

/** The configuration as a property string that vtdConfigFromString turns back into the same configuration. */
export function configString(config: VtdConfig): string {
  return VTD_PROPERTIES.map(({ name }) => {
    const value = config[name];
    return `${name}=${typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value)}`;
  }).join(',');
}

/**
 * Guest memory that copies each 4 KiB page from `source` the first time anything asks for it, so that a walk
 * reads the live contents and writes (A/D flags) land in the copies only. `pristine` keeps the pages as copied.
 */
class PageCopies extends GuestMemory {
  readonly pristine = new Map<number, Uint8Array>();
  readonly unbacked = new Set<number>();

  constructor(private readonly source: GuestMemory) {
    super();
  }

  // Every access (entry reads and writes, byte ranges) finds its region here first.
  override regionAt(address: number): GuestRegion | undefined {
    if (Number.isSafeInteger(address) && address >= 0 && address <= MAX_GUEST_ADDRESS) this.copy(pageBase(address));
    return super.regionAt(address);
  }

  private copy(page: number): void {
    if (this.pristine.has(page) || this.unbacked.has(page)) return;
    const bytes = new Uint8Array(SNAPSHOT_PAGE_BYTES);
    if (!this.source.tryRead(page, bytes)) {
      this.unbacked.add(page);
      return;
    }
    this.pristine.set(page, bytes.slice());
    this.addRegion({ name: `copy of ${hex(page)}`, start: page, buffer: bytes.buffer });
  }
}

/**
 * Guest memory holding only a snapshot's pages (copies: a replay's A/D updates stay in them), noting every page
 * a walk asked for that the snapshot lacks, so that an explanation can say its walk left the snapshot.
 */
export class SnapshotMemory extends GuestMemory {
  readonly missing = new Set<number>();

  constructor(pages: ReadonlyMap<number, Uint8Array>) {
    super();
    for (const [address, bytes] of pages) this.addRegion({ name: `snapshot page ${hex(address)}`, start: address, buffer: bytes.slice().buffer });
  }

  override regionAt(address: number): GuestRegion | undefined {
    const region = super.regionAt(address);
    if (region === undefined && Number.isSafeInteger(address) && address >= 0) this.missing.add(pageBase(address));
    return region;
  }
}

/** A fresh unit over `memory`, programmed as a guest would: RTADDR, GCMD.SRTP, RTADDR again if it moved since, GCMD.TE. */
function programmedUnit(config: string, registers: SnapshotRegisters, memory: GuestMemory): VtdUnit {
  const unit = new VtdUnit({ memory, config, onInterrupt: () => undefined });
  unit.write(OFFSET.RTADDR, 8, registers.rtaddr);
  unit.write(OFFSET.GCMD, 4, GCMD.SRTP);
  if (registers.rtaddrRegister !== registers.rtaddr) unit.write(OFFSET.RTADDR, 8, registers.rtaddrRegister);
  if (registers.translationEnabled) unit.write(OFFSET.GCMD, 4, GCMD.TE);
  return unit;
}

/**
 * Snapshots `request` against the live `unit` over `memory` (the guest RAM the unit was built on) as it is now:
 * a fresh unit with the same configuration and latched registers walks the request over page copies, and the
 * pages it read are kept as they were before that walk. The live unit and memory are only read.
 */
export function takeSnapshot(
  unit: VtdUnit,
  memory: GuestMemory,
  request: TranslationRequest,
  options: { observed?: TranslationFailure; source?: string } = {},
): UnitSnapshot {
  // Not RTADDR and GSTS: RTADDR may have been rewritten since SRTP, and GSTS.TES follows TE once host backends settle.
  const latched = unit.latchedTranslation;
  let rtaddr = setFieldBig(0n, RTADDR_FIELDS.f.RTA, latched.rootTable / SNAPSHOT_PAGE_BYTES);
  rtaddr = setFieldBig(rtaddr, RTADDR_FIELDS.f.TTM, latched.rootMode);
  const registers: SnapshotRegisters = {
    rtaddr,
    rtaddrRegister: unit.registers.readRaw('RTADDR'),
    gsts: unit.read(OFFSET.GSTS, 4),
    translationEnabled: latched.enabled,
  };
  const config = configString(unit.config);
  const copies = new PageCopies(memory);
  programmedUnit(config, registers, copies).traceRequest(request, new WalkTrace());
  const observed = options.observed;
  return {
    config,
    registers,
    request,
    pages: new Map([...copies.pristine].sort(([a], [b]) => a - b)),
    unbacked: [...copies.unbacked].sort((a, b) => a - b),
    ...(observed === undefined ? {} : { observed: { fault: observed.fault, recording: observed.recording } }),
    takenAt: new Date().toISOString(),
    ...(options.source === undefined ? {} : { source: options.source }),
  };
}

/** A unit restored from a snapshot, over memory holding just the snapshot's pages. */
export interface RestoredUnit {
  readonly unit: VtdUnit;
  readonly memory: SnapshotMemory;
}

export function restoreSnapshot(snapshot: UnitSnapshot): RestoredUnit {
  const memory = new SnapshotMemory(snapshot.pages);
  let unit: VtdUnit;
  try {
    unit = programmedUnit(snapshot.config, snapshot.registers, memory);
  } catch (error) {
    throw new SnapshotError(`the snapshot's unit configuration '${snapshot.config}' is refused: ${(error as Error).message}`);
  }
  return { unit, memory };
}

/** One request replayed against a snapshot: the walk's trace and result, and the pages it needed that the snapshot lacks. */
export interface ReplayedWalk {
  readonly request: TranslationRequest;
  readonly result: TracedWalk;
  readonly records: readonly TraceRecord[];
  /** Pages the replay read that the snapshot does not hold (other than those already unbacked when it was taken). */
  readonly missingPages: readonly number[];
  /** The configuration the unit ran with. */
  readonly config: VtdConfig;
}

/** Replays `request` (default: the snapshot's own) through a restored unit with a trace sink. */
export function replaySnapshot(snapshot: UnitSnapshot, request: TranslationRequest = snapshot.request): ReplayedWalk {
  const { unit, memory } = restoreSnapshot(snapshot);
  const trace = new WalkTrace();
  const result = unit.traceRequest(request, trace);
  const unbacked = new Set(snapshot.unbacked);
  return {
    request,
    result,
    records: trace.records,
    config: unit.config,
    missingPages: [...memory.missing].filter((page) => !unbacked.has(page)).sort((a, b) => a - b),
  };
}

// ---- the file ----

/** A fault record in the file: addresses and entry values as hex, like every address in it. */
interface FaultRecordFile {
  reason: number;
  stage: FaultStage;
  level?: number;
  secondStageLevel?: number;
  entryAddress?: string;
  entryValue?: string;
  pasid?: number;
  fpd: boolean;
  notPresent: boolean;
  pastContext: boolean;
  unrecorded?: boolean;
}

interface SnapshotFile {
  format: typeof SNAPSHOT_FORMAT;
  /** 1 only for a snapshot read from a version 1 file (its observed fault is a summary), written back as it was. */
  version: 1 | typeof SNAPSHOT_VERSION;
  takenAt: string;
  source?: string;
  config: string;
  registers: { RTADDR: string; RTADDR_REGISTER: string; GSTS: string; TE: boolean };
  request: { sid: number; iova: string; write: boolean; pasid?: number; supervisor?: boolean; execute?: boolean };
  observed?: { fault: FaultRecordFile; recording: string } | { reason: number; level?: number; recording: string };
  pages: Array<{ address: string; data: string }>;
  unbacked: string[];
}

function isSummary(observed: ObservedFault | ObservedFaultSummary): observed is ObservedFaultSummary {
  return !('fault' in observed);
}

function faultRecordFile(fault: FaultRecord): FaultRecordFile {
  return {
    reason: fault.reason,
    stage: fault.stage,
    ...(fault.level === undefined ? {} : { level: fault.level }),
    ...(fault.secondStageLevel === undefined ? {} : { secondStageLevel: fault.secondStageLevel }),
    ...(fault.entryAddress === undefined ? {} : { entryAddress: hex(fault.entryAddress) }),
    ...(fault.entryValue === undefined ? {} : { entryValue: hex(fault.entryValue) }),
    ...(fault.pasid === undefined ? {} : { pasid: fault.pasid }),
    fpd: fault.fpd,
    notPresent: fault.notPresent,
    pastContext: fault.pastContext,
    ...(fault.unrecorded === true ? { unrecorded: true } : {}),
  };
}

/** The snapshot as JSON text (what a snapshot file holds). */
export function serializeSnapshot(snapshot: UnitSnapshot): string {
  const { request, registers, observed } = snapshot;
  const file: SnapshotFile = {
    format: SNAPSHOT_FORMAT,
    version: observed !== undefined && isSummary(observed) ? 1 : SNAPSHOT_VERSION,
    takenAt: snapshot.takenAt,
    ...(snapshot.source === undefined ? {} : { source: snapshot.source }),
    config: snapshot.config,
    registers: {
      RTADDR: hex(registers.rtaddr),
      RTADDR_REGISTER: hex(registers.rtaddrRegister),
      GSTS: hex(registers.gsts),
      TE: registers.translationEnabled,
    },
    request: {
      sid: request.sid,
      iova: hex(BigInt.asUintN(64, request.iova)),
      write: request.write,
      ...(request.pasid === undefined ? {} : { pasid: request.pasid }),
      ...(request.supervisor === undefined ? {} : { supervisor: request.supervisor }),
      ...(request.execute === undefined ? {} : { execute: request.execute }),
    },
    ...(observed === undefined
      ? {}
      : { observed: isSummary(observed) ? { ...observed } : { fault: faultRecordFile(observed.fault), recording: observed.recording } }),
    pages: [...snapshot.pages].map(([address, bytes]) => ({ address: hex(address), data: Buffer.from(bytes).toString('base64') })),
    unbacked: snapshot.unbacked.map(hex),
  };
  return `${JSON.stringify(file, null, 1)}\n`;
}

/** Checks one field as it is read, so that an error names the field and what it should be. */
class FieldReader {
  constructor(private readonly origin: string) {}

  fail(path: string, expected: string, value: unknown): never {
    const shown = value === undefined ? 'nothing' : JSON.stringify(value).slice(0, 60);
    throw new SnapshotError(`${this.origin}: ${path} should be ${expected}, found ${shown}`);
  }

  object(value: unknown, path: string): Record<string, unknown> {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) this.fail(path, 'an object', value);
    return value as Record<string, unknown>;
  }

  string(value: unknown, path: string): string {
    if (typeof value !== 'string') this.fail(path, 'a string', value);
    return value;
  }

  boolean(value: unknown, path: string): boolean {
    if (typeof value !== 'boolean') this.fail(path, 'true or false', value);
    return value;
  }

  integer(value: unknown, path: string, limit: number): number {
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value >= limit)
      this.fail(path, `an integer from 0 to ${limit - 1}`, value);
    return value;
  }

  hex(value: unknown, path: string, limit: bigint): bigint {
    if (typeof value !== 'string' || !/^0x[0-9a-f]+$/i.test(value) || BigInt(value) >= limit)
      this.fail(path, `a hex number below ${hex(limit)}`, value);
    return BigInt(value);
  }

  optional<T>(value: unknown, read: (value: unknown) => T): T | undefined {
    return value === undefined ? undefined : read(value);
  }

  oneOf<T extends string>(value: unknown, path: string, allowed: readonly T[]): T {
    if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) this.fail(path, allowed.join(', '), value);
    return value as T;
  }
}

const RECORDINGS: readonly TranslationFailure['recording'][] = ['recorded', 'collapsed', 'overflow', 'dropped-pfo', 'suppressed-fpd', 'none'];
/** Paging levels run 5..1; 0 is a nested walk's output. */
const LEVEL_LIMIT = 6;
/** The widest entry a walk decides on: a scalable-mode PASID entry, 512 bits. */
const ENTRY_VALUE_LIMIT = 1n << 512n;

/** Reads a fault record written by faultRecordFile(). */
function readFaultRecord(read: FieldReader, value: unknown, path: string): FaultRecord {
  const field = read.object(value, path);
  const level = read.optional(field['level'], (v) => read.integer(v, `${path}.level`, LEVEL_LIMIT));
  const secondStageLevel = read.optional(field['secondStageLevel'], (v) => read.integer(v, `${path}.secondStageLevel`, LEVEL_LIMIT));
  const entryAddress = read.optional(field['entryAddress'], (v) => Number(read.hex(v, `${path}.entryAddress`, BigInt(MAX_GUEST_ADDRESS) + 1n)));
  const entryValue = read.optional(field['entryValue'], (v) => read.hex(v, `${path}.entryValue`, ENTRY_VALUE_LIMIT));
  const pasid = read.optional(field['pasid'], (v) => read.integer(v, `${path}.pasid`, 2 ** 20));
  const unrecorded = read.optional(field['unrecorded'], (v) => read.boolean(v, `${path}.unrecorded`));
  return {
    ok: false,
    reason: read.integer(field['reason'], `${path}.reason`, 256),
    stage: read.oneOf(field['stage'], `${path}.stage`, FAULT_STAGES),
    ...(level === undefined ? {} : { level }),
    ...(secondStageLevel === undefined ? {} : { secondStageLevel }),
    ...(entryAddress === undefined ? {} : { entryAddress }),
    ...(entryValue === undefined ? {} : { entryValue }),
    ...(pasid === undefined ? {} : { pasid }),
    fpd: read.boolean(field['fpd'], `${path}.fpd`),
    notPresent: read.boolean(field['notPresent'], `${path}.notPresent`),
    pastContext: read.boolean(field['pastContext'], `${path}.pastContext`),
    ...(unrecorded === true ? { unrecorded } : {}),
  };
}

/** The observed fault as `version` wrote it: the whole record (2), or the reason and level (1). */
function readObserved(read: FieldReader, value: unknown, version: number): ObservedFault | ObservedFaultSummary {
  const field = read.object(value, 'observed');
  const recording = read.oneOf(field['recording'], 'observed.recording', RECORDINGS);
  if (version !== 1) return { fault: readFaultRecord(read, field['fault'], 'observed.fault'), recording };
  const level = read.optional(field['level'], (v) => read.integer(v, 'observed.level', LEVEL_LIMIT));
  return { reason: read.integer(field['reason'], 'observed.reason', 256), ...(level === undefined ? {} : { level }), recording };
}

/** Parses and checks snapshot JSON text; `origin` names it in errors (a file name). */
export function parseSnapshot(text: string, origin = 'snapshot'): UnitSnapshot {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new SnapshotError(`${origin}: not a viommu fault snapshot (not JSON: ${(error as Error).message})`);
  }
  // Annotated, so that read.fail() (never returns) narrows what follows it.
  const read: FieldReader = new FieldReader(origin);
  const top = read.object(parsed, 'the file');
  if (top['format'] !== SNAPSHOT_FORMAT) {
    throw new SnapshotError(
      `${origin}: not a viommu fault snapshot (format ${JSON.stringify(top['format'] ?? null)}, expected '${SNAPSHOT_FORMAT}')`,
    );
  }
  const version = top['version'];
  if (typeof version !== 'number' || !READABLE_VERSIONS.includes(version)) {
    throw new SnapshotError(
      `${origin}: snapshot version ${JSON.stringify(version ?? null)}; this viommu reads versions ${READABLE_VERSIONS.join(' and ')}`,
    );
  }
  const config = read.string(top['config'], 'config');
  const registers = read.object(top['registers'], 'registers');
  const request = read.object(top['request'], 'request');
  const pages = new Map<number, Uint8Array>();
  const pageList = top['pages'];
  if (!Array.isArray(pageList)) read.fail('pages', 'a list', pageList);
  pageList.forEach((item: unknown, i: number) => {
    const page = read.object(item, `pages[${i}]`);
    const address = Number(read.hex(page['address'], `pages[${i}].address`, BigInt(MAX_GUEST_ADDRESS) + 1n));
    if (address % SNAPSHOT_PAGE_BYTES !== 0) read.fail(`pages[${i}].address`, 'a 4 KiB-aligned address', page['address']);
    if (pages.has(address)) read.fail(`pages[${i}].address`, 'an address no other page has', page['address']);
    const data = read.string(page['data'], `pages[${i}].data`);
    const bytes = Buffer.from(data, 'base64');
    if (bytes.length !== SNAPSHOT_PAGE_BYTES || bytes.toString('base64') !== data)
      read.fail(`pages[${i}].data`, `${SNAPSHOT_PAGE_BYTES} bytes in base64`, `${data.length} characters`);
    pages.set(address, new Uint8Array(bytes));
  });
  const unbackedList = top['unbacked'] ?? [];
  if (!Array.isArray(unbackedList)) read.fail('unbacked', 'a list', unbackedList);
  const observed = read.optional(top['observed'], (value) => readObserved(read, value, version));
  const pasid = read.optional(request['pasid'], (value) => read.integer(value, 'request.pasid', 2 ** 20));
  const supervisor = read.optional(request['supervisor'], (value) => read.boolean(value, 'request.supervisor'));
  const execute = read.optional(request['execute'], (value) => read.boolean(value, 'request.execute'));
  const source = read.optional(top['source'], (value) => read.string(value, 'source'));
  return {
    config,
    registers: {
      rtaddr: read.hex(registers['RTADDR'], 'registers.RTADDR', 1n << 64n),
      rtaddrRegister: read.hex(registers['RTADDR_REGISTER'], 'registers.RTADDR_REGISTER', 1n << 64n),
      gsts: Number(read.hex(registers['GSTS'], 'registers.GSTS', 1n << 32n)),
      translationEnabled: read.boolean(registers['TE'], 'registers.TE'),
    },
    request: {
      sid: read.integer(request['sid'], 'request.sid', 2 ** 16),
      iova: read.hex(request['iova'], 'request.iova', 1n << 64n),
      write: read.boolean(request['write'], 'request.write'),
      ...(pasid === undefined ? {} : { pasid }),
      ...(supervisor === undefined ? {} : { supervisor }),
      ...(execute === undefined ? {} : { execute }),
    },
    pages,
    unbacked: unbackedList.map((value: unknown, i: number) => Number(read.hex(value, `unbacked[${i}]`, BigInt(MAX_GUEST_ADDRESS) + 1n))),
    ...(observed === undefined ? {} : { observed }),
    takenAt: read.string(top['takenAt'], 'takenAt'),
    ...(source === undefined ? {} : { source }),
  };
}
