/** Our server fed the recorded client commands of real libvfio-user sessions answers with replies of the same shape. */

import assert from 'node:assert/strict';
import { writeField } from '../../lib/byte-layout';
import { SharedRegion } from '../../lib/memory';
import type { FileDescriptor } from '../../lib/native';
import { EventFd, MessageSocket } from '../../lib/os';
import { decodeHeader, decodeMessage, type VfioUserHeader, type VfioUserMessage } from '../../lib/vfio-user/codec';
import { VfioUserProtocolError } from '../../lib/vfio-user/errors';
import type { VfioUserCommand } from '../../lib/vfio-user/messages';
import { COMMANDS, HEADER_FLAGS, HEADER_LAYOUT, MESSAGE_TYPES, REGION_INDEXES } from '../../lib/vfio-user/protocol';
import { VfioUserDevice } from '../../lib/vfio-user/server/device';
import type { DmaMapping } from '../../lib/vfio-user/server/dma-maps';
import { bufferRegion, type RegionHandler } from '../../lib/vfio-user/server/regions';
import { VfioUserServer } from '../../lib/vfio-user/server/server';
import { openFdCount, tempSocketPath, waitFor } from '../helpers';
import { readCapture, type CaptureRecord } from '../captures';

const isReply = (flags: number) => (flags & HEADER_FLAGS.bits.TYPE) === MESSAGE_TYPES.values.REPLY;
const MIGRATION_COMMANDS = new Set<number>([COMMANDS.values.DEVICE_FEATURE, COMMANDS.values.MIG_DATA_READ, COMMANDS.values.MIG_DATA_WRITE]);

// ---- devices that mirror the recorded servers ---------------------------------------------------------------

/**
 * libvfio-user's samples/server as the captures show it: IDs dead:beef (subsystem cafe:babe), BAR0 an 8-byte
 * register (a time_t; writing it arms a timer), BAR1 mmap-able with two sparse areas, INTx, ERR and REQ with one
 * vector each and no masking. When the timer fires the sample copies into fd-backed mappings directly, then DMA_WRITEs
 * four 1 KiB blocks (0x41.. 0x44) and DMA_READs two 2 KiB blocks by message at the lowest mapping; the mirror does
 * that after the first BAR0 write (the second is overtaken by migration in the recordings, which we do not model).
 */
function sampleServer(bar1Size: number): { device: VfioUserDevice; done: () => boolean } {
  const mappings: DmaMapping[] = [];
  const bar0 = new Uint8Array(8);
  let armed = false;
  let finished = false;
  let device: VfioUserDevice | undefined;
  const runTimer = async () => {
    const lowest = [...mappings].sort((a, b) => (a.address < b.address ? -1 : 1))[0];
    if (lowest === undefined || device === undefined) return;
    for (const mapping of mappings)
      if (mapping.memory !== undefined) device.dma.write(mapping.address, new Uint8Array(Number(mapping.size)).fill(0x5a));
    for (let i = 0; i < 4; i++) await device.dmaByMessage.write(lowest.address + BigInt(i * 1024), new Uint8Array(1024).fill(0x41 + i));
    for (let i = 0; i < 2; i++) await device.dmaByMessage.read(lowest.address + BigInt(i * 2048), new Uint8Array(2048));
    if (device.irqs.count('INTX') > 0) device.irqs.trigger('INTX');
    finished = true;
  };
  const timerRegister: RegionHandler = {
    read: (offset, into) => void into.set(bar0.subarray(offset, offset + into.length)),
    write: (offset, data) => {
      bar0.set(data, offset);
      if (armed) return;
      armed = true;
      setImmediate(() => void runTimer());
    },
  };
  device = new VfioUserDevice({
    pci: { identity: { vendorId: 0xdead, deviceId: 0xbeef, subsystemVendorId: 0xcafe, subsystemId: 0xbabe, classCode: 0 } },
    regions: {
      BAR0: { size: 8, handler: timerRegister, bar: { kind: 'io' } },
      BAR1: {
        size: bar1Size,
        mmap: {
          areas: [
            { offset: 0n, size: 0x1000n },
            { offset: 0x2000n, size: 0x1000n },
          ],
        },
        bar: { kind: 'io' },
      },
    },
    irqs: { INTX: { count: 1, maskable: false }, MSI: { count: 0, maskable: false }, MSIX: { count: 0, maskable: false }, ERR: 1, REQ: 1 },
    onDmaMap: (mapping) => mappings.push(mapping),
    onDmaUnmap: (mapping) => void mappings.splice(mappings.indexOf(mapping), 1),
  });
  return { device, done: () => finished || !armed };
}

/** samples/gpio-pci-idio-16: IDs 494f:0dc8, BAR2 a 256-byte register window, INTx, ERR, REQ. */
function gpioSample(): { device: VfioUserDevice; done: () => boolean } {
  const pins = new Uint8Array(256).fill(0xff);
  const device = new VfioUserDevice({
    pci: { identity: { vendorId: 0x494f, deviceId: 0x0dc8, classCode: 0 } },
    regions: {
      BAR2: {
        size: 256,
        bar: { kind: 'io' },
        handler: {
          read: bufferRegion(pins).read,
          write: () => void pins.fill(0),
        },
      },
    },
    irqs: { INTX: { count: 1, maskable: false }, MSI: { count: 0, maskable: false }, MSIX: { count: 0, maskable: false }, ERR: 1, REQ: 1 },
  });
  return { device, done: () => true };
}

/** samples/null: nothing but config space; ERR and REQ vectors. */
function nullSample(): { device: VfioUserDevice; done: () => boolean } {
  const device = new VfioUserDevice({
    pci: { identity: { vendorId: 0, deviceId: 0, classCode: 0, interruptPin: 0 } },
    irqs: { INTX: { count: 0, maskable: false }, MSI: { count: 0, maskable: false }, MSIX: { count: 0, maskable: false }, ERR: 1, REQ: 1 },
  });
  return { device, done: () => true };
}

interface CaptureSetup {
  readonly file: string;
  readonly make: () => { device: VfioUserDevice; done: () => boolean };
  /** The recorded server sent commands of its own on a trigger the mirror reproduces. */
  readonly serverCommands: boolean;
  /** Known and accepted differences, by command name: why ours differs from this recording. */
  readonly declared?: Readonly<Record<string, string>>;
}

const MIGRATION = 'migration (DEVICE_FEATURE, MIG_DATA_*) is not part of this server: it answers EINVAL';
const SETUPS: readonly CaptureSetup[] = [
  { file: 'probe-gpio.jsonl', make: gpioSample, serverCommands: false },
  {
    file: 'probe-null.jsonl',
    make: nullSample,
    serverCommands: false,
    declared: { DMA_UNMAP: 'the spec says the reply echoes the request; libvfio-user without a DMA controller sends none' },
  },
  { file: 'probe-server.jsonl', make: () => sampleServer(0x4000), serverCommands: false },
  { file: 'probetwin-server.jsonl', make: () => sampleServer(0x4000), serverCommands: true },
  { file: 'client-server.src.jsonl', make: () => sampleServer(0x4000), serverCommands: true },
  { file: 'old-client-server.src.jsonl', make: () => sampleServer(0x3000), serverCommands: true },
  // On the destination the sample's timer comes back with the migrated state, which we do not model.
  { file: 'client-server.dst.jsonl', make: () => sampleServer(0x4000), serverCommands: false },
  { file: 'old-client-server.dst.jsonl', make: () => sampleServer(0x3000), serverCommands: false },
];

// ---- replay -------------------------------------------------------------------------------------------------

interface Received {
  readonly bytes: Buffer;
  readonly fds: FileDescriptor[];
}

/** A raw client: sends recorded bytes, queues what the server sends per channel, replies apart from commands. */
class RawClient {
  readonly replies = new Map<string, Received[]>([
    ['main', []],
    ['twin', []],
  ]);
  readonly commands = new Map<string, Received[]>([
    ['main', []],
    ['twin', []],
  ]);
  readonly sockets = new Map<string, MessageSocket>();
  private readonly held: FileDescriptor[] = [];

  constructor(socket: MessageSocket) {
    this.attach('main', socket);
  }

  attach(channel: string, socket: MessageSocket): void {
    this.sockets.set(channel, socket);
    socket.on('message', (bytes, fds) => {
      const header = decodeHeader(bytes);
      const received = { bytes: Buffer.from(bytes), fds: fds.takeAll() };
      (isReply(header.flags) ? this.replies : this.commands).get(channel)!.push(received);
    });
  }

  send(channel: string, bytes: Uint8Array, fds: FileDescriptor[] = []): void {
    this.sockets.get(channel)!.send(bytes, fds);
  }

  async next(kind: 'reply' | 'command', channel: string, what: string): Promise<Received> {
    const queue = (kind === 'reply' ? this.replies : this.commands).get(channel)!;
    await waitFor(() => queue.length > 0, what);
    const received = queue.shift()!;
    this.held.push(...received.fds);
    return received;
  }

  close(): void {
    for (const socket of this.sockets.values()) socket.close();
    for (const queue of [...this.replies.values(), ...this.commands.values()]) for (const message of queue) this.held.push(...message.fds);
    for (const fd of this.held) fd.close();
  }
}

function decodeLoosely(bytes: Uint8Array, command?: VfioUserCommand): VfioUserMessage | VfioUserProtocolError {
  try {
    // A plain Uint8Array copy: decoded data from a Buffer would be a Buffer, which serialises differently.
    return decodeMessage(new Uint8Array(bytes), command === undefined ? {} : { command });
  } catch (error) {
    if (error instanceof VfioUserProtocolError) return error;
    throw error;
  }
}

function withMsgId(bytes: Uint8Array, msgId: number): Uint8Array {
  const copy = bytes.slice();
  writeField(HEADER_LAYOUT, copy, 'msgId', msgId);
  return copy;
}

function plainBody(message: VfioUserMessage | VfioUserProtocolError): unknown {
  return JSON.parse(
    JSON.stringify(message, (_key, value: unknown) =>
      typeof value === 'bigint' ? `0x${value.toString(16)}` : value instanceof Uint8Array ? Buffer.from(value).toString('hex') : value,
    ),
  );
}

interface Outcome {
  compared: number;
  serverCommands: number;
  declared: string[];
  differences: string[];
}

/** The header facts a reply's shape is made of. */
function headerShape(header: VfioUserHeader) {
  return { msgId: header.msgId, command: header.command, flags: header.flags, error: header.error };
}

/**
 * Compares one reply. Same header (command, REPLY and ERROR flags, errno) always; then per command what the shape
 * is: the whole body where it is protocol (region and IRQ info incl. argsz and capabilities, device info, unmap
 * echo, access headers), sizes where it is device data (region reads), version and limits for VERSION.
 */
function compareReply(name: string, recorded: Uint8Array, recordedFds: number, ours: Received, request: VfioUserCommand | undefined): string[] {
  const problems: string[] = [];
  const theirs = decodeHeader(recorded);
  const mine = decodeHeader(ours.bytes);
  if (JSON.stringify(headerShape(theirs)) !== JSON.stringify(headerShape(mine))) {
    problems.push(`${name}: header ${JSON.stringify(headerShape(mine))}, recorded ${JSON.stringify(headerShape(theirs))}`);
    return problems;
  }
  if (ours.fds.length !== recordedFds) problems.push(`${name}: ${ours.fds.length} fds, recorded ${recordedFds}`);
  if ((theirs.flags & HEADER_FLAGS.bits.ERROR) !== 0) return problems;
  const recordedMessage = decodeLoosely(recorded, request);
  const ourMessage = decodeLoosely(ours.bytes, request);
  if (ourMessage instanceof VfioUserProtocolError) return [...problems, `${name}: our reply does not decode: ${ourMessage.message}`];
  if (recordedMessage instanceof VfioUserProtocolError || recordedMessage.type !== 'reply' || ourMessage.type !== 'reply') return problems;
  const a = recordedMessage.body;
  const b = ourMessage.body;
  switch (b.command) {
    case 'VERSION': {
      const r = a as typeof b;
      if (r.major !== b.major || r.minor !== b.minor) problems.push(`${name}: version ${b.major}.${b.minor}, recorded ${r.major}.${r.minor}`);
      for (const key of ['maxMsgFds', 'maxDataXferSize'] as const) {
        if (r.capabilities[key] !== b.capabilities[key]) problems.push(`${name}: ${key} ${b.capabilities[key]}, recorded ${r.capabilities[key]}`);
      }
      if (Boolean(r.capabilities.twinSocket?.supported) !== Boolean(b.capabilities.twinSocket?.supported))
        problems.push(`${name}: twin socket offer differs`);
      break;
    }
    case 'REGION_READ': {
      const r = a as typeof b;
      if (r.offset !== b.offset || r.region !== b.region || r.data.length !== b.data.length || theirs.messageSize !== mine.messageSize) {
        problems.push(
          `${name}: read ${b.data.length} bytes of region ${b.region} at ${b.offset}, recorded ${r.data.length} of ${r.region} at ${r.offset}`,
        );
      }
      if (b.region === REGION_INDEXES.values.CONFIG && b.offset === 0n && b.data.length >= 0x30) {
        // The IDs must match; the rest of the header is device-specific (libvfio-user marks every non-memory BAR as I/O).
        for (const [at, width] of [
          [0, 4],
          [0x2c, 4],
        ] as const) {
          if (Buffer.compare(Buffer.from(r.data.subarray(at, at + width)), Buffer.from(b.data.subarray(at, at + width))) !== 0) {
            problems.push(`${name}: config bytes at 0x${at.toString(16)} differ`);
          }
        }
      }
      break;
    }
    default:
      if (theirs.messageSize !== mine.messageSize) problems.push(`${name}: msg_size ${mine.messageSize}, recorded ${theirs.messageSize}`);
      if (JSON.stringify(plainBody(recordedMessage)) !== JSON.stringify(plainBody(ourMessage))) {
        problems.push(`${name}: body ${JSON.stringify(plainBody(ourMessage))}, recorded ${JSON.stringify(plainBody(recordedMessage))}`);
      }
  }
  return problems;
}

/** Fds standing in for the recorded ones: the client's memory file for DMA_MAP, eventfds for SET_IRQS. */
function standIns(record: CaptureRecord, memory: SharedRegion): { fds: FileDescriptor[]; close: () => void } {
  if (record.nfds === 0) return { fds: [], close: () => undefined };
  if (record.cmd === COMMANDS.values.DMA_MAP) return { fds: [memory.fd], close: () => undefined };
  const eventFds = Array.from({ length: record.nfds }, () => EventFd.create());
  return { fds: eventFds.map((efd) => efd.fd), close: () => eventFds.forEach((efd) => efd.close()) };
}

async function replayAgainstServer(setup: CaptureSetup): Promise<Outcome> {
  const records = readCapture(setup.file);
  const { device, done } = setup.make();
  const socketPath = tempSocketPath('capture');
  const server = VfioUserServer.listen(socketPath, device);
  const client = new RawClient(MessageSocket.connect(socketPath));
  const memory = SharedRegion.create('capture-client-ram', 0x10000);
  const outcome: Outcome = { compared: 0, serverCommands: 0, declared: [], differences: [] };
  const requests = new Map<string, VfioUserCommand>();
  const ourServerIds = new Map<string, number>();
  const closers: (() => void)[] = [];
  try {
    for (let i = 0; i < records.length; i++) {
      const record = records[i]!;
      const key = `${record.chan}/${record.msg_id}/${record.cmd}`;
      const bytes = new Uint8Array(Buffer.from(record.hex, 'hex'));
      const name = `seq ${record.seq} ${record.cmd_name}`;
      if (record.dir === 'c2s' && !isReply(record.flags)) {
        const decoded = decodeLoosely(bytes);
        if (!(decoded instanceof VfioUserProtocolError) && decoded.type === 'command') requests.set(key, decoded.body);
        const fds = standIns(record, memory);
        closers.push(fds.close);
        client.send(record.chan, bytes, fds.fds);
        const answer = records
          .slice(i + 1)
          .find((r) => r.dir === 's2c' && isReply(r.flags) && r.chan === record.chan && r.msg_id === record.msg_id && r.cmd === record.cmd);
        assert.ok(answer, `${name}: no recorded reply`);
        const ours = await client.next('reply', record.chan, `our reply to ${name}`);
        if (MIGRATION_COMMANDS.has(record.cmd)) {
          const header = decodeHeader(ours.bytes);
          assert.ok((header.flags & HEADER_FLAGS.bits.ERROR) !== 0 && header.error === 22, `${name}: an unsupported command gets EINVAL`);
          outcome.declared.push(`${name}: ${MIGRATION}`);
          continue;
        }
        const problems = compareReply(name, Buffer.from(answer.hex, 'hex'), answer.nfds, ours, requests.get(key));
        const declared = setup.declared?.[COMMANDS.nameOf(record.cmd) ?? ''];
        if (problems.length > 0 && declared !== undefined) outcome.declared.push(`${name}: ${declared}`);
        else outcome.differences.push(...problems);
        if (record.cmd === COMMANDS.values.VERSION && ours.fds.length === 1) {
          client.attach('twin', new MessageSocket(ours.fds[0]!.dup()));
        }
        outcome.compared++;
      } else if (record.dir === 's2c' && !isReply(record.flags)) {
        if (!setup.serverCommands) continue;
        const ours = await client.next('command', record.chan, `our server's ${name} on ${record.chan}`);
        const theirs = decodeHeader(bytes);
        const mine = decodeHeader(ours.bytes);
        ourServerIds.set(key, mine.msgId);
        if (JSON.stringify(headerShape(theirs)) !== JSON.stringify(headerShape(mine)) || theirs.messageSize !== mine.messageSize) {
          outcome.differences.push(
            `${name}: our command header ${JSON.stringify({ ...headerShape(mine), size: mine.messageSize })}, recorded ${JSON.stringify({ ...headerShape(theirs), size: theirs.messageSize })}`,
          );
        } else if (JSON.stringify(plainBody(decodeLoosely(bytes))) !== JSON.stringify(plainBody(decodeLoosely(ours.bytes)))) {
          outcome.differences.push(`${name}: our command body differs from the recording`);
        }
        outcome.serverCommands++;
      } else if (record.dir === 'c2s' && isReply(record.flags)) {
        if (!setup.serverCommands) continue;
        const ourId = ourServerIds.get(key) ?? record.msg_id;
        client.send(record.chan, withMsgId(bytes, ourId));
      }
    }
    await waitFor(done, 'the mirrored device to finish its DMA');
    const leftover = [...client.commands.values()].flat().length;
    if (leftover > 0) outcome.differences.push(`our server sent ${leftover} commands the recording does not have`);
  } finally {
    client.close();
    for (const close of closers) close();
    await server.close();
    device.close();
    memory.close();
  }
  return outcome;
}

describe('captures: our server answers recorded client commands like the recorded server', function () {
  for (const setup of SETUPS) {
    it(`${setup.file}`, async () => {
      const fdsBefore = openFdCount();
      const outcome = await replayAgainstServer(setup);
      assert.deepEqual(outcome.differences, []);
      assert.ok(outcome.compared >= 8, `compared only ${outcome.compared} replies`);
      if (setup.serverCommands) assert.ok(outcome.serverCommands >= 6, `only ${outcome.serverCommands} server commands compared`);
      await waitFor(() => openFdCount() === fdsBefore, `fd count back to ${fdsBefore} (now ${openFdCount()})`);
    });
  }

  it('lists where ours differs on purpose, and nothing else', async () => {
    const declared = (await replayAgainstServer(SETUPS.find((setup) => setup.file === 'probe-null.jsonl')!)).declared;
    assert.deepEqual(declared, [
      'seq 48 VFIO_USER_DMA_UNMAP: the spec says the reply echoes the request; libvfio-user without a DMA controller sends none',
    ]);
  });
});
