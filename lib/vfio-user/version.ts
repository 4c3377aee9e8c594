/** VERSION capabilities: parse and validate a peer's JSON, apply the spec's defaults, and format our own. */

import { invalid } from './errors';
import { CAPABILITY_DEFAULTS, CAPABILITY_JSON_NAMES as NAMES } from './protocol';

export interface TwinSocketCapability {
  readonly supported: boolean;
  /** Only meaningful in a server's reply: which of the message's fds is the twin socket. */
  readonly fdIndex?: number;
}

export interface MigrationCapability {
  readonly pgsize: number;
  /** QEMU adds this; libvfio-user leaves it out. */
  readonly maxBitmapSize?: number;
}

/** The capabilities a peer stated; a missing member means "the default" (see resolveCapabilities). */
export interface VersionCapabilities {
  readonly maxMsgFds?: number;
  readonly maxDataXferSize?: number;
  readonly maxDmaMaps?: number;
  /** A bitmap of supported page sizes; it can use bit 63, so it is a bigint. */
  readonly pgsizes?: bigint;
  readonly twinSocket?: TwinSocketCapability;
  readonly writeMultiple?: boolean;
  readonly migration?: MigrationCapability;
}

/** Every capability with the spec's default filled in where the peer said nothing. */
export interface ResolvedCapabilities {
  readonly maxMsgFds: number;
  readonly maxDataXferSize: number;
  readonly maxDmaMaps: number;
  readonly pgsizes: bigint;
  readonly twinSocket: TwinSocketCapability;
  readonly writeMultiple: boolean;
  readonly migration: MigrationCapability | undefined;
}

type JsonObject = { readonly [key: string]: unknown };

function isObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function badData(message: string) {
  return invalid('ERR_VFIO_USER_BAD_VERSION_DATA', `VERSION data: ${message}`);
}

/**
 * Deepest nesting of arrays and objects accepted in VERSION data: json-c's default (libvfio-user parses with json-c),
 * far above the 3 levels the spec's capabilities use, so a newer peer's additions still fit.
 */
export const MAX_VERSION_JSON_DEPTH = 32;

/** Longest quoted value in an error message: a peer's huge value must not become a huge log line. */
const MAX_QUOTED_LENGTH = 64;

/**
 * A short rendering of a peer's value. JSON.stringify is avoided for arrays and objects: it recurses, so a deep value
 * would overflow the stack, and a large one would fill the message.
 */
function quote(value: unknown): string {
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'object' && value !== null) return 'an object';
  const text = JSON.stringify(value) ?? String(value);
  return text.length <= MAX_QUOTED_LENGTH ? text : `${text.slice(0, MAX_QUOTED_LENGTH)}... (${text.length} characters)`;
}

function positiveInteger(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw badData(`"${name}" must be a positive integer, got ${quote(value)}`);
  }
  return value;
}

function nonNegativeInteger(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw badData(`"${name}" must be a non-negative integer, got ${quote(value)}`);
  }
  return value;
}

function boolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw badData(`"${name}" must be true or false, got ${quote(value)}`);
  return value;
}

/**
 * A page-size bitmap. JSON numbers are doubles, but every bitmap of page sizes of 4 KiB and up has at most 52
 * significant bits, so the double is exact and converts to bigint without loss.
 */
function pageSizeBitmap(value: unknown, name: string): bigint {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || value >= 2 ** 64) {
    throw badData(`"${name}" must be a positive integer below 2^64, got ${quote(value)}`);
  }
  return BigInt(value);
}

function object(value: unknown, name: string): JsonObject {
  if (!isObject(value)) throw badData(`"${name}" must be an object, got ${quote(value)}`);
  return value;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACKET = 0x5b;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACKET = 0x5d;
const CLOSE_BRACE = 0x7d;

/**
 * Refuses text nested deeper than MAX_VERSION_JSON_DEPTH before JSON.parse sees it: whatever parses or walks the
 * result later (JSON.parse itself in some engines, JSON.stringify, our own checks) may recurse once per level.
 * Brackets inside strings do not count; malformed text is left for JSON.parse to describe.
 */
function checkNestingDepth(text: string): void {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inString = false;
    } else if (c === QUOTE) {
      inString = true;
    } else if (c === OPEN_BRACKET || c === OPEN_BRACE) {
      if (++depth > MAX_VERSION_JSON_DEPTH) {
        throw badData(`arrays and objects nest deeper than ${MAX_VERSION_JSON_DEPTH} levels (at character ${i})`);
      }
    } else if (c === CLOSE_BRACKET || c === CLOSE_BRACE) {
      depth--;
    }
  }
}

/**
 * Parses the JSON of a VERSION message (without its NUL). Empty text means no capabilities at all (the data part is
 * optional). Unknown members are ignored, so that a newer peer's additions do not break us.
 */
export function parseVersionCapabilities(text: string): VersionCapabilities {
  if (text === '') return {};
  checkNestingDepth(text);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw badData(`not valid JSON (${(cause as Error).message})`);
  }
  const top = object(parsed, 'version data');
  if (top.capabilities === undefined) return {};
  const caps = object(top.capabilities, 'capabilities');
  const result: { -readonly [K in keyof VersionCapabilities]: VersionCapabilities[K] } = {};
  const present = (name: string) => Object.prototype.hasOwnProperty.call(caps, name);

  if (present(NAMES.maxMsgFds)) result.maxMsgFds = positiveInteger(caps[NAMES.maxMsgFds], NAMES.maxMsgFds);
  if (present(NAMES.maxDataXferSize)) {
    result.maxDataXferSize = positiveInteger(caps[NAMES.maxDataXferSize], NAMES.maxDataXferSize);
  }
  if (present(NAMES.maxDmaMaps)) result.maxDmaMaps = positiveInteger(caps[NAMES.maxDmaMaps], NAMES.maxDmaMaps);
  if (present(NAMES.pgsizes)) result.pgsizes = pageSizeBitmap(caps[NAMES.pgsizes], NAMES.pgsizes);
  if (present(NAMES.twinSocket)) {
    const twin = object(caps[NAMES.twinSocket], NAMES.twinSocket);
    const supported = twin[NAMES.twinSocketSupported];
    const fdIndex = twin[NAMES.twinSocketFdIndex];
    result.twinSocket = {
      supported: supported === undefined ? false : boolean(supported, `${NAMES.twinSocket}.${NAMES.twinSocketSupported}`),
      ...(fdIndex === undefined ? {} : { fdIndex: nonNegativeInteger(fdIndex, `${NAMES.twinSocket}.${NAMES.twinSocketFdIndex}`) }),
    };
  }
  if (present(NAMES.writeMultiple)) result.writeMultiple = boolean(caps[NAMES.writeMultiple], NAMES.writeMultiple);
  if (present(NAMES.migration)) {
    const migration = object(caps[NAMES.migration], NAMES.migration);
    const maxBitmapSize = migration[NAMES.migrationMaxBitmapSize];
    result.migration = {
      pgsize: positiveInteger(migration[NAMES.migrationPgsize], `${NAMES.migration}.${NAMES.migrationPgsize}`),
      ...(maxBitmapSize === undefined ? {} : { maxBitmapSize: positiveInteger(maxBitmapSize, `${NAMES.migration}.${NAMES.migrationMaxBitmapSize}`) }),
    };
  }
  return result;
}

/** Fills in the spec's defaults for every capability the peer did not state. */
export function resolveCapabilities(caps: VersionCapabilities): ResolvedCapabilities {
  return {
    maxMsgFds: caps.maxMsgFds ?? CAPABILITY_DEFAULTS.maxMsgFds,
    maxDataXferSize: caps.maxDataXferSize ?? CAPABILITY_DEFAULTS.maxDataXferSize,
    maxDmaMaps: caps.maxDmaMaps ?? CAPABILITY_DEFAULTS.maxDmaMaps,
    pgsizes: caps.pgsizes ?? BigInt(CAPABILITY_DEFAULTS.pgsizes),
    twinSocket: caps.twinSocket ?? CAPABILITY_DEFAULTS.twinSocket,
    writeMultiple: caps.writeMultiple ?? CAPABILITY_DEFAULTS.writeMultiple,
    migration: caps.migration ?? CAPABILITY_DEFAULTS.migration,
  };
}

function member(name: string, value: string): string {
  return `${JSON.stringify(name)}:${value}`;
}

/**
 * Formats capabilities as compact JSON (`{"capabilities":{...}}`), members in the spec's order. Written by hand
 * because JSON.stringify cannot print a bigint.
 */
export function formatVersionCapabilities(caps: VersionCapabilities): string {
  const members: string[] = [];
  if (caps.maxMsgFds !== undefined) members.push(member(NAMES.maxMsgFds, String(caps.maxMsgFds)));
  if (caps.maxDataXferSize !== undefined) members.push(member(NAMES.maxDataXferSize, String(caps.maxDataXferSize)));
  if (caps.maxDmaMaps !== undefined) members.push(member(NAMES.maxDmaMaps, String(caps.maxDmaMaps)));
  if (caps.pgsizes !== undefined) members.push(member(NAMES.pgsizes, caps.pgsizes.toString()));
  if (caps.twinSocket !== undefined) {
    const twin = [member(NAMES.twinSocketSupported, String(caps.twinSocket.supported))];
    if (caps.twinSocket.fdIndex !== undefined) twin.push(member(NAMES.twinSocketFdIndex, String(caps.twinSocket.fdIndex)));
    members.push(member(NAMES.twinSocket, `{${twin.join(',')}}`));
  }
  if (caps.writeMultiple !== undefined) members.push(member(NAMES.writeMultiple, String(caps.writeMultiple)));
  if (caps.migration !== undefined) {
    const migration = [member(NAMES.migrationPgsize, String(caps.migration.pgsize))];
    if (caps.migration.maxBitmapSize !== undefined) {
      migration.push(member(NAMES.migrationMaxBitmapSize, String(caps.migration.maxBitmapSize)));
    }
    members.push(member(NAMES.migration, `{${migration.join(',')}}`));
  }
  return `{${member('capabilities', `{${members.join(',')}}`)}}`;
}
