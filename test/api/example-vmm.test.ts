/**
 * examples/minimal-vmm.ts as a user runs it: its own process, its output line for line, the same output quoted in
 * docs/embedding.md, and imports from the package's entry points only.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const REPO = path.resolve(__dirname, '..', '..', '..');
const EXAMPLE = path.join(REPO, 'examples', 'minimal-vmm.ts');
const COMPILED = path.join(REPO, 'dist', 'examples', 'minimal-vmm.js');

const EXPECTED_OUTPUT = `\
vmm: 16 MiB of guest RAM, VT-d registers at 0xfed90000, 'nic' at 01:00.0
guest: CAP SAGAW 0x6 (4-level: yes), 1 fault record(s) at 0x220
guest: root table 0x100000, context entry for 01:00.0 (domain 1), IOVA 0x40000000 -> 0x200000 read/write
guest: GSTS RTPS TES
device 01:00.0: read "hello from the guest" at IOVA 0x40000000
device 01:00.0: wrote at IOVA 0x40000100; the guest reads "hello from the device" at 0x200100
cpu: MSI 0xfee00000 data 0x31
device 01:00.0: write at IOVA 0x40001000 refused (errno 14): 0x5 WRITE: PTE Write access is not set
guest: FSTS PPF 1, FRCD0: 01:00.0 write at 0x40001000, reason 0x5 WRITE: PTE Write access is not set
guest: record cleared, FSTS PPF 0
cpu: MSI 0xfee01000 data 0x41
device 01:00.0: MSI 0xfee01000 data 0x41 -> delivered
ok
`;

describe('examples/minimal-vmm: a VMM with its own MMIO dispatch and guest RAM', () => {
  let stdout: string;

  before(async () => {
    const result = await run(process.execPath, [COMPILED], { cwd: REPO });
    stdout = result.stdout;
  });

  it('maps the unit, programs it from the field tables, and does a translated DMA and a faulting one', () => {
    assert.equal(stdout, EXPECTED_OUTPUT);
  });

  it('is quoted in docs/embedding.md as it runs', () => {
    const doc = fs.readFileSync(path.join(REPO, 'docs', 'embedding.md'), 'utf8');
    assert.ok(doc.includes('```text\n' + stdout + '```'), "docs/embedding.md quotes the example's output verbatim in a ```text block");
  });

  it('imports only what the package exports (viommu/vtd, viommu/vmm, viommu/memory)', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { exports: Record<string, { require?: string } | string> };
    const entryFiles = new Set(
      Object.values(pkg.exports).flatMap((entry) => (typeof entry === 'object' && entry.require ? [path.join(REPO, entry.require)] : [])),
    );
    const source = fs.readFileSync(EXAMPLE, 'utf8');
    const specifiers = [...source.matchAll(/^import [^;]*? from '([^']+)';$/gm)].map((match) => match[1]!);
    assert.deepEqual(specifiers, ['../lib/api/vtd', '../lib/api/vmm', '../lib/memory']);
    for (const specifier of specifiers) {
      const compiled = path.join(REPO, 'dist', 'examples', specifier);
      const file = [`${compiled}.js`, path.join(compiled, 'index.js')].find((candidate) => fs.existsSync(candidate));
      assert.ok(file !== undefined && entryFiles.has(file), `${specifier} is not a package entry point`);
    }
  });
});
