/** A scripted vfio-user server for client tests: a VfioUserConnection in the server role with a small fixed device. */

import { SharedRegion } from '../../../lib/memory';
import type { FileDescriptor } from '../../../lib/native';
import { encodeRegionInfoReply } from '../../../lib/vfio-user/region-info';
import { replyWithFds, VfioUserConnection } from '../../../lib/vfio-user/connection';
import { VfioUserErrnoError } from '../../../lib/vfio-user/connection-errors';
import type { DmaMapBody, RegionCapability, RegionInfoReplyBody, SetIrqsBody } from '../../../lib/vfio-user/messages';
import { serveVersion } from '../../../lib/vfio-user/negotiation';
import { DEVICE_INFO_FLAGS, IRQ_INFO_FLAGS, REGION_INFO_FLAGS } from '../../../lib/vfio-user/protocol';
import type { Transport } from '../../../lib/vfio-user/transport';
import type { VersionCapabilities } from '../../../lib/vfio-user/version';

const { READ, WRITE, MMAP, CAPS } = REGION_INFO_FLAGS.bits;
const { EVENTFD, MASKABLE } = IRQ_INFO_FLAGS.bits;

export const BAR1_SIZE = 0x4000;
export const BAR1_AREAS = [
  { offset: 0x0n, size: 0x1000n },
  { offset: 0x2000n, size: 0x1000n },
];
export const REGION_TYPE = { type: 3, subtype: 1 };
export const IRQ_COUNTS = [1, 4, 0, 1, 1];

export interface ScriptedServerOptions {
  readonly capabilities?: VersionCapabilities;
  readonly twinSocket?: boolean;
  /** Region 1 asks for a larger argsz every time (a hostile server). */
  readonly growingArgsz?: boolean;
  /** REGION_READ answers one byte short. */
  readonly shortReads?: boolean;
  /** Initial contents of configuration space (256 bytes). */
  readonly config?: Uint8Array;
}

interface RegionModel {
  flags: number;
  size: number;
  capabilities: RegionCapability[];
  bytes?: Uint8Array;
}

export interface ReceivedMap {
  readonly body: DmaMapBody;
  readonly memory: SharedRegion | undefined;
}

export class ScriptedServer {
  readonly connection: VfioUserConnection;
  readonly bar0 = new Uint8Array(256);
  readonly bar1 = SharedRegion.create('bar1', BAR1_SIZE);
  readonly config = new Uint8Array(256);
  readonly regionInfoRequests: { index: number; argsz: number }[] = [];
  readonly accesses: { command: 'REGION_READ' | 'REGION_WRITE'; region: number; offset: bigint; length: number; noReply: boolean }[] = [];
  readonly maps: ReceivedMap[] = [];
  readonly unmaps: { address: bigint; size: bigint; flags: number }[] = [];
  readonly setIrqs: { body: SetIrqsBody; fds: number }[] = [];
  /** Every eventfd received, in order, kept open so tests can signal them. */
  readonly irqFds: FileDescriptor[] = [];
  resets = 0;
  private readonly regions: RegionModel[];

  constructor(transport: Transport, options: ScriptedServerOptions = {}) {
    this.connection = new VfioUserConnection(transport, { role: 'server', ...(options.capabilities ? { capabilities: options.capabilities } : {}) });
    serveVersion(this.connection, { twinSocket: options.twinSocket ?? false });
    if (options.config) this.config.set(options.config.subarray(0, this.config.length));
    const empty: RegionModel = { flags: 0, size: 0, capabilities: [] };
    this.regions = [
      { flags: READ | WRITE, size: this.bar0.length, capabilities: [], bytes: this.bar0 },
      {
        flags: READ | WRITE | MMAP | CAPS,
        size: BAR1_SIZE,
        capabilities: [{ kind: 'sparse-mmap', areas: BAR1_AREAS }],
        bytes: new Uint8Array(this.bar1.buffer),
      },
      empty,
      empty,
      empty,
      empty,
      empty,
      { flags: READ | WRITE, size: this.config.length, capabilities: [], bytes: this.config },
      { flags: READ | CAPS, size: 16, capabilities: [{ kind: 'type', ...REGION_TYPE }], bytes: new Uint8Array(16).fill(0x5a) },
    ];
    const connection = this.connection;
    connection.onCommand('DEVICE_GET_INFO', () => ({
      argsz: 16,
      flags: DEVICE_INFO_FLAGS.bits.RESET | DEVICE_INFO_FLAGS.bits.PCI,
      numRegions: this.regions.length,
      numIrqs: IRQ_COUNTS.length,
    }));
    connection.onCommand('DEVICE_GET_REGION_INFO', (command) => {
      this.regionInfoRequests.push({ index: command.index, argsz: command.argsz });
      const model = this.regions[command.index];
      if (model === undefined) throw new VfioUserErrnoError('EINVAL', `no region ${command.index}`);
      const full: RegionInfoReplyBody = {
        argsz: 0,
        flags: model.flags,
        index: command.index,
        size: BigInt(model.size),
        offset: 0n,
        capabilities: model.capabilities,
      };
      let needed = encodeRegionInfoReply(full).length;
      if (options.growingArgsz && command.index === 1) needed = command.argsz + 8;
      if (command.argsz < needed) {
        // libvfio-user's answer to a small argsz: the bare struct, CAPS cleared, the needed size, no fd.
        return { ...full, argsz: needed, flags: model.flags & ~CAPS, capabilities: [] };
      }
      const body = { ...full, argsz: needed };
      return (model.flags & MMAP) !== 0 ? replyWithFds<'DEVICE_GET_REGION_INFO'>(body, [this.bar1.fd]) : body;
    });
    connection.onCommand('DEVICE_GET_IRQ_INFO', (command) => {
      const count = IRQ_COUNTS[command.index];
      if (count === undefined) throw new VfioUserErrnoError('EINVAL', `no IRQ index ${command.index}`);
      return { argsz: 16, flags: EVENTFD | (command.index === 1 ? MASKABLE : 0), index: command.index, count };
    });
    const bytesOf = (region: number, offset: bigint, length: number): Uint8Array => {
      const bytes = this.regions[region]?.bytes;
      if (bytes === undefined || offset + BigInt(length) > BigInt(bytes.length)) throw new VfioUserErrnoError('EINVAL', 'outside the region');
      return bytes.subarray(Number(offset), Number(offset) + length);
    };
    connection.onCommand('REGION_READ', (command, _fds, info) => {
      this.accesses.push({ command: 'REGION_READ', region: command.region, offset: command.offset, length: command.count, noReply: info.noReply });
      const data = bytesOf(command.region, command.offset, command.count).slice();
      return { offset: command.offset, region: command.region, data: options.shortReads ? data.subarray(1) : data };
    });
    connection.onCommand('REGION_WRITE', (command, _fds, info) => {
      this.accesses.push({
        command: 'REGION_WRITE',
        region: command.region,
        offset: command.offset,
        length: command.data.length,
        noReply: info.noReply,
      });
      bytesOf(command.region, command.offset, command.data.length).set(command.data);
      return { offset: command.offset, region: command.region, count: command.data.length };
    });
    connection.onCommand('DMA_MAP', (command, fds) => {
      const memory = fds.count > 0 ? SharedRegion.fromFd(fds.take(0), { offset: Number(command.offset), length: Number(command.size) }) : undefined;
      this.maps.push({ body: command, memory });
      return {};
    });
    connection.onCommand('DMA_UNMAP', (command) => {
      this.unmaps.push({ address: command.address, size: command.size, flags: command.flags });
      const index = this.maps.findIndex((map) => map.body.address === command.address && map.body.size === command.size);
      if (index >= 0) this.maps.splice(index, 1)[0]!.memory?.close();
      else if (command.flags === 0) throw new VfioUserErrnoError('EINVAL', 'not mapped');
      return { unmapped: command };
    });
    connection.onCommand('DEVICE_SET_IRQS', (command, fds) => {
      this.setIrqs.push({ body: command, fds: fds.count });
      this.irqFds.push(...fds.takeAll());
      return {};
    });
    connection.onCommand('DEVICE_RESET', () => {
      this.resets++;
      return {};
    });
  }

  /** The bytes the server sees of the mapping that covers `address` (a memfd the client sent). */
  mappedBytes(address: bigint, length: number): Uint8Array {
    const map = this.maps.find((m) => m.body.address <= address && address + BigInt(length) <= m.body.address + m.body.size);
    if (map?.memory === undefined) throw new Error(`no fd-backed mapping at 0x${address.toString(16)}`);
    const at = Number(address - map.body.address);
    return new Uint8Array(map.memory.buffer, at, length);
  }

  close(): void {
    this.connection.close();
    for (const map of this.maps.splice(0)) map.memory?.close();
    for (const fd of this.irqFds.splice(0)) fd.close();
    this.bar1.close();
  }
}
