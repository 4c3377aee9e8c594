/**
 * `viommu serve` under a low RLIMIT_NOFILE: a client sending one fd per DMA_MAP is refused with EMFILE before the
 * server runs out, the server keeps serving, and a client connecting meanwhile costs no spinning and no log flood.
 */

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { constants } from 'node:os';
import { EDU_IDENTIFICATION } from '../../../lib/devices/edu';
import { native, type FdUsage, type FileDescriptor } from '../../../lib/native';
import { MessageSocket } from '../../../lib/os';
import { DEFAULT_FD_HEADROOM, VfioUserConnection, type ConnectionOptions } from '../../../lib/vfio-user/connection';
import { EMFILE, VfioUserRemoteError } from '../../../lib/vfio-user/connection-errors';
import { negotiateVersion } from '../../../lib/vfio-user/negotiation';
import { InMemoryTransport } from '../../../lib/vfio-user/transport';
import { openFdCount, tick, waitFor } from '../../helpers';
import { ServeProcess } from '../cli-process';
import { BAR0, Cleanup, connect, dmaMapBody, readU32 } from './harness';

/** Node starts with about 20 fds open, so the server has room for a client and some maps, but not many. */
const FD_LIMIT = 64;
const PAGE = 0x1000n;
/** Over one quiet second an idle server uses a few milliseconds of CPU; a spinning one uses the whole second. */
const MEASURE_MS = 1000;
const MAX_CPU_MS = 250;
const MAX_NEW_LOG_LINES = 4;

const clockTicksPerSecond = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function openFds(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** User plus system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat, after the command name). */
function cpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicksPerSecond;
}

function lines(text: string): number {
  return text.split('\n').filter((line) => line.length > 0).length;
}

describe('viommu serve at its fd limit', function () {
  this.timeout(20000);
  const cleanup = new Cleanup();
  afterEach(() => cleanup.run());

  it('refuses DMA_MAP fds with EMFILE while headroom is left, keeps serving, and takes the next client without spinning', async () => {
    const served = await ServeProcess.start('dma-engine', [], { maxOpenFiles: FD_LIMIT });
    cleanup.add(() => served.kill());
    const pid = served.child.pid!;
    const first = await connect(cleanup, served.socketPath);
    const memory: FileDescriptor = native.memfdCreate('dma-map-fd', Number(PAGE));
    cleanup.add(() => memory.close());

    let refused: VfioUserRemoteError | undefined;
    let mapped = 0;
    while (refused === undefined && openFds(pid) < FD_LIMIT) {
      try {
        // A fresh file each time: the server keeps one fd per backing file, so the same memfd again costs nothing.
        const fresh = native.memfdCreate(`dma-map-fd-${mapped}`, Number(PAGE));
        try {
          await first.request('DMA_MAP', dmaMapBody(BigInt(mapped) * PAGE, PAGE), { fds: [fresh] });
        } finally {
          fresh.close();
        }
        mapped++;
      } catch (error) {
        if (!(error instanceof VfioUserRemoteError)) throw error;
        refused = error;
      }
    }

    // Several, so that some are still pending when the server has no fd left for them.
    const second = await connect(cleanup, served.socketPath, { negotiate: false });
    const others = Array.from({ length: 2 }, () => MessageSocket.connect(served.socketPath));
    cleanup.add(() => others.forEach((socket) => socket.close()));
    const logBefore = served.stderr;
    const cpuBefore = cpuMs(pid);
    await tick(MEASURE_MS);
    const cpuUsed = cpuMs(pid) - cpuBefore;
    const newLog = served.stderr.slice(logBefore.length);
    assert.ok(cpuUsed < MAX_CPU_MS, `the server used ${cpuUsed} ms of CPU in ${MEASURE_MS} ms with a client pending (${openFds(pid)} fds open)`);
    assert.ok(lines(newLog) <= MAX_NEW_LOG_LINES, `${lines(newLog)} log lines in ${MEASURE_MS} ms, starting: ${newLog.slice(0, 400)}`);

    assert.ok(refused, `every DMA_MAP fd was accepted (${mapped} of them) until the server had all ${FD_LIMIT} fds open`);
    assert.equal(refused.errno, constants.errno.EMFILE, `refused with errno ${refused.errno}`);
    assert.ok(mapped > 0, 'fds are accepted while there is headroom');
    assert.ok(openFds(pid) < FD_LIMIT, 'the server kept headroom');

    // Only fds are short: the same client is still served, and a map without an fd is still taken.
    assert.equal(await readU32(first, BAR0, 0), EDU_IDENTIFICATION);
    await first.request('DMA_MAP', dmaMapBody(0x100000n, PAGE));
    await waitFor(() => served.stderr.includes('client 4 waits for its turn'), `the other clients to be accepted (stderr: ${served.stderr})`);

    // The first client's fds go with it, and the next client's fds are taken again.
    first.close();
    await negotiateVersion(second);
    assert.equal(await readU32(second, BAR0, 0), EDU_IDENTIFICATION);
    await second.request('DMA_MAP', dmaMapBody(0n, PAGE), { fds: [memory] });
    second.close();
    for (const socket of others) socket.close();
    const [code] = await served.stop();
    assert.equal(code, 0, served.stderr);
  });
});

describe('the fd headroom a connection keeps', () => {
  const cleanup = new Cleanup();
  afterEach(() => cleanup.run());

  /** A server-role connection whose process appears to have `free` fds left, and a client talking to it. */
  function pair(free: number, options: Partial<ConnectionOptions> = {}) {
    const [clientSide, serverSide] = InMemoryTransport.pair();
    const limit = 1024;
    const usage: FdUsage = { open: limit - free, limit };
    const server = new VfioUserConnection(serverSide, { role: 'server', fdUsage: () => usage, ...options });
    const client = new VfioUserConnection(clientSide, { role: 'client', requestTimeoutMs: 5000 });
    cleanup.add(() => client.close());
    cleanup.add(() => server.close());
    const kept: FileDescriptor[] = [];
    cleanup.add(() => kept.forEach((fd) => fd.close()));
    server.onCommand('DMA_MAP', (_body, fds) => {
      if (fds.count > 0) kept.push(fds.take(0));
      return {};
    });
    const memory = native.memfdCreate('headroom', 4096);
    cleanup.add(() => memory.close());
    return { client, kept, memory };
  }

  it('refuses a command whose fds would leave fewer than the headroom free with EMFILE, and closes those fds', async () => {
    const { client, kept, memory } = pair(DEFAULT_FD_HEADROOM - 1);
    const before = openFdCount();
    await assert.rejects(client.request('DMA_MAP', dmaMapBody(0n, PAGE), { fds: [memory] }), (error: unknown) => {
      assert.ok(error instanceof VfioUserRemoteError);
      assert.equal(error.errno, EMFILE);
      return true;
    });
    assert.equal(kept.length, 0, 'the handler never saw the command');
    await waitFor(() => openFdCount() === before, 'the refused fd to be closed');
    await client.request('DMA_MAP', dmaMapBody(0x1000n, PAGE));
  });

  it('takes fds while the headroom is left, and never checks with a headroom of 0', async () => {
    const roomy = pair(DEFAULT_FD_HEADROOM);
    await roomy.client.request('DMA_MAP', dmaMapBody(0n, PAGE), { fds: [roomy.memory] });
    assert.equal(roomy.kept.length, 1);
    const unchecked = pair(0, { fdHeadroom: 0 });
    await unchecked.client.request('DMA_MAP', dmaMapBody(0n, PAGE), { fds: [unchecked.memory] });
    assert.equal(unchecked.kept.length, 1);
  });
});
