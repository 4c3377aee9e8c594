/**
 * VT-d nesting over iommufd: guest first-stage tables bound as VTD_S1 nested HWPTs under one nest-parent HWPT
 * that maps guest RAM, guest invalidations forwarded once per nested HWPT, and host page faults read back.
 */

import type { IntegerKey } from '../byte-layout';
import { PAGE_BYTES, PAGE_SHIFT } from '../memory/geometry';
import { ERRNO, errnoName } from '../errno';
import { ViommuError } from '../errors';
import { decodeBig } from '../vtd/bitfield';
import { CAP_FIELDS, ECAP_FIELDS } from '../vtd/registers';
import {
  HW_INFO_TYPE,
  HW_INFO_VTD_FLAGS,
  HWPT_ALLOC_FLAGS,
  HWPT_DATA_TYPE,
  HWPT_INVALIDATE_DATA_TYPE,
  INVALIDATE_ALL_PAGES,
  IOAS_MAP_FLAGS,
  IOCTLS,
  IOMMU_HW_INFO_VTD_LAYOUT,
  IOMMU_HWPT_PAGE_RESPONSE_LAYOUT,
  IOMMU_HWPT_PGFAULT_LAYOUT,
  IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT,
  IOMMU_HWPT_VTD_S1_LAYOUT,
  PAGE_RESPONSE_CODE,
  PGFAULT_FLAGS,
  PGFAULT_PERM,
  VFIO_ATTACH_FLAGS,
  VFIO_DETACH_FLAGS,
  VTD_INVALIDATE_FLAGS,
  VTD_S1_FLAGS,
  decodeStruct,
  encodeStruct,
  readU32,
  type IoctlName,
  type IoctlSpec,
} from './iommufd-uapi';

/** The u64 fields of ioctl `N`'s struct: those a payload's address can go in. */
type PointerKey<N extends IoctlName> = IntegerKey<(typeof IOCTLS)[N]['layout']['fields'], 8>;

/** A user-space buffer a struct points at: the channel writes its address as a u64 at `offset` before the call. */
export interface PayloadPointer {
  /** Byte offset of the pointer field in the argument (e.g. data_uptr, user_va). */
  readonly offset: number;
  /** The memory pointed at; the kernel may read it or write into it during the call. */
  readonly buffer: Uint8Array;
}

export interface IoctlOptions {
  /** For VFIO device ioctls: the channel's handle of the device cdev the request goes to. */
  readonly device?: number;
  /** The buffers behind the struct's pointer fields; fields without one stay 0 (NULL). */
  readonly payloads?: readonly PayloadPointer[];
  /** Offsets of u32 out fields in which the kernel returns a new fd: the channel owns (and later closes) it. */
  readonly outFds?: readonly number[];
}

/**
 * Where iommufd requests go: a real /dev/iommu (lib/os/iommufd-device.ts) or the dry-run iommufd (iommufd-dry-run.ts). It moves
 * bytes only: the argument is the encoded struct, and the kernel's out fields are written back into it.
 */
export interface IommufdChannel {
  /** The iommufd's fd number, which VFIO_DEVICE_BIND_IOMMUFD carries. */
  readonly iommufd: number;
  /** Issues `request` (an IOCTLS number); 0 (or a non-negative result) on success, a negative errno on failure. */
  ioctl(request: number, argument: Uint8Array, options?: IoctlOptions): number;
  /** Reads whole iommu_hwpt_pgfault records from a fault queue fd: bytes read, 0 when none wait, or -errno. */
  readFaults(faultFd: number, into: Uint8Array): number;
  /** Writes iommu_hwpt_page_response records to a fault queue fd: bytes written, or -errno. */
  writeFaultResponses(faultFd: number, bytes: Uint8Array): number;
}

/** A guest RAM range, mapped into the IOAS at its guest-physical address (the nest parent's IOVA). */
export interface GuestRamRange {
  readonly guestPhysical: number;
  /** The VMM's mapping of that RAM (e.g. a SharedRegion window). */
  readonly bytes: Uint8Array;
}

export interface IommufdNestingOptions {
  readonly guestRam: readonly GuestRamRange[];
  /**
   * Allocate a fault queue and attach nested HWPTs with it (default true). The kernel then enables I/O page faults
   * on each device it attaches, which needs PRI: turn it off for devices without.
   */
  readonly faultQueue?: boolean;
}

/** What the host IOMMU can back, from IOMMU_GET_HW_INFO, so the unit offers the guest only that. */
export interface HostCapabilities {
  /** Page-table formats a nested HWPT can take ('vtd-s1': a VT-d first-stage table); empty without nesting. */
  readonly pageTableFormats: readonly 'vtd-s1'[];
  /** First-stage address widths: 48 (4-level), and 57 (5-level) with CAP.FS5LP. */
  readonly addressWidths: readonly (48 | 57)[];
  /** CAP.FS1GP: 1 GiB pages in first-stage tables. */
  readonly firstStage1GiBPages: boolean;
  /** ECAP.SRS: supervisor requests, so a guest PASID entry may set SRE. */
  readonly supervisorRequests: boolean;
  /** ECAP.EAFS: the extended accessed flag, so a guest PASID entry may set EAFE. */
  readonly extendedAccessedFlag: boolean;
  /** ECAP.NEST: nested translation. */
  readonly nested: boolean;
  /** PASID width the host hands out (0: no PASIDs beyond the RID's). */
  readonly maxPasidLog2: number;
  /** Erratum 772415_SPR17: the nest parent must have no read-only mappings. */
  readonly readOnlyParentErratum: boolean;
  /** The raw registers, for checks this summary does not name (decode with CAP_FIELDS / ECAP_FIELDS). */
  readonly cap: bigint;
  readonly ecap: bigint;
}

/** A guest PASID entry's first-stage fields, as the host nested HWPT takes them. */
export interface FirstStageTable {
  /** FSPTPTR: guest-physical address of the first-stage root, 4 KiB aligned. */
  readonly table: number;
  /** 48 + 9 * FSPM. */
  readonly addressWidth: number;
  readonly sre: boolean;
  readonly wpe: boolean;
  readonly eafe: boolean;
}

/** A page-selective range ({addr, npages, leaf}) or everything the nested table caches (INVALIDATE_ALL). */
export interface InvalidateRange {
  readonly addr: bigint;
  readonly npages: bigint;
  /** The guest's IH bit: only leaf entries changed. */
  readonly leaf: boolean;
}

export const INVALIDATE_ALL: InvalidateRange = Object.freeze({ addr: 0n, npages: INVALIDATE_ALL_PAGES, leaf: false });

/** Which nested HWPTs a guest invalidation reaches: the bindings with this DID (and this PASID, when given). */
export interface InvalidateSelector {
  readonly did: number;
  readonly pasid?: number;
}

/** A host page fault, for the caller to route (first-stage faults to the guest, others to the VMM log). */
export interface HostFault {
  /** The caller's device key (as given to addDevice). */
  readonly device: number;
  /** Absent when the request carried no PASID. */
  readonly pasid?: number;
  readonly address: bigint;
  readonly perm: { readonly read: boolean; readonly write: boolean; readonly exec: boolean; readonly priv: boolean };
  /** The last request of its page-request group: only this one is answered (respond). */
  readonly lastPage: boolean;
  readonly group: number;
  readonly length: number;
  readonly cookie: number;
}

/** What failed: an ioctl, or a read or write of the fault queue fd. */
export type IommufdRequestName = IoctlName | 'FAULT_QUEUE_READ' | 'FAULT_QUEUE_WRITE';

/** A request the host refused (errno 0: it answered, but not what the uAPI promises). */
export class IommufdIoctlError extends ViommuError {
  constructor(
    readonly request: IommufdRequestName,
    readonly errno: number,
    detail: string,
  ) {
    super('ERR_IOMMUFD_IOCTL', `${request} failed with ${errnoName(errno)} (${detail})`);
    this.name = 'IommufdIoctlError';
  }
}

/** What the host cannot honour (or a call out of order), refused before any ioctl. */
export type NestingRequirement =
  'set-up' | 'device' | 'nested' | 'address-width' | 'FS5LP' | 'SRS' | 'EAFS' | 'WPE-needs-SRE' | 'PASID-width' | 'table' | 'range' | 'bound';

export class NestingRefusal extends ViommuError {
  constructor(
    readonly requirement: NestingRequirement,
    message: string,
  ) {
    super('ERR_IOMMUFD_NESTING_REFUSED', message);
    this.name = 'NestingRefusal';
  }
}

/** One nested HWPT, shared by every (device, PASID) bound to the same guest table with the same settings. */
interface NestedHwpt {
  readonly id: number;
  readonly key: string;
  readonly did: number;
  readonly users: Set<string>;
}

interface Binding {
  readonly device: number;
  readonly pasid: number;
  /** The nested HWPT, or undefined for a pass-through binding (attached to the parent). */
  readonly hwpt: NestedHwpt | undefined;
}

/** A binding as the caller sees it. */
export interface BindingInfo {
  readonly device: number;
  readonly pasid: number;
  /** The HWPT the (device, PASID) is attached to. */
  readonly hwptId: number;
  readonly did?: number;
  readonly passThrough: boolean;
}

const PAGE_SHIFT_BIG = BigInt(PAGE_SHIFT);
const PAGE_MASK = BigInt(PAGE_BYTES) - 1n;
/** The PASID a device's requests without PASID use (VT-d RID_PASID): attached without the PASID flag. */
const DEFAULT_PASID = 0;
const FAULT_READ_RECORDS = 64;

function bindingKey(device: number, pasid: number): string {
  return `${device}/${pasid}`;
}

export class IommufdNesting {
  private readonly devices = new Map<number, { cdev: number; devId: number }>();
  private readonly deviceByDevId = new Map<number, number>();
  private readonly bindingsByKey = new Map<string, Binding>();
  private readonly hwptsByKey = new Map<string, NestedHwpt>();
  private ioasId: number | undefined;
  private parentId: number | undefined;
  private fault: { id: number; fd: number } | undefined;
  private hostCapabilities: HostCapabilities | undefined;
  /**
   * HWPT_ALLOC_PASID on every HWPT when the host has PASIDs: the kernel attaches a domain to a PASID only if it was
   * allocated with the flag, and attaches PASIDs only while the RID's domain has it too.
   */
  private pasidFlag = 0;

  constructor(
    private readonly channel: IommufdChannel,
    private readonly options: IommufdNestingOptions,
  ) {}

  /** Binds a VFIO device cdev (the channel's handle) to the iommufd; `device` is the caller's key for it. */
  addDevice(device: number, cdev: number): number {
    if (this.devices.has(device)) throw new NestingRefusal('device', `device ${device} is already added`);
    const argument = encodeStruct(IOCTLS.VFIO_DEVICE_BIND_IOMMUFD.layout, {
      argsz: IOCTLS.VFIO_DEVICE_BIND_IOMMUFD.layout.size,
      flags: 0,
      iommufd: this.channel.iommufd,
      outDevid: 0,
      tokenUuidPtr: 0n,
    });
    this.issue('VFIO_DEVICE_BIND_IOMMUFD', argument, { device: cdev }, `device ${device}`);
    const devId = readU32(IOCTLS.VFIO_DEVICE_BIND_IOMMUFD.layout, argument, 'outDevid');
    this.devices.set(device, { cdev, devId });
    this.deviceByDevId.set(devId, device);
    return devId;
  }

  /**
   * IOMMU_GET_HW_INFO (for the first added device) for the capabilities it returns, then IOAS_ALLOC, IOAS_MAP of
   * each guest RAM range, HWPT_ALLOC of the nest parent, and FAULT_QUEUE_ALLOC.
   */
  setUp(): HostCapabilities {
    if (this.parentId !== undefined) throw new NestingRefusal('set-up', 'already set up');
    const first = this.devices.values().next();
    if (first.done) throw new NestingRefusal('device', 'add a device before set-up: the nest parent is allocated for one');
    const devId = first.value.devId;

    // The host first: whether it has PASIDs decides how every HWPT is allocated.
    const capabilities = this.queryCapabilities(devId);
    this.pasidFlag = capabilities.maxPasidLog2 > 0 ? HWPT_ALLOC_FLAGS.bits.PASID : 0;

    const ioas = encodeStruct(IOCTLS.IOMMU_IOAS_ALLOC.layout, { size: IOCTLS.IOMMU_IOAS_ALLOC.layout.size, flags: 0, outIoasId: 0 });
    this.issue('IOMMU_IOAS_ALLOC', ioas, {}, 'the guest RAM address space');
    this.ioasId = readU32(IOCTLS.IOMMU_IOAS_ALLOC.layout, ioas, 'outIoasId');

    for (const range of this.options.guestRam) {
      const map = encodeStruct(IOCTLS.IOMMU_IOAS_MAP.layout, {
        size: IOCTLS.IOMMU_IOAS_MAP.layout.size,
        flags: IOAS_MAP_FLAGS.bits.FIXED_IOVA | IOAS_MAP_FLAGS.bits.READABLE | IOAS_MAP_FLAGS.bits.WRITEABLE,
        ioasId: this.ioasId,
        userVa: 0n,
        length: BigInt(range.bytes.length),
        iova: BigInt(range.guestPhysical),
      });
      this.issue(
        'IOMMU_IOAS_MAP',
        map,
        { payloads: [{ field: 'userVa', buffer: range.bytes }] },
        `guest RAM at 0x${range.guestPhysical.toString(16)}`,
      );
    }

    this.parentId = this.allocHwpt({ flags: HWPT_ALLOC_FLAGS.bits.NEST_PARENT | this.pasidFlag, devId, ptId: this.ioasId }, 'the nest parent');

    if (this.options.faultQueue ?? true) {
      const layout = IOCTLS.IOMMU_FAULT_QUEUE_ALLOC.layout;
      const alloc = encodeStruct(layout, { size: layout.size, flags: 0, outFaultId: 0, outFaultFd: 0 });
      this.issue('IOMMU_FAULT_QUEUE_ALLOC', alloc, {}, 'the fault queue');
      this.fault = { id: readU32(layout, alloc, 'outFaultId'), fd: readU32(layout, alloc, 'outFaultFd') };
    }

    this.hostCapabilities = capabilities;
    return capabilities;
  }

  /** What the host can back (from set-up's IOMMU_GET_HW_INFO). */
  capabilities(): HostCapabilities {
    if (!this.hostCapabilities) throw new NestingRefusal('set-up', 'call setUp() first');
    return this.hostCapabilities;
  }

  /**
   * Binds (device, PASID) to a guest first-stage table under the nest parent: HWPT_ALLOC VTD_S1 (shared with
   * bindings of the same DID, table and settings) and VFIO_DEVICE_ATTACH_IOMMUFD_PT, with the PASID flag and pasid
   * for PASIDs other than 0 (RID_PASID, which attaches to the device itself). A rebind attaches the new HWPT (the
   * kernel replaces the old one) before the old one is destroyed. Returns the nested HWPT id.
   */
  bind(device: number, pasid: number, did: number, firstStage: FirstStageTable): number {
    const capabilities = this.capabilities();
    const entry = this.device(device);
    this.checkPasid(pasid, capabilities);
    this.checkFirstStage(firstStage, capabilities);
    const flags =
      (firstStage.sre ? VTD_S1_FLAGS.bits.SRE : 0) | (firstStage.eafe ? VTD_S1_FLAGS.bits.EAFE : 0) | (firstStage.wpe ? VTD_S1_FLAGS.bits.WPE : 0);
    const key = `${did}:${firstStage.table}:${firstStage.addressWidth}:${flags}`;
    const user = bindingKey(device, pasid);
    const previous = this.bindingsByKey.get(user);
    if (previous?.hwpt?.key === key) return previous.hwpt.id;

    let hwpt = this.hwptsByKey.get(key);
    const allocated = hwpt === undefined;
    if (!hwpt) {
      const data = encodeStruct(IOMMU_HWPT_VTD_S1_LAYOUT, {
        flags: BigInt(flags),
        pgtblAddr: BigInt(firstStage.table),
        addrWidth: firstStage.addressWidth,
      });
      const id = this.allocHwpt(
        {
          flags: this.pasidFlag | (this.fault ? HWPT_ALLOC_FLAGS.bits.FAULT_ID_VALID : 0),
          devId: entry.devId,
          ptId: this.parentId!,
          dataType: HWPT_DATA_TYPE.values.VTD_S1,
          data,
          faultId: this.fault?.id ?? 0,
        },
        `device ${device} PASID ${pasid}`,
      );
      hwpt = { id, key, did, users: new Set() };
    }
    try {
      this.attach(device, pasid, hwpt.id);
    } catch (error) {
      if (allocated) this.destroy(hwpt.id, 'the nested HWPT whose attach failed');
      throw error;
    }
    if (allocated) this.hwptsByKey.set(key, hwpt);
    hwpt.users.add(user);
    this.bindingsByKey.set(user, { device, pasid, hwpt });
    if (previous) this.release(previous, user);
    return hwpt.id;
  }

  /** PGTT = pass-through: (device, PASID) attached to the nest parent itself. */
  bindPassThrough(device: number, pasid: number): number {
    const capabilities = this.capabilities();
    this.device(device);
    this.checkPasid(pasid, capabilities);
    const user = bindingKey(device, pasid);
    const previous = this.bindingsByKey.get(user);
    if (previous && previous.hwpt === undefined) return this.parentId!;
    this.attach(device, pasid, this.parentId!);
    this.bindingsByKey.set(user, { device, pasid, hwpt: undefined });
    if (previous) this.release(previous, user);
    return this.parentId!;
  }

  /** An absent or invalid guest PASID entry: VFIO_DEVICE_DETACH_IOMMUFD_PT, then IOMMU_DESTROY of an unused HWPT. */
  unbind(device: number, pasid: number): void {
    const entry = this.device(device);
    const user = bindingKey(device, pasid);
    const binding = this.bindingsByKey.get(user);
    if (!binding) throw new NestingRefusal('bound', `device ${device} PASID ${pasid} is not bound`);
    const layout = IOCTLS.VFIO_DEVICE_DETACH_IOMMUFD_PT.layout;
    const onPasid = pasid !== DEFAULT_PASID;
    const detach = encodeStruct(layout, {
      argsz: layout.size,
      flags: onPasid ? VFIO_DETACH_FLAGS.bits.PASID : 0,
      pasid: onPasid ? pasid : 0,
    });
    this.issue('VFIO_DEVICE_DETACH_IOMMUFD_PT', detach, { device: entry.cdev }, `device ${device} PASID ${pasid}`);
    this.bindingsByKey.delete(user);
    this.release(binding, user);
  }

  /**
   * Forwards a guest first-stage invalidation: one IOMMU_HWPT_INVALIDATE (one VTD_S1 entry) per nested HWPT that
   * the DID (and PASID) select, however many devices share it. Returns how many requests were issued.
   */
  invalidate(selector: InvalidateSelector, range: InvalidateRange): number {
    checkRange(range);
    const targets = new Set<NestedHwpt>();
    for (const binding of this.bindingsByKey.values()) {
      if (!binding.hwpt || binding.hwpt.did !== selector.did) continue;
      if (selector.pasid !== undefined && binding.pasid !== selector.pasid) continue;
      targets.add(binding.hwpt);
    }
    const entry = encodeStruct(IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT, {
      addr: range.addr,
      npages: range.npages,
      flags: range.leaf ? VTD_INVALIDATE_FLAGS.bits.LEAF : 0,
    });
    const layout = IOCTLS.IOMMU_HWPT_INVALIDATE.layout;
    for (const hwpt of targets) {
      const request = encodeStruct(layout, {
        size: layout.size,
        hwptId: hwpt.id,
        dataUptr: 0n,
        dataType: HWPT_INVALIDATE_DATA_TYPE.values.VTD_S1,
        entryLen: entry.length,
        entryNum: 1,
      });
      this.issue('IOMMU_HWPT_INVALIDATE', request, { payloads: [{ field: 'dataUptr', buffer: entry }] }, `HWPT ${hwpt.id}`);
      const handled = readU32(layout, request, 'entryNum');
      if (handled !== 1) throw new IommufdIoctlError('IOMMU_HWPT_INVALIDATE', 0, `HWPT ${hwpt.id}: the kernel handled ${handled} of 1 entries`);
    }
    return targets.size;
  }

  /** Drains the fault queue into records (empty when none wait, or without a fault queue). */
  readFaults(): HostFault[] {
    if (!this.fault) return [];
    const size = IOMMU_HWPT_PGFAULT_LAYOUT.size;
    const buffer = new Uint8Array(size * FAULT_READ_RECORDS);
    const faults: HostFault[] = [];
    for (;;) {
      const read = this.channel.readFaults(this.fault.fd, buffer);
      if (read === -ERRNO.EAGAIN || read === 0) break;
      if (read < 0) throw new IommufdIoctlError('FAULT_QUEUE_READ', -read, `fault queue fd ${this.fault.fd}`);
      for (let at = 0; at + size <= read; at += size) faults.push(this.decodeFault(buffer, at));
      if (read < buffer.length) break;
    }
    return faults;
  }

  /** Answers a page-request group through its last fault's cookie. */
  respond(fault: HostFault, code: 'success' | 'invalid'): void {
    if (!this.fault) throw new NestingRefusal('set-up', 'there is no fault queue to answer');
    const response = encodeStruct(IOMMU_HWPT_PAGE_RESPONSE_LAYOUT, {
      cookie: fault.cookie,
      code: code === 'success' ? PAGE_RESPONSE_CODE.values.SUCCESS : PAGE_RESPONSE_CODE.values.INVALID,
    });
    const written = this.channel.writeFaultResponses(this.fault.fd, response);
    if (written < 0) throw new IommufdIoctlError('FAULT_QUEUE_WRITE', -written, `answering cookie ${fault.cookie}`);
  }

  /** Current bindings, in bind order. */
  bindings(): BindingInfo[] {
    return [...this.bindingsByKey.values()].map((binding) => ({
      device: binding.device,
      pasid: binding.pasid,
      hwptId: binding.hwpt?.id ?? this.parentId!,
      did: binding.hwpt?.did,
      passThrough: binding.hwpt === undefined,
    }));
  }

  /** Unbinds everything, then destroys the parent, the fault queue and the IOAS. Devices stay bound to iommufd. */
  close(): void {
    for (const binding of [...this.bindingsByKey.values()]) this.unbind(binding.device, binding.pasid);
    if (this.parentId !== undefined) this.destroy(this.parentId, 'the nest parent');
    if (this.fault) this.destroy(this.fault.id, 'the fault queue');
    if (this.ioasId !== undefined) this.destroy(this.ioasId, 'the IOAS');
    this.parentId = this.ioasId = this.fault = this.hostCapabilities = undefined;
    this.pasidFlag = 0;
  }

  // ---- internals ----

  private device(device: number): { cdev: number; devId: number } {
    const entry = this.devices.get(device);
    if (!entry) throw new NestingRefusal('device', `device ${device} was never added (addDevice)`);
    return entry;
  }

  private checkPasid(pasid: number, capabilities: HostCapabilities): void {
    if (!Number.isInteger(pasid) || pasid < 0 || (pasid !== DEFAULT_PASID && pasid >= 2 ** capabilities.maxPasidLog2)) {
      throw new NestingRefusal('PASID-width', `PASID ${pasid} is beyond the host's ${capabilities.maxPasidLog2}-bit PASIDs`);
    }
  }

  private checkFirstStage(firstStage: FirstStageTable, capabilities: HostCapabilities): void {
    if (!capabilities.pageTableFormats.includes('vtd-s1')) {
      throw new NestingRefusal('nested', 'the host IOMMU offers no VT-d first-stage nesting (ECAP.NEST, ECAP.FSTS)');
    }
    if (!Number.isSafeInteger(firstStage.table) || firstStage.table < 0 || firstStage.table % PAGE_BYTES !== 0) {
      throw new NestingRefusal('table', `first-stage table 0x${firstStage.table.toString(16)} is not a 4 KiB aligned guest-physical address`);
    }
    if (firstStage.addressWidth !== 48 && firstStage.addressWidth !== 57) {
      throw new NestingRefusal('address-width', `first-stage address width ${firstStage.addressWidth} is neither 48 nor 57`);
    }
    if (firstStage.addressWidth === 57 && !capabilities.addressWidths.includes(57)) {
      throw new NestingRefusal('FS5LP', 'a 57-bit (5-level) first stage needs the host CAP.FS5LP');
    }
    if (firstStage.sre && !capabilities.supervisorRequests) {
      throw new NestingRefusal('SRS', 'SRE needs the host ECAP.SRS');
    }
    if (firstStage.eafe && !capabilities.extendedAccessedFlag) {
      throw new NestingRefusal('EAFS', 'EAFE needs the host ECAP.EAFS');
    }
    if (firstStage.wpe && !firstStage.sre) {
      throw new NestingRefusal('WPE-needs-SRE', 'WPE applies to supervisor requests only: set SRE with it');
    }
  }

  private queryCapabilities(devId: number): HostCapabilities {
    const layout = IOCTLS.IOMMU_GET_HW_INFO.layout;
    const data = new Uint8Array(IOMMU_HW_INFO_VTD_LAYOUT.size);
    const info = encodeStruct(layout, {
      size: layout.size,
      flags: 0,
      devId,
      dataLen: data.length,
      dataUptr: 0n,
      dataType: 0,
      outMaxPasidLog2: 0,
      outCapabilities: 0n,
    });
    this.issue('IOMMU_GET_HW_INFO', info, { payloads: [{ field: 'dataUptr', buffer: data }] }, `dev_id ${devId}`);
    const answer = decodeStruct(layout, info);
    if (answer.dataType !== HW_INFO_TYPE.values.INTEL_VTD) {
      return {
        pageTableFormats: [],
        addressWidths: [],
        firstStage1GiBPages: false,
        supervisorRequests: false,
        extendedAccessedFlag: false,
        nested: false,
        maxPasidLog2: answer.outMaxPasidLog2,
        readOnlyParentErratum: false,
        cap: 0n,
        ecap: 0n,
      };
    }
    // Bytes past the data_len the kernel reports were zeroed by it: fields it does not know read as 0.
    const vtd = decodeStruct(IOMMU_HW_INFO_VTD_LAYOUT, data);
    const cap = decodeBig(CAP_FIELDS, vtd.capReg);
    const ecap = decodeBig(ECAP_FIELDS, vtd.ecapReg);
    const nested = ecap.NEST === 1n && ecap.FSTS === 1n;
    return {
      pageTableFormats: nested ? ['vtd-s1'] : [],
      addressWidths: cap.FS5LP === 1n ? [48, 57] : [48],
      firstStage1GiBPages: cap.FS1GP === 1n,
      supervisorRequests: ecap.SRS === 1n,
      extendedAccessedFlag: ecap.EAFS === 1n,
      nested,
      maxPasidLog2: answer.outMaxPasidLog2,
      readOnlyParentErratum: (vtd.flags & HW_INFO_VTD_FLAGS.bits.ERRATA_772415_SPR17) !== 0,
      cap: vtd.capReg,
      ecap: vtd.ecapReg,
    };
  }

  private allocHwpt(
    request: { flags: number; devId: number; ptId: number; dataType?: number; data?: Uint8Array; faultId?: number },
    what: string,
  ): number {
    const layout = IOCTLS.IOMMU_HWPT_ALLOC.layout;
    const argument = encodeStruct(layout, {
      size: layout.size,
      flags: request.flags,
      devId: request.devId,
      ptId: request.ptId,
      outHwptId: 0,
      dataType: request.dataType ?? HWPT_DATA_TYPE.values.NONE,
      dataLen: request.data?.length ?? 0,
      dataUptr: 0n,
      faultId: request.faultId ?? 0,
    });
    this.issue('IOMMU_HWPT_ALLOC', argument, request.data ? { payloads: [{ field: 'dataUptr', buffer: request.data }] } : {}, what);
    return readU32(layout, argument, 'outHwptId');
  }

  private attach(device: number, pasid: number, ptId: number): void {
    const entry = this.device(device);
    const layout = IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.layout;
    const onPasid = pasid !== DEFAULT_PASID;
    const attach = encodeStruct(layout, {
      argsz: layout.size,
      flags: onPasid ? VFIO_ATTACH_FLAGS.bits.PASID : 0,
      ptId,
      pasid: onPasid ? pasid : 0,
    });
    this.issue('VFIO_DEVICE_ATTACH_IOMMUFD_PT', attach, { device: entry.cdev }, `device ${device} PASID ${pasid} to ${ptId}`);
  }

  /** Drops a binding's use of its nested HWPT, destroying the HWPT when nobody uses it any more. */
  private release(binding: Binding, user: string): void {
    const hwpt = binding.hwpt;
    if (!hwpt) return;
    hwpt.users.delete(user);
    if (hwpt.users.size > 0) return;
    this.hwptsByKey.delete(hwpt.key);
    this.destroy(hwpt.id, `nested HWPT ${hwpt.id}`);
  }

  private destroy(id: number, what: string): void {
    const layout = IOCTLS.IOMMU_DESTROY.layout;
    this.issue('IOMMU_DESTROY', encodeStruct(layout, { size: layout.size, id }), {}, what);
  }

  private decodeFault(buffer: Uint8Array, at: number): HostFault {
    const record = decodeStruct(IOMMU_HWPT_PGFAULT_LAYOUT, buffer, at);
    const device = this.deviceByDevId.get(record.devId);
    if (device === undefined) {
      throw new ViommuError('ERR_IOMMUFD_UNKNOWN_DEVICE', `a host fault names dev_id ${record.devId}, which no added device has`);
    }
    const pasidValid = (record.flags & PGFAULT_FLAGS.bits.PASID_VALID) !== 0;
    return {
      device,
      ...(pasidValid ? { pasid: record.pasid } : {}),
      address: record.addr,
      perm: {
        read: (record.perm & PGFAULT_PERM.bits.READ) !== 0,
        write: (record.perm & PGFAULT_PERM.bits.WRITE) !== 0,
        exec: (record.perm & PGFAULT_PERM.bits.EXEC) !== 0,
        priv: (record.perm & PGFAULT_PERM.bits.PRIV) !== 0,
      },
      lastPage: (record.flags & PGFAULT_FLAGS.bits.LAST_PAGE) !== 0,
      group: record.grpid,
      length: record.length,
      cookie: record.cookie,
    };
  }

  /** Sends one request; pointer fields are named by their layout's key here and passed to the channel as offsets. */
  private issue<N extends IoctlName>(
    name: N,
    argument: Uint8Array,
    options: { device?: number; payloads?: readonly { field: PointerKey<N>; buffer: Uint8Array }[] },
    detail: string,
  ): void {
    const spec: IoctlSpec = IOCTLS[name];
    const result = this.channel.ioctl(spec.request, argument, {
      ...(options.device !== undefined ? { device: options.device } : {}),
      ...(options.payloads ? { payloads: options.payloads.map(({ field, buffer }) => ({ offset: spec.layout.offsetOf(field), buffer })) } : {}),
      ...(spec.fdFields.length > 0 ? { outFds: spec.fdFields.map((field) => spec.layout.offsetOf(field)) } : {}),
    });
    if (result < 0) throw new IommufdIoctlError(name, -result, detail);
  }
}

function checkRange(range: InvalidateRange): void {
  if (range.npages === INVALIDATE_ALL_PAGES) {
    if (range.addr !== 0n) throw new NestingRefusal('range', 'the invalidate-everything form takes addr 0');
    return;
  }
  if (range.addr < 0n || (range.addr & PAGE_MASK) !== 0n || range.npages < 1n) {
    throw new NestingRefusal(
      'range',
      `invalidation {addr 0x${range.addr.toString(16)}, ${range.npages} pages}: addr must be 4 KiB aligned and npages at least 1`,
    );
  }
  if (range.addr + (range.npages << PAGE_SHIFT_BIG) > 1n << 64n) {
    throw new NestingRefusal('range', `invalidation {addr 0x${range.addr.toString(16)}, ${range.npages} pages} runs past 2^64`);
  }
}
