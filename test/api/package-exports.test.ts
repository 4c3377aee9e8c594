/**
 * The package as a user installs it: `npm pack` of this checkout unpacked into a scratch project's node_modules
 * (with the addon this checkout built, as the install script would build it), then every entry point required,
 * imported and type-checked from there, and deep imports refused.
 */
import { strict as assert } from 'node:assert';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import * as ts from 'typescript';

const run = promisify(execFile);
const REPO = path.resolve(__dirname, '..', '..', '..');
const PACKAGE = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as {
  main: string;
  types: string;
  bin: Record<string, string>;
  exports: Record<string, string | { types: string; require: string; default: string }>;
  typesVersions: Record<string, Record<string, string[]>>;
};

/** Names each entry must offer (a floor: the entries may offer more, deliberately). */
const EXPECTED: Record<string, readonly string[]> = {
  viommu: [
    'VtdUnit',
    'DeviceRegistry',
    'registerWindow',
    'requesterId',
    'GuestMemory',
    'SharedRegion',
    'DmaFault',
    'TranslationDmaFault',
    'ViommuError',
    'VfioUserClient',
    'VfioUserServer',
    'ShadowBackend',
    'KvmMachine',
  ],
  'viommu/vtd': [
    'VtdUnit',
    'VtdRequestError',
    'VTD_PROPERTIES',
    'resolveVtdConfig',
    'vtdConfigFromString',
    'FAULT_REASONS',
    'describeFaultReason',
    'REGISTERS',
    'registerOffset',
    'GCMD_FIELDS',
    'LEGACY_ROOT_ENTRY',
    'SECOND_STAGE_4K_LEAF',
    'encodeBig',
    'decodeBig',
    'TranslationDmaFault',
    'DeviceRegistry',
    'registerWindow',
    'requesterId',
    'IOMMU_WINDOW_SIZE',
  ],
  'viommu/vmm': [
    'DeviceRegistry',
    'registerWindow',
    'shadowBackendFor',
    'requesterId',
    'formatRequesterId',
    'IOMMU_WINDOW_SIZE',
    'TestbedMachine',
    'DMAR_BASE',
    'VfioUserAttachment',
  ],
  'viommu/vfio-user': [
    'VfioUserClient',
    'VfioUserServer',
    'VfioUserDevice',
    'registerRegion',
    'createDmaEngine',
    'InMemoryTransport',
    'socketTransport',
    'VfioUserProtocolError',
    'errnoOf',
  ],
  'viommu/host': ['ShadowBackend', 'ShadowMappings', 'ShadowHostBackend', 'NestingHostBackend', 'NestingBackend', 'nestingConfigProblems'],
  'viommu/machine': ['KvmMachine', 'MACHINE_LAYOUT', 'renderSmokeReport', 'summarizeUnit'],
  'viommu/memory': ['GuestMemory', 'SharedRegion', 'DmaFault', 'isPromiseLike'],
  'viommu/os': ['MessageSocket', 'UnixServer', 'EventFd', 'KvmTranslator', 'KvmVirtualMachine'],
  'viommu/errors': ['ViommuError', 'GuestMemoryError'],
};

const ENTRIES = Object.keys(PACKAGE.exports).filter((key) => key !== './package.json');
const specifier = (key: string): string => (key === '.' ? 'viommu' : `viommu/${key.slice(2)}`);

/** Runs `script` with node in `cwd`, returning what it printed as JSON. */
async function nodeJson(cwd: string, args: readonly string[]): Promise<unknown> {
  const { stdout } = await run(process.execPath, [...args], { cwd });
  return JSON.parse(stdout);
}

describe('package entry points, installed from a packed tarball', function () {
  this.timeout(30_000);
  let scratch: string;
  let files: Set<string>;

  before(async () => {
    scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-consumer-'));
    const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', scratch], { cwd: REPO });
    const [packed] = JSON.parse(stdout) as { filename: string; files: { path: string }[] }[];
    files = new Set(packed!.files.map((file) => file.path));
    const installed = path.join(scratch, 'node_modules', 'viommu');
    fs.mkdirSync(installed, { recursive: true });
    await run('tar', ['xzf', path.join(scratch, packed!.filename), '-C', installed, '--strip-components=1']);
    // What `npm install` would add: the addon its install script builds, the dependency, and @types/node for tsc.
    fs.mkdirSync(path.join(installed, 'build', 'Release'), { recursive: true });
    fs.copyFileSync(path.join(REPO, 'build', 'Release', 'viommu_native.node'), path.join(installed, 'build', 'Release', 'viommu_native.node'));
    fs.symlinkSync(path.join(REPO, 'node_modules', 'commander'), path.join(scratch, 'node_modules', 'commander'));
    fs.mkdirSync(path.join(scratch, 'node_modules', '@types'));
    fs.symlinkSync(path.join(REPO, 'node_modules', '@types', 'node'), path.join(scratch, 'node_modules', '@types', 'node'));
  });

  after(() => fs.rmSync(scratch, { recursive: true, force: true }));

  it('packs main, types, bin, every entry (JavaScript and types) and the addon sources, and no tests', () => {
    const targets = ENTRIES.flatMap((key) => {
      const entry = PACKAGE.exports[key]!;
      assert.equal(typeof entry, 'object', `${key} names its types and its require target`);
      const { types, require, default: fallback } = entry as { types: string; require: string; default: string };
      assert.equal(fallback, require, `${key}: import and require load the same file`);
      return [types, require];
    });
    assert.deepEqual(PACKAGE.exports['.'], { types: `./${PACKAGE.types}`, require: `./${PACKAGE.main}`, default: `./${PACKAGE.main}` });
    // typesVersions: the same types for TypeScript's node10 resolution, which does not read `exports`.
    const typesVersions = PACKAGE.typesVersions['*']!;
    assert.deepEqual(
      Object.keys(typesVersions).map((sub) => `./${sub}`),
      ENTRIES.filter((key) => key !== '.'),
    );
    for (const [sub, paths] of Object.entries(typesVersions)) {
      assert.deepEqual(
        paths.map((p) => `./${p}`),
        [(PACKAGE.exports[`./${sub}`] as { types: string }).types],
        `typesVersions agrees with exports for ${sub}`,
      );
    }
    const wanted = [PACKAGE.main, PACKAGE.types, ...Object.values(PACKAGE.bin), ...targets.map((t) => t.slice(2)), 'binding.gyp', 'native/addon.cc'];
    for (const file of wanted) assert.ok(files.has(file), `the tarball lacks ${file}`);
    assert.deepEqual(
      [...files].filter((file) => /^(dist\/)?(test|bench)\//.test(file)),
      [],
    );
  });

  it('resolves and requires every entry inside node_modules/viommu, each with its names', async () => {
    const script = `
      const out = {};
      for (const s of ${JSON.stringify(ENTRIES.map(specifier))}) out[s] = { file: require.resolve(s), names: Object.keys(require(s)) };
      console.log(JSON.stringify(out));`;
    const loaded = (await nodeJson(scratch, ['-e', script])) as Record<string, { file: string; names: string[] }>;
    const installed = fs.realpathSync(path.join(scratch, 'node_modules', 'viommu'));
    for (const [name, expected] of Object.entries(EXPECTED)) {
      const entry = loaded[name];
      assert.ok(entry, `${name} is an entry point`);
      assert.ok(fs.realpathSync(entry.file).startsWith(installed + path.sep), `${name} resolves inside the installed package: ${entry.file}`);
      const missing = expected.filter((n) => !entry.names.includes(n));
      assert.deepEqual(missing, [], `${name} lacks ${missing.join(', ')}`);
    }
    assert.deepEqual(Object.keys(loaded).sort(), Object.keys(EXPECTED).sort(), 'every entry is tested and every tested entry exists');
    // The root is a selection: everything it offers comes from a sub-entry, and the raw addon is not part of it.
    const elsewhere = new Set(
      Object.entries(loaded)
        .filter(([name]) => name !== 'viommu')
        .flatMap(([, entry]) => entry.names),
    );
    assert.deepEqual(
      loaded.viommu!.names.filter((n) => !elsewhere.has(n)),
      [],
    );
    assert.ok(!loaded.viommu!.names.includes('native'));
  });

  it('refuses deep imports past the entry points, and offers package.json', async () => {
    const script = `
      const codes = {};
      for (const s of ['viommu/dist/lib/vtd/unit', 'viommu/lib/vtd/unit', 'viommu/dist/lib/native']) {
        try { require(s); codes[s] = 'loaded'; } catch (e) { codes[s] = e.code; }
      }
      codes.version = require('viommu/package.json').version;
      console.log(JSON.stringify(codes));`;
    assert.deepEqual(await nodeJson(scratch, ['-e', script]), {
      'viommu/dist/lib/vtd/unit': 'ERR_PACKAGE_PATH_NOT_EXPORTED',
      'viommu/lib/vtd/unit': 'ERR_PACKAGE_PATH_NOT_EXPORTED',
      'viommu/dist/lib/native': 'ERR_PACKAGE_PATH_NOT_EXPORTED',
      version: JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')).version,
    });
  });

  it('is importable from ES modules too', async () => {
    const script = `
      import { VtdUnit } from 'viommu/vtd';
      import { DeviceRegistry } from 'viommu/vmm';
      import viommu from 'viommu';
      console.log(JSON.stringify([typeof VtdUnit, typeof DeviceRegistry, viommu.VtdUnit === VtdUnit]));`;
    assert.deepEqual(await nodeJson(scratch, ['--input-type=module', '-e', script]), ['function', 'function', true]);
  });

  it("runs the package's bin", async () => {
    const { stdout } = await run(process.execPath, [path.join(scratch, 'node_modules', 'viommu', PACKAGE.bin.viommu!), '--help'], { cwd: scratch });
    assert.match(stdout, /^Usage: viommu /m);
  });

  it('type-checks a consumer against every entry, with node16 and with node10 (CommonJS) module resolution', () => {
    fs.writeFileSync(
      path.join(scratch, 'consumer.ts'),
      `
      import { VtdUnit, DeviceRegistry, GuestMemory, type IommuHost } from 'viommu';
      import { LEGACY_ROOT_ENTRY, encodeBig, type VtdUnitOptions, type TranslationResult } from 'viommu/vtd';
      import { registerWindow, requesterId, type AttachedDevice, type EmbeddedIommu } from 'viommu/vmm';
      import { VfioUserClient, VfioUserServer } from 'viommu/vfio-user';
      import { ShadowBackend, type HostIommuBackend } from 'viommu/host';
      import { KvmMachine, type KvmMachineOptions } from 'viommu/machine';
      import { SharedRegion, type DmaSpace } from 'viommu/memory';
      import { EventFd } from 'viommu/os';
      import { ViommuError } from 'viommu/errors';
      const host: IommuHost = { memory: new GuestMemory(), onInterrupt: () => undefined };
      const options: VtdUnitOptions = { ...host, config: 'aw-bits=48' };
      const unit: EmbeddedIommu = new VtdUnit(options);
      const device: AttachedDevice = new DeviceRegistry({ memory: host.memory, iommu: unit }).attachDevice(requesterId(1, 0, 0));
      const dma: DmaSpace = device.dma;
      const machine: KvmMachineOptions = { iommu: 'caching-mode=on' };
      export const uses = [registerWindow(unit), dma, machine, encodeBig(LEGACY_ROOT_ENTRY, { P: 1 }), VfioUserClient, VfioUserServer,
        ShadowBackend, KvmMachine, SharedRegion, EventFd, ViommuError, undefined as TranslationResult | undefined,
        undefined as HostIommuBackend | undefined];
    `,
    );
    // Both programs in this process, sharing parsed files: the second costs a fraction of the first.
    const parsed = new Map<string, ts.SourceFile | undefined>();
    const check = (module: ts.ModuleKind, moduleResolution: ts.ModuleResolutionKind): string => {
      const options: ts.CompilerOptions = {
        noEmit: true,
        strict: true,
        skipLibCheck: true,
        types: ['node'],
        target: ts.ScriptTarget.ES2022,
        module,
        moduleResolution,
      };
      const host = ts.createCompilerHost(options);
      const read = host.getSourceFile.bind(host);
      host.getSourceFile = (fileName, language, onError, create) => {
        const key = `${fileName}|${JSON.stringify(language)}`;
        if (!parsed.has(key)) parsed.set(key, read(fileName, language, onError, create));
        return parsed.get(key);
      };
      const program = ts.createProgram([path.join(scratch, 'consumer.ts')], options, host);
      return ts.formatDiagnostics(ts.getPreEmitDiagnostics(program), {
        getCanonicalFileName: (f) => f,
        getCurrentDirectory: () => scratch,
        getNewLine: () => '\n',
      });
    };
    assert.equal(check(ts.ModuleKind.Node16, ts.ModuleResolutionKind.Node16), '', 'node16 resolution');
    assert.equal(check(ts.ModuleKind.CommonJS, ts.ModuleResolutionKind.Node10), '', 'node10 resolution (typesVersions)');
  });
});
