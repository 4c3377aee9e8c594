/**
 * docs/qemu-deviations.md is generated from COMPAT_QUIRKS, UNREPRODUCED_QEMU_DIFFERENCES and CAPABILITY_EXTENSIONS:
 * this test renders it and compares. VIOMMU_UPDATE_DOCS=1 rewrites the file instead. What follows the HAND_WRITTEN
 * marker line is kept as it is (the reasoning behind the QEMU 10.0 quirks), and must name each of them.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repositoryRoot } from '../helpers';
import { COMPAT_QUIRKS, UNREPRODUCED_QEMU_DIFFERENCES, type CompatQuirk } from '../../lib/vtd/compat-quirks';
import { CAPABILITY_EXTENSIONS } from '../../lib/vtd/config';

const DOC = 'docs/qemu-deviations.md';
/** The line after which the file is written by hand; the generator keeps what follows. */
export const HAND_WRITTEN = '<!-- Written by hand below this line: kept as it is when the tables above are regenerated. -->';

/** The evidence files a quirk names (comma-separated). */
function evidenceFiles(quirk: CompatQuirk): string[] {
  return quirk.evidence
    .split(',')
    .map((file) => file.trim())
    .filter((file) => file.length > 0);
}

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
    '# Where viommu and QEMU (7.2 and 10.0) differ',
    '',
    '<!-- Generated from lib/vtd/compat-quirks.ts and lib/vtd/config.ts by test/vtd/deviations-doc.test.ts;',
    '     edit those tables, then run the test with VIOMMU_UPDATE_DOCS=1. -->',
    '',
    'The unit follows the VT-d specification. `compat=qemu-7.2` and `compat=qemu-10.0` (viommu-only intel-iommu',
    'properties) add the departures from it of QEMU 7.2 (Debian 12) and QEMU 10.0.2 (Debian bookworm-backports, x-flts),',
    'so that the differential tests in test/oracle/ can compare every value exactly; they also run the default mode and',
    'accept a difference only where a quirk below is named for that value, and only within what the quirk changes (its',
    'register or page-table-entry fields, bit by bit, or the kind of value: memory data, MSIs).',
    '',
    '## QEMU behaviour the unit can reproduce (compat quirks)',
    '',
    '"always" means the spec permits QEMU\'s choice or says nothing, so every mode has it.',
    '',
    '| quirk | in effect | QEMU | changes | shown by |',
    '|---|---|---|---|---|',
  ];
  for (const quirk of COMPAT_QUIRKS) {
    const when = quirk.compat === 'all' ? 'always' : quirk.compat.map((c) => `compat=${c}`).join(', ');
    lines.push(`| \`${quirk.id}\` | ${when} | ${cell(quirk.description)} | ${cell(changes(quirk))} | ${cell(quirk.evidence)} |`);
  }
  lines.push('', '## QEMU behaviour no mode reproduces', '', '| difference | QEMU | why not |', '|---|---|---|');
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
    lines.push(
      `| ${extension.register} | ${extension.field} | ${extension.shown ?? String(extension.value)} | its property is set | ${cell(extension.origin)} | ${cell(extension.note)} |`,
    );
  }
  lines.push('', HAND_WRITTEN, '');
  return lines.join('\n');
}

/** The hand-written part of the file: everything after the HAND_WRITTEN line ('' when there is none). */
function handWritten(text: string): string {
  const at = text.indexOf(`${HAND_WRITTEN}\n`);
  return at < 0 ? '' : text.slice(at + HAND_WRITTEN.length + 1);
}

describe('docs/qemu-deviations.md', () => {
  it('is what the quirk tables render, followed by the hand-written part (VIOMMU_UPDATE_DOCS=1 rewrites the rest)', () => {
    const file = path.join(repositoryRoot(), DOC);
    const current = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    const expected = renderDeviationsDoc() + handWritten(current);
    if (process.env.VIOMMU_UPDATE_DOCS === '1') fs.writeFileSync(file, expected);
    const actual = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '(missing)';
    assert.equal(actual, expected, `${DOC} is out of date with lib/vtd/compat-quirks.ts: rerun with VIOMMU_UPDATE_DOCS=1`);
  });

  it('gives, by hand, the reasoning for every QEMU 10.0 quirk: which side the spec supports', () => {
    const text = handWritten(fs.readFileSync(path.join(repositoryRoot(), DOC), 'utf8'));
    for (const quirk of COMPAT_QUIRKS) {
      if (quirk.compat === 'all' || !quirk.compat.includes('qemu-10.0')) continue;
      assert.ok(text.includes(`\`${quirk.id}\``), `${DOC}: the hand-written part names ${quirk.id}`);
    }
  });

  it('names, for every quirk, an oracle test that exercises it by its id', () => {
    const root = repositoryRoot();
    for (const quirk of COMPAT_QUIRKS) {
      const files = evidenceFiles(quirk);
      assert.ok(files.length > 0, `${quirk.id} names its evidence`);
      for (const file of files) {
        const evidence = path.join(root, file);
        assert.ok(fs.existsSync(evidence), `${quirk.id}: ${file} exists`);
        const source = fs.readFileSync(evidence, 'utf8');
        // Always-on quirks too: each names the oracle observation that shows QEMU behaving so.
        assert.ok(source.includes(`'${quirk.id}'`), `${quirk.id} is tagged in ${file}`);
      }
    }
  });
});
