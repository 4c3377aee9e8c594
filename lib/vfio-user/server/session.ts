/** VfioUserSession: one client of a device, from VERSION to disconnect; its DMA maps and eventfds die with it. */

import { EventEmitter } from 'node:events';
import { isPromiseLike } from '../../memory';
import { VfioUserConnection, replyWithFds, type CommandHandler, type FailedCommandInfo } from '../connection';
import { VfioUserErrnoError } from '../connection-errors';
import { versionHandler } from '../negotiation';
import { CAPABILITY_DEFAULTS, DEVICE_INFO_FLAGS, DEVICE_INFO_LAYOUT, DMA_UNMAP_FLAGS, REGION_IO_FDS_LAYOUT, type CommandName } from '../protocol';
import type { Transport } from '../transport';
import type { VersionCapabilities } from '../version';
import type { VfioUserDevice } from './device';
import { DmaMapTable } from './dma-maps';
import type { DmaPath } from './device-dma';
import { IRQ_INDEX_COUNT } from './irqs';
import { REGION_COUNT } from './regions';

export interface SessionOptions {
  /** Our limits as announced in VERSION (default: 8 fds per message, 1 MiB transfers, as libvfio-user). */
  readonly capabilities?: VersionCapabilities;
  /** Most DMA mappings a client may hold (max_dma_maps, default the spec's 65535; announced when not the default). */
  readonly maxDmaMaps?: number;
  /** Offer a twin socket to clients that ask, for our DMA_READ/DMA_WRITE (default true). */
  readonly twinSocket?: boolean;
  /**
   * Accept DMA_MAP fds not sealed against shrinking (unsealed memfds, regular files), reached by pread/pwrite
   * rather than mapped, with a warning; by default they are refused with EPERM (docs/vfio-user-server.md).
   */
  readonly allowUnsealedDmaFds?: boolean;
  /** Time limit for each DMA_READ/DMA_WRITE the device sends (default 30 s); null waits forever. */
  readonly dmaTimeoutMs?: number | null;
}

export interface SessionEvents {
  /** Once, after the device was released (maps unmapped, eventfds closed, device reset). */
  close: [error: Error | undefined];
  /** Something worth a log line that is not an error of ours (e.g. an unsealed DMA fd). */
  warning: [message: string];
  /** A device handler threw an untyped error (the client got EIO). */
  handlerError: [error: unknown, info: FailedCommandInfo];
}

export const DEFAULT_SERVER_CAPABILITIES: VersionCapabilities = { maxMsgFds: 8, maxDataXferSize: 1048576 };
export const DEFAULT_DMA_TIMEOUT_MS = 30000;

const DEVICE_FLAGS = DEVICE_INFO_FLAGS.bits.RESET | DEVICE_INFO_FLAGS.bits.PCI;

function notNegotiated(command: string): VfioUserErrnoError {
  return new VfioUserErrnoError('EINVAL', `${command} before VERSION: negotiate first`);
}

let nextSessionId = 1;

export class VfioUserSession extends EventEmitter<SessionEvents> {
  readonly id = nextSessionId++;
  readonly connection: VfioUserConnection;
  readonly dmaMaps: DmaMapTable;
  private negotiated = false;
  private warnedUnsealed = false;
  private readonly path: DmaPath;
  private finished = false;

  constructor(
    transport: Transport,
    readonly device: VfioUserDevice,
    options: SessionOptions = {},
  ) {
    super();
    device.claim(this);
    const maxDmaMaps = options.maxDmaMaps ?? CAPABILITY_DEFAULTS.maxDmaMaps;
    const capabilities: VersionCapabilities = {
      ...DEFAULT_SERVER_CAPABILITIES,
      ...options.capabilities,
      ...(maxDmaMaps === CAPABILITY_DEFAULTS.maxDmaMaps ? {} : { maxDmaMaps }),
    };
    this.connection = new VfioUserConnection(transport, { role: 'server', capabilities });
    this.dmaMaps = new DmaMapTable({ maxMappings: maxDmaMaps, allowUnsealedFds: options.allowUnsealedDmaFds ?? false });
    const timeout = options.dmaTimeoutMs === undefined ? DEFAULT_DMA_TIMEOUT_MS : options.dmaTimeoutMs;
    this.path = {
      table: this.dmaMaps,
      connection: this.connection,
      maxPieceSize: this.connection.localCapabilities.maxDataXferSize,
      ...(timeout === null ? {} : { timeoutMs: timeout }),
    };
    device.dma.attach(this.path);
    device.dmaByMessage.attach(this.path);
    this.connection.on('handlerError', (error, info) => this.emit('handlerError', error, info));
    this.connection.on('close', (error) => this.finish(error));
    this.registerHandlers(options.twinSocket ?? true);
  }

  get closed(): boolean {
    return this.finished;
  }

  /** Disconnects the client; 'close' follows once the device is released. */
  close(): void {
    this.connection.close();
  }

  private handle<N extends CommandName>(command: N, handler: CommandHandler<N>): void {
    this.connection.onCommand(command, (body, fds, info) => {
      if (!this.negotiated) throw notNegotiated(command);
      return handler(body, fds, info);
    });
  }

  private registerHandlers(twinSocket: boolean): void {
    const { device } = this;
    const version = versionHandler(this.connection, { twinSocket });
    this.connection.onCommand('VERSION', (body, fds, info) => {
      if (this.negotiated) throw new VfioUserErrnoError('EINVAL', 'VERSION was already negotiated on this connection');
      const reply = version(body, fds, info);
      this.negotiated = true;
      return reply;
    });

    this.handle('DMA_MAP', (body, fds) => {
      if (fds.count > 1) throw new VfioUserErrnoError('EINVAL', `DMA_MAP carries at most one fd, got ${fds.count}`);
      const mapping = this.dmaMaps.add(body, fds.count === 1 ? fds.take(0) : undefined);
      if (mapping.sealed === false && !this.warnedUnsealed) {
        this.warnedUnsealed = true;
        this.emit(
          'warning',
          `DMA_MAP fd ${mapping.fdDescription} is not sealed against shrinking: reached by pread/pwrite, not mapped; device DMA past a truncation fails with EFAULT`,
        );
      }
      try {
        device.dmaMapped(mapping);
      } catch (error) {
        this.dmaMaps.remove(mapping.address, mapping.size);
        throw error;
      }
      return {};
    });

    this.handle('DMA_UNMAP', (body) => {
      const echo = { unmapped: { argsz: body.argsz, flags: body.flags, address: body.address, size: body.size } };
      const all = (body.flags & DMA_UNMAP_FLAGS.bits.ALL) !== 0;
      const leaving = all ? [...this.dmaMaps.mappings] : [this.dmaMaps.exact(body.address, body.size)];
      // The device lets go of the memory first; the reply promises the client that nobody uses it any more.
      const notices = leaving.map((mapping) => device.dmaUnmapping(mapping));
      const done = () => {
        if (all) this.dmaMaps.removeAll();
        else this.dmaMaps.remove(body.address, body.size);
        return echo;
      };
      return notices.some(isPromiseLike) ? Promise.all(notices).then(done) : done();
    });

    this.handle('DEVICE_GET_INFO', () => ({
      argsz: DEVICE_INFO_LAYOUT.size,
      flags: DEVICE_FLAGS,
      numRegions: REGION_COUNT,
      numIrqs: IRQ_INDEX_COUNT,
    }));

    this.handle('DEVICE_GET_REGION_INFO', (body) => {
      const { body: reply, fd } = device.regions.info(body.index, body.argsz);
      return fd === undefined ? reply : replyWithFds<'DEVICE_GET_REGION_INFO'>(reply, [fd]);
    });

    // No region of ours has ioeventfds: an existing region answers with no sub-regions.
    this.handle('DEVICE_GET_REGION_IO_FDS', (body) => {
      if (body.index >= REGION_COUNT) throw new VfioUserErrnoError('EINVAL', `region ${body.index} does not exist`);
      return { argsz: REGION_IO_FDS_LAYOUT.size, index: body.index, count: 0, subRegions: [] };
    });

    this.handle('DEVICE_GET_IRQ_INFO', (body) => device.irqs.info(body.index));

    this.handle('DEVICE_SET_IRQS', (body, fds) => {
      device.irqs.set(body, fds);
      return {};
    });

    this.handle('REGION_READ', (body) => {
      const data = device.regions.read(body.region, body.offset, body.count);
      const reply = (bytes: Uint8Array) => ({ offset: body.offset, region: body.region, data: bytes });
      return isPromiseLike(data) ? data.then(reply) : reply(data);
    });

    this.handle('REGION_WRITE', (body) => {
      const pending = device.regions.write(body.region, body.offset, body.data);
      const reply = { offset: body.offset, region: body.region, count: body.data.length };
      return isPromiseLike(pending) ? pending.then(() => reply) : reply;
    });

    this.handle('REGION_WRITE_MULTI', async (body) => {
      for (const write of body.writes) await device.regions.write(write.region, write.offset, write.data);
      return { count: BigInt(body.writes.length) };
    });

    this.handle('DEVICE_RESET', () => {
      const pending = device.reset('client');
      return isPromiseLike(pending) ? pending.then(() => ({})) : {};
    });
  }

  /**
   * The client is gone: the device forgets its mappings (told first; the views stay attached until every
   * onDmaUnmap settled, as a device may still be finishing a DMA), its eventfds and its state.
   */
  private finish(error: Error | undefined): void {
    if (this.finished) return;
    this.finished = true;
    const { device } = this;
    device.dma.detach(this.path);
    device.dmaByMessage.detach(this.path);
    const warn = (reason: unknown): void => void this.emit('warning', `onDmaUnmap failed after the client left: ${String(reason)}`);
    const notices: PromiseLike<void>[] = [];
    for (const mapping of this.dmaMaps.mappings) {
      try {
        const notice = device.dmaUnmapping(mapping);
        if (isPromiseLike(notice)) notices.push(notice.then(undefined, warn));
      } catch (reason) {
        warn(reason);
      }
    }
    if (notices.length === 0) {
      this.releaseDevice(error);
      return;
    }
    void Promise.all(notices).then(() => this.releaseDevice(error));
  }

  private releaseDevice(error: Error | undefined): void {
    const { device } = this;
    this.dmaMaps.removeAll();
    device.irqs.releaseAll();
    const done = () => {
      device.release(this);
      this.emit('close', error);
    };
    try {
      const reset = device.reset('lost-connection');
      if (isPromiseLike(reset)) {
        reset.then(done, (reason: unknown) => {
          this.emit('warning', `the device reset failed after the client left: ${String(reason)}`);
          done();
        });
        return;
      }
    } catch (reason) {
      this.emit('warning', `the device reset failed after the client left: ${String(reason)}`);
    }
    done();
  }
}
