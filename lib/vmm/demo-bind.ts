/**
 * `viommu demo --mode bind`: a guest driver binds a first-stage PASID table through the VT-d unit and the demo shows
 * each host iommufd request its steps became (NestingBackend + IommufdNesting), then a host page fault walked back
 * into the guest's fault records. The host is /dev/iommu with a real VFIO device when both are given, else the
 * dry-run iommufd.
 */
import { IommufdDryRun, FULL_VTD_HOST } from '../host/iommufd-dry-run';
import { IommufdNesting, type HostFault, type IommufdChannel, type IoctlOptions } from '../host/iommufd-nesting';
import {
  HW_INFO_FLAGS,
  HW_INFO_TYPE,
  HWPT_ALLOC_FLAGS,
  HWPT_DATA_TYPE,
  HWPT_INVALIDATE_DATA_TYPE,
  INVALIDATE_ALL_PAGES,
  IOAS_MAP_FLAGS,
  IOMMU_HW_INFO_VTD_LAYOUT,
  IOMMU_HWPT_PAGE_RESPONSE_LAYOUT,
  IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT,
  IOMMU_HWPT_VTD_S1_LAYOUT,
  PAGE_RESPONSE_CODE,
  PGFAULT_FLAGS,
  PGFAULT_PERM,
  VFIO_ATTACH_FLAGS,
  VFIO_BIND_FLAGS,
  VFIO_DETACH_FLAGS,
  VTD_INVALIDATE_FLAGS,
  VTD_S1_FLAGS,
  decodeStruct,
  errnoName,
  ioctlByRequest,
  type IoctlSpec,
} from '../host/iommufd-uapi';
import { NestingBackend, nestingConfigProblems } from '../host/nesting-backend';
import { IommufdDevice } from '../os/iommufd-device';
import { PAGE_BYTES } from '../memory/geometry';
import type { FieldSpec, FlagSet, NumberTable, StructLayout } from '../byte-layout';
import { encodeBig, getFieldBig } from '../vtd/bitfield';
import { faultCode } from '../vtd/fault-reasons';
import { OFFSET, registerOffset } from '../vtd/register-bits';
import { ECAP_FIELDS, VCCAP_FIELDS, VCMD_FIELDS, VCRSP_FIELDS } from '../vtd/registers';
import { always, sometimes, type TraceEventOf, type TraceSchema, type UnitTraceEvent } from '../vtd/unit-trace';
import { VtdUnit } from '../vtd/unit';
import { VIRTUAL_COMMAND, VIRTUAL_COMMAND_STATUS } from '../vtd/virtual-command';
import { recordText } from './demo-modes';
import {
  FIRST_STAGE_FORMAT,
  LEGACY_INVALIDATIONS,
  PageAllocator,
  PagingTables,
  PASID_ENTRY,
  PASID_INVALIDATIONS,
  ramTables,
  ScalableTables,
  VtdDriver,
} from './guest-driver';
import { DMAR_BASE, EDU_DEVFN, TestbedMachine } from './testbed';

/** The unit the bind scenario programs: scalable mode with PASIDs, first-stage tables, and VCMD to allocate PASIDs. */
export const BIND_IOMMU = 'x-scalable-mode=on,x-pasid-mode=on,x-flts=on,aw-bits=48,x-vcmd=on';
export const BIND_TITLE = 'bind (a guest first-stage PASID table bound to the host IOMMU through iommufd nesting)';

/** The device whose PASID is bound: 00:04.0, as in the other modes. */
const SID = EDU_DEVFN;
const DID = 7;
const RAM_BYTES = 16 << 20;
const TABLES_START = 0x100000;
const IOVA_MAPPED = 0x10000000;
const GPA_MAPPED = 0x00800000;
/** The page right after the mapped one: the guest never maps it, so the host's fault there is the guest's. */
const IOVA_FAULT = IOVA_MAPPED + PAGE_BYTES;
const VCRSP = registerOffset('VCRSP');
const VCCAP = registerOffset('VCCAP');
const POLL_LIMIT = 1000;

// ---- host requests, decoded and rendered from the uAPI layouts ----

type Fields = Record<string, number | bigint>;

/** One request the scenario made of the host, decoded with the uAPI's own (C) field names. */
export interface HostRequest {
  readonly name: string;
  /** The struct after the call (out fields as the host filled them); size and pointer fields left out. */
  readonly fields: Fields;
  /** What the pointer fields pointed at, decoded: VTD_S1 data, invalidation entries, VT-d hardware info. */
  readonly payload?: Fields | Fields[];
  /** 0 or -errno. */
  readonly result: number;
}

/** Which names a field's numbers take, per request: flag sets print as A|B, enumerations by name. */
const SYMBOLS: Readonly<Record<string, Readonly<Record<string, FlagSet<string> | NumberTable<string>>>>> = {
  IOMMU_IOAS_MAP: { flags: IOAS_MAP_FLAGS },
  IOMMU_HWPT_ALLOC: { flags: HWPT_ALLOC_FLAGS, data_type: HWPT_DATA_TYPE },
  IOMMU_GET_HW_INFO: { flags: HW_INFO_FLAGS, out_data_type: HW_INFO_TYPE },
  IOMMU_HWPT_INVALIDATE: { data_type: HWPT_INVALIDATE_DATA_TYPE },
  VFIO_DEVICE_BIND_IOMMUFD: { flags: VFIO_BIND_FLAGS },
  VFIO_DEVICE_ATTACH_IOMMUFD_PT: { flags: VFIO_ATTACH_FLAGS },
  VFIO_DEVICE_DETACH_IOMMUFD_PT: { flags: VFIO_DETACH_FLAGS },
  iommu_hwpt_vtd_s1: { flags: VTD_S1_FLAGS },
  iommu_hwpt_vtd_s1_invalidate: { flags: VTD_INVALIDATE_FLAGS },
};

/** The fields of a decoded struct under their C names, reserved ones left out. */
function cNamed(layout: StructLayout<readonly FieldSpec[]>, value: Record<string, unknown>, skip: readonly string[] = []): Fields {
  const named: Fields = {};
  for (const field of layout.fields) {
    if (field.reserved === true || skip.includes(field.key)) continue;
    named[field.spec] = value[field.key] as number | bigint;
  }
  return named;
}

function decodePayload(spec: IoctlSpec, fields: Record<string, unknown>, options: IoctlOptions): HostRequest['payload'] {
  const pointed = (key: string): Uint8Array | undefined => options.payloads?.find((p) => p.offset === spec.layout.offsetOf(key))?.buffer;
  switch (spec.name) {
    case 'IOMMU_HWPT_ALLOC': {
      const data = pointed('dataUptr');
      if (data === undefined || fields.dataType !== HWPT_DATA_TYPE.values.VTD_S1) return undefined;
      return cNamed(IOMMU_HWPT_VTD_S1_LAYOUT as never, decodeStruct(IOMMU_HWPT_VTD_S1_LAYOUT, data));
    }
    case 'IOMMU_HWPT_INVALIDATE': {
      const data = pointed('dataUptr');
      if (data === undefined) return undefined;
      const length = fields.entryLen as number;
      return Array.from({ length: fields.entryNum as number }, (_, i) =>
        cNamed(IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT as never, decodeStruct(IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT, data, i * length)),
      );
    }
    case 'IOMMU_GET_HW_INFO': {
      const data = pointed('dataUptr');
      if (data === undefined || fields.dataType !== HW_INFO_TYPE.values.INTEL_VTD) return undefined;
      return cNamed(IOMMU_HW_INFO_VTD_LAYOUT as never, decodeStruct(IOMMU_HW_INFO_VTD_LAYOUT, data));
    }
    default:
      return undefined;
  }
}

/**
 * An IommufdChannel that hands every request to another (the real /dev/iommu or the dry run) and reports it
 * decoded; it sees the same bytes the host does, so one log serves both hosts.
 */
export class LoggingChannel implements IommufdChannel {
  constructor(
    private readonly inner: IommufdChannel,
    private readonly onRequest: (request: HostRequest) => void,
    private readonly onResponse: (response: Fields, result: number) => void,
  ) {}

  get iommufd(): number {
    return this.inner.iommufd;
  }

  ioctl(request: number, argument: Uint8Array, options: IoctlOptions = {}): number {
    const result = this.inner.ioctl(request, argument, options);
    const spec = ioctlByRequest(request);
    if (spec === undefined) {
      this.onRequest({ name: `ioctl 0x${request.toString(16)}`, fields: {}, result });
      return result;
    }
    const decoded = decodeStruct(spec.layout as never, argument) as Record<string, unknown>;
    this.onRequest({
      name: spec.name,
      fields: cNamed(spec.layout as never, decoded, [spec.sizeField, ...spec.pointerFields]),
      ...(result >= 0 ? { payload: decodePayload(spec, decoded, options) } : {}),
      result,
    });
    return result;
  }

  readFaults(faultFd: number, into: Uint8Array): number {
    return this.inner.readFaults(faultFd, into);
  }

  writeFaultResponses(faultFd: number, bytes: Uint8Array): number {
    const result = this.inner.writeFaultResponses(faultFd, bytes);
    for (let at = 0; at + IOMMU_HWPT_PAGE_RESPONSE_LAYOUT.size <= bytes.length; at += IOMMU_HWPT_PAGE_RESPONSE_LAYOUT.size) {
      this.onResponse(cNamed(IOMMU_HWPT_PAGE_RESPONSE_LAYOUT as never, decodeStruct(IOMMU_HWPT_PAGE_RESPONSE_LAYOUT, bytes, at)), result);
    }
    return result;
  }
}

function symbol(table: FlagSet<string> | NumberTable<string> | undefined, value: number | bigint): string {
  if (table === undefined) return typeof value === 'bigint' ? `0x${value.toString(16)}` : String(value);
  const number = Number(value);
  if ('nameOf' in table) return table.nameOf(number) ?? String(number);
  if (number === 0) return '0';
  const unknown = table.unknownBits(number);
  return [...table.names(number), ...(unknown === 0 ? [] : [`0x${unknown.toString(16)}`])].join('|');
}

/** u64 fields that count rather than address: printed in decimal (npages of all ones is the invalidate-everything form). */
function countText(name: string, value: number | bigint): string | undefined {
  if (name !== 'npages') return undefined;
  return value === INVALIDATE_ALL_PAGES ? 'ALL' : String(value);
}

function renderFields(fields: Fields, symbols: Readonly<Record<string, FlagSet<string> | NumberTable<string>>> = {}): string {
  return Object.entries(fields)
    .map(([name, value]) => `${name}=${countText(name, value) ?? symbol(symbols[name], value)}`)
    .join(' ');
}

/**
 * One request as a line: the name, the fields it sent, `->` the fields the host filled in (out_*), the payload in
 * braces, and the errno when it failed.
 */
export function renderHostRequest(request: HostRequest): string {
  const symbols = SYMBOLS[request.name] ?? {};
  const sent = Object.fromEntries(Object.entries(request.fields).filter(([name]) => !name.startsWith('out_')));
  const filled = Object.fromEntries(Object.entries(request.fields).filter(([name]) => name.startsWith('out_')));
  const payloadSymbols =
    request.name === 'IOMMU_HWPT_ALLOC'
      ? SYMBOLS.iommu_hwpt_vtd_s1
      : request.name === 'IOMMU_HWPT_INVALIDATE'
        ? SYMBOLS.iommu_hwpt_vtd_s1_invalidate
        : {};
  const payload =
    request.payload === undefined
      ? ''
      : Array.isArray(request.payload)
        ? ` [${request.payload.map((entry) => `{${renderFields(entry, payloadSymbols)}}`).join(' ')}]`
        : ` {${renderFields(request.payload, payloadSymbols)}}`;
  const out = request.result < 0 ? ` = -${errnoName(request.result)}` : Object.keys(filled).length > 0 ? ` -> ${renderFields(filled, symbols)}` : '';
  return `${request.name} ${renderFields(sent, symbols)}${payload}${out}`.replace(/ +$/, '');
}

// ---- the host ----

/** The host the scenario binds to, and what it says about itself. */
export interface BindHost {
  readonly kind: 'iommufd' | 'dry-run';
  /** One plain sentence: which host, and why it was chosen. */
  readonly description: string;
  readonly channel: IommufdChannel;
  /** The channel's handle of the VFIO device cdev. */
  readonly cdev: number;
  /** Present for the dry run: where the demo injects the host's page fault. */
  readonly dryRun?: IommufdDryRun;
  close(): void;
}

export interface BindHostRequest {
  /** A VFIO device cdev (e.g. /dev/vfio/devices/vfio0) to bind on a real /dev/iommu. */
  readonly vfioCdev?: string;
  readonly iommufdPath?: string;
}

/** /dev/iommu with the given VFIO cdev when both exist; else the dry-run iommufd, saying why. */
export function chooseBindHost(request: BindHostRequest = {}): BindHost {
  const path = request.iommufdPath ?? '/dev/iommu';
  const hasIommufd = IommufdDevice.available(path);
  if (hasIommufd && request.vfioCdev !== undefined) {
    const device = IommufdDevice.open(path);
    try {
      const cdev = device.openVfioDevice(request.vfioCdev);
      return {
        kind: 'iommufd',
        channel: device,
        cdev,
        close: () => device.close(),
        description: `the real iommufd ${path}, with the VFIO device ${request.vfioCdev}: these requests reach the kernel`,
      };
    } catch (error) {
      device.close();
      throw error;
    }
  }
  const why = hasIommufd
    ? `${path} exists, but no --vfio-cdev names a device to bind`
    : `this machine has no ${path}${request.vfioCdev === undefined ? '' : `, so ${request.vfioCdev} is not used`}`;
  const dryRun = new IommufdDryRun(FULL_VTD_HOST);
  return {
    kind: 'dry-run',
    channel: dryRun,
    cdev: dryRun.addVfioDevice(),
    dryRun,
    close: () => undefined,
    description: `the dry-run iommufd (${why}): each request is checked against the uAPI's rules and answered as Linux would, nothing reaches a kernel`,
  };
}

// ---- the guest's side: VCMD and the PASID entry a driver clears ----

interface VcmdResponse {
  readonly status: number;
  readonly result: number;
}

/** A 64-bit VCMD write, then VCRSP polled until IP clears (the unit answers at once; a driver still polls). */
async function virtualCommand(vtd: VtdDriver, command: number, operand = 0n): Promise<VcmdResponse> {
  await vtd.write64(OFFSET.VCMD, encodeBig(VCMD_FIELDS, { CMD: command, OPERAND: operand }));
  for (let polls = 0; ; polls++) {
    const response = await vtd.read64(VCRSP);
    if (getFieldBig(response, VCRSP_FIELDS.f.IP) === 0n) {
      return { status: Number(getFieldBig(response, VCRSP_FIELDS.f.SC)), result: Number(getFieldBig(response, VCRSP_FIELDS.f.RESULT)) };
    }
    if (polls > POLL_LIMIT) throw new Error('VCRSP.IP never cleared');
  }
}

function statusName(status: number): string {
  return VCRSP_FIELDS.f.SC.values?.[status] ?? `status ${status}`;
}

// ---- the scenario ----

/**
 * The host side of the bind mode's trace, described once like the unit's (UNIT_TRACE_KINDS): HostTraceEvent is
 * derived from it and docs/trace.md lists it. Unit events go to the same sink. Bigints are written as 0x hex.
 */
export const BIND_HOST_TRACE_KINDS = {
  'host-request': {
    when: 'the backend made a request of the host IOMMU (an iommufd or VFIO ioctl), after the host answered',
    fields: {
      step: always<string>('the guest step that caused it'),
      name: always<string>("the request's uAPI name (IOMMU_HWPT_ALLOC, VFIO_DEVICE_ATTACH_IOMMUFD_PT, ...)"),
      fields: always<Fields>(
        "the struct after the call, by the uAPI's field names (out fields as the host filled them; size and pointer fields left out)",
      ),
      payload: sometimes<Fields | Fields[]>('what the pointer fields pointed at, decoded: VTD_S1 data, invalidation entries, VT-d hardware info'),
      result: always<number>('0, or the negative errno the host answered'),
    },
  },
  'host-fault': {
    when: 'the host IOMMU reported a page fault on its fault queue',
    fields: {
      step: always<string>('the guest step during which it came'),
      sid: always<number>("the device's requester id"),
      dev_id: always<number>("the device's iommufd id"),
      pasid: sometimes<number>('the PASID the faulting request carried, if any'),
      address: always<bigint>('the faulting address'),
      perm: always<string>('the access, as PGFAULT_PERM flags (READ|WRITE|EXEC|PRIV)'),
      grpid: always<number>('the page-request group'),
      cookie: always<number>('the cookie a page response names'),
      routed: always<'guest' | 'host'>("'guest' (the guest's tables refuse it: recorded in the unit) or 'host' (answered by the host side)"),
      reason: sometimes<number>('when routed to the guest: the fault reason code the unit recorded'),
    },
  },
  'host-page-response': {
    when: "the backend answered a host fault's page-request group",
    fields: {
      step: always<string>('the guest step during which it answered'),
      cookie: always<number>('the cookie of the fault answered'),
      code: always<string>('the response code by its uAPI name (SUCCESS, INVALID)'),
      result: always<number>('what the write to the fault queue returned: the bytes written, or a negative errno'),
    },
  },
} as const satisfies TraceSchema;

/** A host-side trace event (BIND_HOST_TRACE_KINDS). */
export type HostTraceEvent = TraceEventOf<typeof BIND_HOST_TRACE_KINDS>;

export type BindTraceEvent = HostTraceEvent | UnitTraceEvent;
export type BindTraceSink = (event: BindTraceEvent) => void;

export interface BindScenarioOptions {
  /** Default: chooseBindHost() (the dry run on a machine without /dev/iommu). */
  readonly host?: BindHost;
  /** Receives the unit's events and the host's, in order. */
  readonly trace?: BindTraceSink;
}

/** What the guest did in one step, and the host requests it became. */
export interface BindStep {
  readonly name: string;
  readonly guest: string;
  readonly requests: readonly HostRequest[];
}

export interface BindReport {
  readonly mode: string;
  readonly host: BindHost['kind'];
  readonly lines: string[];
  readonly failures: string[];
  readonly steps: readonly BindStep[];
  /** The allocated PASID. */
  readonly pasid: number;
}

const hex = (value: number | bigint) => `0x${value.toString(16)}`;

function permText(perm: HostFault['perm']): string {
  return (
    PGFAULT_PERM.names(
      (perm.read ? PGFAULT_PERM.bits.READ : 0) |
        (perm.write ? PGFAULT_PERM.bits.WRITE : 0) |
        (perm.exec ? PGFAULT_PERM.bits.EXEC : 0) |
        (perm.priv ? PGFAULT_PERM.bits.PRIV : 0),
    ).join('|') || '0'
  );
}

/** Runs the whole bind story on a fresh unit; resolves to what it showed and which checks failed. */
export async function runBindScenario(options: BindScenarioOptions = {}): Promise<BindReport> {
  const host = options.host ?? chooseBindHost();
  const trace = options.trace;
  const lines: string[] = [`unit          intel-iommu,${BIND_IOMMU}`, `host          ${host.description}`];
  const failures: string[] = [];
  const check = (ok: boolean, failure: string): boolean => {
    if (!ok) failures.push(failure);
    return ok;
  };
  const steps: BindStep[] = [];
  let step = 'set-up';
  let fresh: HostRequest[] = [];
  const responses: { cookie: number; code: number; result: number }[] = [];
  const channel = new LoggingChannel(
    host.channel,
    (request) => {
      fresh.push(request);
      trace?.({
        kind: 'host-request',
        step,
        name: request.name,
        fields: request.fields,
        ...(request.payload ? { payload: request.payload } : {}),
        result: request.result,
      });
    },
    (response, result) => {
      responses.push({ cookie: Number(response.cookie), code: Number(response.code), result });
      trace?.({
        kind: 'host-page-response',
        step,
        cookie: Number(response.cookie),
        code: PAGE_RESPONSE_CODE.nameOf(Number(response.code)) ?? String(response.code),
        result,
      });
    },
  );

  /** Runs one guest step (which may say what the guest read back) and prints it with the host requests it caused. */
  const play = async (name: string, guest: string, action: () => Promise<string | void>): Promise<HostRequest[]> => {
    step = name;
    fresh = [];
    const answer = await action();
    const requests = fresh;
    steps.push({ name, guest, requests });
    lines.push(`guest         ${guest}`);
    if (typeof answer === 'string') lines.push(`              ${answer}`);
    if (requests.length === 0) lines.push('  host        (no request)');
    requests.forEach((request, i) => lines.push(`${i === 0 ? '  host        ' : '              '}${renderHostRequest(request)}`));
    const refused = requests.filter((request) => request.result < 0);
    check(refused.length === 0, `${name}: the host refused ${refused.map((r) => `${r.name} (${errnoName(r.result)})`).join(', ')}`);
    return requests;
  };
  const expectNames = (name: string, requests: readonly HostRequest[], expected: readonly string[]) =>
    check(
      requests.map((r) => r.name).join() === expected.join(),
      `${name}: the host saw ${requests.map((r) => r.name).join(', ') || 'nothing'}, expected ${expected.join(', ') || 'nothing'}`,
    );

  const machine = new TestbedMachine({
    builtInEdu: false,
    ramBytes: RAM_BYTES,
    iommu: (memory) => new VtdUnit({ memory, config: BIND_IOMMU, onInterrupt: () => undefined, ...(trace ? { trace } : {}) }),
  });
  const unit = machine.iommu as VtdUnit;
  const ram = machine.ram.view(0, RAM_BYTES);
  if (ram === undefined) throw new Error('guest RAM is not one window');
  const nesting = new IommufdNesting(channel, { guestRam: [{ guestPhysical: 0, bytes: ram }] });
  const backend = new NestingBackend(nesting, unit, {
    walkGuest: (request) => unit.translate(request),
    ...(unit.virtualCommands ? { pasidUse: unit.virtualCommands.allocator } : {}),
  });
  const events: string[] = [];
  backend.on('refused', (sid, pasid, reason) => events.push(`refused ${hex(sid)}/${pasid}: ${reason}`));
  backend.on('error', (sid, pasid, error) => events.push(`error ${hex(sid)}/${pasid}: ${error.message}`));
  const routed: { fault: HostFault; reason?: number }[] = [];
  const heard = (fault: HostFault, reason?: number): void => {
    routed.push({ fault, reason });
    trace?.({
      kind: 'host-fault',
      step,
      sid: fault.device,
      dev_id: devId,
      ...(fault.pasid === undefined ? {} : { pasid: fault.pasid }),
      address: fault.address,
      perm: permText(fault.perm),
      grpid: fault.group,
      cookie: fault.cookie,
      routed: reason === undefined ? 'host' : 'guest',
      ...(reason === undefined ? {} : { reason }),
    });
  };
  backend.on('guestFault', (fault, reason) => heard(fault, reason));
  backend.on('hostFault', (fault) => heard(fault));

  const pages = new PageAllocator(machine, TABLES_START);
  const vtd = new VtdDriver(machine, DMAR_BASE, pages);
  const tables = new ScalableTables(machine, pages);
  let pasid = 0;
  let first: PagingTables | undefined;
  let devId = 0;
  try {
    // The VMM's side first: the device bound to the iommufd, the nest parent over guest RAM, the fault queue.
    step = 'host set-up';
    devId = nesting.addDevice(SID, host.cdev);
    const capabilities = nesting.setUp();
    const setUp = fresh;
    lines.push('host set-up   (the VMM, before the guest runs)');
    for (const request of setUp) lines.push(`              ${renderHostRequest(request)}`);
    expectNames('host set-up', setUp, [
      'VFIO_DEVICE_BIND_IOMMUFD',
      'IOMMU_GET_HW_INFO',
      'IOMMU_IOAS_ALLOC',
      'IOMMU_IOAS_MAP',
      'IOMMU_HWPT_ALLOC',
      'IOMMU_FAULT_QUEUE_ALLOC',
    ]);
    const problems = nestingConfigProblems(unit.config, capabilities);
    check(problems.length === 0, `the host cannot back this unit: ${problems.join('; ')}`);
    lines.push(
      `              host offers: ${capabilities.pageTableFormats.join(', ') || 'no nesting'}, ${capabilities.addressWidths.join('/')}-bit first stage, ${capabilities.maxPasidLog2}-bit PASIDs: ${problems.length === 0 ? 'enough for this unit' : problems.join('; ')}`,
    );

    const attach = await play(
      'follow the device',
      'is not running yet: the VMM follows 00:04.0 (translation is off, so its requests without PASID pass through)',
      async () => backend.attach(SID),
    );
    expectNames('follow the device', attach, ['VFIO_DEVICE_ATTACH_IOMMUFD_PT']);

    const enable = await play(
      'enable',
      'enables scalable mode: RTADDR (TTM scalable), SRTP, a 256-bit queue, global context/PASID/IOTLB invalidations, TE',
      async () => {
        await vtd.setRootTable(await tables.root, 'scalable');
        await vtd.enableQueue(256);
        await vtd.invalidate([LEGACY_INVALIDATIONS.contextGlobal(), PASID_INVALIDATIONS.pasidCacheGlobal(), LEGACY_INVALIDATIONS.iotlbGlobal()]);
        await vtd.enableTranslation();
      },
    );
    expectNames('enable', enable, ['VFIO_DEVICE_DETACH_IOMMUFD_PT']);

    const ecap = await vtd.read64(OFFSET.ECAP);
    const vccap = await vtd.read64(VCCAP);
    check(
      getFieldBig(ecap, ECAP_FIELDS.f.VCS) === 1n && getFieldBig(vccap, VCCAP_FIELDS.f.PAS) === 1n,
      'the unit does not offer VCMD PASID allocation (ECAP.VCS, VCCAP.PAS)',
    );
    let allocation: VcmdResponse = { status: -1, result: 0 };
    const allocate = await play('allocate', 'VCMD allocate PASID (ECAP.VCS = 1, VCCAP.PAS = 1), polls VCRSP', async () => {
      allocation = await virtualCommand(vtd, VIRTUAL_COMMAND.ALLOCATE_PASID);
      pasid = allocation.result;
      // The VMM follows each PASID its guest allocates.
      if (allocation.status === VIRTUAL_COMMAND_STATUS.SUCCESS) backend.watch(SID, pasid);
      return `VCRSP: ${statusName(allocation.status)}, PASID ${pasid}; the VMM now follows 00:04.0 PASID ${pasid} (no entry yet: nothing to bind)`;
    });
    check(
      allocation.status === VIRTUAL_COMMAND_STATUS.SUCCESS && pasid > 0,
      `VCMD allocate answered ${statusName(allocation.status)} with PASID ${pasid}`,
    );
    expectNames('allocate', allocate, []);

    const bind = await play(
      'bind',
      `writes 00:04.0's scalable context (PASIDE = 1) and PASID ${pasid}'s entry (PGTT first stage, 4-level, DID ${DID}), invalidates context and PASID caches, waits`,
      async () => {
        first = await PagingTables.create(machine, FIRST_STAGE_FORMAT, ramTables(pages));
        await tables.addDevice(SID, { pasidEnabled: true });
        await tables.setPasidEntry(SID, pasid, PASID_ENTRY.firstStage(DID, first));
        await vtd.invalidate([LEGACY_INVALIDATIONS.contextGlobal(), PASID_INVALIDATIONS.pasidCache(DID, pasid)]);
      },
    );
    if (expectNames('bind', bind, ['IOMMU_HWPT_ALLOC', 'VFIO_DEVICE_ATTACH_IOMMUFD_PT'])) {
      const [alloc, attached] = bind as [HostRequest, HostRequest];
      const flags = Number(alloc.fields.flags);
      const wanted = HWPT_ALLOC_FLAGS.bits.PASID | HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID;
      check(
        (flags & wanted) === wanted && alloc.fields.data_type === HWPT_DATA_TYPE.values.VTD_S1,
        `bind: HWPT_ALLOC flags ${symbol(HWPT_ALLOC_FLAGS, flags)}, data_type ${alloc.fields.data_type}: expected PASID|FAULT_ID_VALID and VTD_S1`,
      );
      const data = alloc.payload as Fields | undefined;
      check(
        data?.pgtbl_addr === BigInt(first!.top) && data?.addr_width === 48 && data?.flags === 0n,
        `bind: the VTD_S1 data is {${data ? renderFields(data) : 'missing'}}, expected pgtbl_addr=${hex(first!.top)} addr_width=48 flags=0`,
      );
      check(
        attached.fields.pasid === pasid &&
          attached.fields.pt_id === alloc.fields.out_hwpt_id &&
          Number(attached.fields.flags) === VFIO_ATTACH_FLAGS.bits.PASID,
        `bind: the attach is ${renderHostRequest(attached)}, expected PASID ${pasid} to HWPT ${alloc.fields.out_hwpt_id}`,
      );
    }

    const map = await play(
      'map',
      `maps IOVA ${hex(IOVA_MAPPED)} -> GPA ${hex(GPA_MAPPED)} (one page, rw, user) in PASID ${pasid}'s first stage, PASID-based IOTLB invalidation (page, DID ${DID}), waits`,
      async () => {
        await first!.map(IOVA_MAPPED, GPA_MAPPED, 1, { read: true, write: true });
        await vtd.invalidate([PASID_INVALIDATIONS.iotlbPages(DID, pasid, IOVA_MAPPED)]);
      },
    );
    if (expectNames('map', map, ['IOMMU_HWPT_INVALIDATE'])) {
      const entries = map[0]!.payload as Fields[] | undefined;
      check(
        entries?.length === 1 && entries[0]!.addr === BigInt(IOVA_MAPPED) && entries[0]!.npages === 1n,
        `map: the invalidation entries are ${JSON.stringify(entries, (_k, v) => (typeof v === 'bigint' ? hex(v) : v))}, expected one {addr ${hex(IOVA_MAPPED)}, npages 1}`,
      );
    }

    // The device reads a page the guest never mapped: the host's IOMMU walks the nested table and reports the fault.
    step = 'fault';
    fresh = [];
    if (host.dryRun !== undefined) {
      const [faultFd] = host.dryRun.faultQueueFds();
      host.dryRun.injectFault(faultFd!, {
        flags: PGFAULT_FLAGS.bits.PASID_VALID | PGFAULT_FLAGS.bits.LAST_PAGE,
        devId,
        pasid,
        grpid: 1,
        perm: PGFAULT_PERM.bits.READ,
        addr: BigInt(IOVA_FAULT),
        length: 0,
      });
      lines.push(
        `fault         the device reads IOVA ${hex(IOVA_FAULT)} with PASID ${pasid}; the dry-run host queues the page fault the kernel would`,
      );
    } else {
      lines.push(`fault         the VMM reads the host's fault queue (a real host reports a fault only when the device makes one)`);
    }
    const read = backend.pollFaults();
    for (const { fault, reason } of routed) {
      lines.push(
        `  host fault  iommu_hwpt_pgfault dev_id=${devId} pasid=${fault.pasid ?? '-'} addr=${hex(fault.address)} perm=${permText(fault.perm)} grpid=${fault.group} cookie=${fault.cookie}${fault.lastPage ? ' LAST_PAGE' : ''}`,
      );
      lines.push(
        reason === undefined
          ? "              the guest's tables allow it: the host's own fault, for the VMM log"
          : `              walked again through the guest's tables: refused (${hex(reason)}), so it becomes the guest's fault record`,
      );
    }
    for (const response of responses) {
      lines.push(
        `  host        page response cookie=${response.cookie} code=${PAGE_RESPONSE_CODE.nameOf(response.code) ?? response.code}${response.result < 0 ? ` = -${errnoName(response.result)}` : ''}`,
      );
    }
    const records = (await vtd.faults()).records;
    for (const record of records) lines.push(`  guest reads ${recordText(record)}`);
    if (host.dryRun !== undefined) {
      const expected = faultCode('SM_FIRST_STAGE_NOT_PRESENT');
      check(
        read === 1 && routed.length === 1 && routed[0]!.reason === expected,
        `fault: the backend read ${read} fault(s), routed ${routed.map((r) => r.reason ?? 'host').join(', ') || 'none'}, expected one guest fault ${hex(expected)}`,
      );
      check(
        records.length === 1 &&
          records[0]!.reason === expected &&
          records[0]!.pasid === pasid &&
          records[0]!.address === BigInt(IOVA_FAULT) &&
          !records[0]!.write &&
          records[0]!.sid === SID,
        `fault: the guest's records are ${records.map((r) => recordText(r)).join('; ') || 'none'}, expected one SM_FIRST_STAGE_NOT_PRESENT read with PASID ${pasid} at ${hex(IOVA_FAULT)}`,
      );
      check(
        responses.length === 1 && responses[0]!.code === PAGE_RESPONSE_CODE.values.INVALID && responses[0]!.result >= 0,
        'fault: the host was not answered INVALID for the page request',
      );
    } else if (read === 0) {
      lines.push('              (none queued)');
    }
    await vtd.clearFaults(records);

    const unbind = await play(
      'unbind',
      `clears PASID ${pasid}'s entry, PASID-cache (PASID) and PASID-based IOTLB (all of PASID) invalidations, waits`,
      async () => {
        await tables.clearPasidEntry(SID, pasid);
        await vtd.invalidate([PASID_INVALIDATIONS.pasidCache(DID, pasid), PASID_INVALIDATIONS.iotlbPasid(DID, pasid)]);
      },
    );
    expectNames('unbind', unbind, ['VFIO_DEVICE_DETACH_IOMMUFD_PT', 'IOMMU_DESTROY']);

    let release: VcmdResponse = { status: -1, result: 0 };
    let quarantined = -1;
    let state = 'unknown';
    const free = await play('free', `VCMD free PASID ${pasid}`, async () => {
      release = await virtualCommand(vtd, VIRTUAL_COMMAND.FREE_PASID, BigInt(pasid));
      const allocator = unit.virtualCommands?.allocator;
      quarantined = allocator?.quarantinedCount ?? -1;
      state = allocator?.state(pasid) ?? 'unknown';
      return `VCRSP: ${statusName(release.status)}; PASID ${pasid} ${
        state === 'free'
          ? 'is free again at once, with no quarantine: the guest invalidated it, and waited, before the free'
          : `is ${state} (${allocator?.quarantineStage(pasid) ?? 'no stage'})`
      }`;
    });
    check(release.status === VIRTUAL_COMMAND_STATUS.SUCCESS, `VCMD free answered ${statusName(release.status)}`);
    check(
      quarantined === 0 && state === 'free',
      `after the free, PASID ${pasid} is ${state} and ${quarantined} PASID(s) are quarantined, expected it free and none quarantined`,
    );
    expectNames('free', free, []);

    step = 'host tear-down';
    fresh = [];
    backend.close();
    nesting.close();
    lines.push('host close    (the VMM, when the guest goes)');
    for (const request of fresh) lines.push(`              ${renderHostRequest(request)}`);
    expectNames('host tear-down', fresh, ['IOMMU_DESTROY', 'IOMMU_DESTROY', 'IOMMU_DESTROY']);
    if (host.dryRun !== undefined)
      check(
        host.dryRun.objectsOf('hwpt-nested').length +
          host.dryRun.objectsOf('hwpt-paging').length +
          host.dryRun.objectsOf('fault').length +
          host.dryRun.objectsOf('ioas').length ===
          0,
        'the dry-run host still holds objects after the close',
      );
    for (const event of events) failures.push(`the backend reported: ${event}`);
  } finally {
    machine.close();
    host.close();
  }
  return { mode: BIND_TITLE, host: host.kind, lines, failures, steps, pasid };
}
