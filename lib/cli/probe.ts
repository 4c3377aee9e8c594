/** `viommu probe --socket PATH`: what a vfio-user server offers, printed much as `lspci -vv` prints a device. */
import type { Command } from 'commander';
import { ViommuError } from '../errors';
import { isSystemCallError } from '../native';
import { VfioUserClient, VfioUserClientError, type RegionDescription } from '../vfio-user/client';
import type { DeviceDescription, IrqDescription } from '../vfio-user/client/enumeration';
import {
  DEVSEL_TIMINGS,
  HEADER_LAYOUT_MASK,
  PCI_BASE_CLASSES,
  PCI_CAPABILITY_IDS,
  PCI_COMMAND,
  PCI_CONFIG_SIZE,
  PCI_EXTENDED_CONFIG_SIZE,
  PCI_HEADER_SIZE,
  PCI_STATUS,
  TYPE0_HEADER,
} from '../devices/pci-layout';
import { describePciConfig, wantsMoreConfig, type PciDescription } from '../vfio-user/client/pci-config';
import { VfioUserClosedError, VfioUserRemoteError, VfioUserTimeoutError } from '../vfio-user/connection-errors';
import { ERRNO_TABLE } from '../errno';
import { VfioUserProtocolError } from '../vfio-user/errors';
import { CAPABILITY_JSON_NAMES, COMMANDS, DEVICE_INFO_FLAGS, IRQ_INFO_FLAGS, REGION_INDEXES, REGION_INFO_FLAGS } from '../vfio-user/protocol';
import type { ResolvedCapabilities, VersionCapabilities } from '../vfio-user/version';

export const DEFAULT_PROBE_TIMEOUT_MS = 5000;
/** The whole probe may take this many request timeouts, however the server drips its answers. */
const DEADLINE_IN_TIMEOUTS = 6;

/** Configuration space as far as the probe got. */
export type ProbeConfig =
  | { readonly status: 'read'; readonly regionSize: bigint; readonly bytes: Uint8Array; readonly pci: PciDescription }
  | { readonly status: 'unavailable'; readonly reason: string };

/** Everything `viommu probe` learned: plain data that the renderer and --json turn into text. */
export interface ProbeDescription {
  readonly socket: string;
  readonly version: { readonly major: number; readonly minor: number };
  readonly twinSocket: boolean;
  /** What the server's capabilities amount to, the spec's defaults filled in. */
  readonly capabilities: ResolvedCapabilities;
  /** Only what the server's VERSION reply stated. */
  readonly capabilitiesSent: VersionCapabilities;
  /** JSON names of the capabilities the server left out, whose values in `capabilities` are the spec's defaults. */
  readonly capabilitiesDefaulted: readonly string[];
  readonly device: DeviceDescription;
  readonly regions: readonly RegionDescription[];
  readonly irqs: readonly IrqDescription[];
  readonly config: ProbeConfig;
}

export interface ProbeOptions {
  readonly socket: string;
  readonly json?: boolean;
  readonly timeoutMs?: number;
  readonly twinSocket?: boolean;
}

/** A probe that could not describe the server, or found it malformed; the CLI prints the message and exits 1. */
export class ProbeError extends ViommuError {
  constructor(message: string) {
    super('ERR_PROBE', message);
    this.name = 'ProbeError';
  }
}

// ---- gathering ---------------------------------------------------------------------------------------------

function errnoName(errno: number): string {
  const name = ERRNO_TABLE.nameOf(errno);
  return name === undefined ? `errno ${errno}` : `${name} (${errno})`;
}

async function readConfig(client: VfioUserClient, device: DeviceDescription): Promise<ProbeConfig> {
  const index = REGION_INDEXES.values.CONFIG;
  if ((device.flags & DEVICE_INFO_FLAGS.bits.PCI) === 0) return { status: 'unavailable', reason: 'not a PCI device' };
  const region = client.regions[index];
  if (region === undefined) return { status: 'unavailable', reason: 'the server has no CONFIG region' };
  if (!region.readable || region.size < BigInt(PCI_HEADER_SIZE)) {
    return {
      status: 'unavailable',
      reason: `the CONFIG region is not readable as a ${PCI_HEADER_SIZE}-byte header (size ${region.size}, flags 0x${region.description.flags.toString(16)})`,
    };
  }
  let bytes: Uint8Array;
  try {
    bytes = await client.regionRead(index, 0, PCI_HEADER_SIZE);
    const header = TYPE0_HEADER.decode(bytes, 0);
    const conventional = Math.min(Number(region.size), PCI_CONFIG_SIZE);
    if (wantsMoreConfig(header) && conventional > PCI_HEADER_SIZE) {
      bytes = concat(bytes, await client.regionRead(index, PCI_HEADER_SIZE, conventional - PCI_HEADER_SIZE));
      const expressFound = describePciConfig(bytes).capabilities.some((cap) => cap.id === PCI_CAPABILITY_IDS.PCI_EXPRESS);
      if (expressFound && region.size >= BigInt(PCI_EXTENDED_CONFIG_SIZE)) {
        bytes = concat(bytes, await client.regionRead(index, PCI_CONFIG_SIZE, PCI_EXTENDED_CONFIG_SIZE - PCI_CONFIG_SIZE));
      }
    }
  } catch (error) {
    // A device that refuses config reads is odd but not broken; the rest of the description still stands.
    if (error instanceof VfioUserRemoteError)
      return { status: 'unavailable', reason: `the server refused the config read with ${errnoName(error.errno)}` };
    throw error;
  }
  const regionSizes = client.regions.slice(0, 6).map((r) => r.size);
  return { status: 'read', regionSize: region.size, bytes, pci: describePciConfig(bytes, regionSizes) };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Describes a started client's server; reads configuration space, nothing else that a device could act on. */
export async function describeServer(client: VfioUserClient, socket: string): Promise<ProbeDescription> {
  const summary = client.description;
  const device = summary.device;
  if (device === undefined) throw new ProbeError('the client did not enumerate the device');
  return {
    socket,
    version: summary.version,
    twinSocket: summary.twinSocket,
    capabilities: summary.serverCapabilities,
    capabilitiesSent: summary.serverStatedCapabilities,
    capabilitiesDefaulted: CAPABILITY_ORDER.filter((key) => summary.serverStatedCapabilities[key] === undefined).map(
      (key) => CAPABILITY_JSON_NAMES[key],
    ),
    device,
    regions: summary.regions,
    irqs: summary.irqs,
    config: await readConfig(client, device),
  };
}

// ---- rendering ---------------------------------------------------------------------------------------------

const hex = (value: number | bigint, digits = 0) => value.toString(16).padStart(digits, '0');
const onOff = (value: boolean) => (value ? '+' : '-');
const IRQ_NAMES: Record<string, string> = { INTX: 'INTx', MSI: 'MSI', MSIX: 'MSI-X', ERR: 'ERR', REQ: 'REQ' };
const INTERRUPT_PINS = ['', 'A', 'B', 'C', 'D'];
/** lspci writes "Power Management version 3" and "Express (v2) Endpoint", but "MSI: Enable+ ...". */
const SPACE_BEFORE_DETAIL = new Set(['Power Management', 'Express']);

/** lspci's sizes: bytes below 1K, else the largest binary unit that divides the size. */
export function formatSize(size: bigint): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P'];
  let value = size;
  let unit = 0;
  while (value >= 1024n && value % 1024n === 0n && unit < units.length - 1) {
    value /= 1024n;
    unit++;
  }
  return `${value}${units[unit]}`;
}

function flagList(names: readonly string[]): string {
  return `[${names.join(' ')}]`;
}

/** The capabilities in the spec's order, as VERSION lists them. */
const CAPABILITY_ORDER = ['maxMsgFds', 'maxDataXferSize', 'maxDmaMaps', 'pgsizes', 'twinSocket', 'writeMultiple', 'migration'] as const;

function renderCapability(key: (typeof CAPABILITY_ORDER)[number], caps: ResolvedCapabilities): string {
  const name = CAPABILITY_JSON_NAMES[key];
  switch (key) {
    case 'maxMsgFds':
      return `${name}=${caps.maxMsgFds}`;
    case 'maxDataXferSize':
      return `${name}=${caps.maxDataXferSize}`;
    case 'maxDmaMaps':
      return `${name}=${caps.maxDmaMaps}`;
    case 'pgsizes':
      return `${name}=0x${hex(caps.pgsizes)}`;
    case 'twinSocket': {
      const twin = caps.twinSocket;
      return twin.supported ? `${name}+${twin.fdIndex === undefined ? '' : ` (fd_index ${twin.fdIndex})`}` : `${name}-`;
    }
    case 'writeMultiple':
      return `${name}${onOff(caps.writeMultiple)}`;
    case 'migration': {
      const migration = caps.migration;
      if (migration === undefined) return `${name}-`;
      return `${name}=pgsize ${migration.pgsize}${migration.maxBitmapSize === undefined ? '' : `,max_bitmap_size ${migration.maxBitmapSize}`}`;
    }
  }
}

/** Two lines: what the server sent, and what it left to the spec's defaults (so a default never passes for an offer). */
function renderCapabilities(caps: ResolvedCapabilities, sent: VersionCapabilities): string[] {
  const stated = CAPABILITY_ORDER.filter((key) => sent[key] !== undefined).map((key) => renderCapability(key, caps));
  const defaulted = CAPABILITY_ORDER.filter((key) => sent[key] === undefined).map((key) => renderCapability(key, caps));
  return [
    `\tCapabilities sent: ${stated.length === 0 ? 'none' : stated.join(' ')}`,
    `\tCapability defaults (not sent): ${defaulted.length === 0 ? 'none' : defaulted.join(' ')}`,
  ];
}

function renderRegion(region: RegionDescription): string[] {
  const name = region.name === undefined ? `Region ${region.index}` : `Region ${region.index} (${region.name})`;
  if (region.size === 0n && region.flags === 0) return [`\t${name}: not present`];
  const lines = [`\t${name}: size=${formatSize(region.size)} ${flagList(REGION_INFO_FLAGS.names(region.flags))}${region.hasFd ? ' mmap-fd' : ''}`];
  if (region.sparse) {
    const areas = region.mmapAreas.map((area) => `0x${hex(area.offset)}-0x${hex(area.offset + area.size - 1n)}`);
    lines.push(`\t\tSparse mmap areas: ${areas.length === 0 ? 'none' : areas.join(' ')}`);
  }
  if (region.type !== undefined) lines.push(`\t\tRegion type: ${region.type.type} subtype ${region.type.subtype}`);
  for (const cap of region.otherCapabilities) lines.push(`\t\tCapability id ${cap.id} version ${cap.version} (not decoded)`);
  return lines;
}

function renderIrq(irq: IrqDescription): string {
  const name = irq.name === undefined ? `IRQ ${irq.index}` : `IRQ ${irq.index} (${IRQ_NAMES[irq.name] ?? irq.name})`;
  return `\t${name}: count=${irq.count} ${flagList(IRQ_INFO_FLAGS.names(irq.flags))}`;
}

/** A register's flags in its table's order, with lspci's labels ("Mem+ BusMaster-"). */
function renderFlags(register: number, entries: readonly { key: string; label?: string; mask: number }[]): string {
  return entries.map((entry) => `${entry.label ?? entry.key}${onOff((register & entry.mask) !== 0)}`).join(' ');
}

function renderStatus(status: number): string {
  const parts = PCI_STATUS.entries.map((entry) =>
    entry.key === 'DEVSEL_TIMING' ? `DEVSEL=${DEVSEL_TIMINGS[PCI_STATUS.get(status, 'DEVSEL_TIMING')]}` : renderFlags(status, [entry]),
  );
  return `Status: ${parts.join(' ')}`;
}

function renderPci(pci: PciDescription): string[] {
  const h = pci.header;
  const className = PCI_BASE_CLASSES.nameOf(h.baseClass) ?? 'Class';
  const progIf = h.programmingInterface === 0 ? '' : ` (prog-if ${hex(h.programmingInterface, 2)})`;
  const lines = [
    `\t${className} [${hex(h.baseClass, 2)}${hex(h.subClass, 2)}]: Device ${hex(h.vendorId, 4)}:${hex(h.deviceId, 4)} (rev ${hex(h.revisionId, 2)})${progIf}`,
  ];
  if ((h.headerType & HEADER_LAYOUT_MASK) === 0) lines.push(`\tSubsystem: Device ${hex(h.subsystemVendorId, 4)}:${hex(h.subsystemId, 4)}`);
  else lines.push(`\tHeader type ${hex(h.headerType, 2)}: only the fields common to every header are decoded`);
  lines.push(`\tControl: ${renderFlags(h.command, PCI_COMMAND.entries)}`);
  lines.push(`\t${renderStatus(h.status)}`);
  if (h.interruptPin !== 0) {
    lines.push(`\tInterrupt: pin ${INTERRUPT_PINS[h.interruptPin] ?? `?${h.interruptPin}`} routed to IRQ ${h.interruptLine}`);
  }
  for (const bar of pci.bars) {
    const at = bar.address === 0n ? '<unassigned>' : hex(bar.address);
    const size = bar.size === undefined ? '' : ` [size=${formatSize(bar.size)}]`;
    const kind =
      bar.kind === 'io' ? `I/O ports at ${at}` : `Memory at ${at} (${bar.width}-bit, ${bar.prefetchable ? 'prefetchable' : 'non-prefetchable'})`;
    lines.push(`\tRegion ${bar.index}: ${kind}${size}`);
  }
  if (pci.capabilities.length === 0 && pci.problems.length === 0) lines.push('\tCapabilities: none');
  for (const cap of pci.capabilities) {
    const name = cap.name ?? `Capability ID 0x${hex(cap.id, 2)}`;
    const separator = cap.name !== undefined && SPACE_BEFORE_DETAIL.has(cap.name) ? ' ' : ': ';
    lines.push(`\tCapabilities: [${hex(cap.offset, 2)}] ${name}${cap.detail === undefined ? '' : `${separator}${cap.detail}`}`);
    for (const extra of cap.extra) lines.push(`\t\t${extra}`);
  }
  for (const cap of pci.extendedCapabilities) {
    lines.push(`\tCapabilities: [${hex(cap.offset, 3)} v${cap.version}] ${cap.name ?? `Extended Capability ID 0x${hex(cap.id, 4)}`}`);
  }
  for (const note of pci.notes) lines.push(`\tNote: ${note}`);
  for (const problem of pci.problems) lines.push(`\tError: ${problem}`);
  return lines;
}

/** The human-readable description, one string per line (no newlines inside). Pure: same description, same lines. */
export function renderProbe(description: ProbeDescription): string[] {
  const { device } = description;
  const lines = [
    `vfio-user server at ${description.socket}`,
    `\tProtocol: version ${description.version.major}.${description.version.minor}, twin socket${onOff(description.twinSocket)}`,
    ...renderCapabilities(description.capabilities, description.capabilitiesSent),
    `\tDevice: flags 0x${hex(device.flags)} ${flagList(DEVICE_INFO_FLAGS.names(device.flags))}, ${device.numRegions} regions, ${device.numIrqs} IRQ indexes`,
    ...description.regions.flatMap(renderRegion),
    ...description.irqs.map(renderIrq),
  ];
  const config = description.config;
  if (config.status === 'unavailable') {
    lines.push(`PCI configuration space: not available (${config.reason})`);
  } else {
    lines.push(`PCI configuration space (${config.bytes.length} of ${config.regionSize} bytes read):`, ...renderPci(config.pci));
  }
  return lines;
}

/** The description as JSON: u64 values as "0x..." strings, config bytes as hex, flag names beside flag numbers. */
export function probeToJson(description: ProbeDescription): string {
  const withNames = {
    ...description,
    device: { ...description.device, flagNames: DEVICE_INFO_FLAGS.names(description.device.flags) },
    regions: description.regions.map((region) => ({ ...region, flagNames: REGION_INFO_FLAGS.names(region.flags) })),
    irqs: description.irqs.map((irq) => ({ ...irq, flagNames: IRQ_INFO_FLAGS.names(irq.flags) })),
  };
  return JSON.stringify(
    withNames,
    (_key, value: unknown) => {
      if (typeof value === 'bigint') return `0x${value.toString(16)}`;
      if (value instanceof Uint8Array) return Buffer.from(value).toString('hex');
      return value;
    },
    2,
  );
}

// ---- the command -------------------------------------------------------------------------------------------

function commandName(command: number): string {
  return COMMANDS.nameOf(command) ?? `command ${command}`;
}

/** One clear sentence for whatever went wrong while talking to the server. */
export function explainFailure(error: unknown, socket: string): ProbeError {
  const at = `the vfio-user server at ${socket}`;
  if (error instanceof ProbeError) return error;
  if (error instanceof VfioUserTimeoutError) return new ProbeError(`${at} did not answer ${error.command} within ${error.timeoutMs} ms`);
  if (error instanceof VfioUserClosedError) return new ProbeError(`${at} closed the connection${error.reason ? ` (${error.reason.message})` : ''}`);
  if (error instanceof VfioUserRemoteError) return new ProbeError(`${at} refused ${commandName(error.command)} with ${errnoName(error.errno)}`);
  if (error instanceof VfioUserProtocolError) return new ProbeError(`${at} sent a malformed message: ${error.message}`);
  if (error instanceof VfioUserClientError) return new ProbeError(`${at} described its device inconsistently: ${error.message}`);
  if (isSystemCallError(error)) return new ProbeError(`cannot connect to ${socket}: ${error.code} (${error.message})`);
  return new ProbeError(`probing ${socket} failed: ${error instanceof Error ? error.message : String(error)}`);
}

/**
 * Connects, describes, writes the output through `write` (one call per line) and closes. Throws ProbeError when the
 * server could not be described, or after writing, when what it described is malformed.
 */
export async function runProbe(options: ProbeOptions, write: (line: string) => void): Promise<void> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  let client: VfioUserClient | undefined;
  let deadline: NodeJS.Timeout | undefined;
  let expired = false;
  let description: ProbeDescription;
  try {
    const connecting = VfioUserClient.connect(options.socket, { requestTimeoutMs: timeoutMs, twinSocket: options.twinSocket ?? true });
    const limit = new Promise<never>((_, reject) => {
      deadline = setTimeout(() => {
        expired = true;
        reject(
          new ProbeError(`the vfio-user server at ${options.socket} did not finish describing itself within ${timeoutMs * DEADLINE_IN_TIMEOUTS} ms`),
        );
      }, timeoutMs * DEADLINE_IN_TIMEOUTS);
    });
    // A late client (the deadline won) is closed as soon as it arrives.
    connecting.then(
      (late) => (expired ? late.close() : undefined),
      () => undefined,
    );
    client = await Promise.race([connecting, limit]);
    description = await Promise.race([describeServer(client, options.socket), limit]);
  } catch (error) {
    throw explainFailure(error, options.socket);
  } finally {
    if (deadline) clearTimeout(deadline);
    client?.close();
  }
  if (options.json) write(probeToJson(description));
  else for (const line of renderProbe(description)) write(line);
  const problems = description.config.status === 'read' ? description.config.pci.problems : [];
  if (problems.length > 0) throw new ProbeError(`the device's PCI configuration space is malformed: ${problems.join('; ')}`);
}

function parseTimeout(value: string): number {
  const ms = Number(value);
  if (!Number.isInteger(ms) || ms < 1 || ms > 600000) throw new ProbeError(`--timeout ${value}: a whole number of milliseconds from 1 to 600000`);
  return ms;
}

/** Adds `viommu probe` to the program. */
export function registerProbeCommand(program: Command): void {
  program
    .command('probe')
    .description('connect to a vfio-user server and print what it offers: protocol, capabilities, regions, IRQs, PCI config header (as lspci -vv)')
    .requiredOption('--socket <path>', "the server's UNIX socket")
    .option('--json', 'print the description as JSON')
    .option('--timeout <ms>', 'time limit for each request', String(DEFAULT_PROBE_TIMEOUT_MS))
    .option('--no-twin-socket', 'do not ask the server for a twin socket')
    .action(async (options: { socket: string; json?: boolean; timeout: string; twinSocket: boolean }) => {
      await runProbe(
        { socket: options.socket, json: options.json ?? false, timeoutMs: parseTimeout(options.timeout), twinSocket: options.twinSocket },
        (line) => process.stdout.write(`${line}\n`),
      );
    });
}
