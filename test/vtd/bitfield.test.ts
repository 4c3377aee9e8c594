/** Field tables: number and bigint paths agree, encode/decode round trips, reserved masks, rendering. */
import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import * as interruptRemapTables from '../../lib/vtd/interrupt-remap';
import * as registerTables from '../../lib/vtd/registers';
import * as structureTables from '../../lib/vtd/structures';
import {
  bigToNumber,
  fieldReader,
  readField,
  bigToWords,
  decodeBig,
  defineFields,
  encodeBig,
  getField,
  getField64,
  getFieldBig,
  hasReservedBits,
  isSet,
  renderFields,
  reservedMaskBig,
  reservedWords,
  setField,
  setFieldBig,
  wordsToBig,
  type FieldTable,
} from '../../lib/vtd/bitfield';
import { ViommuError } from '../../lib/errors';
import { CAP_FIELDS, ECAP_FIELDS, FRCD_HI_FIELDS, IOTLB_FIELDS } from '../../lib/vtd/registers';
import { IRTE, SCALABLE_PASID_ENTRY, SECOND_STAGE_4K_LEAF } from '../../lib/vtd/structures';

const SAMPLE = defineFields('sample', 128, [
  { name: 'FLAG', bit: 0, width: 1, description: 'a flag' },
  { name: 'MODE', bit: 1, width: 3, description: 'a mode', values: { 2: 'two' } },
  { name: 'STRADDLE', bit: 28, width: 8, description: 'crosses the first 32-bit boundary' },
  { name: 'ADDR', bit: 12, qword: 1, width: 52, addressShift: 12, description: 'an address' },
  { name: 'OPT', bit: 40, width: 1, description: 'optional', reservedUnless: 'FEATURE' },
] as const);

function valueFor(width: number): fc.Arbitrary<number> {
  return fc
    .integer({ min: 0, max: 2 ** Math.min(width, 31) - 1 })
    .chain((low) => (width <= 31 ? fc.constant(low) : fc.integer({ min: 0, max: 2 ** (width - 31) - 1 }).map((high) => high * 2 ** 31 + low)));
}

function structureFor(table: FieldTable): fc.Arbitrary<bigint> {
  return fc.bigInt({ min: 0n, max: (1n << BigInt(table.sizeBits)) - 1n });
}

const TABLES: FieldTable[] = [SAMPLE, CAP_FIELDS, ECAP_FIELDS, IOTLB_FIELDS, FRCD_HI_FIELDS, IRTE, SCALABLE_PASID_ENTRY, SECOND_STAGE_4K_LEAF];

describe('bitfield', () => {
  it('reads every field the same way on the number path and the bigint path', () => {
    for (const table of TABLES) {
      fc.assert(
        fc.property(structureFor(table), (structure) => {
          const words = bigToWords(structure, table.sizeWords);
          for (const field of table.fields) {
            assert.equal(BigInt(getField(words, field)), getFieldBig(structure, field), `${table.name}.${field.name}`);
            assert.equal(isSet(words, field), getFieldBig(structure, field) !== 0n);
          }
        }),
        { numRuns: 200 },
      );
    }
  });

  it('reads 64-bit fields from two halves like from a word array', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), (value) => {
        const [lo, hi] = bigToWords(value, 2);
        for (const field of [...CAP_FIELDS.fields, ...FRCD_HI_FIELDS.fields]) {
          assert.equal(getField64(lo!, hi!, field), Number(getFieldBig(value, field)));
        }
      }),
    );
  });

  it('setField changes only its own bits and reads back what it wrote', () => {
    for (const table of TABLES) {
      const cases = table.fields.map((field) => fc.tuple(fc.constant(field), valueFor(field.width), structureFor(table)));
      fc.assert(
        fc.property(fc.oneof(...cases), ([field, value, structure]) => {
          const words = bigToWords(structure, table.sizeWords);
          setField(words, field, value);
          assert.equal(getField(words, field), value);
          const fieldMask = ((1n << BigInt(field.width)) - 1n) << BigInt(field.lsb);
          assert.equal(wordsToBig(words) & ~fieldMask, structure & ~fieldMask, `${table.name}.${field.name} disturbed others`);
          assert.equal(wordsToBig(words), setFieldBig(structure, field, value));
        }),
        { numRuns: 300 },
      );
    }
  });

  it('encodes and decodes whole structures without loss (reserved bits aside)', () => {
    for (const table of TABLES) {
      fc.assert(
        fc.property(structureFor(table), (structure) => {
          const clean = structure & ~reservedMaskBig(table, { features: ['FEATURE', 'SC', 'DT'] });
          assert.equal(encodeBig(table, decodeBig(table, clean)), clean);
        }),
        { numRuns: 100 },
      );
    }
  });

  it('refuses values that do not fit', () => {
    const words = new Uint32Array(4);
    assert.throws(
      () => setField(words, SAMPLE.f.MODE, 8),
      (e: unknown) => e instanceof ViommuError && e.code === 'ERR_FIELD_RANGE',
    );
    assert.throws(() => setField(words, SAMPLE.f.MODE, 1.5), ViommuError);
    assert.throws(() => setFieldBig(0n, SAMPLE.f.FLAG, 2n), ViommuError);
  });

  it('refuses overlapping, duplicate and out-of-range fields when a table is defined', () => {
    const code = (e: unknown) => e instanceof ViommuError && e.code === 'ERR_FIELD_TABLE';
    assert.throws(
      () =>
        defineFields('x', 32, [
          { name: 'A', bit: 0, width: 4, description: '' },
          { name: 'B', bit: 3, width: 1, description: '' },
        ]),
      code,
    );
    assert.throws(
      () =>
        defineFields('x', 32, [
          { name: 'A', bit: 0, width: 1, description: '' },
          { name: 'A', bit: 1, width: 1, description: '' },
        ]),
      code,
    );
    assert.throws(() => defineFields('x', 32, [{ name: 'A', bit: 30, width: 4, description: '' }]), code);
    assert.throws(() => defineFields('x', 64, [{ name: 'A', bit: 0, width: 64, description: '' }]), code);
  });

  it('derives reserved bits from the uncovered bits, the address width and features', () => {
    const base = reservedMaskBig(SAMPLE);
    // bits 11:4 minus the straddling field, 39:36, 63:41, 75:64 and OPT (feature absent)
    const expected = (((1n << 28n) - 1n) & ~0xfn) | (0xfn << 36n) | (((1n << 23n) - 1n) << 41n) | (0xfffn << 64n) | (1n << 40n);
    assert.equal(base, expected);
    assert.equal(reservedMaskBig(SAMPLE, { features: ['FEATURE'] }), expected & ~(1n << 40n));
    const narrow = reservedMaskBig(SAMPLE, { addressWidth: 39 });
    assert.equal(narrow, expected | (((1n << 25n) - 1n) << (64n + 39n)));
    assert.equal(reservedMaskBig(SAMPLE, { addressWidth: 64 }), expected);
  });

  it('tests structures against a precomputed reserved mask', () => {
    const reserved = reservedWords(SAMPLE, { addressWidth: 48 });
    assert.equal(hasReservedBits(bigToWords(1n | (0x1234n << 76n), 4), reserved), false);
    assert.equal(hasReservedBits(bigToWords(1n << 127n, 4), reserved), true);
    assert.equal(hasReservedBits(bigToWords(1n << 5n, 4), reserved), true);
  });

  it('renders each field with its value, enumerations, addresses and stray reserved bits', () => {
    const text = renderFields(SAMPLE, encodeBig(SAMPLE, { FLAG: 1, MODE: 2, ADDR: 0xabcn }) | (1n << 5n));
    assert.match(text, /^sample = 0x/);
    assert.match(text, /FLAG +\[ +0\] = 0x1 +a flag/);
    assert.match(text, /MODE +\[ *3:1\] = 0x2 \(two\)/);
    assert.match(text, /ADDR +\[127:76\] = 0xabc000 \(address\)/);
    assert.match(text, /reserved bits set: 0x20$/);
    const sparse = renderFields(SAMPLE, [1, 0, 0, 0], { skipZero: true });
    assert.equal(sparse.split('\n').length, 2);
  });
});

describe('hot-path readers', () => {
  it('bigToNumber agrees with Number() at the edges of each word and of exact doubles', () => {
    for (const value of [0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 32n + 1n, 2n ** 52n - 1n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 64n - 1n]) {
      assert.equal(bigToNumber(value), Number(value), `0x${value.toString(16)}`);
    }
    fc.assert(fc.property(fc.bigInt({ min: 0n, max: 2n ** 53n - 1n }), (value) => bigToNumber(value) === Number(value)));
  });

  /** Every field table the vtd layer defines (registers, structures, interrupt formats). */
  const TABLES: FieldTable[] = [registerTables, structureTables, interruptRemapTables]
    .flatMap((module) => Object.values(module as Record<string, unknown>))
    .filter((value): value is FieldTable => typeof value === 'object' && value !== null && 'fields' in value && 'sizeWords' in value);

  it('readField(fieldReader(f)) equals getField(f) for every field of every table, on random words', () => {
    assert.ok(TABLES.length >= 30, `found ${TABLES.length} tables`);
    const fields = TABLES.flatMap((table) => table.fields.filter((field) => field.segments.length <= 2).map((field) => ({ table, field })));
    assert.ok(fields.length > 200, `${fields.length} fields`);
    const wordsFor = (sizeWords: number) => fc.array(fc.integer({ min: 0, max: 2 ** 32 - 1 }), { minLength: sizeWords, maxLength: sizeWords });
    for (const { table, field } of fields) {
      const reader = fieldReader(field);
      fc.assert(
        fc.property(wordsFor(table.sizeWords), (list) => {
          const words = Uint32Array.from(list);
          return readField(words, reader) === getField(words, field);
        }),
        { numRuns: 20, examples: [[new Array(table.sizeWords).fill(2 ** 32 - 1)], [new Array(table.sizeWords).fill(0)]] },
      );
    }
  });
});
