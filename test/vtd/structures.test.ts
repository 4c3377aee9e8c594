/** Structure tables: reserved masks against QEMU's hand-written ones, descriptor types, field positions. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { bigToWords, decodeBig, encodeBig, reservedMaskBig, type FieldTable } from '../../lib/vtd/bitfield';
import {
  CONTEXT_CACHE_INVALIDATE,
  DEVICE_TLB_INVALIDATE,
  INVALIDATION_DESCRIPTORS,
  INVALIDATION_WAIT,
  IOTLB_INVALIDATE,
  IRTE,
  LEGACY_CONTEXT_ENTRY,
  LEGACY_ROOT_ENTRY,
  PASID_DIRECTORY_ENTRY,
  PASID_IOTLB_INVALIDATE,
  SCALABLE_CONTEXT_ENTRY,
  SCALABLE_PASID_ENTRY,
  SECOND_STAGE_1G_LEAF,
  SECOND_STAGE_2M_LEAF,
  SECOND_STAGE_4K_LEAF,
  SECOND_STAGE_TABLE_ENTRY,
  SECOND_STAGE_TOP_ENTRY,
  FIRST_STAGE_2M_LEAF,
  FIRST_STAGE_4K_LEAF,
  FIRST_STAGE_TOP_ENTRY,
  descriptorKind,
  descriptorType,
} from '../../lib/vtd/structures';

const QWORD = (1n << 64n) - 1n;
/** QEMU's VTD_HAW_MASK(aw). */
const hawMask = (aw: number) => (1n << BigInt(aw)) - 1n;
/** Bits 11:9 carry the upper type bits; QEMU's masks count them as reserved because it knows no types above 15. */
const TYPE_HI = 0xe00n;

function qword(mask: bigint, index: number): bigint {
  return (mask >> BigInt(64 * index)) & QWORD;
}

describe('vtd structures', () => {
  for (const aw of [39, 48]) {
    describe(`reserved masks equal QEMU's for aw-bits=${aw}`, () => {
      it('legacy root entry: lo 0xffe | above HAW, hi all', () => {
        const mask = reservedMaskBig(LEGACY_ROOT_ENTRY, { addressWidth: aw });
        assert.equal(qword(mask, 0), 0xffen | (QWORD & ~hawMask(aw)));
        assert.equal(qword(mask, 1), QWORD);
      });

      it('legacy context entry: lo 0xff0 | above HAW, hi 0xffffffffff000080', () => {
        const mask = reservedMaskBig(LEGACY_CONTEXT_ENTRY, { addressWidth: aw });
        assert.equal(qword(mask, 0), 0xff0n | (QWORD & ~hawMask(aw)));
        assert.equal(qword(mask, 1), 0xffffffffff000080n);
      });

      it('scalable context entry: lo 0x1e0 | above HAW, hi 0xffffffffffe00000, upper half all', () => {
        const mask = reservedMaskBig(SCALABLE_CONTEXT_ENTRY, { addressWidth: aw });
        assert.equal(qword(mask, 0), 0x1e0n | (QWORD & ~hawMask(aw)));
        assert.equal(qword(mask, 1), 0xffffffffffe00000n);
        assert.equal(mask >> 128n, (1n << 128n) - 1n);
      });

      it('second-stage entries match QEMU vtd_spte_rsvd (SNP legal with SC or scalable mode, TM with DT)', () => {
        const tm = 1n << 62n;
        const above = QWORD & ~(hawMask(aw) | 0xbff0000000000000n | tm);
        const leaf = (features: string[]) => reservedMaskBig(SECOND_STAGE_4K_LEAF, { addressWidth: aw, features });
        assert.equal(leaf(['DT']), 0x800n | above); // rsvd[1] with device-iotlb
        assert.equal(leaf([]), 0x800n | above | tm); // rsvd[1] without
        assert.equal(leaf(['SMTS', 'DT']), above); // scalable mode clears SNP
        assert.equal(leaf(['SC']), above | tm);
        const table = (t: FieldTable) => reservedMaskBig(t, { addressWidth: aw, features: ['SC', 'SMTS', 'DT'] });
        assert.equal(table(SECOND_STAGE_TABLE_ENTRY), 0x800n | above | tm); // rsvd[2], rsvd[3]
        assert.equal(table(SECOND_STAGE_TOP_ENTRY), 0x880n | above | tm); // rsvd[4]
        const large = (t: FieldTable, features: string[]) => reservedMaskBig(t, { addressWidth: aw, features });
        assert.equal(large(SECOND_STAGE_2M_LEAF, ['DT']), 0x1ff800n | above); // rsvd_large[2]
        assert.equal(large(SECOND_STAGE_1G_LEAF, []), 0x3ffff800n | above | tm); // rsvd_large[3]
      });
    });
  }

  it('invalidation descriptor reserved bits match QEMU 7.2 except where the spec defines more', () => {
    const cc = reservedMaskBig(CONTEXT_CACHE_INVALIDATE);
    assert.equal(qword(cc, 0), 0xfffc00000000ffc0n & ~TYPE_HI);
    assert.equal(qword(cc, 1), QWORD);
    const iotlb = reservedMaskBig(IOTLB_INVALIDATE);
    assert.equal(qword(iotlb, 0), 0xffffffff0000ff00n & ~TYPE_HI);
    assert.equal(qword(iotlb, 1), 0xf80n);
    const piotlb = reservedMaskBig(PASID_IOTLB_INVALIDATE);
    // QEMU leaves 15:12 unchecked; the spec reserves them.
    assert.equal(qword(piotlb, 0), 0xfff00000000001c0n | 0xf000n);
    assert.equal(qword(piotlb, 1), 0xf80n);
    const wait = reservedMaskBig(INVALIDATION_WAIT, { addressWidth: 52 });
    // PD (bit 7) is reserved without ECAP.PDS, as QEMU 7.2 has it.
    assert.equal(qword(wait, 0), 0xffffff80n & ~TYPE_HI);
    assert.equal(qword(reservedMaskBig(INVALIDATION_WAIT, { addressWidth: 52, features: new Set(['PDS']) }), 0), 0xffffff80n & ~TYPE_HI & ~0x80n);
    assert.equal(qword(wait, 1), 0x3n | (0xfffn << 52n));
    const devtlb = reservedMaskBig(DEVICE_TLB_INVALIDATE);
    // QEMU 7.2 reserves PFSID (15:12, 63:52), which the spec defines, and bit 3, which is part of the type.
    assert.equal(qword(devtlb, 0), 0xffff0000ffe0fff8n & ~TYPE_HI & ~0x8n & ~0xf000n & ~(0xfffn << 52n));
    assert.equal(qword(devtlb, 1), 0xffen);
  });

  it('decodes the descriptor type from bits 3:0 and 11:9', () => {
    for (const kind of INVALIDATION_DESCRIPTORS) {
      const value = encodeBig(kind.fields, { TYPE_LO: kind.type & 0xf, TYPE_HI: kind.type >> 4 });
      const type = descriptorType(bigToWords(value, 4));
      assert.equal(type, kind.type);
      assert.equal(descriptorKind(type), kind);
    }
    assert.equal(descriptorType(bigToWords(0x201n, 4)), 0x11);
    assert.equal(descriptorKind(0x11), undefined);
    assert.equal(descriptorKind(0), undefined);
  });

  it('places IOTLB descriptor fields like Linux QI_IOTLB_* (DW 6, DR 7)', () => {
    const value = encodeBig(IOTLB_INVALIDATE, { TYPE_LO: 2, G: 3, DW: 1, DR: 1, DID: 5, AM: 9, IH: 1, ADDR: 0x12345n });
    assert.equal(value & QWORD, 0x2n | (3n << 4n) | (1n << 6n) | (1n << 7n) | (5n << 16n));
    assert.equal(value >> 64n, 9n | (1n << 6n) | 0x12345000n);
  });

  it('places scalable PASID entry fields at the absolute bits Linux pasid.h uses', () => {
    const value = encodeBig(SCALABLE_PASID_ENTRY, {
      P: 1,
      PGTT: 3,
      SSPTPTR: 0x1234n,
      DID: 7,
      PGSNP: 1,
      SRE: 1,
      FSPM: 1,
      WPE: 1,
      EAFE: 1,
      FSPTPTR: 0x5678n,
    });
    assert.equal(value & QWORD, 1n | (3n << 6n) | 0x1234000n);
    assert.equal((value >> 64n) & QWORD, 7n | (1n << 24n));
    assert.equal((value >> 128n) & QWORD, 1n | (1n << 2n) | (1n << 4n) | (1n << 7n) | 0x5678000n);
    assert.deepEqual(decodeBig(SCALABLE_PASID_ENTRY, value).PGTT, 3n);
  });

  it('lays out the remapped-format IRTE like QEMU VTD_IRTE', () => {
    const value = encodeBig(IRTE, { P: 1, DM: 1, TM: 1, DLM: 1, V: 0x31, DST: 0x0200, SID: 0x20, SQ: 0, SVT: 1 });
    assert.equal(value & QWORD, 1n | (1n << 2n) | (1n << 4n) | (1n << 5n) | (0x31n << 16n) | (0x200n << 32n));
    assert.equal(value >> 64n, 0x20n | (1n << 18n));
    assert.equal(reservedMaskBig(IRTE) & QWORD, (7n << 12n) | (0xffn << 24n));
    assert.equal(reservedMaskBig(IRTE) >> 64n, QWORD & ~((1n << 20n) - 1n));
  });

  it('reserves bit 7 only in first-stage top entries, and PAT moves to bit 12 in large leaves', () => {
    assert.equal((reservedMaskBig(FIRST_STAGE_TOP_ENTRY, { addressWidth: 48 }) >> 7n) & 1n, 1n);
    assert.equal(FIRST_STAGE_4K_LEAF.f.PAT.lsb, 7);
    assert.equal(FIRST_STAGE_2M_LEAF.f.PAT.lsb, 12);
    assert.equal(reservedMaskBig(FIRST_STAGE_2M_LEAF, { addressWidth: 52 }), 0xffn << 13n);
  });

  it('round-trips PASID directory entries through encode and decode', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 52n) - 1n }), fc.boolean(), fc.boolean(), (ptp, p, fpd) => {
        const value = encodeBig(PASID_DIRECTORY_ENTRY, { P: p ? 1 : 0, FPD: fpd ? 1 : 0, PTP: ptp });
        const decoded = decodeBig(PASID_DIRECTORY_ENTRY, value);
        assert.equal(decoded.PTP, ptp);
        assert.equal(decoded.P, p ? 1n : 0n);
        assert.equal(value & reservedMaskBig(PASID_DIRECTORY_ENTRY), 0n);
      }),
    );
  });
});
