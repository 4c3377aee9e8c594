/**
 * Figures of the shadow backend: shadowing a 100,000-page domain into a real vfio-user server, and invalidating a
 * domain shared by 64 devices against one device.
 */
import { ShadowBackend, type ShadowTarget } from '../../lib/host/shadow-backend';
import { EDU_PCI_IDENTITY } from '../../lib/devices/edu';
import { GuestMemory } from '../../lib/memory';
import { MessageSocket } from '../../lib/os';
import type { VfioUserClient } from '../../lib/vfio-user/client';
import { decodeHeader, encodeCommand, versionBody } from '../../lib/vfio-user/codec';
import { DMA_MAP_FLAGS, DMA_MAP_LAYOUT, DMA_UNMAP_FLAGS, DMA_UNMAP_LAYOUT, PROTOCOL_VERSION } from '../../lib/vfio-user/protocol';
import { VfioUserDevice } from '../../lib/vfio-user/server/device';
import { MAPPING_ACCESS } from '../../lib/vtd/address-space';
import { asyncRate, type Figure } from '../harness';
import { ModelDirectory, ModelDomain, pageRuns } from '../model-domain';
import { BenchServer } from '../vfio-peers';

const PAGE = 4096;
const RW = MAPPING_ACCESS.READ | MAPPING_ACCESS.WRITE;
const SHADOW_PAGES = 100_000;
/** The backend's window of DMA_MAPs in flight per device; the raw baseline keeps as many in flight. */
const WINDOW = 256;
const RAM_PAGES = 16384;
const SID = 0x20;

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`shadow bench setup: ${what}`);
}

function lazily<T>(setup: () => Promise<T>): () => Promise<T> {
  let value: Promise<T> | undefined;
  return () => (value ??= setup());
}

/** Every other IOVA page, scattered guest pages: no two pages coalesce, so each is one DMA_MAP. */
function scatteredPages(count: number): { iovaPage: number; gpaPage: number; access: number }[] {
  return Array.from({ length: count }, (_, i) => ({ iovaPage: 0x10_0000 + 2 * i, gpaPage: (i * 7919) % RAM_PAGES, access: RW }));
}

function clientTarget(client: VfioUserClient): ShadowTarget {
  return {
    dmaMap: (request) => client.dmaMap(request),
    dmaUnmap: (address, size) => client.dmaUnmap(address, size),
    get maxDmaMaps() {
      return client.connection.peerCapabilities.maxDmaMaps;
    },
  };
}

/** Resolves with each reply's msg_id as it arrives, after a raw VERSION exchange on a fresh connection. */
async function rawClient(path: string): Promise<{ socket: MessageSocket; replies: (onReply: (bytes: Buffer) => void) => void }> {
  const socket = MessageSocket.connect(path);
  let handler: (bytes: Buffer) => void = () => undefined;
  socket.on('message', (bytes) => handler(bytes));
  await new Promise<void>((resolve, reject) => {
    handler = (bytes) => (decodeHeader(bytes).error === 0 ? resolve() : reject(new Error('raw VERSION refused')));
    socket.send(encodeCommand(0, { command: 'VERSION', ...versionBody(PROTOCOL_VERSION.major, PROTOCOL_VERSION.minor, {}) }));
  });
  return { socket, replies: (onReply) => (handler = onReply) };
}

/**
 * shadow.a: ShadowBackend.attach of a device to a 100,000-page domain, until every DMA_MAP is answered, against the
 * same 100,000 DMA_MAP messages pre-encoded and sent raw (256 in flight) to the same kind of server. Guest RAM is a
 * plain ArrayBuffer (no shareable fd), so the maps go without fds and the server mmaps nothing: 100,000 mmaps would
 * pass the kernel's vm.max_map_count (65530 by default).
 */
function shadowDomainFigure(): Figure {
  const setup = lazily(async () => {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(RAM_PAGES * PAGE) });
    const domain = new ModelDomain('bench:did=1', 1);
    const pages = scatteredPages(SHADOW_PAGES);
    domain.setRuns(pageRuns(pages));
    const directory = new ModelDirectory();
    directory.place(SID, domain);
    let mapped = 0;
    const device = new VfioUserDevice({ pci: { identity: EDU_PCI_IDENTITY }, onDmaMap: () => void mapped++ });
    const server = new BenchServer(device, 'shadow', { maxDmaMaps: SHADOW_PAGES });
    // The raw messages, encoded once; msg_ids cycle below the u16 limit, far more than WINDOW apart.
    const raw = pages.map((page, i) =>
      encodeCommand((i % 60000) + 1, {
        command: 'DMA_MAP',
        argsz: DMA_MAP_LAYOUT.size,
        flags: DMA_MAP_FLAGS.bits.READ | DMA_MAP_FLAGS.bits.WRITE,
        offset: 0n,
        address: BigInt(page.iovaPage * PAGE),
        size: BigInt(PAGE),
      }),
    );
    const unmapAll = encodeCommand(60001, {
      command: 'DMA_UNMAP',
      argsz: DMA_UNMAP_LAYOUT.size,
      flags: DMA_UNMAP_FLAGS.bits.ALL,
      address: 0n,
      size: 0n,
    });
    return { memory, directory, server, raw, unmapAll, mappedSoFar: () => mapped };
  });

  return {
    id: 'shadow.a',
    title: `shadowing a ${SHADOW_PAGES.toLocaleString('en')}-page domain (no two pages contiguous) into a vfio-user server in this process`,
    subject: `ShadowBackend.attach + settled(): ${SHADOW_PAGES.toLocaleString('en')} DMA_MAPs through VfioUserClient over a UNIX socket`,
    baseline: `${SHADOW_PAGES.toLocaleString('en')} pre-encoded DMA_MAP messages sent raw on a MessageSocket to the same server, ${WINDOW} in flight`,
    direction: 'cost',
    target: 2,
    unit: 'DMA_MAPs',
    async measure() {
      const { memory, directory, server, raw, unmapAll, mappedSoFar } = await setup();

      const client = await server.connect();
      const before = mappedSoFar();
      const subject = await asyncRate(async () => {
        const backend = new ShadowBackend(memory, directory);
        backend.on('error', (_sid, error) => {
          throw error;
        });
        await backend.attach(SID, clientTarget(client)).settled();
        return SHADOW_PAGES;
      }, 0);
      check(mappedSoFar() - before === SHADOW_PAGES && server.session.dmaMaps.size === SHADOW_PAGES, 'the server does not hold every page');
      client.close();
      await server.disconnected();

      const peer = await rawClient(server.path);
      const baseline = await asyncRate(
        () =>
          new Promise<number>((resolve, reject) => {
            let sent = 0;
            let answered = 0;
            peer.replies((bytes) => {
              if (decodeHeader(bytes).error !== 0) reject(new Error('the server refused a raw DMA_MAP'));
              answered++;
              if (sent < raw.length) peer.socket.send(raw[sent++]!);
              else if (answered === raw.length) resolve(answered);
            });
            while (sent < WINDOW) peer.socket.send(raw[sent++]!);
          }),
        0,
      );
      check(server.session.dmaMaps.size === SHADOW_PAGES, 'the raw maps did not all land');
      await new Promise<void>((resolve) => {
        peer.replies(() => resolve());
        peer.socket.send(unmapAll);
      });
      peer.socket.close();
      await server.disconnected();
      return { subject, baseline };
    },
  };
}

/** A device that answers every DMA_MAP and DMA_UNMAP at once, in this process, and counts them. */
class ImmediateTarget implements ShadowTarget {
  readonly maxDmaMaps = 1 << 20;
  maps = 0;
  unmaps = 0;

  dmaMap(): Promise<unknown> {
    this.maps++;
    return Promise.resolve();
  }

  dmaUnmap(): Promise<void> {
    this.unmaps++;
    return Promise.resolve();
  }
}

const DOMAIN_PAGES = 4096;

/**
 * shadow.b: one domain-wide invalidation after the guest moved one page (one DMA_UNMAP and one DMA_MAP per device),
 * with 64 devices attached against 1. The devices answer at once, in this process, so the figure weighs our own
 * processing: the walk and diff done once per domain, and what each device costs on top.
 */
function invalidationFigure(): Figure {
  const build = (devices: number) => {
    const memory = new GuestMemory();
    memory.addRegion({ name: 'ram', start: 0, buffer: new ArrayBuffer(RAM_PAGES * PAGE) });
    const domain = new ModelDomain(`bench:${devices}-devices`, 1);
    const pages = pageRuns(scatteredPages(DOMAIN_PAGES));
    domain.setRuns(pages);
    const directory = new ModelDirectory();
    const backend = new ShadowBackend(memory, directory);
    const targets = Array.from({ length: devices }, () => new ImmediateTarget());
    targets.forEach((target, i) => {
      directory.place(SID + i, domain);
      backend.attach(SID + i, target);
    });
    // Every step moves page 0's mapping to a fresh IOVA page and back: one unmap and one map per device each time.
    const moved = pages.map((page, i) => (i === 0 ? { ...page, iovaPage: 1 } : page)).sort((a, b) => a.iovaPage - b.iovaPage);
    let flip = false;
    const step = async (): Promise<void> => {
      flip = !flip;
      domain.setRuns(flip ? moved : pages);
      domain.invalidate();
      await backend.settled();
    };
    return { backend, targets, step };
  };
  const many = build(64);
  const one = build(1);
  const timed = async (side: ReturnType<typeof build>) => {
    await side.backend.settled();
    const before = side.targets[0]!.maps;
    const rate = await asyncRate(async (deadline) => {
      let count = 0;
      do {
        for (let i = 0; i < 16; i++) await side.step();
        count += 16;
      } while (process.hrtime.bigint() < deadline);
      return count;
    }, 400);
    check(
      side.targets.every((target) => target.maps === side.targets[0]!.maps && target.unmaps === target.maps - DOMAIN_PAGES),
      'the devices did not all get the same changes',
    );
    check(side.targets[0]!.maps > before, 'the invalidations changed nothing');
    return rate;
  };
  return {
    id: 'shadow.b',
    title: `domain-wide invalidation of a ${DOMAIN_PAGES}-page domain after one page moved: 64 attached devices against 1`,
    subject: 'ModelDomain.invalidate + ShadowBackend.settled() with 64 devices (in-process targets that answer at once)',
    baseline: 'the same with 1 device',
    direction: 'cost',
    target: 1.2,
    unit: 'invalidations',
    async measure() {
      return { subject: await timed(many), baseline: await timed(one) };
    },
  };
}

export function shadowFigures(): Figure[] {
  return [shadowDomainFigure(), invalidationFigure()];
}
