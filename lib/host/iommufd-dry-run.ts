/**
 * A dry-run iommufd: a host IOMMU in JavaScript that takes the iommufd and VFIO cdev ioctls VT-d nesting uses, enforces
 * the uAPI's own rules (size fields, unknown flags, reserved fields, object ids, ordering, the VT-d driver's checks)
 * with the errnos Linux answers, and records every request decoded. What `viommu demo --mode bind` shows on a machine
 * without /dev/iommu, and what the tests hold the nesting code to; it moves no DMA.
 */
import { ERRNO, type ErrnoName } from '../errno';
import { PAGE_BYTES } from '../memory/geometry';
import { encodeBig } from '../vtd/bitfield';
import { CAP_FIELDS, ECAP_FIELDS } from '../vtd/registers';
import type { IoctlOptions, IommufdChannel } from './iommufd-nesting';
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
  IOMMU_HWPT_PGFAULT_LAYOUT,
  IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT,
  IOMMU_HWPT_VTD_S1_LAYOUT,
  PAGE_RESPONSE_CODE,
  VFIO_ATTACH_FLAGS,
  VFIO_BIND_FLAGS,
  VFIO_DETACH_FLAGS,
  VTD_INVALIDATE_FLAGS,
  VTD_S1_FLAGS,
  decodeStruct,
  encodeStruct,
  ioctlByRequest,
  nonZeroReserved,
  readU32,
  writeU64,
  type IOCTLS,
  type IoctlName,
} from './iommufd-uapi';
import { writeField, type IntegerKey, type StructValue } from '../byte-layout';

/** The host IOMMU the double pretends to be behind every device. */
export interface HostIommuModel {
  readonly cap: bigint;
  readonly ecap: bigint;
  readonly maxPasidLog2: number;
  /** IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17. */
  readonly errata?: boolean;
  /** iommu_hw_info_type it reports (default INTEL_VTD). */
  readonly infoType?: number;
}

/** A nesting-capable VT-d: 5-level and 1 GiB first stage, SRS, EAFS, 20-bit PASIDs. */
export const FULL_VTD_HOST: HostIommuModel = {
  cap: encodeBig(CAP_FIELDS, { FS5LP: 1, FS1GP: 1, SAGAW: 4, MGAW: 47, CM: 0, ND: 6 }),
  ecap: encodeBig(ECAP_FIELDS, { NEST: 1, FSTS: 1, SSTS: 1, SMTS: 1, PASID: 1, PSS: 19, SRS: 1, EAFS: 1, QI: 1, PT: 1 }),
  maxPasidLog2: 20,
};

/** The same host without 5-level first stage, supervisor requests or the extended accessed flag. */
export const PLAIN_VTD_HOST: HostIommuModel = {
  cap: encodeBig(CAP_FIELDS, { FS1GP: 1, SAGAW: 4, MGAW: 47, ND: 6 }),
  ecap: encodeBig(ECAP_FIELDS, { NEST: 1, FSTS: 1, SSTS: 1, SMTS: 1, PASID: 1, PSS: 19, QI: 1, PT: 1 }),
  maxPasidLog2: 20,
};

/** One request as the double saw it: the struct decoded as sent (pointers filled in), and the answer. */
export interface RecordedRequest {
  readonly name: string;
  /** The cdev handle, for VFIO device ioctls. */
  readonly device?: number;
  readonly fields: Readonly<Record<string, number | bigint>>;
  /** What the pointer fields pointed at, decoded (VTD_S1 data, invalidation entries, mapped RAM length). */
  readonly payload?: unknown;
  /** 0 or -errno. */
  readonly result: number;
  readonly errno?: string;
}

type VtdS1 = StructValue<typeof IOMMU_HWPT_VTD_S1_LAYOUT.fields>;
type VtdInvalidate = StructValue<typeof IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT.fields>;

/** The field table of request `N`. */
type FieldsOf<N extends IoctlName> = (typeof IOCTLS)[N]['layout']['fields'];

/**
 * A request decoded under its own name: `f` holds its struct's fields and `out` what the kernel writes back into
 * it (ids, lengths, counts), both keyed by the request's own table, so a handler cannot name another's field.
 */
type Request = {
  [N in IoctlName]: {
    readonly name: N;
    readonly f: StructValue<FieldsOf<N>>;
    readonly out: { [K in IntegerKey<FieldsOf<N>, 1 | 2 | 4>]?: number };
  };
}[IoctlName];

type RequestNamed<N extends IoctlName> = Extract<Request, { readonly name: N }>;

/** A spec found by request number: one of IOCTLS, its layout seen as any table. */
type KnownSpec = NonNullable<ReturnType<typeof ioctlByRequest>>;

type KernelObject =
  | { readonly kind: 'ioas'; readonly maps: { iova: bigint; length: bigint; writable: boolean }[] }
  | { readonly kind: 'device'; readonly cdev: number }
  | { readonly kind: 'hwpt-paging'; readonly ioasId: number; readonly nestParent: boolean; readonly pasidCompat: boolean }
  | { readonly kind: 'hwpt-nested'; readonly parentId: number; readonly pasidCompat: boolean; readonly faultId?: number; readonly data: VtdS1 }
  | { readonly kind: 'fault'; readonly fd: number };

/** The smallest size (argsz) each request accepts: the end of its last mandatory field. */
const MIN_SIZE: Readonly<Record<IoctlName, number>> = {
  IOMMU_DESTROY: 8,
  IOMMU_IOAS_ALLOC: 12,
  IOMMU_IOAS_MAP: 40,
  IOMMU_HWPT_ALLOC: 40,
  IOMMU_GET_HW_INFO: 32,
  IOMMU_HWPT_INVALIDATE: 32,
  IOMMU_FAULT_QUEUE_ALLOC: 16,
  VFIO_DEVICE_BIND_IOMMUFD: 16,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT: 12,
  VFIO_DEVICE_DETACH_IOMMUFD_PT: 8,
};

const PAGE = BigInt(PAGE_BYTES);
const FAKE_USER_BASE = 0x7f00_0000_0000n;

class Refused {
  constructor(readonly errno: ErrnoName) {}
}

function fail(errno: ErrnoName): never {
  throw new Refused(errno);
}

function isZero(bytes: Uint8Array): boolean {
  return bytes.every((byte) => byte === 0);
}

export class IommufdDryRun implements IommufdChannel {
  readonly iommufd = 77;
  readonly requests: RecordedRequest[] = [];
  /** Page responses written to a fault queue, decoded. */
  readonly responses: { cookie: number; code: number }[] = [];
  private readonly objects = new Map<number, KernelObject>();
  /** `${devId}/${pasid | 'rid'}` -> attached object id. */
  private readonly attached = new Map<string, number>();
  private readonly cdevs = new Set<number>();
  private readonly faultQueues = new Map<number, { queued: Uint8Array[]; pending: Set<number> }>();
  private nextId = 1;
  private nextCdev = 1;
  private nextCookie = 1;
  private nextUserAddress = FAKE_USER_BASE;

  constructor(readonly host: HostIommuModel = FULL_VTD_HOST) {}

  /** A VFIO device cdev the VMM opened; the handle goes in IoctlOptions.device. */
  addVfioDevice(): number {
    const handle = this.nextCdev++;
    this.cdevs.add(handle);
    return handle;
  }

  /** The request names so far, in order (refused ones marked with their errno). */
  names(): string[] {
    return this.requests.map((request) => (request.result < 0 ? `${request.name}!${request.errno}` : request.name));
  }

  /** What each (dev_id, PASID) is attached to. */
  attachments(): { devId: number; pasid?: number; ptId: number }[] {
    return [...this.attached].map(([key, ptId]) => {
      const [devId, pasid] = key.split('/');
      return { devId: Number(devId), ...(pasid === 'rid' ? {} : { pasid: Number(pasid) }), ptId };
    });
  }

  /** Ids of live objects of a kind. */
  objectsOf(kind: KernelObject['kind']): number[] {
    return [...this.objects].filter(([, object]) => object.kind === kind).map(([id]) => id);
  }

  /** The fds of live fault queues. */
  faultQueueFds(): number[] {
    return [...this.faultQueues.keys()];
  }

  /** Queues a page fault on a fault queue fd, as the IOMMU's page-request handler would; returns its cookie. */
  injectFault(faultFd: number, fault: Omit<StructValue<typeof IOMMU_HWPT_PGFAULT_LAYOUT.fields>, 'cookie'>): number {
    const queue = this.faultQueues.get(faultFd);
    if (!queue) throw new Error(`no fault queue has fd ${faultFd}`);
    const cookie = this.nextCookie++;
    queue.queued.push(encodeStruct(IOMMU_HWPT_PGFAULT_LAYOUT, { ...fault, cookie }));
    return cookie;
  }

  ioctl(request: number, argument: Uint8Array, options: IoctlOptions = {}): number {
    const spec = ioctlByRequest(request);
    if (!spec) return this.record({ name: `0x${request.toString(16)}`, fields: {}, result: -ERRNO.ENOTTY });
    const base = { name: spec.name, ...(options.device !== undefined ? { device: options.device } : {}) };
    let fields: Record<string, number | bigint> = {};
    const payloads = new Map<string, Uint8Array>();
    let payload: unknown;
    const out: Record<string, number> = {};
    let size = 0;
    const writeBack = (): void => {
      for (const [key, value] of Object.entries(out)) {
        const field = spec.layout.field(key);
        if (field.offset + field.width <= size) writeField(spec.layout, argument, key, value);
      }
    };
    try {
      this.checkTarget(spec, options);
      size = this.checkSize(spec, argument);
      this.fillPointers(spec, argument, options, payloads);
      // The kernel copies min(size, its struct) and zero-fills the rest.
      const copy = new Uint8Array(spec.layout.size);
      copy.set(argument.subarray(0, Math.min(size, spec.layout.size)));
      fields = decodeStruct(spec.layout as never, copy) as Record<string, number | bigint>;
      // The one place the struct meets its name: decoded by the spec of that very name, it has that name's fields.
      payload = this.handle(spec, { name: spec.name, f: fields, out } as Request, copy, payloads, options);
      writeBack();
      return this.record({ ...base, fields, ...(payload !== undefined ? { payload } : {}), result: 0 });
    } catch (error) {
      if (!(error instanceof Refused)) throw error;
      writeBack();
      return this.record({ ...base, fields, result: -ERRNO[error.errno], errno: error.errno });
    }
  }

  readFaults(faultFd: number, into: Uint8Array): number {
    const queue = this.faultQueues.get(faultFd);
    if (!queue) return -ERRNO.EBADF;
    const size = IOMMU_HWPT_PGFAULT_LAYOUT.size;
    if (into.length % size !== 0) return -ERRNO.ESPIPE;
    let done = 0;
    while (queue.queued.length > 0 && done + size <= into.length) {
      const record = queue.queued.shift()!;
      into.set(record, done);
      queue.pending.add(decodeStruct(IOMMU_HWPT_PGFAULT_LAYOUT, record).cookie);
      done += size;
    }
    return done;
  }

  writeFaultResponses(faultFd: number, bytes: Uint8Array): number {
    const queue = this.faultQueues.get(faultFd);
    if (!queue) return -ERRNO.EBADF;
    const size = IOMMU_HWPT_PAGE_RESPONSE_LAYOUT.size;
    if (bytes.length % size !== 0) return -ERRNO.ESPIPE;
    for (let at = 0; at < bytes.length; at += size) {
      const response = decodeStruct(IOMMU_HWPT_PAGE_RESPONSE_LAYOUT, bytes, at);
      if (!queue.pending.has(response.cookie) || PAGE_RESPONSE_CODE.nameOf(response.code) === undefined) {
        return at > 0 ? at : -ERRNO.EINVAL;
      }
      queue.pending.delete(response.cookie);
      this.responses.push(response);
    }
    return bytes.length;
  }

  // ---- the generic rules ----

  private record(request: RecordedRequest): number {
    this.requests.push(request);
    return request.result;
  }

  private checkTarget(spec: KnownSpec, options: IoctlOptions): void {
    if (spec.target === 'iommufd') {
      // A VFIO cdev does not know iommufd's numbers.
      if (options.device !== undefined) fail('ENOTTY');
      return;
    }
    if (options.device === undefined) fail('ENOTTY');
    if (!this.cdevs.has(options.device)) fail('EBADF');
  }

  private checkSize(spec: KnownSpec, argument: Uint8Array): number {
    if (argument.length < 4) fail('EFAULT');
    const size = readU32(spec.layout, argument, spec.sizeField);
    if (size < MIN_SIZE[spec.name]) fail('EINVAL');
    if (argument.length < Math.min(size, spec.layout.size)) fail('EFAULT');
    if (spec.target === 'iommufd' && size > spec.layout.size) {
      // iommufd: bytes beyond what the kernel knows must be zero (E2BIG); VFIO simply ignores them.
      if (argument.length < size) fail('EFAULT');
      if (!isZero(argument.subarray(spec.layout.size, size))) fail('E2BIG');
    }
    return size;
  }

  private fillPointers(spec: KnownSpec, argument: Uint8Array, options: IoctlOptions, payloads: Map<string, Uint8Array>): void {
    for (const { offset, buffer } of options.payloads ?? []) {
      const field = spec.pointerFields.find((key) => spec.layout.offsetOf(key) === offset);
      if (!field) throw new Error(`${spec.name}: offset ${offset} is not a pointer field (${spec.pointerFields.join(', ') || 'none'})`);
      writeU64(spec.layout, argument, field, this.nextUserAddress);
      this.nextUserAddress += (BigInt(buffer.length) + PAGE) & ~(PAGE - 1n);
      payloads.set(field, buffer);
    }
    const expected = spec.fdFields.map((key) => spec.layout.offsetOf(key));
    if (JSON.stringify(options.outFds ?? []) !== JSON.stringify(expected)) {
      throw new Error(`${spec.name}: outFds ${JSON.stringify(options.outFds ?? [])}, expected ${JSON.stringify(expected)}`);
    }
  }

  /** Pointer field `key`'s buffer; EFAULT for NULL, or when it is shorter than the length the struct claims. */
  private pointed<K extends string>(
    fields: NoInfer<Readonly<Record<K, bigint>>>,
    payloads: ReadonlyMap<string, Uint8Array>,
    key: K,
    length: number,
  ): Uint8Array {
    const buffer = payloads.get(key);
    if (fields[key] === 0n || !buffer || buffer.length < length) fail('EFAULT');
    return buffer;
  }

  private object<K extends KernelObject['kind']>(id: number, kind: K, missing: ErrnoName = 'ENOENT'): Extract<KernelObject, { kind: K }> {
    const object = this.objects.get(id);
    if (!object || object.kind !== kind) fail(missing);
    return object as Extract<KernelObject, { kind: K }>;
  }

  private add(object: KernelObject): number {
    const id = this.nextId++;
    this.objects.set(id, object);
    return id;
  }

  private deviceIdOf(cdev: number): number | undefined {
    for (const [id, object] of this.objects) if (object.kind === 'device' && object.cdev === cdev) return id;
    return undefined;
  }

  // ---- the requests ----

  private handle(spec: KnownSpec, request: Request, raw: Uint8Array, payloads: Map<string, Uint8Array>, options: IoctlOptions): unknown {
    switch (request.name) {
      case 'IOMMU_DESTROY': {
        const { id } = request.f;
        const object = this.objects.get(id);
        if (!object || object.kind === 'device') fail('ENOENT');
        if (this.inUse(id)) fail('EBUSY');
        this.objects.delete(id);
        if (object.kind === 'fault') this.faultQueues.delete(object.fd);
        return undefined;
      }
      case 'IOMMU_IOAS_ALLOC':
        if (request.f.flags !== 0) fail('EOPNOTSUPP');
        request.out.outIoasId = this.add({ kind: 'ioas', maps: [] });
        return undefined;
      case 'IOMMU_IOAS_MAP': {
        const { f } = request;
        if (IOAS_MAP_FLAGS.unknownBits(f.flags) !== 0 || nonZeroReserved(spec.layout as never, raw)) fail('EOPNOTSUPP');
        const ioas = this.object(f.ioasId, 'ioas');
        const length = f.length;
        if (length === 0n) fail('EINVAL');
        const ram = this.pointed(f, payloads, 'userVa', Number(length));
        const fixed = (f.flags & IOAS_MAP_FLAGS.bits.FIXED_IOVA) !== 0;
        const iova = fixed ? f.iova : ioas.maps.reduce((end, map) => (map.iova + map.length > end ? map.iova + map.length : end), 0n);
        if (iova % PAGE !== 0n || length % PAGE !== 0n) fail('EINVAL');
        if (ioas.maps.some((map) => iova < map.iova + map.length && map.iova < iova + length)) fail('EEXIST');
        ioas.maps.push({ iova, length, writable: (f.flags & IOAS_MAP_FLAGS.bits.WRITEABLE) !== 0 });
        return { ramBytes: ram.length };
      }
      case 'IOMMU_HWPT_ALLOC':
        return this.hwptAlloc(spec, request, raw, payloads);
      case 'IOMMU_GET_HW_INFO': {
        const { f, out } = request;
        if (HW_INFO_FLAGS.unknownBits(f.flags) !== 0 || nonZeroReserved(spec.layout as never, raw)) fail('EOPNOTSUPP');
        this.object(f.devId, 'device');
        const type = this.host.infoType ?? HW_INFO_TYPE.values.INTEL_VTD;
        if ((f.flags & HW_INFO_FLAGS.bits.INPUT_TYPE) !== 0 && f.dataType !== 0 && f.dataType !== type) fail('EOPNOTSUPP');
        const dataLen = f.dataLen;
        if (dataLen > 0) {
          const buffer = this.pointed(f, payloads, 'dataUptr', dataLen);
          const info = encodeStruct(IOMMU_HW_INFO_VTD_LAYOUT, {
            flags: this.host.errata ? 1 : 0,
            capReg: this.host.cap,
            ecapReg: this.host.ecap,
          });
          buffer.fill(0, 0, dataLen);
          buffer.set(info.subarray(0, Math.min(dataLen, info.length)));
        }
        out.dataLen = IOMMU_HW_INFO_VTD_LAYOUT.size;
        out.dataType = type;
        out.outMaxPasidLog2 = this.host.maxPasidLog2;
        return undefined;
      }
      case 'IOMMU_HWPT_INVALIDATE':
        return this.hwptInvalidate(spec, request, raw, payloads);
      case 'IOMMU_FAULT_QUEUE_ALLOC': {
        if (request.f.flags !== 0) fail('EOPNOTSUPP');
        const fd = 500 + this.nextId;
        request.out.outFaultId = this.add({ kind: 'fault', fd });
        request.out.outFaultFd = fd;
        this.faultQueues.set(fd, { queued: [], pending: new Set() });
        return undefined;
      }
      case 'VFIO_DEVICE_BIND_IOMMUFD': {
        const { f } = request;
        if (VFIO_BIND_FLAGS.unknownBits(f.flags) !== 0) fail('EINVAL');
        if ((f.flags & VFIO_BIND_FLAGS.bits.TOKEN) !== 0) this.pointed(f, payloads, 'tokenUuidPtr', 16);
        if (this.deviceIdOf(options.device!) !== undefined) fail('EINVAL');
        if (f.iommufd !== this.iommufd) fail('EBADF');
        request.out.outDevid = this.add({ kind: 'device', cdev: options.device! });
        return undefined;
      }
      case 'VFIO_DEVICE_ATTACH_IOMMUFD_PT':
        return this.attach(request.f, options);
      case 'VFIO_DEVICE_DETACH_IOMMUFD_PT': {
        const { f } = request;
        if (VFIO_DETACH_FLAGS.unknownBits(f.flags) !== 0) fail('EINVAL');
        const onPasid = (f.flags & VFIO_DETACH_FLAGS.bits.PASID) !== 0;
        if (onPasid && f.argsz < 12) fail('EINVAL');
        const devId = this.deviceIdOf(options.device!);
        if (devId === undefined) fail('EINVAL');
        // Detaching what is not attached succeeds: VFIO only warns.
        this.attached.delete(`${devId}/${onPasid ? f.pasid : 'rid'}`);
        return undefined;
      }
      default:
        fail('ENOTTY');
    }
  }

  private inUse(id: number): boolean {
    if ([...this.attached.values()].includes(id)) return true;
    for (const object of this.objects.values()) {
      if (object.kind === 'hwpt-paging' && object.ioasId === id) return true;
      if (object.kind === 'hwpt-nested' && (object.parentId === id || object.faultId === id)) return true;
    }
    return false;
  }

  private hwptAlloc(spec: KnownSpec, { f, out }: RequestNamed<'IOMMU_HWPT_ALLOC'>, raw: Uint8Array, payloads: Map<string, Uint8Array>): unknown {
    const { flags, dataType, dataLen } = f;
    if (nonZeroReserved(spec.layout as never, raw)) fail('EOPNOTSUPP');
    if ((dataType === HWPT_DATA_TYPE.values.NONE) !== (dataLen === 0)) fail('EINVAL');
    this.object(f.devId, 'device');
    const pt = this.objects.get(f.ptId);
    if (!pt) fail('EINVAL');
    let faultId: number | undefined;
    if ((flags & HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID) !== 0) {
      faultId = f.faultId;
      this.object(faultId, 'fault');
    }
    const pasidCompat = (flags & HWPT_ALLOC_FLAGS.bits.PASID) !== 0;
    if (pt.kind === 'ioas') {
      if (HWPT_ALLOC_FLAGS.unknownBits(flags) !== 0) fail('EOPNOTSUPP');
      if (dataType !== HWPT_DATA_TYPE.values.NONE) fail('EOPNOTSUPP');
      const nestParent = (flags & HWPT_ALLOC_FLAGS.bits.NEST_PARENT) !== 0;
      // Erratum 772415_SPR17: a nesting parent must not hold read-only mappings.
      if (nestParent && this.host.errata && pt.maps.some((map) => !map.writable)) fail('EINVAL');
      out.outHwptId = this.add({ kind: 'hwpt-paging', ioasId: f.ptId, nestParent, pasidCompat });
      return undefined;
    }
    if (pt.kind !== 'hwpt-paging' || !pt.nestParent) fail('EINVAL');
    if ((flags & ~(HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID | HWPT_ALLOC_FLAGS.bits.PASID)) !== 0) fail('EOPNOTSUPP');
    if (dataType !== HWPT_DATA_TYPE.values.VTD_S1 || !this.hostNests()) fail('EOPNOTSUPP');
    const bytes = this.pointed(f, payloads, 'dataUptr', dataLen);
    if (dataLen < IOMMU_HWPT_VTD_S1_LAYOUT.size) fail('EINVAL');
    if (!isZero(bytes.subarray(IOMMU_HWPT_VTD_S1_LAYOUT.size, dataLen))) fail('E2BIG');
    const data = decodeStruct(IOMMU_HWPT_VTD_S1_LAYOUT, bytes);
    if ((data.flags & ~BigInt(VTD_S1_FLAGS.known)) !== 0n || nonZeroReserved(IOMMU_HWPT_VTD_S1_LAYOUT, bytes)) fail('EOPNOTSUPP');
    out.outHwptId = this.add({
      kind: 'hwpt-nested',
      parentId: f.ptId,
      pasidCompat,
      ...(faultId !== undefined ? { faultId } : {}),
      data,
    });
    return { vtdS1: data };
  }

  private hostNests(): boolean {
    const ecap = this.host.ecap;
    return (
      (this.host.infoType ?? HW_INFO_TYPE.values.INTEL_VTD) === HW_INFO_TYPE.values.INTEL_VTD &&
      ((ecap >> BigInt(ECAP_FIELDS.f.NEST.lsb)) & 1n) === 1n
    );
  }

  private hwptInvalidate(
    spec: KnownSpec,
    { f, out }: RequestNamed<'IOMMU_HWPT_INVALIDATE'>,
    raw: Uint8Array,
    payloads: Map<string, Uint8Array>,
  ): unknown {
    const { entryNum, entryLen } = f;
    if (nonZeroReserved(spec.layout as never, raw)) fail('EOPNOTSUPP');
    if (entryNum > 0 && (f.dataUptr === 0n || entryLen === 0)) fail('EINVAL');
    const hwpt = this.objects.get(f.hwptId);
    if (!hwpt) fail('ENOENT');
    if (hwpt.kind !== 'hwpt-nested') fail('EINVAL');
    if (f.dataType !== HWPT_INVALIDATE_DATA_TYPE.values.VTD_S1) fail('EINVAL');
    if (entryNum === 0) return { entries: [] };
    if (entryLen < IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT.size) fail('EINVAL');
    const bytes = this.pointed(f, payloads, 'dataUptr', entryLen * entryNum);
    const entries: VtdInvalidate[] = [];
    let refusal: ErrnoName | undefined;
    for (let i = 0; i < entryNum && !refusal; i++) {
      const at = i * entryLen;
      if (!isZero(bytes.subarray(at + IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT.size, at + entryLen))) {
        refusal = 'E2BIG';
        break;
      }
      const entry = decodeStruct(IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT, bytes, at);
      if (VTD_INVALIDATE_FLAGS.unknownBits(entry.flags) !== 0 || nonZeroReserved(IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT, bytes, at)) {
        refusal = 'EOPNOTSUPP';
      } else if (entry.addr % PAGE !== 0n || (entry.npages === INVALIDATE_ALL_PAGES && entry.addr !== 0n)) {
        refusal = 'EINVAL';
      } else {
        entries.push(entry);
      }
    }
    // The count of handled entries is written back even when one is refused.
    out.entryNum = entries.length;
    if (refusal) fail(refusal);
    return { entries };
  }

  private attach(f: RequestNamed<'VFIO_DEVICE_ATTACH_IOMMUFD_PT'>['f'], options: IoctlOptions): unknown {
    const flags = f.flags;
    if (VFIO_ATTACH_FLAGS.unknownBits(flags) !== 0) fail('EINVAL');
    const onPasid = (flags & VFIO_ATTACH_FLAGS.bits.PASID) !== 0;
    if (onPasid && f.argsz < 16) fail('EINVAL');
    const devId = this.deviceIdOf(options.device!);
    if (devId === undefined) fail('EINVAL');
    const ptId = f.ptId;
    const pt = this.objects.get(ptId);
    if (!pt) fail('ENOENT');
    if (pt.kind === 'device' || pt.kind === 'fault') fail('EINVAL');
    const pasid = f.pasid;
    // A domain on a PASID must be PASID-capable, and so must the RID's domain while any PASID is attached.
    const compatible = pt.kind !== 'ioas' && pt.pasidCompat;
    if (onPasid) {
      if (pasid >= 2 ** this.host.maxPasidLog2) fail('EINVAL');
      if (!compatible) fail('EINVAL');
      if (!this.pasidCompatible(this.attached.get(`${devId}/rid`))) fail('EINVAL');
    } else if (!compatible && [...this.attached.keys()].some((key) => key.startsWith(`${devId}/`) && !key.endsWith('/rid'))) {
      fail('EINVAL');
    }
    if (pt.kind === 'hwpt-nested') this.checkNestedConfig(pt.data);
    // Attaching over an existing attachment replaces it, as iommufd_device_replace does.
    this.attached.set(`${devId}/${onPasid ? pasid : 'rid'}`, ptId);
    return undefined;
  }

  /** Nothing attached, or a PASID-capable HWPT. */
  private pasidCompatible(id: number | undefined): boolean {
    if (id === undefined) return true;
    const object = this.objects.get(id);
    return object !== undefined && (object.kind === 'hwpt-paging' || object.kind === 'hwpt-nested') && object.pasidCompat;
  }

  /** The VT-d driver's checks when it programs a nested PASID entry (intel_pasid_setup_nested). */
  private checkNestedConfig(data: VtdS1): void {
    const cap = this.host.cap;
    const ecap = this.host.ecap;
    const bit = (value: bigint, lsb: number): boolean => ((value >> BigInt(lsb)) & 1n) === 1n;
    if (data.addrWidth !== 48 && data.addrWidth !== 57) fail('EINVAL');
    if (data.addrWidth === 57 && !bit(cap, CAP_FIELDS.f.FS5LP.lsb)) fail('EINVAL');
    const flags = Number(data.flags);
    if ((flags & VTD_S1_FLAGS.bits.SRE) !== 0 && !bit(ecap, ECAP_FIELDS.f.SRS.lsb)) fail('EINVAL');
    if ((flags & VTD_S1_FLAGS.bits.EAFE) !== 0 && !bit(ecap, ECAP_FIELDS.f.EAFS.lsb)) fail('EINVAL');
    if ((flags & VTD_S1_FLAGS.bits.WPE) !== 0 && (flags & VTD_S1_FLAGS.bits.SRE) === 0) fail('EINVAL');
  }
}
