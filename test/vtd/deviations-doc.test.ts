/**
 * docs/qemu-deviations.md is generated from COMPAT_QUIRKS, UNREPRODUCED_QEMU_DIFFERENCES and CAPABILITY_EXTENSIONS:
 * this test renders it and compares. VIOMMU_UPDATE_DOCS=1 rewrites the file instead.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { COMPAT_QUIRKS, UNREPRODUCED_QEMU_DIFFERENCES, type CompatQuirk } from '../../lib/vtd/compat-quirks';
import { CAPABILITY_EXTENSIONS } from '../../lib/vtd/config';

function repositoryRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

const DOC = 'docs/qemu-deviations.md';

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

/** What a quirk may change, as register fields and observation kinds: `FRCD_HI: FR PV; memory data`. */
function changes(quirk: CompatQuirk): string {
  const registers = Object.entries(quirk.changes.registers ?? {}).map(([register, fields]) => `${register}: ${fields.join(' ')}`);
  const kinds = (quirk.changes.observations ?? []).map((kind) => (kind === 'data' ? 'memory data' : 'MSIs'));
  return [...registers, ...kinds].join('; ');
}

export function renderDeviationsDoc(): string {
  const lines = [
    '# Where viommu and QEMU 7.2 differ',
    '',
    '<!-- Generated from lib/vtd/compat-quirks.ts and lib/vtd/config.ts by test/vtd/deviations-doc.test.ts;',
    '     edit those tables, then run the test with VIOMMU_UPDATE_DOCS=1. -->',
    '',
    "The unit follows the VT-d specification. `compat=qemu-7.2` (a viommu-only intel-iommu property) adds QEMU 7.2's",
    'departures from it, so that the differential tests in test/oracle/ can compare every value exactly; they also run',
    'the default mode and accept a difference only where a quirk below is named for that value, and only within what',
    "the quirk changes (its register fields, bit by bit, or the kind of value: memory data, MSIs).",
    '',
    '## QEMU behaviour the unit can reproduce (compat quirks)',
    '',
    '"always" means the spec permits QEMU\'s choice or says nothing, so every mode has it.',
    '',
    '| quirk | in effect | QEMU 7.2 | changes | shown by |',
    '|---|---|---|---|---|',
  ];
  for (const quirk of COMPAT_QUIRKS) {
    const when = quirk.compat === 'all' ? 'always' : quirk.compat.map((c) => `compat=${c}`).join(', ');
    lines.push(`| \`${quirk.id}\` | ${when} | ${cell(quirk.description)} | ${cell(changes(quirk))} | ${cell(quirk.evidence)} |`);
  }
  lines.push(
    '',
    '## QEMU behaviour no mode reproduces',
    '',
    '| difference | QEMU 7.2 | why not |',
    '|---|---|---|',
  );
  for (const difference of UNREPRODUCED_QEMU_DIFFERENCES) {
    lines.push(`| \`${difference.id}\` | ${cell(difference.description)} | ${cell(difference.why)} |`);
  }
  lines.push(
    '',
    '## Capability bits QEMU 7.2 does not set for the same properties',
    '',
    '| register | field | value | when | origin | note |',
    '|---|---|---|---|---|---|',
  );
  for (const extension of CAPABILITY_EXTENSIONS) {
    const when = extension.trigger === 'compat' ? 'compat=qemu-latest' : 'its property is set';
    lines.push(`| ${extension.register} | ${extension.field} | ${extension.value} | ${when} | ${cell(extension.origin)} | ${cell(extension.note)} |`);
  }
  lines.push('');
  return lines.join('\n');
}

describe('docs/qemu-deviations.md', () => {
  it('is what the quirk tables render (VIOMMU_UPDATE_DOCS=1 rewrites it)', () => {
    const file = path.join(repositoryRoot(), DOC);
    const expected = renderDeviationsDoc();
    if (process.env.VIOMMU_UPDATE_DOCS === '1') fs.writeFileSync(file, expected);
    const actual = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '(missing)';
    assert.equal(actual, expected, `${DOC} is out of date with lib/vtd/compat-quirks.ts: rerun with VIOMMU_UPDATE_DOCS=1`);
  });

  it('names, for every quirk, an oracle test that exercises it by its id', () => {
    const root = repositoryRoot();
    for (const quirk of COMPAT_QUIRKS) {
      const evidence = path.join(root, quirk.evidence);
      assert.ok(fs.existsSync(evidence), `${quirk.id}: ${quirk.evidence} exists`);
      const source = fs.readFileSync(evidence, 'utf8');
      // Always-on quirks too: each names the oracle observation that shows QEMU behaving so.
      const named = source.includes(`'${quirk.id}'`);
      assert.ok(named, `${quirk.id} is tagged in ${quirk.evidence}`);
    }
  });
});
