/** `viommu demo --trace FILE` as a user runs it: every mode's events in one file, each line with its mode, checked against docs/trace.md. */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BIND_HOST_TRACE_KINDS } from '../../lib/vmm/demo-bind';
import { UNIT_TRACE_KINDS, type TraceSchema } from '../../lib/vtd/unit-trace';
import { runViommu } from '../vfio-user/cli-process';
import { repositoryRoot } from '../helpers';

const ENGINE_MODES = ['legacy', 'scalable-second-stage', 'scalable-first-stage', 'nested'];
const MODES = [...ENGINE_MODES, 'bind'];

interface TraceLine {
  readonly t: number;
  readonly mode: string;
  readonly kind: string;
  readonly [field: string]: unknown;
}

/** One field as docs/trace.md documents it: the type column without its ", optional", and whether it says optional. */
interface DocumentedField {
  readonly type: string;
  readonly optional: boolean;
}

/** The rows `| \`name\` | type | meaning |` of a section's table (`kind` itself left out). */
function documentedFields(section: string): Map<string, DocumentedField> {
  const fields = new Map<string, DocumentedField>();
  for (const [, name, type] of section.matchAll(/^\| `([^`]+)` \| ([^|]*?) \|/gm)) {
    if (name === 'kind') continue;
    fields.set(name!, { type: type!.replace(/, optional$/, ''), optional: type!.endsWith(', optional') });
  }
  return fields;
}

/** docs/trace.md as a schema: each `### kind` section's fields, and the fields every demo line adds (its `mode`). */
function documentedSchema(): { kinds: Map<string, Map<string, DocumentedField>>; demoLine: Map<string, DocumentedField> } {
  const doc = fs.readFileSync(path.join(repositoryRoot(), 'docs', 'trace.md'), 'utf8');
  const sections = doc.split(/^(?=#{1,3} )/m);
  const kinds = new Map(
    sections
      .filter((section) => section.startsWith('### '))
      .map((section) => [section.slice(4, section.indexOf('\n')).trim().replace(/`/g, ''), documentedFields(section)] as const),
  );
  const demo = sections.find((section) => section.startsWith('## Demo lines'));
  assert.ok(demo !== undefined, "docs/trace.md has no '## Demo lines' section");
  return { kinds, demoLine: documentedFields(demo) };
}

/** Whether `value` is of the documented `type` (the type column's words). */
function hasDocumentedType(type: string, value: unknown): boolean {
  switch (type) {
    case 'number':
      return typeof value === 'number' && Number.isFinite(value);
    case 'hex string':
      return typeof value === 'string' && /^0x[0-9a-f]+$/.test(value);
    case 'string':
      return typeof value === 'string';
    case 'boolean':
      return typeof value === 'boolean';
    case '4 or 8':
      return value === 4 || value === 8;
    case 'object':
      return typeof value === 'object' && value !== null && !Array.isArray(value);
    case 'object or array':
      return typeof value === 'object' && value !== null;
    default:
      throw new Error(`docs/trace.md uses a type this test does not know: ${type}`);
  }
}

/** Checks one line against the documented schema; returns what is wrong with it, if anything. */
function schemaProblems(line: TraceLine, schema: ReturnType<typeof documentedSchema>): string[] {
  const fields = schema.kinds.get(line.kind);
  if (fields === undefined) return [`kind ${line.kind} is not documented`];
  const problems: string[] = [];
  if (typeof line.t !== 'number') problems.push('t is not a number');
  for (const [name, value] of Object.entries(line)) {
    if (name === 't' || name === 'kind') continue;
    const field = fields.get(name) ?? schema.demoLine.get(name);
    if (field === undefined) problems.push(`${name} is not documented for ${line.kind}`);
    else if (!hasDocumentedType(field.type, value)) problems.push(`${name} is not a ${field.type}: ${JSON.stringify(value)}`);
  }
  for (const [name, field] of [...fields, ...schema.demoLine]) if (!field.optional && !(name in line)) problems.push(`${line.kind} lacks ${name}`);
  return problems;
}

function readTrace(file: string): TraceLine[] {
  const text = fs.readFileSync(file, 'utf8');
  assert.ok(text.endsWith('\n'), 'the file ends with a whole line');
  return text
    .slice(0, -1)
    .split('\n')
    .map((line) => JSON.parse(line) as TraceLine);
}

describe('cli: viommu demo --trace FILE', function () {
  this.timeout(60_000);
  let directory: string;

  beforeEach(() => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-demo-trace-'));
  });

  afterEach(() => {
    fs.rmSync(directory, { recursive: true, force: true });
  });

  it("writes every mode's events, each line naming its mode and valid against docs/trace.md", async () => {
    const file = path.join(directory, 'demo.jsonl');
    const result = await runViommu(['demo', '--trace', file]);
    assert.equal(result.code, 0, `stdout:\n${result.stdout}\nstderr:\n${result.stderr}`);
    assert.equal(result.stderr, '');
    assert.match(result.stdout, new RegExp(`^trace: ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(JSON lines`, 'm'));

    const lines = readTrace(file);
    const schema = documentedSchema();
    for (const line of lines) assert.deepEqual(schemaProblems(line, schema), [], JSON.stringify(line));
    lines.forEach((line, i) => assert.ok(i === 0 || line.t >= lines[i - 1]!.t, `t goes forward at line ${i + 1}`));

    // The modes follow one another, each in one block, in the order the demo runs them.
    const order = lines.map((line) => line.mode).filter((mode, i, all) => i === 0 || mode !== all[i - 1]);
    assert.deepEqual(order, MODES);
    const kindsOf = (mode: string) => new Set(lines.filter((line) => line.mode === mode).map((line) => line.kind));
    for (const mode of MODES)
      for (const kind of ['register-write', 'descriptor', 'translation', 'fault'])
        assert.ok(kindsOf(mode).has(kind), `mode ${mode} has no ${kind} line`);
    for (const mode of ENGINE_MODES) assert.ok(kindsOf(mode).has('interrupt'), `mode ${mode} has no interrupt line`);
    for (const kind of ['host-request', 'host-fault', 'host-page-response'])
      assert.ok(kindsOf('bind').has(kind), `the bind mode has no ${kind} line`);

    // Each fault says where: the stage, the level and the entry that decided.
    const faults = lines.filter((line) => line.kind === 'fault');
    for (const fault of faults) {
      assert.ok(typeof fault.stage === 'string' && typeof fault.level === 'number', `stage and level: ${JSON.stringify(fault)}`);
      assert.match(String(fault.entryAddress), /^0x[0-9a-f]+$/, `the entry's address: ${JSON.stringify(fault)}`);
    }
    const legacyRead = faults.find((line) => line.mode === 'legacy' && line.iova === '0xb000000');
    assert.deepEqual(
      [legacyRead?.reasonName, legacyRead?.stage, legacyRead?.entryValue, 'walkPasid' in legacyRead!],
      ['READ', 'second-stage', '0x0', false],
      'the unmapped read: a not-present second-stage entry, no PASID in legacy mode',
    );
    const nestedHole = faults.find((line) => line.mode === 'nested' && line.iova === '0xb001000');
    assert.deepEqual(
      [nestedHole?.reasonName, nestedHole?.stage, nestedHole?.level, nestedHole?.secondStageLevel, nestedHole?.walkPasid],
      ['SM_READ', 'second-stage', 0, 2, 0],
      "the nested mode's hole: the second stage, translating the first stage's output (level 0), stopped at its level 2, for RID_PASID 0",
    );
    const supervisor = faults.find((line) => line.mode === 'scalable-first-stage' && line.reasonName === 'SM_USER_SUPERVISOR');
    assert.deepEqual([supervisor?.stage, supervisor?.level], ['first-stage', 1]);
    assert.ok(
      BigInt(String(supervisor?.entryValue)) & 1n && !(BigInt(String(supervisor?.entryValue)) & 4n),
      'the leaf that refused the user request is present with U/S = 0',
    );
    // A fault follows its translation at once.
    for (const fault of faults) {
      const before = lines[lines.indexOf(fault) - 1]!;
      assert.deepEqual([before.kind, before.ok, before.iova, before.mode], ['translation', false, fault.iova, fault.mode]);
    }
  });

  it('docs/trace.md documents each host event of the bind mode, field by field, as BIND_HOST_TRACE_KINDS has them', () => {
    const { kinds } = documentedSchema();
    const check = (schema: TraceSchema) => {
      for (const [kind, spec] of Object.entries(schema)) {
        const documented = kinds.get(kind);
        assert.ok(documented !== undefined, `docs/trace.md has no '### ${kind}' section`);
        assert.deepEqual([...documented.keys()], Object.keys(spec.fields), `docs/trace.md: the fields of ${kind}`);
        for (const [name, field] of Object.entries(spec.fields))
          assert.equal(documented.get(name)!.optional, field.optional, `docs/trace.md: ${kind}.${name} optional`);
      }
    };
    check(BIND_HOST_TRACE_KINDS);
    check(UNIT_TRACE_KINDS);
  });

  it('traces a mode without bind, and says on stderr when the trace could not be written to the end', async () => {
    const full = await runViommu(['demo', '--mode', 'legacy', '--trace', '/dev/full']);
    assert.equal(full.code, 0, 'the demo passed; only its trace is incomplete');
    assert.match(full.stdout, /^viommu demo: every mode passed$/m);
    assert.match(full.stderr, /^viommu demo: --trace \/dev\/full is incomplete: ENOSPC/m);

    const missing = await runViommu(['demo', '--mode', 'nested', '--trace', path.join(directory, 'no-such-directory', 'demo.jsonl')]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /--trace .*no-such-directory.*ENOENT/);
    assert.doesNotMatch(missing.stdout, /\[nested/, 'refused before any mode ran');

    const cdev = await runViommu(['demo', '--mode', 'legacy', '--vfio-cdev', '/dev/vfio/devices/vfio0']);
    assert.equal(cdev.code, 1);
    assert.match(cdev.stderr, /--vfio-cdev belongs to the bind mode, which --mode leaves out/);
  });
});
