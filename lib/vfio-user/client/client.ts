/** VfioUserClient: the VMM side of vfio-user: negotiate, enumerate, region I/O, DMA maps, IRQs, reset, server DMA. */

import { EventEmitter } from 'node:events';
import type { AsyncDmaSpace } from '../../memory';
import type { FileDescriptor } from '../../native';
import { MessageSocket, type MessageSocketOptions } from '../../os';
import { VfioUserConnection, type ConnectionOptions } from '../connection';
import { VfioUserTimeoutError } from '../connection-errors';
import { negotiateVersion, type NegotiatedVersion } from '../negotiation';
import { DMA_MAP_FLAGS, DMA_MAP_LAYOUT, DMA_UNMAP_FLAGS, DMA_UNMAP_LAYOUT, IRQ_INDEXES } from '../protocol';
import { splitTransfer } from '../transfers';
import { socketTransport, type Transport } from '../transport';
import type { ResolvedCapabilities, VersionCapabilities } from '../version';
import { DmaMapTable, type DmaMapping } from './dma-map-table';
import { serveDma, type DmaFaultEvent } from './dma-service';
import { enumerateDevice, type DeviceDescription, type EnumerationOptions, type IrqDescription } from './enumeration';
import { VfioUserClientError } from './errors';
import { ViommuError } from '../../errors';
import { eventFdBatches, eventFdDescriptor, setIrqsBody, type IrqAction, type IrqData, type IrqEventFd } from './irqs';
import type { ClientRegion, MappedArea, RegionDescription } from './region';

/** The default time limit for one request: long enough for a busy device, short enough that a dead one is noticed. */
export const DEFAULT_CLIENT_TIMEOUT_MS = 30000;

export interface VfioUserClientOptions {
  /** Our limits as announced in VERSION (max_msg_fds, max_data_xfer_size, ...); defaults: libvfio-user's. */
  readonly capabilities?: VersionCapabilities;
  /** Ask for a twin socket, so the server's DMA_READ/DMA_WRITE never race our commands on one socket. */
  readonly twinSocket?: boolean;
  /** Per-request time limit in ms (default DEFAULT_CLIENT_TIMEOUT_MS); null waits forever. */
  readonly requestTimeoutMs?: number | null;
  /** How DMA_READ replies are decoded on this connection (see DecodeContext); passed to the connection. */
  readonly dmaReadReplyLayout?: ConnectionOptions['dmaReadReplyLayout'];
  /** Where the server's DMA_READ/DMA_WRITE go; replaceable later through `client.dmaSpace`. */
  readonly dmaSpace?: AsyncDmaSpace;
  /** Refuse (EFAULT) server DMA outside the ranges we DMA_MAPped, or against their permissions (default true). */
  readonly checkDmaAgainstMaps?: boolean;
  /** Send region writes with NO_REPLY, as QEMU posts them (default false); each write call can override it. */
  readonly postedWrites?: boolean;
  /** Enumerate the device during start() (default true). */
  readonly enumerate?: boolean;
  readonly enumeration?: Omit<EnumerationOptions, 'request'>;
  /** Socket limits, for connect() only. */
  readonly socket?: MessageSocketOptions;
}

export interface RegionAccessOptions {
  /** Use REGION_READ/REGION_WRITE messages even where the region is mapped (default: the mapping when it covers the range). */
  readonly viaMessage?: boolean;
  readonly timeoutMs?: number;
}

export interface RegionWriteOptions extends RegionAccessOptions {
  /** NO_REPLY: do not wait for (or get) the server's answer; overrides the client's postedWrites. */
  readonly posted?: boolean;
}

export interface DmaMapRequest {
  readonly address: bigint;
  readonly size: bigint;
  /** May the device read this memory (default true)? */
  readonly readable?: boolean;
  /** May the device write this memory (default true)? */
  readonly writable?: boolean;
  /** The memory's fd (e.g. a SharedRegion's), so the server can map it; without one it DMAs by message. */
  readonly fd?: FileDescriptor;
  /** Where the range starts inside `fd`. */
  readonly offset?: bigint;
}

/** Everything the server told us, as plain data. */
export interface ClientDescription {
  readonly version: { readonly major: number; readonly minor: number };
  readonly twinSocket: boolean;
  /** The server's capabilities with the spec's defaults filled in. */
  readonly serverCapabilities: ResolvedCapabilities;
  /** Only what the server's VERSION reply stated: an absent member is a default in `serverCapabilities`. */
  readonly serverStatedCapabilities: VersionCapabilities;
  readonly device: DeviceDescription | undefined;
  readonly regions: readonly RegionDescription[];
  readonly irqs: readonly IrqDescription[];
}

export interface ClientEvents {
  /** Once; error is undefined for a clean close. Every fd and mapping is released by then. */
  close: [error: Error | undefined];
  /** A server DMA that was refused or faulted, answered with `errno`. */
  dmaFault: [event: DmaFaultEvent];
}

type Offset = bigint | number;

/** A DMA request timed out: the server's table is unknown, so the client closed (the close event carries this too). */
export class VfioUserDmaOutcomeError extends ViommuError {
  constructor(readonly timeout: VfioUserTimeoutError) {
    super(
      'ERR_VFIO_USER_DMA_OUTCOME_UNKNOWN',
      `${timeout.message}; the server may or may not have applied it, so the client closed the connection (the server drops every mapping with it) rather than guess its DMA table`,
    );
    this.name = 'VfioUserDmaOutcomeError';
  }
  declare readonly code: 'ERR_VFIO_USER_DMA_OUTCOME_UNKNOWN';
}

function stateError(message: string): VfioUserClientError {
  return new VfioUserClientError('ERR_VFIO_USER_CLIENT_STATE', message);
}

/** The smallest page size in a pgsizes bitmap (its lowest set bit). */
function smallestPage(pgsizes: bigint): bigint {
  return pgsizes === 0n ? 1n : pgsizes & -pgsizes;
}

export class VfioUserClient extends EventEmitter<ClientEvents> {
  readonly connection: VfioUserConnection;
  /** The space the server's DMA goes to; swap it at any time (e.g. when a vIOMMU is attached). */
  dmaSpace: AsyncDmaSpace | undefined;
  private readonly dmaMaps: DmaMapTable;
  private negotiated: NegotiatedVersion | undefined;
  private deviceInfo: DeviceDescription | undefined;
  private regionList: ClientRegion[] = [];
  private irqList: IrqDescription[] = [];
  private started = false;
  private isClosed = false;
  /** DMA_MAP/DMA_UNMAP replies not yet settled. */
  private readonly dmaInFlight = new Set<Promise<unknown>>();
  private unmappingAll = false;

  /** Connects to a server's UNIX socket and starts (VERSION, then enumeration). */
  static async connect(path: string, options: VfioUserClientOptions = {}): Promise<VfioUserClient> {
    return VfioUserClient.open(socketTransport(MessageSocket.connect(path, options.socket)), options);
  }

  /** Starts a client over any transport; closes it when start() fails. */
  static async open(transport: Transport, options: VfioUserClientOptions = {}): Promise<VfioUserClient> {
    const client = new VfioUserClient(transport, options);
    try {
      await client.start();
    } catch (error) {
      client.close();
      throw error;
    }
    return client;
  }

  /** Takes ownership of `transport`. Nothing is sent until start(). */
  constructor(
    transport: Transport,
    private readonly options: VfioUserClientOptions = {},
  ) {
    super();
    const timeout = options.requestTimeoutMs === undefined ? DEFAULT_CLIENT_TIMEOUT_MS : options.requestTimeoutMs;
    this.connection = new VfioUserConnection(transport, {
      role: 'client',
      ...(options.capabilities === undefined ? {} : { capabilities: options.capabilities }),
      ...(timeout === null ? {} : { requestTimeoutMs: timeout }),
      ...(options.dmaReadReplyLayout === undefined ? {} : { dmaReadReplyLayout: options.dmaReadReplyLayout }),
    });
    this.dmaSpace = options.dmaSpace;
    this.dmaMaps = new DmaMapTable(() => this.connection.peerCapabilities.maxDmaMaps);
    const checkMaps = options.checkDmaAgainstMaps ?? true;
    serveDma(this.connection, {
      space: () => this.dmaSpace,
      refuse: (address, length, access) => (checkMaps ? this.dmaMaps.refuse(address, length, access) : undefined),
      onFault: (event) => this.emit('dmaFault', event),
    });
    this.connection.once('close', (error) => this.release(error));
  }

  /** VERSION (with a twin socket when asked for), then the device's regions and IRQs unless `enumerate` is false. */
  async start(): Promise<void> {
    if (this.started || this.isClosed) throw stateError(this.isClosed ? 'start() on a closed client' : 'start() runs once');
    this.started = true;
    this.negotiated = await negotiateVersion(this.connection, { twinSocket: this.options.twinSocket ?? false });
    if (this.options.enumerate ?? true) await this.enumerate();
  }

  /** (Re-)reads the device description; regions from an earlier enumeration are closed. */
  async enumerate(): Promise<void> {
    this.requireOpen();
    const result = await enumerateDevice(this.connection, { ...this.options.enumeration });
    if (this.isClosed) {
      for (const region of result.regions) region.close();
      throw stateError('the client closed during enumeration');
    }
    for (const region of this.regionList) region.close();
    this.deviceInfo = result.device;
    this.regionList = result.regions;
    this.irqList = result.irqs;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get version(): NegotiatedVersion | undefined {
    return this.negotiated;
  }

  get device(): DeviceDescription | undefined {
    return this.deviceInfo;
  }

  get regions(): readonly ClientRegion[] {
    return this.regionList;
  }

  get irqs(): readonly IrqDescription[] {
    return this.irqList;
  }

  get dmaMappings(): readonly DmaMapping[] {
    return this.dmaMaps.entries;
  }

  get description(): ClientDescription {
    const version = this.negotiated;
    if (version === undefined) throw stateError('the client has not negotiated VERSION yet; call start()');
    return {
      version: { major: version.major, minor: version.minor },
      twinSocket: version.twinSocket,
      serverCapabilities: version.peer,
      serverStatedCapabilities: version.stated,
      device: this.deviceInfo,
      regions: this.regionList.map((region) => region.description),
      irqs: this.irqList,
    };
  }

  region(index: number): ClientRegion {
    const region = this.regionList[index];
    if (region === undefined) {
      throw new VfioUserClientError('ERR_VFIO_USER_NO_REGION', `the server described ${this.regionList.length} regions; there is no region ${index}`);
    }
    return region;
  }

  /** Maps the mmap areas of a region (idempotent); afterwards region accesses inside them skip the socket. */
  mapRegion(index: number): readonly MappedArea[] {
    this.requireOpen();
    return this.region(index).map();
  }

  // ---- region I/O ---------------------------------------------------------------------------------------------

  async regionRead(index: number, offset: Offset, length: number, options: RegionAccessOptions = {}): Promise<Uint8Array> {
    this.requireOpen();
    const start = BigInt(offset);
    this.checkRegionAccess(index, start, length, 'read');
    const direct = options.viaMessage ? undefined : this.regionList[index]?.directView(start, length);
    if (direct !== undefined) return direct.slice();
    const result = new Uint8Array(length);
    // The reply carries the data, so a piece must also fit what we announced we accept.
    const limit = Math.min(this.connection.peerCapabilities.maxDataXferSize, this.connection.localCapabilities.maxDataXferSize);
    for (const piece of splitTransfer(length, limit)) {
      const at = start + BigInt(piece.at);
      const reply = await this.connection.request('REGION_READ', { offset: at, region: index, count: piece.length }, this.timeout(options));
      for (const fd of reply.fds) fd.close();
      if (reply.body.data.length !== piece.length) {
        throw new VfioUserClientError(
          'ERR_VFIO_USER_SHORT_ACCESS',
          `REGION_READ of region ${index} at 0x${at.toString(16)}: asked ${piece.length} bytes, got ${reply.body.data.length}`,
        );
      }
      result.set(reply.body.data, piece.at);
    }
    return result;
  }

  async regionWrite(index: number, offset: Offset, data: Uint8Array, options: RegionWriteOptions = {}): Promise<void> {
    this.requireOpen();
    const start = BigInt(offset);
    this.checkRegionAccess(index, start, data.length, 'write');
    const direct = options.viaMessage ? undefined : this.regionList[index]?.directView(start, data.length);
    if (direct !== undefined) {
      direct.set(data);
      return;
    }
    const posted = options.posted ?? this.options.postedWrites ?? false;
    for (const piece of splitTransfer(data.length, this.connection.peerCapabilities.maxDataXferSize)) {
      const at = start + BigInt(piece.at);
      const body = { offset: at, region: index, data: data.subarray(piece.at, piece.at + piece.length) };
      if (posted) {
        await this.connection.request('REGION_WRITE', body, { noReply: true });
        continue;
      }
      const reply = await this.connection.request('REGION_WRITE', body, this.timeout(options));
      for (const fd of reply.fds) fd.close();
      if (reply.body.count !== piece.length) {
        throw new VfioUserClientError(
          'ERR_VFIO_USER_SHORT_ACCESS',
          `REGION_WRITE of region ${index} at 0x${at.toString(16)}: wrote ${reply.body.count} of ${piece.length} bytes`,
        );
      }
    }
  }

  private checkRegionAccess(index: number, offset: bigint, length: number, access: 'read' | 'write'): void {
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new VfioUserClientError('ERR_VFIO_USER_REGION_ACCESS', `a region access length is a non-negative integer, got ${length}`);
    }
    if (offset < 0n) throw new VfioUserClientError('ERR_VFIO_USER_REGION_ACCESS', `region offset ${offset} is negative`);
    // Without an enumeration there is nothing to check against: the server will answer for itself.
    if (this.deviceInfo === undefined) return;
    const region = this.region(index);
    const allowed = access === 'read' ? region.readable : region.writable;
    if (!allowed)
      throw new VfioUserClientError(
        'ERR_VFIO_USER_REGION_ACCESS',
        `region ${index} does not allow ${access}s (flags 0x${region.description.flags.toString(16)})`,
      );
    if (offset + BigInt(length) > region.size) {
      throw new VfioUserClientError(
        'ERR_VFIO_USER_REGION_ACCESS',
        `${access} of ${length} bytes at 0x${offset.toString(16)} leaves region ${index} (0x${region.size.toString(16)} bytes)`,
      );
    }
  }

  // ---- DMA maps -----------------------------------------------------------------------------------------------

  /**
   * DMA_MAP: refused locally when it overlaps a mapping, exceeds max_dma_maps or is not aligned to the server's
   * smallest page; the caller keeps `fd` (the kernel passes the server a duplicate). When the server does not answer
   * in time the client closes (see dmaOutcomeUnknown).
   */
  async dmaMap(request: DmaMapRequest): Promise<DmaMapping> {
    this.requireOpen();
    this.refuseDuringUnmapAll('DMA_MAP');
    const readable = request.readable ?? true;
    const writable = request.writable ?? true;
    const offset = request.fd === undefined ? 0n : (request.offset ?? 0n);
    const page = smallestPage(this.connection.peerCapabilities.pgsizes);
    for (const [name, value] of [
      ['address', request.address],
      ['size', request.size],
      ['offset', offset],
    ] as const) {
      if (value % page !== 0n) {
        throw new VfioUserClientError(
          'ERR_VFIO_USER_DMA_RANGE',
          `DMA_MAP ${name} 0x${value.toString(16)} is not a multiple of the server's page size 0x${page.toString(16)}`,
        );
      }
    }
    const entry = this.dmaMaps.reserve({
      address: request.address,
      size: request.size,
      readable,
      writable,
      withFd: request.fd !== undefined,
      offset,
    });
    const flags = (readable ? DMA_MAP_FLAGS.bits.READ : 0) | (writable ? DMA_MAP_FLAGS.bits.WRITE : 0);
    try {
      const reply = await this.inFlight(
        this.connection.request(
          'DMA_MAP',
          { argsz: DMA_MAP_LAYOUT.size, flags, offset, address: request.address, size: request.size },
          request.fd === undefined ? {} : { fds: [request.fd] },
        ),
      );
      for (const fd of reply.fds) fd.close();
    } catch (error) {
      if (error instanceof VfioUserTimeoutError) throw this.dmaOutcomeUnknown(error, [entry]);
      this.dmaMaps.remove(entry);
      throw error;
    }
    entry.state = 'mapped';
    return entry;
  }

  /** DMA_UNMAP of exactly one earlier mapping; the server may use the range until this resolves. */
  async dmaUnmap(address: bigint, size: bigint): Promise<void> {
    this.requireOpen();
    this.refuseDuringUnmapAll('DMA_UNMAP');
    const entry = this.dmaMaps.exact(address, size);
    if (entry.state !== 'mapped') {
      throw new VfioUserClientError(
        'ERR_VFIO_USER_DMA_NOT_MAPPED',
        `DMA_UNMAP of [0x${address.toString(16)}, +0x${size.toString(16)}) while it is ${entry.state}`,
      );
    }
    entry.state = 'unmapping';
    try {
      const reply = await this.inFlight(this.connection.request('DMA_UNMAP', { argsz: DMA_UNMAP_LAYOUT.size, flags: 0, address, size }));
      for (const fd of reply.fds) fd.close();
    } catch (error) {
      if (error instanceof VfioUserTimeoutError) throw this.dmaOutcomeUnknown(error, [entry]);
      entry.state = 'mapped';
      throw error;
    }
    this.dmaMaps.remove(entry);
  }

  /**
   * DMA_UNMAP with the unmap-all flag (libvfio-user accepts it; the spec's servers may not). Waits for the DMA_MAPs
   * and DMA_UNMAPs already in flight to be answered first, so their mappings are known to be in or out before the
   * server drops everything; new ones are refused until this resolves.
   */
  async dmaUnmapAll(): Promise<void> {
    this.requireOpen();
    this.refuseDuringUnmapAll('DMA_UNMAP of all mappings');
    this.unmappingAll = true;
    try {
      while (this.dmaInFlight.size > 0) await Promise.allSettled([...this.dmaInFlight]);
      this.requireOpen();
      const affected = this.dmaMaps.entries.filter((entry) => entry.state === 'mapped');
      for (const entry of affected) entry.state = 'unmapping';
      try {
        const reply = await this.connection.request('DMA_UNMAP', {
          argsz: DMA_UNMAP_LAYOUT.size,
          flags: DMA_UNMAP_FLAGS.bits.ALL,
          address: 0n,
          size: 0n,
        });
        for (const fd of reply.fds) fd.close();
      } catch (error) {
        if (error instanceof VfioUserTimeoutError) throw this.dmaOutcomeUnknown(error, affected);
        for (const entry of affected) entry.state = 'mapped';
        throw error;
      }
      for (const entry of affected) this.dmaMaps.remove(entry);
    } finally {
      this.unmappingAll = false;
    }
  }

  /** Remembers a DMA request's reply while it is in flight, so dmaUnmapAll() can wait for it. */
  private inFlight<T>(reply: Promise<T>): Promise<T> {
    this.dmaInFlight.add(reply);
    const forget = (): void => void this.dmaInFlight.delete(reply);
    reply.then(forget, forget);
    return reply;
  }

  private refuseDuringUnmapAll(what: string): void {
    if (this.unmappingAll) throw stateError(`${what} while a DMA_UNMAP of all mappings is in flight; wait for dmaUnmapAll() to resolve`);
  }

  /**
   * A DMA_MAP/DMA_UNMAP the server did not answer in time may or may not have been applied, and vfio-user has no way
   * to ask the server for its table. The entries stay reserved ('unknown') and the client closes: the server drops
   * every mapping with the connection, the one resync the protocol offers, and a peer that does not answer DMA
   * requests in time is not one to keep using.
   */
  private dmaOutcomeUnknown(timeout: VfioUserTimeoutError, entries: readonly DmaMapping[]): Error {
    for (const entry of entries) entry.state = 'unknown';
    const error = new VfioUserDmaOutcomeError(timeout);
    this.release(error);
    this.connection.close();
    return error;
  }

  // ---- IRQs ---------------------------------------------------------------------------------------------------

  /** One SET_IRQS as the spec spells it; `bools` for DATA_BOOL, `eventfds` for DATA_EVENTFD (one per vector). */
  async setIrqs(
    index: number,
    request: { start: number; count: number; data: IrqData; action: IrqAction; bools?: readonly boolean[]; eventfds?: readonly IrqEventFd[] },
  ): Promise<void> {
    this.requireOpen();
    this.checkIrqRange(index, request.start, request.count);
    const carried = request.data === 'eventfd' ? request.eventfds?.length : request.data === 'bool' ? request.bools?.length : request.count;
    if (carried !== request.count) {
      // libvfio-user refuses a count that differs from the fds sent; disableIrqs() is the way to release them.
      throw new VfioUserClientError(
        'ERR_VFIO_USER_IRQ_RANGE',
        `SET_IRQS with DATA_${request.data.toUpperCase()} for ${request.count} vectors needs ${request.count} ${request.data === 'bool' ? 'bools' : 'eventfds'}, got ${carried ?? 0}`,
      );
    }
    if (request.data === 'eventfd') {
      if (request.action !== 'trigger') {
        const body = setIrqsBody(index, request.start, request.count, 'eventfd', request.action);
        await this.sendSetIrqs(body, (request.eventfds ?? []).map(eventFdDescriptor));
        return;
      }
      for (const batch of eventFdBatches(index, request.start, request.eventfds ?? [], this.connection.peerCapabilities.maxMsgFds)) {
        await this.sendSetIrqs(batch.body, batch.fds);
      }
      return;
    }
    await this.sendSetIrqs(setIrqsBody(index, request.start, request.count, request.data, request.action, request.bools), []);
  }

  /** Gives vectors start.. of an IRQ index one eventfd each; the server signals them to interrupt. */
  async enableIrqs(index: number, eventfds: readonly IrqEventFd[], start = 0): Promise<void> {
    await this.setIrqs(index, { start, count: eventfds.length, data: 'eventfd', action: 'trigger', eventfds });
  }

  enableIntx(eventfd: IrqEventFd): Promise<void> {
    return this.enableIrqs(IRQ_INDEXES.values.INTX, [eventfd]);
  }

  enableMsi(eventfds: readonly IrqEventFd[]): Promise<void> {
    return this.enableIrqs(IRQ_INDEXES.values.MSI, eventfds);
  }

  enableMsix(eventfds: readonly IrqEventFd[]): Promise<void> {
    return this.enableIrqs(IRQ_INDEXES.values.MSIX, eventfds);
  }

  /** DATA_NONE|ACTION_TRIGGER with count 0: the whole index is disabled and its eventfds released. */
  disableIrqs(index: number): Promise<void> {
    return this.setIrqs(index, { start: 0, count: 0, data: 'none', action: 'trigger' });
  }

  maskIrqs(index: number, start: number, count: number): Promise<void> {
    return this.setIrqs(index, { start, count, data: 'none', action: 'mask' });
  }

  unmaskIrqs(index: number, start: number, count: number): Promise<void> {
    return this.setIrqs(index, { start, count, data: 'none', action: 'unmask' });
  }

  /** Asks the server to fire vectors start..start+count-1 itself (loopback tests of the interrupt path). */
  triggerIrqs(index: number, start: number, count: number): Promise<void> {
    return this.setIrqs(index, { start, count, data: 'none', action: 'trigger' });
  }

  private async sendSetIrqs(body: ReturnType<typeof setIrqsBody>, fds: FileDescriptor[]): Promise<void> {
    const reply = await this.connection.request('DEVICE_SET_IRQS', body, { fds });
    for (const fd of reply.fds) fd.close();
  }

  private checkIrqRange(index: number, start: number, count: number): void {
    if (this.deviceInfo === undefined) return;
    const irq = this.irqList[index];
    if (irq === undefined) {
      throw new VfioUserClientError('ERR_VFIO_USER_IRQ_RANGE', `the server described ${this.irqList.length} IRQ indexes; there is no index ${index}`);
    }
    if (count > 0 && (start >= irq.count || start + count > irq.count)) {
      throw new VfioUserClientError(
        'ERR_VFIO_USER_IRQ_RANGE',
        `vectors ${start}..${start + count - 1} are outside IRQ index ${index} (${irq.name ?? index}), which has ${irq.count}`,
      );
    }
  }

  // ---- device ---------------------------------------------------------------------------------------------------

  async reset(): Promise<void> {
    this.requireOpen();
    const reply = await this.connection.request('DEVICE_RESET', {});
    for (const fd of reply.fds) fd.close();
  }

  /** Closes the connection and releases every fd and mapping; pending requests reject. */
  close(): void {
    this.connection.close();
    this.release(undefined);
  }

  private release(error: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const region of this.regionList) region.close();
    this.dmaMaps.clear();
    process.nextTick(() => this.emit('close', error));
  }

  private requireOpen(): void {
    if (this.isClosed) throw stateError('the vfio-user client is closed');
  }

  private timeout(options: { timeoutMs?: number }): { timeoutMs?: number } {
    return options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs };
  }
}
