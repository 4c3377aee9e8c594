/**
 * The differential harness checks every DMA absolutely, on each peer: broken scenarios on which QEMU 7.2 and viommu
 * agree value for value must still fail (before these checks, two peers on which no DMA happened agreed perfectly).
 */
import { strict as assert } from 'node:assert';
import { EDU_REGISTERS } from '../../lib/devices/edu';
import { DmaCheckError, EDU_BAR, EDU_SID, differential, outcome, playBoth, skipWithoutQemu, type OracleGuest } from './harness';

/** One domain for 00:04.0: IOVA 0x200000 -> 0x300000 and 0x201000 -> 0x301000, read-write, 0x202000 -> 0x302000 read-only. */
async function domain(guest: OracleGuest): Promise<void> {
  const root = guest.allocPage();
  const top = await guest.setContext(root, EDU_SID, { aw: 1, did: 3 });
  await guest.map(top, 3, 0x200000, 0x300000);
  await guest.map(top, 3, 0x201000, 0x301000);
  await guest.map(top, 3, 0x202000, 0x302000, { write: false });
  await guest.enableTranslation(root);
  await guest.fill(0x300000, 64, 5);
}

/** The good scenario: a copy through the domain, each transfer checked. */
async function copy(guest: OracleGuest): Promise<void> {
  await guest.enableEdu();
  await domain(guest);
  await guest.dma('to-device', 0x200000, 64, outcome.moved(0x300000));
  await guest.dma('to-ram', 0x201000, 64, outcome.moved(0x301000));
  await guest.observeFault('after the copy');
  guest.note('copied', await guest.peer.readBytes(0x301000, 64));
}

describe('differential harness: every DMA is checked on its own peer', function () {
  this.timeout(60_000);
  before(function () {
    skipWithoutQemu(this);
  });

  it('passes the good scenario', async () => {
    await differential(copy, { checkSpecMode: true });
  });

  it("fails when edu's BAR is never enabled, although QEMU and viommu then agree on every value", async () => {
    const noBar = async (guest: OracleGuest) => {
      await domain(guest);
      await guest.dma('to-device', 0x200000, 64, outcome.moved(0x300000));
      await guest.dma('to-ram', 0x201000, 64, outcome.moved(0x301000));
      await guest.observeFault('after the copy');
      guest.note('copied', await guest.peer.readBytes(0x301000, 64));
    };
    // What the harness did before: program the device and poll its run bit, compare what the peers read. With no
    // BAR the run bit reads 0 at once, nothing moves on either side, and the comparison passes.
    const unchecked = async (guest: OracleGuest) => {
      await domain(guest);
      for (const [register, value] of [
        [EDU_REGISTERS.dmaSource, 0x200000n],
        [EDU_REGISTERS.dmaDestination, 0x40000n],
        [EDU_REGISTERS.dmaCount, 64n],
        [EDU_REGISTERS.dmaCommand, 1n],
      ] as const) {
        await guest.peer.writeq(EDU_BAR + register, value);
      }
      guest.note('run bit', (await guest.peer.readq(EDU_BAR + EDU_REGISTERS.dmaCommand)) & 1n);
      guest.note('copied', await guest.peer.readBytes(0x301000, 64));
    };
    await differential(unchecked, { checkSpecMode: true });
    await assert.rejects(playBoth(noBar), (error: Error) => {
      assert.ok(error instanceof DmaCheckError, `${error.name}: ${error.message}`);
      assert.match(error.message, /^(qemu|viommu)\(/);
      assert.match(error.message, /does not answer .*is its BAR enabled/);
      return true;
    });
  });

  it('fails when the device writes to a wrong address (the data does not arrive where the scenario expects it)', async () => {
    const wrongAddress = async (guest: OracleGuest) => {
      await guest.enableEdu();
      await domain(guest);
      await guest.dma('to-device', 0x200000, 64, outcome.moved(0x300000));
      // Meant 0x201000; 0x200800 translates and takes the data, but elsewhere (0x300800) on both peers alike.
      await guest.dma('to-ram', 0x200800, 64, outcome.moved(0x301000));
    };
    await assert.rejects(playBoth(wrongAddress), /DmaCheckError: .*the data did not arrive at 0x301000/);
  });

  it('fails when an expected fault is not recorded, or an expected copy faults', async () => {
    const noFault = async (guest: OracleGuest) => {
      await guest.enableEdu();
      await domain(guest);
      await guest.dma('to-device', 0x201000, 16, outcome.fault());
    };
    await assert.rejects(playBoth(noFault), /expected a new fault record, but FSTS.PPF did not set/);
    const faults = async (guest: OracleGuest) => {
      await guest.enableEdu();
      await domain(guest);
      await guest.dma('to-device', 0x200000, 16, outcome.moved(0x300000));
      await guest.dma('to-ram', 0x202000, 16, outcome.moved(0x302000));
    };
    await assert.rejects(playBoth(faults), /expected the data to move, but a fault was recorded/);
  });

  it('fails when a load is never written out, since nothing then shows it moved anything', async () => {
    const unchecked = async (guest: OracleGuest) => {
      await guest.enableEdu();
      await domain(guest);
      await guest.dma('to-device', 0x200000, 64, outcome.moved(0x300000));
      await guest.observeFault('after the load');
    };
    await assert.rejects(playBoth(unchecked), /nothing wrote out .* what these loads moved/);
  });
});
