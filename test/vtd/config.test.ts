/** Configuration: QEMU property parsing, combination rules, and CAP/ECAP against QEMU's values. */
import { strict as assert } from 'node:assert';
import { ViommuError } from '../../lib/errors';
import {
  CAPABILITY_EXTENSIONS,
  CONFIG_RULES,
  VtdConfigError,
  VtdPropertyError,
  capabilityField,
  computeCapabilities,
  enabledFeatures,
  parseVtdProperties,
  resolveVtdConfig,
  vtdConfigFromString,
} from '../../lib/vtd/config';

function caps(text: string) {
  return computeCapabilities(vtdConfigFromString(text));
}

function refusedBy(rule: string) {
  return (error: unknown) => {
    assert.ok(error instanceof VtdConfigError, `expected VtdConfigError, got ${String(error)}`);
    assert.ok(error instanceof ViommuError);
    assert.equal(error.code, 'ERR_VTD_CONFIG');
    assert.equal(error.rule, rule);
    assert.ok(error.message.includes(rule), error.message);
    return true;
  };
}

describe('vtd config', () => {
  describe('CAP and ECAP as QEMU 7.2 measured them', () => {
    it('default properties', () => {
      assert.equal(caps('').cap, 0x00d2008c22260206n);
      assert.equal(caps('').ecap, 0xf00f4an);
    });
    it('aw-bits=48', () => {
      assert.equal(caps('aw-bits=48').cap, 0x00d2008c222f0606n);
      assert.equal(caps('aw-bits=48').ecap, 0xf00f4an);
    });
    it('x-scalable-mode=on', () => {
      assert.equal(caps('x-scalable-mode=on').ecap, 0x480080f00f4an);
      assert.equal(caps('x-scalable-mode=on').cap, 0x00d2008c22260206n);
    });
  });

  describe('CAP and ECAP from QEMU 7.2 logic for the other properties', () => {
    const base = caps('');
    const cases: [string, 'cap' | 'ecap', bigint, bigint][] = [
      ['caching-mode=on', 'cap', 1n << 7n, 0n],
      ['dma-drain=off', 'cap', 0n, 3n << 54n],
      ['dma-translation=off', 'cap', 0n, 0x1fn << 8n],
      ['device-iotlb=on', 'ecap', 1n << 2n, 0n],
      ['pt=off', 'ecap', 0n, 1n << 6n],
      ['snoop-control=on', 'ecap', 1n << 7n, 0n],
      ['intremap=off', 'ecap', 0n, (1n << 3n) | (0xfn << 20n)],
      ['eim=on', 'ecap', 1n << 4n, 0n],
      ['x-scalable-mode=on,x-pasid-mode=on', 'ecap', (1n << 40n) | (1n << 43n) | (1n << 31n) | (1n << 46n), 0n],
    ];
    for (const [text, register, set, cleared] of cases) {
      it(`${text} sets 0x${set.toString(16)} and clears 0x${cleared.toString(16)} in ${register.toUpperCase()}`, () => {
        const value = caps(text)[register];
        assert.equal(value, (base[register] | set) & ~cleared);
      });
    }

    it('reads fields back by name', () => {
      const values = caps('aw-bits=48');
      assert.equal(capabilityField(values, 'CAP', 'MGAW'), 47);
      assert.equal(capabilityField(values, 'CAP', 'FRO') * 16, 0x220);
      assert.equal(capabilityField(values, 'ECAP', 'IRO') * 16, 0xf0);
      assert.equal(capabilityField(values, 'CAP', 'SAGAW'), 0b110);
    });

    it('lists the enabled ECAP features for reserved-bit decisions', () => {
      const features = enabledFeatures(caps('x-scalable-mode=on,snoop-control=on'));
      assert.ok(features.has('SC') && features.has('SMTS') && features.has('QI'));
      assert.ok(!features.has('DT'));
    });
  });

  describe('bits beyond QEMU 7.2', () => {
    it('x-flts follows newer QEMU: SMTS and FSTS, FS1GP, no SRS or SSTS', () => {
      const values = caps('x-scalable-mode=on,x-flts=on,aw-bits=48');
      assert.equal(capabilityField(values, 'ECAP', 'FSTS'), 1);
      assert.equal(capabilityField(values, 'ECAP', 'SMTS'), 1);
      assert.equal(capabilityField(values, 'ECAP', 'SSTS'), 0);
      assert.equal(capabilityField(values, 'ECAP', 'SRS'), 0);
      assert.equal(capabilityField(values, 'CAP', 'FS1GP'), 1);
    });

    it('compat=qemu-latest has the measured QEMU 10.0.2 capabilities: aw-bits 48 by default, neither ESRTPS nor PSS', () => {
      for (const props of ['x-scalable-mode=on,x-pasid-mode=on', 'x-scalable-mode=on,x-flts=on', '']) {
        const latest = caps(['compat=qemu-latest', props].filter(Boolean).join(','));
        const measured = caps(['compat=qemu-10.0', props].filter(Boolean).join(','));
        assert.equal(latest.cap, measured.cap, props);
        assert.equal(latest.ecap, measured.ecap, props);
      }
      assert.equal(capabilityField(caps('compat=qemu-latest'), 'CAP', 'MGAW'), 47);
      assert.equal(capabilityField(caps('compat=qemu-latest,x-scalable-mode=on,x-pasid-mode=on'), 'CAP', 'ESRTPS'), 0);
    });

    it('every extension names an existing field and says where it comes from', () => {
      for (const extension of CAPABILITY_EXTENSIONS) {
        assert.ok(extension.origin.length > 0 && extension.note.length > 0);
        assert.doesNotThrow(() => capabilityField(caps(''), extension.register, extension.field));
      }
    });
  });

  describe('rules', () => {
    const refusals: [string, string][] = [
      ['aw-bits=40', 'aw-bits-39-or-48'],
      ['aw-bits=57', 'aw-bits-39-or-48'],
      ['intremap=off,eim=on', 'eim-needs-intremap'],
      ['x-scalable-mode=on,dma-drain=off', 'scalable-needs-dma-drain'],
      ['x-pasid-mode=on', 'pasid-needs-scalable'],
      ['x-scalable-mode=on,x-pasid-mode=on,device-iotlb=on', 'pasid-excludes-device-iotlb'],
      ['x-flts=on,aw-bits=48', 'flts-needs-scalable'],
      ['x-scalable-mode=on,x-flts=on', 'flts-needs-aw-bits-48'],
      ['x-scalable-mode=on,aw-bits=48,x-nested=on', 'nested-needs-flts'],
      ['x-scalable-mode=on,x-vcmd=on', 'vcmd-needs-pasid'],
      ['x-scalable-mode=on,x-pasid-mode=on,x-pasid-bits=21', 'pasid-bits-1-to-20'],
      ['x-scalable-mode=on,x-pasid-bits=8', 'pasid-bits-1-to-20'],
    ];
    for (const [text, rule] of refusals) {
      it(`refuses ${text} naming ${rule}`, () => {
        assert.throws(() => vtdConfigFromString(text), refusedBy(rule));
      });
    }

    it('has a test above for every rule', () => {
      const tested = new Set(refusals.map(([, rule]) => rule));
      for (const rule of CONFIG_RULES) assert.ok(tested.has(rule.id), `rule ${rule.id} untested`);
    });

    it('resolves auto like QEMU without an in-kernel irqchip: intremap on, eim off', () => {
      const config = resolveVtdConfig();
      assert.equal(config.intremap, true);
      assert.equal(config.eim, false);
      assert.equal(resolveVtdConfig({ intremap: 'off' }).intremap, false);
      assert.equal(resolveVtdConfig({ eim: 'on' }).eim, true);
    });
  });

  describe('parsing property strings', () => {
    it('reads QEMU-style lists with the driver name and later values winning', () => {
      assert.deepEqual(parseVtdProperties('intel-iommu,aw-bits=48,caching-mode=on,caching-mode=off'), {
        'aw-bits': 48,
        'caching-mode': false,
      });
      assert.deepEqual(parseVtdProperties(''), {});
      assert.deepEqual(parseVtdProperties('aw-bits=0x27'), { 'aw-bits': 39 });
    });

    it('accepts the boolean spellings QEMU accepts', () => {
      for (const word of ['on', 'yes', 'true', 'y']) assert.equal(parseVtdProperties(`pt=${word}`).pt, true);
      for (const word of ['off', 'no', 'false', 'n']) assert.equal(parseVtdProperties(`pt=${word}`).pt, false);
    });

    it('takes on/off/auto for intremap and eim', () => {
      assert.deepEqual(parseVtdProperties('intremap=auto,eim=off'), { intremap: 'auto', eim: 'off' });
      assert.throws(() => parseVtdProperties('intremap=yes'), VtdPropertyError);
    });

    it('refuses unknown properties, bad values and malformed items with ERR_VTD_PROPERTY', () => {
      for (const text of ['bogus=on', 'pt=maybe', 'pt', 'aw-bits=big', 'aw-bits=-1', '=on', 'compat=qemu-6.0', 'caching-mode=ON']) {
        assert.throws(
          () => parseVtdProperties(text),
          (e: unknown) => e instanceof VtdPropertyError && e.code === 'ERR_VTD_PROPERTY',
          text,
        );
      }
      assert.throws(() => parseVtdProperties('bogus=on'), /intel-iommu\.bogus/);
    });
  });
});
