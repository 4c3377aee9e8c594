/** The 2019-2021 VFIO bind-guest-PASID format: byte layouts, and decoding under the review's extension rules. */

import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { ERRNO } from '../../lib/errno';
import {
  CACHE_INVALIDATE_HEADER_LAYOUT,
  CACHE_INVALIDATE_MINSZ,
  GPASID_BIND_LAYOUT,
  GPASID_BIND_MINSZ,
  INV_ADDR_INFO_LAYOUT,
  INV_PASID_INFO_LAYOUT,
  decodeCacheInvalidate,
  decodeGpasidBind,
  encodeCacheInvalidate,
  encodeGpasidBind,
  gpasidBindRequest,
  type CacheInvalidateInfo,
  type GpasidBindData,
  type GpasidRule,
} from '../../lib/host/vfio-gpasid-uapi';

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

function fromHex(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text.replace(/\s+/g, ''), 'hex'));
}

const BIND: GpasidBindData = gpasidBindRequest({
  addrWidth: 57,
  flags: 1n,
  gpgd: 0x1234_5000n,
  hpasid: 0x42n,
  gpasid: 7n,
  vtdFlags: 0x41n,
  vtdPat: 0,
  vtdEmt: 0,
});

/** BIND as the C struct holds it: argsz version format addr_width | flags | gpgd | hpasid | gpasid | padding | vtd. */
const BIND_BYTES =
  '48000000 01000000 01000000 39000000 0100000000000000 0050341200000000 4200000000000000 0700000000000000' +
  '0000000000000000 4100000000000000 00000000 00000000';

function bindBytes(change: (view: DataView) => void, length = GPASID_BIND_LAYOUT.size): Uint8Array {
  const bytes = new Uint8Array(Math.max(length, GPASID_BIND_LAYOUT.size));
  bytes.set(encodeGpasidBind(BIND));
  change(new DataView(bytes.buffer));
  return bytes.subarray(0, length);
}

function refusal(result: ReturnType<typeof decodeGpasidBind> | ReturnType<typeof decodeCacheInvalidate>): [string, GpasidRule] | 'ok' {
  return result.ok ? 'ok' : [result.refusal.errno, result.refusal.rule];
}

describe('VFIO bind-guest-PASID layouts', () => {
  it('iommu_gpasid_bind_data: 72 bytes, vendor data at 56, bytes as the v5.10 uAPI', () => {
    assert.equal(GPASID_BIND_LAYOUT.size, 72);
    assert.equal(GPASID_BIND_MINSZ, 56);
    const offsets = Object.fromEntries(GPASID_BIND_LAYOUT.fields.map((field) => [field.spec, field.offset]));
    assert.deepEqual(offsets, {
      argsz: 0,
      version: 4,
      format: 8,
      addr_width: 12,
      flags: 16,
      gpgd: 24,
      hpasid: 32,
      gpasid: 40,
      padding: 48,
      'vendor.vtd.flags': 56,
      'vendor.vtd.pat': 64,
      'vendor.vtd.emt': 68,
    });
    assert.equal(hex(encodeGpasidBind(BIND)), hex(fromHex(BIND_BYTES)));
  });

  it('iommu_cache_invalidate_info: 56 bytes, a 16-byte header, then pasid_info (16) or addr_info (40)', () => {
    assert.equal(CACHE_INVALIDATE_HEADER_LAYOUT.size, 56);
    assert.equal(CACHE_INVALIDATE_MINSZ, 16);
    assert.equal(INV_PASID_INFO_LAYOUT.size, 16);
    assert.equal(INV_ADDR_INFO_LAYOUT.size, 40);
    const addr: CacheInvalidateInfo = {
      argsz: 56,
      version: 1,
      cache: 3,
      granularity: 2,
      addrInfo: { flags: 5, archid: 0, pasid: 0x42n, addr: 0x7000n, granuleSize: 4096n, nbGranules: 8n },
    };
    assert.equal(
      hex(encodeCacheInvalidate(addr)),
      hex(fromHex('38000000 01000000 03 02 000000000000 05000000 00000000 4200000000000000 0070000000000000 0010000000000000 0800000000000000')),
    );
    const pasid: CacheInvalidateInfo = { argsz: 32, version: 1, cache: 1, granularity: 1, pasidInfo: { flags: 1, archid: 0, pasid: 0x42n } };
    assert.equal(
      hex(encodeCacheInvalidate(pasid).subarray(0, 32)),
      hex(fromHex('20000000 01000000 01 01 000000000000 01000000 00000000 4200000000000000')),
    );
    const domain: CacheInvalidateInfo = { argsz: 16, version: 1, cache: 1, granularity: 0 };
    assert.equal(hex(encodeCacheInvalidate(domain).subarray(0, 16)), '10000000010000000100000000000000');
  });
});

describe("decodeGpasidBind: the review's extension rules", () => {
  const cases: { name: string; bytes: () => Uint8Array; expected: [string, GpasidRule] | 'ok' }[] = [
    { name: 'a valid bind', bytes: () => bindBytes(() => {}), expected: 'ok' },
    { name: 'fewer than 4 bytes', bytes: () => new Uint8Array(3), expected: ['EFAULT', 'unreadable'] },
    {
      name: 'argsz below the vendor data, checked before version',
      bytes: () =>
        bindBytes((v) => {
          v.setUint32(0, 55, true);
          v.setUint32(4, 9, true);
        }),
      expected: ['EINVAL', 'argsz-below-minimum'],
    },
    {
      name: 'the v5.8/v5.9 layout (version 1 where argsz is, format after it)',
      bytes: () =>
        bindBytes((v) => {
          v.setUint32(0, 1, true);
          v.setUint32(4, 1, true);
        }),
      expected: ['EINVAL', 'pre-argsz-layout'],
    },
    { name: 'fewer bytes than the mandatory part', bytes: () => bindBytes(() => {}, 40), expected: ['EFAULT', 'unreadable'] },
    {
      name: 'an unknown version, checked before format',
      bytes: () =>
        bindBytes((v) => {
          v.setUint32(4, 2, true);
          v.setUint32(8, 9, true);
        }),
      expected: ['EINVAL', 'version'],
    },
    { name: 'format 0', bytes: () => bindBytes((v) => v.setUint32(8, 0, true)), expected: ['EINVAL', 'format'] },
    { name: 'format LAST', bytes: () => bindBytes((v) => v.setUint32(8, 2, true)), expected: ['EINVAL', 'format'] },
    {
      name: 'an unknown format, checked before argsz for the format',
      bytes: () =>
        bindBytes((v) => {
          v.setUint32(0, 56, true);
          v.setUint32(8, 7, true);
        }),
      expected: ['EINVAL', 'format'],
    },
    {
      name: 'argsz too small for the VT-d vendor data',
      bytes: () => bindBytes((v) => v.setUint32(0, 64, true)),
      expected: ['EINVAL', 'argsz-below-format'],
    },
    { name: 'argsz 72 over 60 readable bytes', bytes: () => bindBytes(() => {}, 60), expected: ['EFAULT', 'unreadable'] },
    {
      name: 'a larger argsz from a newer user (only what is known is read)',
      bytes: () => bindBytes((v) => v.setUint32(0, 96, true)),
      expected: 'ok',
    },
    { name: 'an unknown flag', bytes: () => bindBytes((v) => v.setUint32(16, 3, true)), expected: ['EINVAL', 'flags'] },
    { name: 'a high unknown flag', bytes: () => bindBytes((v) => v.setUint32(20, 0x8000_0000, true)), expected: ['EINVAL', 'flags'] },
    { name: 'non-zero padding', bytes: () => bindBytes((v) => v.setUint8(55, 1)), expected: ['EINVAL', 'padding'] },
    { name: 'an unknown VT-d flag', bytes: () => bindBytes((v) => v.setUint32(56, 0x80, true)), expected: ['EINVAL', 'vendor-flags'] },
    { name: 'addr_width 39', bytes: () => bindBytes((v) => v.setUint32(12, 39, true)), expected: ['EINVAL', 'addr-width'] },
    { name: 'hpasid 0 (RID_PASID)', bytes: () => bindBytes((v) => v.setBigUint64(32, 0n, true)), expected: ['EINVAL', 'pasid-range'] },
    { name: 'hpasid 2^20', bytes: () => bindBytes((v) => v.setBigUint64(32, 1n << 20n, true)), expected: ['EINVAL', 'pasid-range'] },
    { name: 'a valid gpasid of 2^20', bytes: () => bindBytes((v) => v.setBigUint64(40, 1n << 20n, true)), expected: ['EINVAL', 'pasid-range'] },
    {
      name: 'gpasid ignored without GPASID_VAL',
      bytes: () =>
        bindBytes((v) => {
          v.setBigUint64(16, 0n, true);
          v.setBigUint64(40, 1n << 40n, true);
        }),
      expected: 'ok',
    },
  ];

  for (const operation of ['bind', 'unbind'] as const) {
    for (const { name, bytes, expected } of cases) {
      it(`${operation}: ${name} -> ${expected === 'ok' ? 'accepted' : expected.join(' ')}`, () => {
        const result = decodeGpasidBind(bytes(), operation);
        assert.deepEqual(refusal(result), expected, result.ok ? '' : result.refusal.message);
        if (!result.ok) {
          assert.equal(result.refusal.errnoValue, result.refusal.errno === 'EINVAL' ? ERRNO.EINVAL : ERRNO.EFAULT);
          assert.match(result.refusal.message, new RegExp(`^${operation} `));
        }
      });
    }
  }

  it('decodes what it encodes, for every valid VT-d bind', () => {
    const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
    const bind = fc.record({
      addrWidth: fc.constantFrom(48, 57),
      flags: fc.constantFrom(0n, 1n),
      gpgd: u64,
      hpasid: fc.bigInt({ min: 1n, max: (1n << 20n) - 1n }),
      gpasid: fc.bigInt({ min: 0n, max: (1n << 20n) - 1n }),
      vtdFlags: fc.bigInt({ min: 0n, max: 0x7fn }),
      vtdPat: fc.integer({ min: 0, max: 0xffff_ffff }),
      vtdEmt: fc.integer({ min: 0, max: 0xffff_ffff }),
    });
    fc.assert(
      fc.property(bind, (fields) => {
        const value = gpasidBindRequest({ ...fields });
        const decoded = decodeGpasidBind(encodeGpasidBind(value));
        assert.ok(decoded.ok);
        assert.deepEqual(decoded.value, value);
      }),
      { numRuns: 300 },
    );
  });
});

describe('decodeCacheInvalidate: the same rules, with granularity choosing the union member', () => {
  const ADDR: CacheInvalidateInfo = {
    argsz: 56,
    version: 1,
    cache: 1,
    granularity: 2,
    addrInfo: { flags: 5, archid: 0, pasid: 0x42n, addr: 0x7000n, granuleSize: 4096n, nbGranules: 8n },
  };

  function edited(info: CacheInvalidateInfo, change: (view: DataView) => void, length = 56): Uint8Array {
    const bytes = encodeCacheInvalidate(info);
    change(new DataView(bytes.buffer));
    return bytes.subarray(0, length);
  }

  const cases: { name: string; bytes: () => Uint8Array; expected: [string, GpasidRule] | 'ok' }[] = [
    { name: 'a valid address-selective invalidation', bytes: () => edited(ADDR, () => {}), expected: 'ok' },
    { name: 'argsz below the header', bytes: () => edited(ADDR, (v) => v.setUint32(0, 15, true)), expected: ['EINVAL', 'argsz-below-minimum'] },
    {
      name: 'the v5.8/v5.9 layout (version at 0, then cache and granularity bytes)',
      bytes: () =>
        edited(
          ADDR,
          (v) => {
            v.setUint32(0, 1, true);
            v.setUint32(4, 0x0201, true);
          },
          48,
        ),
      expected: ['EINVAL', 'pre-argsz-layout'],
    },
    { name: 'version 0', bytes: () => edited(ADDR, (v) => v.setUint32(4, 0, true)), expected: ['EINVAL', 'version'] },
    { name: 'granularity 3 (unknown, like a format)', bytes: () => edited(ADDR, (v) => v.setUint8(9, 3)), expected: ['EINVAL', 'format'] },
    {
      name: 'argsz of the header alone for PASID granularity',
      bytes: () => edited({ argsz: 16, version: 1, cache: 1, granularity: 1, pasidInfo: { flags: 1, archid: 0, pasid: 1n } }, () => {}),
      expected: ['EINVAL', 'argsz-below-format'],
    },
    {
      name: 'argsz 32 for address granularity',
      bytes: () => edited(ADDR, (v) => v.setUint32(0, 32, true)),
      expected: ['EINVAL', 'argsz-below-format'],
    },
    {
      name: 'domain granularity in the 16-byte header',
      bytes: () => edited({ argsz: 16, version: 1, cache: 1, granularity: 0 }, () => {}, 16),
      expected: 'ok',
    },
    { name: 'an unknown cache type', bytes: () => edited(ADDR, (v) => v.setUint8(8, 9)), expected: ['EINVAL', 'cache-types'] },
    { name: 'non-zero padding', bytes: () => edited(ADDR, (v) => v.setUint8(15, 1)), expected: ['EINVAL', 'padding'] },
    {
      name: 'the device TLB by domain',
      bytes: () => edited({ argsz: 16, version: 1, cache: 2, granularity: 0 }, () => {}, 16),
      expected: ['EINVAL', 'cache-granularity'],
    },
    { name: 'the PASID cache by address', bytes: () => edited(ADDR, (v) => v.setUint8(8, 4)), expected: ['EINVAL', 'cache-granularity'] },
    { name: 'an unknown addr_info flag', bytes: () => edited(ADDR, (v) => v.setUint32(16, 8, true)), expected: ['EINVAL', 'flags'] },
    {
      name: 'an unknown pasid_info flag',
      bytes: () => edited({ argsz: 32, version: 1, cache: 4, granularity: 1, pasidInfo: { flags: 4, archid: 0, pasid: 1n } }, () => {}),
      expected: ['EINVAL', 'flags'],
    },
    { name: 'argsz 56 over 40 readable bytes', bytes: () => edited(ADDR, () => {}, 40), expected: ['EFAULT', 'unreadable'] },
  ];

  for (const { name, bytes, expected } of cases) {
    it(`${name} -> ${expected === 'ok' ? 'accepted' : expected.join(' ')}`, () => {
      const result = decodeCacheInvalidate(bytes());
      assert.deepEqual(refusal(result), expected, result.ok ? '' : result.refusal.message);
    });
  }

  it('decodes what it encodes, for every valid invalidation', () => {
    const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
    const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
    const info: fc.Arbitrary<CacheInvalidateInfo> = fc.oneof(
      fc.record({
        argsz: fc.integer({ min: 16, max: 56 }),
        version: fc.constant(1),
        cache: fc.constantFrom(1, 4, 5),
        granularity: fc.constant(0 as const),
      }),
      fc.record({
        argsz: fc.integer({ min: 32, max: 56 }),
        version: fc.constant(1),
        cache: fc.integer({ min: 0, max: 7 }),
        granularity: fc.constant(1 as const),
        pasidInfo: fc.record({ flags: fc.integer({ min: 0, max: 3 }), archid: u32, pasid: u64 }),
      }),
      fc.record({
        argsz: fc.constant(56),
        version: fc.constant(1),
        cache: fc.integer({ min: 0, max: 3 }),
        granularity: fc.constant(2 as const),
        addrInfo: fc.record({ flags: fc.integer({ min: 0, max: 7 }), archid: u32, pasid: u64, addr: u64, granuleSize: u64, nbGranules: u64 }),
      }),
    );
    fc.assert(
      fc.property(info, (value) => {
        const decoded = decodeCacheInvalidate(encodeCacheInvalidate(value));
        assert.ok(decoded.ok, decoded.ok ? '' : decoded.refusal.message);
        assert.deepEqual(JSON.parse(JSON.stringify(decoded.value, bigints)), JSON.parse(JSON.stringify(value, bigints)));
      }),
      { numRuns: 300 },
    );
  });
});

function bigints(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? `${value}n` : value;
}
