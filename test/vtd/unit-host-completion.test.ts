/**
 * VtdUnit completions held for host backends: register writes return at once; a wait descriptor, CCMD.ICC,
 * IOTLB.IVT, GSTS.RTPS and TES report completion only once the host side has followed; a backend that throws
 * neither stops a queue halfway nor reaches the guest.
 */
import { strict as assert } from 'node:assert';
import { encodeBig } from '../../lib/vtd/bitfield';
import { GCMD, GSTS, OFFSET } from '../../lib/vtd/register-bits';
import { CCMD_FIELDS, IOTLB_FIELDS } from '../../lib/vtd/registers';
import { descriptor, SID, TestGuest } from './unit-guest';

/** A host backend's outstanding work, released when the test says. */
class HostWork {
  private release: (() => void) | undefined;
  private promise: Promise<void> | undefined;

  begin(): void {
    this.promise = new Promise((resolve) => (this.release = resolve));
  }

  /** Finishes the work; the unit's held completions land on the next microtasks. */
  async finish(): Promise<void> {
    const promise = this.promise;
    this.promise = undefined;
    this.release?.();
    await promise;
    await new Promise((resolve) => setImmediate(resolve));
  }

  readonly pending = (): Promise<void> | undefined => this.promise;
}

function guestWithHost(): { guest: TestGuest; host: HostWork } {
  const guest = new TestGuest();
  const host = new HostWork();
  guest.unit.holdCompletionsWhile(host.pending);
  return { guest, host };
}

describe('VtdUnit completions held for host backends', () => {
  it('holds a wait descriptor (IQH on it, no status write) until the host side settles, then completes it', async () => {
    const { guest, host } = guestWithHost();
    guest.setupQueue();
    const status = guest.allocPage();
    host.begin();
    guest.submit([descriptor.iotlbGlobal(), descriptor.wait({ sw: true, data: 0x1234, address: status })], 0);
    assert.equal(guest.read64(OFFSET.IQH), 0x10n, 'the IOTLB descriptor ran; the wait descriptor waits');
    assert.equal(guest.memory.readU32(status), 0, 'no status yet');
    // More descriptors queued meanwhile wait behind it.
    guest.submit([descriptor.wait({ sw: true, data: 0x5678, address: status + 4 })], 2);
    assert.equal(guest.read64(OFFSET.IQH), 0x10n);
    await host.finish();
    assert.equal(guest.memory.readU32(status), 0x1234);
    assert.equal(guest.memory.readU32(status + 4), 0x5678);
    assert.equal(guest.read64(OFFSET.IQH), 0x30n);
    assert.equal(guest.read32(OFFSET.FSTS), 0, 'no IQE');
  });

  it('keeps CCMD.ICC and IOTLB.IVT set until the host side settles', async () => {
    const { guest, host } = guestWithHost();
    host.begin();
    guest.unit.write(OFFSET.CCMD, 8, encodeBig(CCMD_FIELDS, { ICC: 1, CIRG: 1 }));
    assert.equal(guest.read64(OFFSET.CCMD) >> 63n, 1n, 'ICC still set');
    await host.finish();
    assert.equal(guest.read64(OFFSET.CCMD) >> 63n, 0n);
    host.begin();
    guest.unit.write(OFFSET.IOTLB, 8, encodeBig(IOTLB_FIELDS, { IVT: 1, IIRG: 1 }));
    assert.equal(guest.read64(OFFSET.IOTLB) >> 63n, 1n, 'IVT still set');
    await host.finish();
    assert.equal(guest.read64(OFFSET.IOTLB) >> 63n, 0n);
  });

  it('shows RTPS and TES once the host side has followed the move, with the latest TE', async () => {
    const { guest, host } = guestWithHost();
    guest.setContext(SID);
    host.begin();
    guest.setRootTable();
    assert.equal(guest.read32(OFFSET.GSTS) & GSTS.RTPS, 0);
    guest.unit.write(OFFSET.GCMD, 4, GCMD.TE);
    assert.equal(guest.read32(OFFSET.GSTS) & GSTS.TES, 0);
    await host.finish();
    assert.equal(guest.read32(OFFSET.GSTS) & (GSTS.RTPS | GSTS.TES), GSTS.RTPS | GSTS.TES);
    // Translation is on from the write itself: only the report waits.
    guest.map(SID, 0x1000, 0x300000);
    assert.ok(guest.translate(0x1000).ok);
  });

  it('drops completions held from before a reset', async () => {
    const { guest, host } = guestWithHost();
    host.begin();
    guest.unit.write(OFFSET.CCMD, 8, encodeBig(CCMD_FIELDS, { ICC: 1, CIRG: 1 }));
    guest.unit.reset();
    guest.unit.write(OFFSET.CCMD, 8, 0n);
    await host.finish();
    assert.equal(guest.read64(OFFSET.CCMD), 0n, 'the held completion did not land after the reset');
  });

  it('completes at once when no host work is outstanding', () => {
    const { guest } = guestWithHost();
    guest.setupQueue();
    const status = guest.allocPage();
    guest.submit([descriptor.wait({ sw: true, data: 7, address: status })], 0);
    assert.equal(guest.memory.readU32(status), 7);
  });

  it('runs a queue to its end when a domain listener throws, and keeps the error for the VMM', () => {
    const guest = new TestGuest();
    guest.setContext(SID);
    guest.map(SID, 0x1000, 0x300000);
    guest.enable();
    const stop = guest.unit.watchDevice(SID, {
      domainChanged: (domain) => {
        domain?.listen({
          mappingsChanged: () => {
            throw new RangeError('Maximum call stack size exceeded');
          },
        });
      },
    });
    guest.setupQueue();
    const status = guest.allocPage();
    guest.submit([descriptor.iotlbGlobal(), descriptor.iotlbGlobal(), descriptor.wait({ sw: true, data: 9, address: status })], 0);
    assert.equal(guest.read64(OFFSET.IQH), 0x30n, 'every descriptor ran');
    assert.equal(guest.memory.readU32(status), 9);
    assert.equal(guest.read32(OFFSET.FSTS), 0, 'no IQE: the guest did nothing wrong');
    assert.equal(guest.unit.hostErrors.length, 2);
    assert.match(guest.unit.hostErrors[0]!.message, /Maximum call stack/);
    stop();
  });
});
