/** DMA_MAP fds the client can shrink: refused by default; when allowed, a truncation fails device DMA, never the server. */

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { EduDmaOutcome } from '../../../lib/devices/edu';
import { DmaFault, EFAULT } from '../../../lib/memory';
import { native, type FileDescriptor } from '../../../lib/native';
import { VfioUserRemoteError } from '../../../lib/vfio-user/connection-errors';
import { ERRNO } from '../../../lib/errno';
import { createDmaEngine } from '../../../lib/vfio-user/server/dma-engine';
import type { VfioUserServerOptions } from '../../../lib/vfio-user/server/server';
import { waitFor } from '../../helpers';
import { ServeProcess } from '../cli-process';
import { BAR0, cleanupAfterEachTest, connect, dmaMapBody, readU32, serve, startEduDma, waitForEduIdle } from './harness';

const FILE_SIZE = 0x4000;
const IOVA = 0x100000n;
const EDU_BUFFER = 0x40000n;
const EDU_IDENTIFICATION = 0x010000ed;

/**
 * A file nobody can seal, opened read-write and already unlinked: on tmpfs (/dev/shm) it behaves as an unsealed
 * memfd would (a truncation under a shared mapping makes later accesses raise SIGBUS); elsewhere it is a plain file.
 */
function unsealedFile(cleanup: { add(step: () => unknown): void }, where: 'shm' | 'tmp', size = FILE_SIZE): FileDescriptor {
  const directory = where === 'shm' && fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const file = path.join(directory, `viommu-unsealed-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const fd = native.adoptFd(fs.openSync(file, 'w+'));
  fs.unlinkSync(file);
  cleanup.add(() => fd.close());
  fs.ftruncateSync(fd.fd, size);
  return fd;
}

function fill(fd: FileDescriptor, byte: number, size = FILE_SIZE): void {
  fs.writeSync(fd.fd, new Uint8Array(size).fill(byte), 0, size, 0);
}

function errnoOf(error: unknown): number | undefined {
  return error instanceof VfioUserRemoteError ? error.errno : undefined;
}

function isFault(errno: number): (error: unknown) => boolean {
  return (error: unknown) => error instanceof DmaFault && error.errno === errno;
}

describe('vfio-user server: DMA fds not sealed against shrinking', () => {
  const cleanup = cleanupAfterEachTest();

  function serveEngine(options: VfioUserServerOptions = {}) {
    const outcomes: EduDmaOutcome[] = [];
    const engine = createDmaEngine({ onDma: (outcome) => outcomes.push(outcome) });
    return { ...serve(cleanup, engine.device, options), engine, outcomes };
  }

  describe('by default', () => {
    it('refuses unsealed files on tmpfs and plain files with EPERM, and still maps a sealed memfd', async () => {
      const served = serveEngine();
      const c = await connect(cleanup, served.path);
      for (const where of ['shm', 'tmp'] as const) {
        const file = unsealedFile(cleanup, where);
        const answer = await c.request('DMA_MAP', dmaMapBody(IOVA, BigInt(FILE_SIZE)), { fds: [file] }).then(() => 'accepted', errnoOf);
        assert.equal(answer, ERRNO.EPERM, `an unsealed file in ${where}`);
      }
      assert.equal(served.server.session?.dmaMaps.size, 0);
      const sealed = native.memfdCreate('sealed-ram', FILE_SIZE);
      cleanup.add(() => sealed.close());
      await c.request('DMA_MAP', dmaMapBody(IOVA, BigInt(FILE_SIZE)), { fds: [sealed] });
      assert.equal(served.server.session?.dmaMaps.size, 1);
    });

    it('keeps `viommu serve` alive when a client truncates the unsealed file it offered, then starts DMA', async function () {
      this.timeout(30000);
      const server = await ServeProcess.start('dma-engine');
      cleanup.add(() => server.kill());
      const c = await connect(cleanup, server.socketPath);
      const file = unsealedFile(cleanup, 'shm');
      fill(file, 0x5a);
      const answer = await c.request('DMA_MAP', dmaMapBody(IOVA, BigInt(FILE_SIZE)), { fds: [file] }).then(() => 'accepted', errnoOf);
      fs.ftruncateSync(file.fd, 0);
      try {
        await startEduDma(c, { source: IOVA + 0x2000n, destination: EDU_BUFFER, count: 64, toRam: false });
        await waitForEduIdle(c);
      } catch {
        // A dead server fails these requests; the checks below say why.
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(server.child.signalCode, null, `viommu serve was killed by ${server.child.signalCode} (stderr: ${server.stderr})`);
      assert.equal(server.child.exitCode, null, `viommu serve exited (stderr: ${server.stderr})`);
      assert.equal(answer, ERRNO.EPERM, 'the unsealed fd is refused');
      assert.equal(await readU32(c, BAR0, 0), EDU_IDENTIFICATION);
      assert.deepEqual(await server.stop(), [0, null], server.stderr);
    });
  });

  describe('with allowUnsealedDmaFds', () => {
    it('reaches the file by pread/pwrite (no mapping), and fails DMA past a truncation with EFAULT', async () => {
      const served = serveEngine({ allowUnsealedDmaFds: true });
      const warnings: string[] = [];
      served.server.on('warning', (_client, message) => warnings.push(message));
      const c = await connect(cleanup, served.path);
      const file = unsealedFile(cleanup, 'shm');
      fill(file, 0x5a);
      await c.request('DMA_MAP', dmaMapBody(IOVA, BigInt(FILE_SIZE)), { fds: [file] });
      const mapping = served.server.session!.dmaMaps.lookup(IOVA)!;
      assert.equal(mapping.sealed, false);
      assert.equal(mapping.memory, undefined, 'an unsealed fd is never mapped into the server');
      await waitFor(() => warnings.length === 1, 'the unsealed-fd warning');
      assert.match(warnings[0]!, /not sealed against shrinking/);

      const dma = served.device.dma;
      const read = new Uint8Array(16);
      await dma.read(IOVA + 0x3ff0n, read);
      assert.deepEqual(read, new Uint8Array(16).fill(0x5a));
      await dma.write(IOVA + 0x10n, Uint8Array.of(1, 2, 3));
      const back = Buffer.alloc(3);
      fs.readSync(file.fd, back, 0, 3, 0x10);
      assert.deepEqual([...back], [1, 2, 3]);

      fs.ftruncateSync(file.fd, 0x1000);
      const untouched = new Uint8Array(32).fill(0xcc);
      assert.throws(() => dma.read(IOVA + 0xff0n, untouched), isFault(EFAULT));
      assert.deepEqual(untouched, new Uint8Array(32).fill(0xcc), 'a failed read moves nothing');
      assert.throws(() => dma.write(IOVA + 0x2000n, Uint8Array.of(9)), isFault(EFAULT));
      assert.equal(fs.fstatSync(file.fd).size, 0x1000, 'a failed write does not grow the file back');
      const head = new Uint8Array(0x20);
      await dma.read(IOVA, head);
      assert.deepEqual(head.subarray(0x10, 0x13), Uint8Array.of(1, 2, 3), 'what is left of the file is still reached');
    });

    it('lets the dma-engine fail the transfer cleanly and keeps serving', async () => {
      const served = serveEngine({ allowUnsealedDmaFds: true });
      const c = await connect(cleanup, served.path);
      const file = unsealedFile(cleanup, 'tmp');
      fill(file, 0x77);
      await c.request('DMA_MAP', dmaMapBody(IOVA, BigInt(FILE_SIZE)), { fds: [file] });
      fs.ftruncateSync(file.fd, 0);
      await startEduDma(c, { source: IOVA, destination: EDU_BUFFER, count: 64, toRam: false });
      await waitForEduIdle(c);
      await startEduDma(c, { source: EDU_BUFFER, destination: IOVA + 0x100n, count: 64, toRam: true });
      await waitForEduIdle(c);
      assert.equal(served.outcomes.length, 2);
      for (const outcome of served.outcomes) assert.ok(outcome.error instanceof DmaFault && outcome.error.errno === EFAULT, String(outcome.error));
      assert.equal(fs.fstatSync(file.fd).size, 0);
      await c.request('DMA_UNMAP', { argsz: 24, flags: 0, address: IOVA, size: BigInt(FILE_SIZE) });
      assert.equal(await readU32(c, BAR0, 0), EDU_IDENTIFICATION);
    });

    it('keeps `viommu serve --allow-unsealed-dma-fds` alive across a truncation and serves the next client', async function () {
      this.timeout(30000);
      const server = await ServeProcess.start('dma-engine', ['--allow-unsealed-dma-fds']);
      cleanup.add(() => server.kill());
      const c = await connect(cleanup, server.socketPath);
      const file = unsealedFile(cleanup, 'shm');
      fill(file, 0x5a);
      await c.request('DMA_MAP', dmaMapBody(IOVA, BigInt(FILE_SIZE)), { fds: [file] });
      await startEduDma(c, { source: IOVA + 0x3000n, destination: EDU_BUFFER, count: 64, toRam: false });
      await waitForEduIdle(c);
      await startEduDma(c, { source: EDU_BUFFER, destination: IOVA, count: 64, toRam: true });
      await waitForEduIdle(c);
      fs.ftruncateSync(file.fd, 0x1000);
      await startEduDma(c, { source: IOVA + 0x3000n, destination: EDU_BUFFER, count: 64, toRam: false });
      await waitForEduIdle(c);
      await waitFor(() => /failed: .*\(errno 14\)/.test(server.stderr), 'the failed DMA in the log');
      const head = Buffer.alloc(64);
      fs.readSync(file.fd, head, 0, 64, 0);
      assert.deepEqual([...head], new Array(64).fill(0x5a), 'the transfer before the truncation went through');
      assert.match(server.stderr, /not sealed against shrinking/);
      c.close();
      const next = await connect(cleanup, server.socketPath);
      assert.equal(await readU32(next, BAR0, 0), EDU_IDENTIFICATION);
      assert.equal(server.child.signalCode, null, server.stderr);
      assert.deepEqual(await server.stop(), [0, null], server.stderr);
    });
  });
});
