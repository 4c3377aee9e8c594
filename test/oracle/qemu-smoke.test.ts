/** Smoke test of the oracle harness: QEMU 7.2's VT-d identity registers and edu's PCI id, and the same script on our server. */
import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { playQtestScript, QtestClient, type QtestPeer } from '../../lib/vmm/qtest/client';
import { QtestServer } from '../../lib/vmm/qtest/server';
import { smokeMachine } from '../vmm/ram-machine';
import { measureConfiguration, measuredQwordOffsets, splitReadMismatches } from './measure-registers';
import { QemuQtest, qemuAvailability, ViommuQtest } from './qemu';

const DMAR_BASE = 0xfed90000;
const DEFAULT_CAP = 0x00d2008c22260206n;
const DEFAULT_ECAP = 0xf00f4an;

interface SmokeCase {
  props: string;
  cap: bigint;
  ecap: bigint;
}

const SMOKE_CASES: readonly SmokeCase[] = [
  { props: '', cap: DEFAULT_CAP, ecap: DEFAULT_ECAP },
  { props: 'aw-bits=48', cap: 0x00d2008c222f0606n, ecap: DEFAULT_ECAP },
  { props: 'x-scalable-mode=on', cap: DEFAULT_CAP, ecap: 0x480080f00f4an },
];

interface SmokeReadings {
  ver: bigint;
  cap: bigint;
  ecap: bigint;
  eduId: number;
}

/** The one script both peers run: typed calls, so it also exercises the QtestPeer methods end to end. */
async function readSmokeValues(peer: QtestPeer): Promise<SmokeReadings> {
  const ver = await peer.readq(DMAR_BASE + 0x00);
  const cap = await peer.readq(DMAR_BASE + 0x08);
  const ecap = await peer.readq(DMAR_BASE + 0x10);
  await peer.outl(0xcf8, 0x80002000);
  const eduId = await peer.inl(0xcfc);
  return { ver, cap, ecap, eduId };
}

/** Raw lines whose answers must be byte-identical between QEMU and our server (formats, FAIL and ERR included). */
const RAW_SCRIPT = [
  'endianness',
  'readq 0xfed90008',
  'readl 0xfed90000',
  'outl 0xcf8 0x80002000',
  'inl 0xcfc',
  'inw 0xcfc',
  'inb 0xcfc',
  'writeq 0x1000 0x1122334455667788',
  'read 0x1000 8',
  'b64read 0x1000 8',
  'b64read 0x1000 0',
  'write 0x1000 4 0x1',
  'readl 0x1000',
  'write 0x1000 2 0x',
  'b64write 0x2000 3 AQID',
  'read 0x2000 4',
  'memset 0x2000 2 0x1ff',
  'read 0x2000 4',
  'writel 0x3000 -1',
  'readq 0x3000',
  'readq 16 extra words',
  'clock_step',
  'bogus 1 2',
];

function inProcessPeer(): { peer: QtestClient; server: QtestServer } {
  const toServer = new PassThrough();
  const fromServer = new PassThrough();
  const server = new QtestServer(smokeMachine(), toServer, fromServer, { endOutputWhenInputEnds: true });
  return { peer: new QtestClient(fromServer, toServer, { name: 'in-process' }), server };
}

/** Our QtestServer in a child process, reached through ViommuQtest exactly as the real CLI will be. */
function startFakeViommu(props: string): Promise<ViommuQtest> {
  const script = path.join(__dirname, 'fake-qtest-child.js');
  return ViommuQtest.start({ iommuProps: props, command: { file: process.execPath, args: [script, '--iommu', props] } });
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('oracle harness: our QtestServer behind the QtestPeer interface', () => {
  const opened: QtestPeer[] = [];
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((peer) => peer.close()));
  });

  it('answers the smoke script in process, over a stream pair', async () => {
    const { peer, server } = inProcessPeer();
    opened.push(peer);
    assert.deepEqual(await readSmokeValues(peer), { ver: 0x10n, cap: DEFAULT_CAP, ecap: DEFAULT_ECAP, eduId: 0x11e81234 });
    await peer.close();
    await server.closed;
  });

  for (const smoke of SMOKE_CASES) {
    it(`answers the smoke script from a child process via ViommuQtest (${smoke.props || 'default'})`, async () => {
      const peer = await startFakeViommu(smoke.props);
      opened.push(peer);
      assert.deepEqual(await readSmokeValues(peer), { ver: 0x10n, cap: smoke.cap, ecap: smoke.ecap, eduId: 0x11e81234 });
      const pid = peer.pid as number;
      await peer.close();
      assert.equal(processExists(pid), false, 'the child is gone after close()');
    });
  }
});

describe('oracle harness: QEMU 7.2 intel-iommu through qtest', function () {
  this.timeout(60_000);
  const availability = qemuAvailability();
  const opened: QtestPeer[] = [];

  before(function () {
    if (!availability.available) {
      console.log(`      skipped: ${availability.reason}`);
      this.skip();
    }
  });

  afterEach(async () => {
    // Closing here, not in the test body, so that a failed assertion still leaves no QEMU behind.
    await Promise.all(opened.splice(0).map((peer) => peer.close()));
  });

  for (const smoke of SMOKE_CASES) {
    it(`reads VER, CAP, ECAP and edu's id (${smoke.props || 'default props'})`, async () => {
      const qemu = await QemuQtest.start({ iommuProps: smoke.props });
      opened.push(qemu);
      const fake = await startFakeViommu(smoke.props);
      opened.push(fake);
      const expected: SmokeReadings = { ver: 0x10n, cap: smoke.cap, ecap: smoke.ecap, eduId: 0x11e81234 };
      assert.deepEqual(await readSmokeValues(qemu), expected);
      assert.deepEqual(await readSmokeValues(fake), expected);
    });
  }

  it('gives byte-identical answers from QEMU and from our server for the raw script', async () => {
    const qemu = await QemuQtest.start();
    opened.push(qemu);
    const { peer } = inProcessPeer();
    opened.push(peer);
    const fromQemu = await playQtestScript(qemu, RAW_SCRIPT);
    const fromOurs = await playQtestScript(peer, RAW_SCRIPT);
    const table = RAW_SCRIPT.map((line, i) => `${line} -> ${fromQemu[i]} | ${fromOurs[i]}`).join('\n');
    assert.deepEqual(fromOurs, fromQemu, table);
    assert.equal(fromQemu[1], 'OK 0x00d2008c22260206');
    assert.equal(fromQemu[4], 'OK 0x11e81234');
    assert.equal(fromQemu[5], 'OK 0x1234');
    assert.equal(fromQemu[6], 'OK 0x0034');
    assert.equal(fromQemu[10], 'OK ');
    assert.equal(fromQemu[13], 'ERR invalid argument size');
    assert.equal(fromQemu[21], "FAIL Unknown command 'clock_step'");
  });

  it('reproduces the default reset values recorded in docs/qemu-7.2-measurements.md', async () => {
    const measured = await measureConfiguration({ label: 'default', options: {} });
    const nonZero = new Map<number, bigint>([
      [0x00, 0x10n],
      [0x08, DEFAULT_CAP],
      [0x10, DEFAULT_ECAP],
      [0x38, 0x80000000n],
      [0xa0, 0x80000000n],
    ]);
    for (const offset of measuredQwordOffsets()) {
      assert.equal(measured.qwords.get(offset), nonZero.get(offset) ?? 0n, `readq at 0x${offset.toString(16)}`);
    }
    assert.deepEqual(splitReadMismatches(measured), []);
  });

  it('leaves no QEMU process behind after close()', async () => {
    const qemu = await QemuQtest.start();
    const pid = qemu.pid as number;
    assert.equal(processExists(pid), true);
    await qemu.close();
    assert.equal(processExists(pid), false);
    await assert.rejects(qemu.readq(DMAR_BASE), /closed/);
  });

  it('reports a start-up failure with the command line and QEMU own message', async () => {
    await assert.rejects(QemuQtest.start({ iommuProps: 'no-such-property=1' }), (error: Error) => {
      assert.match(error.message, /failed to start/);
      assert.match(error.message, /-device intel-iommu,no-such-property=1/);
      assert.match(error.message, /Property 'intel-iommu.no-such-property' not found/);
      return true;
    });
  });

  it('reports a missing binary clearly', async () => {
    await assert.rejects(QemuQtest.start({ binary: '/nonexistent/qemu-system-x86_64' }), /could not be started|No such file|ENOENT/);
  });
});
