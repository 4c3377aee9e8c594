/**
 * docs/properties.md is generated from VTD_PROPERTIES and CONFIG_RULES (lib/vtd/config.ts): the property list a user
 * reads is the one the parser accepts. This test renders it and compares; VIOMMU_UPDATE_DOCS=1 rewrites the file.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { repositoryRoot } from '../helpers';
import { CONFIG_RULES, VTD_PROPERTIES, resolveVtdConfig } from '../../lib/vtd/config';

const DOC = 'docs/properties.md';

function cell(text: string): string {
  return text.replace(/\|/g, '\\|');
}

function defaultOf(name: string): string {
  if (name === 'aw-bits') return '39 (48 with compat=qemu-10.0 or qemu-latest)';
  if (name === 'intremap' || name === 'eim') return `auto (${String(resolveVtdConfig()[name]) === 'true' ? 'on' : 'off'} here)`;
  const value = (resolveVtdConfig() as unknown as Record<string, unknown>)[name];
  return typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
}

export function renderPropertiesDoc(): string {
  const lines = [
    '# Unit properties',
    '',
    '<!-- Generated from lib/vtd/config.ts by test/vtd/properties-doc.test.ts; VIOMMU_UPDATE_DOCS=1 rewrites it. -->',
    '',
    'The VT-d unit takes QEMU intel-iommu property names, so a QEMU command line maps one to one:',
    '`viommu qtest --iommu aw-bits=48,caching-mode=on`, `viommu smoke --iommu x-scalable-mode=on,...`, or',
    "`new VtdUnit({ config: 'aw-bits=48,caching-mode=on', ... })`. Booleans take on/off (also yes/no, true/false).",
    'The origin column says where each comes from: QEMU (the device that defines it, and since when) or viommu only.',
    '',
    '| property | default | origin | what it does |',
    '|---|---|---|---|',
    ...VTD_PROPERTIES.map((p) => `| \`${p.name}\` | ${defaultOf(p.name)} | ${cell(p.origin)} | ${cell(p.description)} |`),
    '',
    '## Combinations refused',
    '',
    "A configuration that breaks one of these rules is refused with the rule's id in the message (VtdConfigError).",
    '',
    '| rule | from | message |',
    '|---|---|---|',
    ...CONFIG_RULES.map((rule) => `| \`${rule.id}\` | ${cell(rule.source)} | ${cell(rule.message)} |`),
    '',
    'How viommu departs from QEMU under each `compat` value, and why, is in [qemu-deviations.md](qemu-deviations.md).',
    '',
  ];
  return lines.join('\n');
}

describe('docs/properties.md', () => {
  it('lists every property the parser accepts, with its default and origin, and every rule (VIOMMU_UPDATE_DOCS=1 rewrites it)', () => {
    const file = path.join(repositoryRoot(), DOC);
    const expected = renderPropertiesDoc();
    if (process.env.VIOMMU_UPDATE_DOCS === '1') fs.writeFileSync(file, expected);
    const actual = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '(missing)';
    assert.equal(actual, expected, `${DOC} is out of date with lib/vtd/config.ts: rerun with VIOMMU_UPDATE_DOCS=1`);
  });
});
