/** The common byte layout: tables checked at definition, decode and encode inverse, misfits refused, flags and numbers. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fc from 'fast-check';
import {
  defineFlags,
  defineNumbers,
  defineStruct,
  fieldOffsets,
  readField,
  readUnsigned,
  writeField,
  writeU16,
  writeU32,
  writeU64,
  type StructShape,
  type StructValue,
} from '../lib/byte-layout';
import { ViommuError } from '../lib/errors';

const isLayoutError = (error: unknown) => error instanceof ViommuError && error.code === 'ERR_BYTE_LAYOUT';

/** Every kind of field: each integer width, a byte string and a reserved gap. */
const MIXED = defineStruct('mixed', [
  { key: 'u8', spec: 'u8', offset: 0, width: 1 },
  { key: 'pad', spec: 'pad', offset: 1, width: 1, reserved: true },
  { key: 'u16', spec: 'u16', offset: 2, width: 2 },
  { key: 'u32', spec: 'u32', offset: 4, width: 4 },
  { key: 'u64', spec: 'u64', offset: 8, width: 8 },
  { key: 'name', spec: 'name', offset: 16, width: 4, kind: 'bytes' },
] as const);

const mixedValue = fc.record({
  u8: fc.integer({ min: 0, max: 0xff }),
  u16: fc.integer({ min: 0, max: 0xffff }),
  u32: fc.integer({ min: 0, max: 0xffffffff }),
  u64: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  name: fc.uint8Array({ minLength: 4, maxLength: 4 }),
}) satisfies fc.Arbitrary<StructValue<typeof MIXED.fields>>;

describe('byte layout', () => {
  it('rejects overlapping fields, fields past the size, odd integer widths and duplicate numbers at definition', () => {
    const bad = [
      () =>
        defineStruct('overlap', [
          { key: 'a', spec: 'a', offset: 0, width: 4 },
          { key: 'b', spec: 'b', offset: 2, width: 4 },
        ]),
      () => defineStruct('too long', [{ key: 'a', spec: 'a', offset: 4, width: 8 }], 8),
      () => defineStruct('odd width', [{ key: 'a', spec: 'a', offset: 0, width: 3 }]),
      () => defineStruct('half byte', [{ key: 'a', spec: 'a', offset: 0.5, width: 1 }]),
      () => defineNumbers('duplicate', { A: 1, B: 1 }),
    ];
    for (const define of bad) assert.throws(define, isLayoutError);
    assert.throws(bad[0]!, /a overlaps b/);
    assert.throws(bad[1]!, /beyond the struct size 8/);
  });

  it('decodes what it encodes, reserved fields written as zero (property)', () => {
    fc.assert(
      fc.property(mixedValue, fc.integer({ min: 0, max: 8 }), (value, at) => {
        const bytes = new Uint8Array(at + MIXED.size).fill(0xa5);
        MIXED.encode(value, bytes, at);
        assert.equal(bytes[at + MIXED.offsetOf('pad')], 0);
        assert.equal(MIXED.findNonZeroReserved(bytes, at), undefined);
        assert.deepStrictEqual(MIXED.decode(bytes, at), { ...value });
        assert.equal(readUnsigned(bytes, at + MIXED.offsetOf('u32'), 4), value.u32);
      }),
    );
  });

  it('reads little-endian at the table offsets, integers past the end as zero', () => {
    const bytes = Uint8Array.of(0x01, 0x00, 0x34, 0x12, 0x78, 0x56);
    const value = MIXED.decode(bytes);
    assert.deepStrictEqual([value.u8, value.u16, value.u32, value.u64], [1, 0x1234, 0x5678, 0n]);
  });

  it('refuses to encode values that do not fit their field, naming the field', () => {
    const layout = defineStruct('small', [
      { key: 'a', spec: 'a', offset: 0, width: 2 },
      { key: 'b', spec: 'b', offset: 2, width: 8 },
    ]);
    const bytes = new Uint8Array(layout.size);
    assert.throws(() => layout.encode({ a: 65536, b: 0n }, bytes), /small\.a must be an integer in \[0, 2\^16\)/);
    assert.throws(() => layout.encode({ a: 1, b: 1n << 64n }, bytes), /small\.b must be a bigint/);
    assert.throws(() => layout.encode({ a: 1.5, b: 0n }, bytes), isLayoutError);
    assert.throws(
      () => MIXED.encode({ u8: 0, u16: 0, u32: 0, u64: 0n, name: new Uint8Array(5) }, new Uint8Array(MIXED.size)),
      /mixed\.name must be a Uint8Array/,
    );
    assert.throws(() => layout.encode({ a: 1, b: 0n }, bytes, 1), /small needs 10 bytes at 1, the buffer has 10/);
    layout.encode({ a: 65535, b: (1n << 64n) - 1n }, bytes);
    assert.deepStrictEqual(layout.decode(bytes), { a: 65535, b: (1n << 64n) - 1n });
  });

  it('finds the first non-zero reserved field, looks fields up by key and checks hot-path widths', () => {
    const bytes = new Uint8Array(MIXED.size);
    bytes[MIXED.offsetOf('pad')] = 1;
    assert.equal(MIXED.findNonZeroReserved(bytes)?.key, 'pad');
    assert.equal(MIXED.field('u64').offset, 8);
    assert.deepStrictEqual(fieldOffsets(MIXED, { u16: 2, u32: 4 }), { u16: 2, u32: 4 });
    // A table seen only as StructShape has no key or width types: the same mistakes are caught when it is used.
    const untyped: StructShape = MIXED;
    assert.throws(() => untyped.offsetOf('u128'), /mixed has no field u128/);
    assert.throws(() => fieldOffsets(untyped, { u16: 4 }), /mixed\.u16 is not the 4-byte integer/);
  });

  it('says whether a variant of a structure has a field that only some variants define', () => {
    const variant = (wide: boolean) =>
      defineStruct('variant', [
        { key: 'low', spec: 'low', offset: 0, width: 4 },
        ...(wide ? [{ key: 'high', spec: 'high', offset: 4, width: 4 } as const] : []),
      ]);
    assert.equal(variant(true).has('high'), true);
    assert.equal(variant(false).has('high'), false);
    assert.equal(variant(false).has('low'), true);
  });

  // Each @ts-expect-error below must meet a compile error (tsc -p . fails on an unused one), so the key and width
  // typing cannot quietly fall back to plain strings; at run time the same calls are refused as well.
  it('takes only the keys and widths its table defines, at compile time', () => {
    const bytes = new Uint8Array(MIXED.size);
    // @ts-expect-error: MIXED has no field u128.
    assert.throws(() => MIXED.offsetOf('u128'), /mixed has no field u128/);
    // @ts-expect-error: MIXED has no field u128.
    assert.throws(() => MIXED.field('u128'), /mixed has no field u128/);
    // @ts-expect-error: MIXED has no field u128.
    assert.equal(MIXED.has('u128'), false);
    // @ts-expect-error: u16 is 2 bytes wide.
    assert.throws(() => fieldOffsets(MIXED, { u16: 4 }), isLayoutError);
    // @ts-expect-error: name is a byte string, not an integer.
    assert.throws(() => readField(MIXED, bytes, 'name'), /mixed\.name is a byte string/);
    // @ts-expect-error: a u64 field holds a bigint.
    assert.throws(() => writeField(MIXED, bytes, 'u64', 1), /mixed\.u64 must be a bigint/);
    // @ts-expect-error: a u32 field holds a number.
    assert.throws(() => writeField(MIXED, bytes, 'u32', 1n), /mixed\.u32 must be an integer/);
  });

  it('reads and writes one integer field in place by its key, inside the bytes given', () => {
    const bytes = new Uint8Array(2 + MIXED.size).fill(0xa5);
    writeField(MIXED, bytes, 'u16', 0x1234, 2);
    writeField(MIXED, bytes, 'u64', 0x0102030405060708n, 2);
    const wide: bigint = readField(MIXED, bytes, 'u64', 2);
    const narrow: number = readField(MIXED, bytes, 'u16', 2);
    assert.deepStrictEqual([narrow, wide], [0x1234, 0x0102030405060708n]);
    assert.deepStrictEqual([...bytes.subarray(2 + 2, 2 + 4)], [0x34, 0x12]);
    assert.equal(bytes[2 + MIXED.offsetOf('u32')], 0xa5, 'nothing beyond the field');
    assert.throws(() => writeField(MIXED, bytes, 'u16', 0x10000), /mixed\.u16 must be an integer in \[0, 2\^16\)/);
    assert.throws(() => readField(MIXED, bytes.subarray(0, 15), 'u64'), /mixed\.u64 at 0 lies beyond the 15 bytes given/);
    assert.throws(() => writeField(MIXED, bytes, 'u8', 1, -1), isLayoutError);
  });

  it('writes little-endian integers as the struct encoder does', () => {
    const bytes = new Uint8Array(14);
    writeU16(bytes, 0, 0xbeef);
    writeU32(bytes, 2, 0xdeadbeef);
    writeU64(bytes, 6, 0xfedcba9876543210n);
    assert.deepStrictEqual([...bytes], [0xef, 0xbe, 0xef, 0xbe, 0xad, 0xde, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe]);
  });

  it('encodes and decodes alike where the process forbids generated code', () => {
    const script = `
      const { defineStruct } = require(${JSON.stringify(require.resolve('../lib/byte-layout'))});
      const layout = defineStruct('t', [
        { key: 'a', spec: 'a', offset: 0, width: 1 }, { key: 'r', spec: 'r', offset: 1, width: 1, reserved: true },
        { key: 'b', spec: 'b', offset: 2, width: 2 }, { key: 'c', spec: 'c', offset: 4, width: 4 },
        { key: 'd', spec: 'd', offset: 8, width: 8 }, { key: 'e', spec: 'e', offset: 16, width: 2, kind: 'bytes' },
      ]);
      const bytes = new Uint8Array(layout.size).fill(0xff);
      layout.encode({ a: 1, b: 0x203, c: 0x4050607, d: 0x8090a0b0c0d0e0fn, e: Uint8Array.of(7) }, bytes);
      let refused = false;
      try { layout.encode({ a: 256, b: 0, c: 0, d: 0n, e: new Uint8Array(0) }, bytes); } catch (error) { refused = error.code === 'ERR_BYTE_LAYOUT'; }
      const value = layout.decode(bytes);
      console.log(JSON.stringify({ bytes: [...bytes], a: value.a, b: value.b, c: value.c, d: String(value.d), e: [...value.e], refused }));
    `;
    const run = spawnSync(process.execPath, ['--disallow-code-generation-from-strings', '-e', script], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    assert.deepStrictEqual(JSON.parse(run.stdout), {
      bytes: [1, 0, 3, 2, 7, 6, 5, 4, 15, 14, 13, 12, 11, 10, 9, 8, 7, 0],
      a: 1,
      b: 0x203,
      c: 0x4050607,
      d: String(0x8090a0b0c0d0e0fn),
      e: [7, 0],
      refused: true,
    });
  });

  it('names flags, finds unknown bits and looks numbers up both ways', () => {
    const flags = defineFlags('demo', { A: 1, B: 4 });
    assert.deepStrictEqual(flags.names(5), ['A', 'B']);
    assert.equal(flags.unknownBits(7), 2);
    const numbers = defineNumbers('demo numbers', { ONE: 1, TWO: 2 });
    assert.equal(numbers.nameOf(2), 'TWO');
    assert.equal(numbers.nameOf(3), undefined);
  });
});
