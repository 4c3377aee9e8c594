/** iommufd / VFIO-cdev struct layouts, byte for byte against the uAPI, and ioctl numbers. */

import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import {
  IOCTLS,
  IOMMUFD_LAYOUTS,
  IOMMU_DESTROY_LAYOUT,
  IOMMU_FAULT_ALLOC_LAYOUT,
  IOMMU_HW_INFO_LAYOUT,
  IOMMU_HW_INFO_VTD_LAYOUT,
  IOMMU_HWPT_ALLOC_LAYOUT,
  IOMMU_HWPT_INVALIDATE_LAYOUT,
  IOMMU_HWPT_PAGE_RESPONSE_LAYOUT,
  IOMMU_HWPT_PGFAULT_LAYOUT,
  IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT,
  IOMMU_HWPT_VTD_S1_LAYOUT,
  IOMMU_IOAS_ALLOC_LAYOUT,
  IOMMU_IOAS_MAP_LAYOUT,
  VFIO_DEVICE_ATTACH_IOMMUFD_PT_LAYOUT,
  VFIO_DEVICE_BIND_IOMMUFD_LAYOUT,
  VFIO_DEVICE_DETACH_IOMMUFD_PT_LAYOUT,
  decodeStruct,
  encodeStruct,
  errnoName,
  ioctlByRequest,
  ioctlNumber,
  nonZeroReserved,
  readU32,
  readU64,
  writeU32,
  writeU64,
} from '../../lib/host/iommufd-uapi';
import type { FieldSpec, StructLayout, StructShape } from '../../lib/byte-layout';

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

function fromHex(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text.replace(/\s+/g, ''), 'hex'));
}

type AnyLayout = StructLayout<readonly FieldSpec[]>;

/**
 * Each struct with known field values and the bytes the C struct holds for them (little-endian, fields at the
 * offsets of reference/host-bind.md), written out by hand, field by field.
 */
const CASES: { layout: AnyLayout; value: Record<string, number | bigint>; bytes: string }[] = [
  { layout: IOMMU_DESTROY_LAYOUT as never, value: { size: 8, id: 0x01020304 }, bytes: '08000000 04030201' },
  { layout: IOMMU_IOAS_ALLOC_LAYOUT as never, value: { size: 12, flags: 0, outIoasId: 0x0a0b0c0d }, bytes: '0c000000 00000000 0d0c0b0a' },
  {
    layout: IOMMU_IOAS_MAP_LAYOUT as never,
    value: { size: 40, flags: 7, ioasId: 5, userVa: 0x7f11_2233_4000n, length: 0x4000_0000n, iova: 0x10_0000n },
    bytes: '28000000 07000000 05000000 00000000 00403322117f0000 0000004000000000 0000100000000000',
  },
  {
    layout: IOMMU_HWPT_ALLOC_LAYOUT as never,
    value: { size: 48, flags: 0xc, devId: 2, ptId: 3, outHwptId: 0, dataType: 1, dataLen: 24, dataUptr: 0x1122334455667788n, faultId: 9 },
    bytes: '30000000 0c000000 02000000 03000000 00000000 00000000 01000000 18000000 8877665544332211 09000000 00000000',
  },
  {
    layout: IOMMU_HW_INFO_LAYOUT as never,
    value: { size: 40, flags: 1, devId: 2, dataLen: 24, dataUptr: 0x1000n, dataType: 1, outMaxPasidLog2: 20, outCapabilities: 6n },
    bytes: '28000000 01000000 02000000 18000000 0010000000000000 01000000 14 000000 0600000000000000',
  },
  {
    layout: IOMMU_HW_INFO_VTD_LAYOUT as never,
    value: { flags: 1, capReg: 0x0102030405060708n, ecapReg: 0x1112131415161718n },
    bytes: '01000000 00000000 0807060504030201 1817161514131211',
  },
  {
    layout: IOMMU_HWPT_VTD_S1_LAYOUT as never,
    value: { flags: 5n, pgtblAddr: 0x1234_5000n, addrWidth: 57 },
    bytes: '0500000000000000 0050341200000000 39000000 00000000',
  },
  {
    layout: IOMMU_HWPT_INVALIDATE_LAYOUT as never,
    value: { size: 32, hwptId: 7, dataUptr: 0x2000n, dataType: 0, entryLen: 24, entryNum: 1 },
    bytes: '20000000 07000000 0020000000000000 00000000 18000000 01000000 00000000',
  },
  {
    layout: IOMMU_HWPT_VTD_S1_INVALIDATE_LAYOUT as never,
    value: { addr: 0x7000n, npages: (1n << 64n) - 1n, flags: 1 },
    bytes: '0070000000000000 ffffffffffffffff 01000000 00000000',
  },
  {
    layout: IOMMU_FAULT_ALLOC_LAYOUT as never,
    value: { size: 16, flags: 0, outFaultId: 4, outFaultFd: 33 },
    bytes: '10000000 00000000 04000000 21000000',
  },
  {
    layout: IOMMU_HWPT_PGFAULT_LAYOUT as never,
    value: { flags: 3, devId: 2, pasid: 0x12345, grpid: 7, perm: 0xb, addr: 0xdead000n, length: 4096, cookie: 99 },
    bytes: '03000000 02000000 45230100 07000000 0b000000 00000000 00d0ea0d00000000 00100000 63000000',
  },
  { layout: IOMMU_HWPT_PAGE_RESPONSE_LAYOUT as never, value: { cookie: 99, code: 1 }, bytes: '63000000 01000000' },
  {
    layout: VFIO_DEVICE_BIND_IOMMUFD_LAYOUT as never,
    value: { argsz: 24, flags: 0, iommufd: 7, outDevid: 3, tokenUuidPtr: 0n },
    bytes: '18000000 00000000 07000000 03000000 0000000000000000',
  },
  {
    layout: VFIO_DEVICE_ATTACH_IOMMUFD_PT_LAYOUT as never,
    value: { argsz: 16, flags: 1, ptId: 12, pasid: 5 },
    bytes: '10000000 01000000 0c000000 05000000',
  },
  { layout: VFIO_DEVICE_DETACH_IOMMUFD_PT_LAYOUT as never, value: { argsz: 12, flags: 1, pasid: 5 }, bytes: '0c000000 01000000 05000000' },
];

/** Sizes and field offsets as the reference lists them (C names). */
const REFERENCE: Record<string, { size: number; offsets: Record<string, number> }> = {
  iommu_destroy: { size: 8, offsets: { size: 0, id: 4 } },
  iommu_ioas_alloc: { size: 12, offsets: { size: 0, flags: 4, out_ioas_id: 8 } },
  iommu_ioas_map: { size: 40, offsets: { size: 0, flags: 4, ioas_id: 8, __reserved: 12, user_va: 16, length: 24, iova: 32 } },
  iommu_hwpt_alloc: {
    size: 48,
    offsets: {
      size: 0,
      flags: 4,
      dev_id: 8,
      pt_id: 12,
      out_hwpt_id: 16,
      __reserved: 20,
      data_type: 24,
      data_len: 28,
      data_uptr: 32,
      fault_id: 40,
      __reserved2: 44,
    },
  },
  iommu_hw_info: {
    size: 40,
    offsets: {
      size: 0,
      flags: 4,
      dev_id: 8,
      data_len: 12,
      data_uptr: 16,
      out_data_type: 24,
      out_max_pasid_log2: 28,
      __reserved: 29,
      out_capabilities: 32,
    },
  },
  iommu_hw_info_vtd: { size: 24, offsets: { flags: 0, __reserved: 4, cap_reg: 8, ecap_reg: 16 } },
  iommu_hwpt_vtd_s1: { size: 24, offsets: { flags: 0, pgtbl_addr: 8, addr_width: 16, __reserved: 20 } },
  iommu_hwpt_invalidate: { size: 32, offsets: { size: 0, hwpt_id: 4, data_uptr: 8, data_type: 16, entry_len: 20, entry_num: 24, __reserved: 28 } },
  iommu_hwpt_vtd_s1_invalidate: { size: 24, offsets: { addr: 0, npages: 8, flags: 16, __reserved: 20 } },
  iommu_fault_alloc: { size: 16, offsets: { size: 0, flags: 4, out_fault_id: 8, out_fault_fd: 12 } },
  iommu_hwpt_pgfault: { size: 40, offsets: { flags: 0, dev_id: 4, pasid: 8, grpid: 12, perm: 16, __reserved: 20, addr: 24, length: 32, cookie: 36 } },
  iommu_hwpt_page_response: { size: 8, offsets: { cookie: 0, code: 4 } },
  vfio_device_bind_iommufd: { size: 24, offsets: { argsz: 0, flags: 4, iommufd: 8, out_devid: 12, token_uuid_ptr: 16 } },
  vfio_device_attach_iommufd_pt: { size: 16, offsets: { argsz: 0, flags: 4, pt_id: 8, pasid: 12 } },
  vfio_device_detach_iommufd_pt: { size: 12, offsets: { argsz: 0, flags: 4, pasid: 8 } },
};

/** C member name of a field (the table's spec names index arrays as name[i]; offsetof wants the array). */
function cMember(field: FieldSpec): string | undefined {
  return field.spec.includes('[') ? undefined : field.spec;
}

describe('iommufd uAPI layouts', () => {
  it('describes every struct of the reference, each once', () => {
    assert.deepEqual(IOMMUFD_LAYOUTS.map((layout) => layout.name).sort(), Object.keys(REFERENCE).sort());
    assert.equal(CASES.length, IOMMUFD_LAYOUTS.length);
  });

  for (const { layout, value, bytes } of CASES) {
    it(`${layout.name}: size, offsets and bytes as the uAPI has them`, () => {
      const reference = REFERENCE[layout.name]!;
      assert.equal(layout.size, reference.size);
      for (const field of layout.fields) {
        const member = cMember(field);
        if (member !== undefined) assert.equal(field.offset, reference.offsets[member], `${layout.name}.${member}`);
      }
      assert.equal(Object.keys(reference.offsets).length, layout.fields.filter((field) => cMember(field)).length);
      const encoded = encodeStruct(layout, value as never);
      assert.equal(hex(encoded), hex(fromHex(bytes)));
      assert.deepEqual(decodeStruct(layout, encoded), value);
    });
  }

  it('finds a non-zero reserved field and refuses short buffers', () => {
    const bytes = encodeStruct(IOMMU_HWPT_ALLOC_LAYOUT, {
      size: 48,
      flags: 0,
      devId: 1,
      ptId: 2,
      outHwptId: 0,
      dataType: 0,
      dataLen: 0,
      dataUptr: 0n,
      faultId: 0,
    });
    assert.equal(nonZeroReserved(IOMMU_HWPT_ALLOC_LAYOUT, bytes), undefined);
    bytes[45] = 1;
    assert.equal(nonZeroReserved(IOMMU_HWPT_ALLOC_LAYOUT, bytes)?.spec, '__reserved2');
    const info = new Uint8Array(IOMMU_HW_INFO_LAYOUT.size);
    info[31] = 1;
    assert.equal(nonZeroReserved(IOMMU_HW_INFO_LAYOUT, info)?.offset, 30);
    assert.throws(() => decodeStruct(IOMMU_HWPT_ALLOC_LAYOUT, bytes.subarray(0, 47)), { code: 'ERR_IOMMUFD_SHORT' });
  });

  it('decode(encode(x)) == x for every struct', () => {
    for (const layout of IOMMUFD_LAYOUTS as readonly AnyLayout[]) {
      const fields: Record<string, fc.Arbitrary<number | bigint>> = {};
      for (const field of layout.fields) {
        if (field.reserved) continue;
        fields[field.key] =
          field.width === 8 ? fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) : fc.integer({ min: 0, max: 2 ** (8 * field.width) - 1 });
      }
      fc.assert(
        fc.property(fc.record(fields), (value) => {
          const bytes = encodeStruct(layout, value as never);
          assert.equal(bytes.length, layout.size);
          assert.deepEqual(decodeStruct(layout, bytes), { ...value });
          assert.equal(nonZeroReserved(layout, bytes), undefined);
        }),
        { numRuns: 200 },
      );
    }
  });
});

describe('iommufd ioctl numbers', () => {
  it('are _IO(";", nr): 0x3B00 | nr, with VFIO numbered from VFIO_BASE = 100', () => {
    assert.equal(ioctlNumber(0x3b, 0x80), 0x3b80);
    const expected: Record<string, number> = {
      IOMMU_DESTROY: 0x3b80,
      IOMMU_IOAS_ALLOC: 0x3b81,
      IOMMU_IOAS_MAP: 0x3b85,
      IOMMU_HWPT_ALLOC: 0x3b89,
      IOMMU_GET_HW_INFO: 0x3b8a,
      IOMMU_HWPT_INVALIDATE: 0x3b8d,
      IOMMU_FAULT_QUEUE_ALLOC: 0x3b8e,
      VFIO_DEVICE_BIND_IOMMUFD: 0x3b76,
      VFIO_DEVICE_ATTACH_IOMMUFD_PT: 0x3b77,
      VFIO_DEVICE_DETACH_IOMMUFD_PT: 0x3b78,
    };
    for (const [name, spec] of Object.entries(IOCTLS)) {
      assert.equal(spec.request, expected[name], name);
      assert.equal(ioctlByRequest(spec.request)?.name, name);
    }
    assert.equal(ioctlByRequest(0x3b84), undefined);
    assert.equal(errnoName(-22), 'EINVAL');
    assert.equal(errnoName(200), 'errno 200');
  });

  it('read and write one field in place by its layout key, of the width the accessor names', () => {
    const layout = IOMMU_HWPT_ALLOC_LAYOUT;
    const bytes = encodeStruct(layout, { size: 48, flags: 0, devId: 1, ptId: 2, outHwptId: 0, dataType: 0, dataLen: 0, dataUptr: 0n, faultId: 0 });
    writeU32(layout, bytes, 'outHwptId', 0x12345678);
    writeU64(layout, bytes, 'dataUptr', 0x7f00_1234_5000n);
    assert.equal(hex(bytes.subarray(16, 20)), '78563412');
    assert.equal(readU32(layout, bytes, 'outHwptId'), 0x12345678);
    assert.equal(readU64(layout, bytes, 'dataUptr'), 0x7f00_1234_5000n);
    writeU32(layout, bytes, 'outHwptId', -1);
    writeU64(layout, bytes, 'dataUptr', -1n);
    assert.deepEqual(
      [readU32(layout, bytes, 'outHwptId'), readU64(layout, bytes, 'dataUptr')],
      [0xffffffff, (1n << 64n) - 1n],
      'wrapped to the field',
    );
    assert.throws(() => readU32(layout, bytes.subarray(0, 16), 'outHwptId'), /iommu_hwpt_alloc\.outHwptId at 0 lies beyond the 16 bytes/);
    // Checked by tsc: each @ts-expect-error must meet an error, so a misspelt or mis-sized key cannot compile.
    // @ts-expect-error: the field is outHwptId.
    assert.throws(() => readU32(layout, bytes, 'outHwptID'), /iommu_hwpt_alloc has no field outHwptID/);
    // @ts-expect-error: dataUptr is a u64.
    assert.throws(() => readU32(layout, bytes, 'dataUptr'), /iommu_hwpt_alloc\.dataUptr is 8 bytes wide, not 4/);
    // @ts-expect-error: outHwptId is a u32.
    assert.throws(() => writeU64(layout, bytes, 'outHwptId', 1n), /iommu_hwpt_alloc\.outHwptId is 4 bytes wide, not 8/);
    // A layout seen as plain StructShape (a spec found by request number) is checked when the field is used.
    const plain: StructShape = layout;
    assert.throws(() => readU32(plain, bytes, 'dataUptr'), /is 8 bytes wide, not 4/);
  });

  it('name where the kernel writes pointers and fds', () => {
    assert.deepEqual(IOCTLS.IOMMU_IOAS_MAP.pointerFields, ['userVa']);
    assert.deepEqual(IOCTLS.IOMMU_HWPT_ALLOC.pointerFields, ['dataUptr']);
    assert.deepEqual(IOCTLS.IOMMU_FAULT_QUEUE_ALLOC.fdFields, ['outFaultFd']);
    assert.equal(IOCTLS.VFIO_DEVICE_ATTACH_IOMMUFD_PT.target, 'vfio-device');
  });
});

/** The text between the braces of `struct name { ... };` in a header (braces of inner unions balanced). */
function structBody(text: string, name: string): string | undefined {
  const start = text.search(new RegExp(`struct ${name} \\{`));
  if (start < 0) return undefined;
  let depth = 0;
  for (let i = text.indexOf('{', start); i < text.length; i++) {
    if (text[i] === '{') depth++;
    if (text[i] === '}' && --depth === 0) return text.slice(start, i);
  }
  return undefined;
}

describe('iommufd uAPI layouts against the C compiler', () => {
  /** VIOMMU_LINUX_HEADERS points at another include/ tree (e.g. a newer kernel's usr/include). */
  const includeDir = process.env.VIOMMU_LINUX_HEADERS ?? '/usr/include';
  const headers = ['iommufd.h', 'vfio.h'].map((file) => path.join(includeDir, 'linux', file));

  it('match sizeof/offsetof for the structs the installed kernel headers declare', function () {
    const cc = spawnSync('cc', ['--version'], { stdio: 'ignore' });
    if (cc.status !== 0) {
      console.log('      skipped: no C compiler (cc) on this machine');
      this.skip();
    }
    const text = headers
      .filter((file) => fs.existsSync(file))
      .map((file) => fs.readFileSync(file, 'utf8'))
      .join('\n');
    // Older headers hold older versions of some structs: only members the installed struct declares are compared,
    // and sizeof only when it declares them all.
    const present = (IOMMUFD_LAYOUTS as readonly AnyLayout[]).flatMap((layout) => {
      const body = structBody(text, layout.name);
      if (body === undefined) return [];
      const members = layout.fields.flatMap((field) => {
        const member = cMember(field);
        return member && new RegExp(`\\b${member}\\b`).test(body) ? [member] : [];
      });
      const all = layout.fields.every((field) => !cMember(field) || members.includes(cMember(field)!));
      return [{ layout, members, all }];
    });
    if (present.length === 0) {
      console.log(`      skipped: ${headers.join(' and ')} declare none of these structs (iommufd.h missing or older than the HWPT uAPI)`);
      this.skip();
    }
    const lines = present.flatMap(({ layout, members, all }) => [
      ...(all ? [`printf("${layout.name} %zu\\n", sizeof(struct ${layout.name}));`] : []),
      ...members.map((member) => `printf("${layout.name}.${member} %zu\\n", offsetof(struct ${layout.name}, ${member}));`),
    ]);
    const source = `#include <stddef.h>\n#include <stdio.h>\n#include <linux/types.h>\n${headers
      .filter((file) => fs.existsSync(file))
      .map((file) => `#include <linux/${path.basename(file)}>`)
      .join('\n')}\nint main(void) {\n${lines.join('\n')}\nreturn 0;\n}\n`;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-iommufd-layout-'));
    try {
      fs.writeFileSync(path.join(dir, 'layout.c'), source);
      const build = spawnSync('cc', ['-I', includeDir, '-o', path.join(dir, 'layout'), path.join(dir, 'layout.c')], { encoding: 'utf8' });
      assert.equal(build.status, 0, build.stderr);
      const run = spawnSync(path.join(dir, 'layout'), [], { encoding: 'utf8' });
      const measured = new Map(
        run.stdout
          .trim()
          .split('\n')
          .map((line) => line.split(' ') as [string, string]),
      );
      for (const { layout, members, all } of present) {
        if (all) assert.equal(Number(measured.get(layout.name)), layout.size, `sizeof(struct ${layout.name})`);
        for (const member of members) {
          assert.equal(
            Number(measured.get(`${layout.name}.${member}`)),
            layout.fields.find((field) => field.spec === member)!.offset,
            `${layout.name}.${member}`,
          );
        }
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
