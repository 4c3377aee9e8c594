/** `viommu qtest --device-socket`: the legacy DMA oracle scenario against a `viommu serve` process, compared with the in-process edu. */
import { strict as assert } from 'node:assert';
import type { QtestPeer } from '../../lib/vmm/qtest/client';
import { ViommuQtest } from '../oracle/qemu';
import { ServeProcess } from '../vfio-user/cli-process';
import { waitFor } from '../helpers';
import { DMAR, EDU, eduDma, enableEdu, hex, programUnit } from '../oracle/legacy-dma-scenario';

// The essentials of test/oracle/differential-legacy-dma.test.ts: one 3-level domain for 00:04.0 with a read-write
// and a read-only page, DMA through both, a write fault, a read of an unmapped IOVA.
const DATA = 'data the device reads through the IOMMU, 64 bytes long.........';

async function scenario(peer: QtestPeer): Promise<Array<[string, string]>> {
  const seen: Array<[string, string]> = [];
  const note = (name: string, value: bigint | number | string) => seen.push([name, typeof value === 'string' ? value : `0x${value.toString(16)}`]);
  note('ids', await (async () => (await peer.outl(0xcf8, 0x80002000), peer.inl(0xcfc)))());
  await enableEdu(peer);
  await programUnit(peer);
  note('GSTS', await peer.readl(DMAR + 0x1c));
  note('edu identification', await peer.readl(EDU));
  await peer.writeBytes(0x300000, Buffer.from(DATA));
  await eduDma(peer, 0x200000n, 0x40000n, 64n, false);
  await eduDma(peer, 0x40000n, 0x200800n, 64n, true);
  note('copied through a read-write page', hex(await peer.readBytes(0x300800, 64)));
  note('FSTS after good DMA', await peer.readl(DMAR + 0x34));
  await eduDma(peer, 0x40000n, 0x201000n, 16n, true);
  note('read-only page untouched', hex(await peer.readBytes(0x301000, 16)));
  note('FSTS after write fault', await peer.readl(DMAR + 0x34));
  note('FRCD lo', await peer.readq(DMAR + 0x220));
  note('FRCD hi', await peer.readq(DMAR + 0x228));
  await peer.writel(DMAR + 0x22c, 0x80000000);
  note('FSTS after clearing F', await peer.readl(DMAR + 0x34));
  await eduDma(peer, 0x400000n, 0x40000n, 16n, false);
  note('FSTS after a read of an unmapped IOVA', await peer.readl(DMAR + 0x34));
  note('FRCD hi (read fault)', await peer.readq(DMAR + 0x228));
  return seen;
}

describe('cli: viommu qtest --device-socket drives a viommu serve process in place of the in-process edu', function () {
  this.timeout(60_000);

  it("gives the in-process edu's answers for the legacy DMA scenario, faults included", async () => {
    const server = await ServeProcess.start('dma-engine');
    let remote: ViommuQtest | undefined;
    let local: ViommuQtest | undefined;
    try {
      remote = await ViommuQtest.start({ iommuProps: 'compat=qemu-7.2', extraArgs: ['--device-socket', server.socketPath] });
      local = await ViommuQtest.start({ iommuProps: 'compat=qemu-7.2' });
      const expected = await scenario(local);
      const actual = await scenario(remote);
      assert.deepEqual(actual, expected);
      // The scenario is not vacuous: data moved, and both faults were recorded for 00:04.0.
      const byName = new Map(expected);
      assert.equal(
        byName.get('copied through a read-write page'),
        Buffer.concat([Buffer.from(DATA), Buffer.alloc(64 - DATA.length)]).toString('hex'),
      );
      assert.equal(byName.get('FSTS after write fault'), '0x2');
      assert.equal(BigInt(byName.get('FRCD hi')!) & 0xffffn, 0x20n);
      assert.equal(BigInt(byName.get('FSTS after a read of an unmapped IOVA')!) & 2n, 2n);
      // The server process saw the unit's refusals as errnos: EPERM for the permission fault, EFAULT for nothing mapped.
      await waitFor(
        () =>
          /DMA of 16 bytes from 0x40000 to 0x201000 failed: .*\(errno 1\)/.test(server.stderr) &&
          /DMA of 16 bytes from 0x400000 to 0x40000 failed: .*\(errno 14\)/.test(server.stderr),
        `the server's log of the refused DMAs (stderr: ${server.stderr})`,
      );
    } finally {
      await remote?.close();
      await local?.close();
      await server.stop();
      server.kill();
    }
  });

  it('refuses a socket nobody serves, saying which option is wrong', async () => {
    await assert.rejects(
      ViommuQtest.start({ extraArgs: ['--device-socket', '/nonexistent/viommu.sock'], startTimeoutMs: 10000 }),
      /--device-socket \/nonexistent\/viommu.sock: connect .*ENOENT/,
    );
  });
});
