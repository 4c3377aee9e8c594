/** The probe's decoder reads what the server's PciConfigSpace builds: one set of tables on both sides. */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PciConfigSpace, type PciBarDefinition, type PciCapabilityDefinition } from '../../../lib/devices/pci-config-space';
import { PCI_CAPABILITY_IDS } from '../../../lib/devices/pci-layout';
import { describePciConfig } from '../../../lib/vfio-user/client/pci-config';

const identity = { vendorId: 0x1b36, deviceId: 0x0010, classCode: 0x010802, revision: 2 };

const barArbitrary: fc.Arbitrary<PciBarDefinition> = fc.oneof(
  fc.record({ size: fc.integer({ min: 4, max: 31 }).map((log2) => 2 ** log2), kind: fc.constant('mem32' as const), prefetchable: fc.boolean() }),
  fc.record({
    size: fc.integer({ min: 4, max: 40 }).map((log2) => 1n << BigInt(log2)),
    kind: fc.constant('mem64' as const),
    prefetchable: fc.boolean(),
  }),
  fc.record({ size: fc.integer({ min: 2, max: 8 }).map((log2) => 2 ** log2), kind: fc.constant('io' as const) }),
);

/** BAR0..BAR5 with the slot after a 64-bit BAR left empty. */
const barsArbitrary = fc.array(fc.option(barArbitrary, { nil: undefined }), { minLength: 1, maxLength: 6 }).map((bars) => {
  const laidOut: (PciBarDefinition | undefined)[] = [];
  for (const bar of bars) {
    if (laidOut.length >= 6) break;
    const last = laidOut.length === 5;
    laidOut.push(bar?.kind === 'mem64' && last ? undefined : bar);
    if (bar?.kind === 'mem64' && !last) laidOut.push(undefined);
  }
  return laidOut.slice(0, 6);
});

describe('describePciConfig on a PciConfigSpace', () => {
  it('finds every BAR with its kind, width and address, and every capability with its details (property)', () => {
    fc.assert(
      fc.property(
        barsArbitrary,
        fc.boolean(),
        fc.boolean(),
        fc.integer({ min: 0, max: 5 }),
        fc.boolean(),
        (bars, withMsi, withMsix, msiLog2, address64) => {
          const firstBar = bars.findIndex((bar) => bar !== undefined);
          const capabilities: PciCapabilityDefinition[] = [];
          if (withMsi) capabilities.push({ kind: 'msi', vectors: 2 ** msiLog2, address64, perVectorMasking: msiLog2 > 2 });
          if (withMsix && firstBar >= 0)
            capabilities.push({ kind: 'msix', tableSize: 8, tableBar: firstBar, tableOffset: 0, pbaBar: firstBar, pbaOffset: 0x80 });
          const config = new PciConfigSpace({ identity, bars, capabilities });
          // Software sizes every BAR (all ones read back as the size mask, which becomes the address) and puts 64-bit ones above 4 GiB.
          bars.forEach((bar, index) => {
            if (bar === undefined) return;
            config.write(0x10 + 4 * index, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
            if (bar.kind === 'mem64') config.write(0x14 + 4 * index, Uint8Array.of(0x01, 0, 0, 0));
          });
          const regionSizes = bars.map((bar) => (bar === undefined ? 0n : BigInt(bar.size)));
          const pci = describePciConfig(config.snapshot(), regionSizes);
          assert.deepEqual(pci.problems, []);
          assert.deepEqual(
            pci.bars.map((bar) => [bar.index, bar.kind, bar.width, bar.prefetchable, bar.address]),
            bars.flatMap((bar, index) =>
              bar === undefined
                ? []
                : [
                    [
                      index,
                      bar.kind === 'io' ? 'io' : 'memory',
                      bar.kind === 'io' ? undefined : bar.kind === 'mem64' ? 64 : 32,
                      bar.prefetchable ?? false,
                      config.barAddress(index),
                    ],
                  ],
            ),
          );
          assert.deepEqual(
            pci.capabilities.map((capability) => capability.id),
            capabilities.map((capability) => (capability.kind === 'msi' ? PCI_CAPABILITY_IDS.MSI : PCI_CAPABILITY_IDS.MSIX)),
          );
          const msi = pci.capabilities.find((capability) => capability.id === PCI_CAPABILITY_IDS.MSI);
          if (withMsi) assert.equal(msi?.detail, `Enable- Count=1/${2 ** msiLog2} Maskable${msiLog2 > 2 ? '+' : '-'} 64bit${address64 ? '+' : '-'}`);
          const msix = pci.capabilities.find((capability) => capability.id === PCI_CAPABILITY_IDS.MSIX);
          if (msix !== undefined) {
            assert.equal(msix.detail, 'Enable- Count=8 Masked-');
            assert.deepEqual(msix.extra, [`Vector table: BAR=${firstBar} offset=00000000`, `PBA: BAR=${firstBar} offset=00000080`]);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
