/** Device enumeration: DEVICE_GET_INFO, every region's info (argsz retry, caps, fd) and every IRQ index's info. */

import type { FileDescriptor } from '../../native';
import type { RequestOptions, VfioUserConnection } from '../connection';
import type { DeviceInfoBody, IrqInfoBody, RegionInfoReplyBody } from '../messages';
import { DEVICE_INFO_LAYOUT, IRQ_INDEXES, IRQ_INFO_LAYOUT, REGION_INFO_FLAGS, REGION_INFO_LAYOUT } from '../protocol';
import { VfioUserClientError } from './errors';
import { ClientRegion, describeRegion } from './region';

export interface DeviceDescription {
  readonly flags: number;
  readonly numRegions: number;
  readonly numIrqs: number;
}

export interface IrqDescription {
  readonly index: number;
  /** INTX, MSI, MSIX, ERR, REQ for the standard PCI indexes. */
  readonly name: string | undefined;
  readonly flags: number;
  readonly count: number;
}

export interface EnumerationOptions {
  /** argsz of the first region-info request; the server's answer says how much a retry needs. */
  readonly regionInfoArgsz?: number;
  /** Guards against a hostile server announcing billions of regions or IRQ indexes. */
  readonly maxRegions?: number;
  readonly maxIrqIndexes?: number;
  readonly request?: Pick<RequestOptions, 'timeoutMs'>;
}

export const DEFAULT_MAX_INDEXES = 256;

function enumerationError(message: string): VfioUserClientError {
  return new VfioUserClientError('ERR_VFIO_USER_ENUMERATION', message);
}

export async function getDeviceInfo(connection: VfioUserConnection, options: EnumerationOptions = {}): Promise<DeviceDescription> {
  const reply = await connection.request('DEVICE_GET_INFO', { argsz: DEVICE_INFO_LAYOUT.size }, options.request);
  for (const fd of reply.fds) fd.close();
  const body: DeviceInfoBody = reply.body;
  const maxRegions = options.maxRegions ?? DEFAULT_MAX_INDEXES;
  const maxIrqs = options.maxIrqIndexes ?? DEFAULT_MAX_INDEXES;
  if (body.numRegions > maxRegions || body.numIrqs > maxIrqs) {
    throw enumerationError(
      `the server announces ${body.numRegions} regions and ${body.numIrqs} IRQ indexes; we accept at most ${maxRegions} and ${maxIrqs}`,
    );
  }
  return { flags: body.flags, numRegions: body.numRegions, numIrqs: body.numIrqs };
}

/**
 * One region's info. A reply whose argsz exceeds ours was cut short (libvfio-user drops the caps and the fd), so we
 * ask once more with the size it named; a server that then asks for more still is refused. The region takes the fd
 * only when MMAP is set; other fds are closed.
 */
export async function getRegion(connection: VfioUserConnection, index: number, options: EnumerationOptions = {}): Promise<ClientRegion> {
  let argsz = Math.max(options.regionInfoArgsz ?? REGION_INFO_LAYOUT.size, REGION_INFO_LAYOUT.size);
  for (let attempt = 0; ; attempt++) {
    const reply = await connection.request('DEVICE_GET_REGION_INFO', { argsz, index }, options.request);
    const fds: FileDescriptor[] = reply.fds;
    try {
      const info: RegionInfoReplyBody = reply.body;
      if (info.index !== index) throw enumerationError(`asked for region ${index}, the server described region ${info.index}`);
      if (info.argsz > argsz) {
        if (attempt > 0) throw enumerationError(`region ${index}: the server asked for argsz ${argsz}, then for ${info.argsz}`);
        argsz = info.argsz;
        continue;
      }
      const mmap = (info.flags & REGION_INFO_FLAGS.bits.MMAP) !== 0;
      const fd = mmap ? fds.shift() : undefined;
      return new ClientRegion(describeRegion(info, fd !== undefined), fd);
    } finally {
      for (const fd of fds) fd.close();
    }
  }
}

export async function getIrqInfo(connection: VfioUserConnection, index: number, options: EnumerationOptions = {}): Promise<IrqDescription> {
  const reply = await connection.request('DEVICE_GET_IRQ_INFO', { argsz: IRQ_INFO_LAYOUT.size, index }, options.request);
  for (const fd of reply.fds) fd.close();
  const info: IrqInfoBody = reply.body;
  if (info.index !== index) throw enumerationError(`asked for IRQ index ${index}, the server described index ${info.index}`);
  return { index, name: IRQ_INDEXES.nameOf(index), flags: info.flags, count: info.count };
}

export interface Enumeration {
  readonly device: DeviceDescription;
  readonly regions: ClientRegion[];
  readonly irqs: IrqDescription[];
}

/** The whole device, in the order QEMU asks: device info, regions 0..n-1, IRQ indexes 0..m-1. */
export async function enumerateDevice(connection: VfioUserConnection, options: EnumerationOptions = {}): Promise<Enumeration> {
  const device = await getDeviceInfo(connection, options);
  const regions: ClientRegion[] = [];
  try {
    for (let index = 0; index < device.numRegions; index++) regions.push(await getRegion(connection, index, options));
    const irqs: IrqDescription[] = [];
    for (let index = 0; index < device.numIrqs; index++) irqs.push(await getIrqInfo(connection, index, options));
    return { device, regions, irqs };
  } catch (error) {
    for (const region of regions) region.close();
    throw error;
  }
}
