/** The unit's configuration in QEMU intel-iommu property terms, its validity rules, and the CAP/ECAP it implies. */

import { ViommuError } from '../errors';
import { bigToWords, getFieldBig, setField, wordsToBig, type Field } from './bitfield';
import {
  CAP_FIELDS,
  ECAP_FIELDS,
  FAULT_RECORD_COUNT,
  VCCAP_FIELDS,
  FAULT_RECORD_OFFSET,
  IOTLB_REGISTERS_OFFSET,
  type CapabilityValues,
} from './registers';

export type OnOffAuto = 'on' | 'off' | 'auto';
export type AddressWidth = 39 | 48;
/**
 * Which behaviour the unit imitates. Not a QEMU property. 'spec' (the default) follows the VT-d specification
 * with QEMU 7.2's capability values; 'qemu-7.2' also reproduces QEMU 7.2's departures from the spec (the quirks
 * in compat-quirks.ts), for differential testing; 'qemu-10.0' reproduces QEMU 10.0.2 (Debian bookworm-backports,
 * measured by test/oracle): its capability values (aw-bits 48 by default, x-flts) and its departures from the
 * spec; 'qemu-latest' follows the spec with the capability values of the newest QEMU measured here (10.0.2:
 * aw-bits 48 by default). Bits of later QEMU (ESRTPS, PSS 19) stay out until a QEMU that sets them is measured.
 */
export type Compat = 'spec' | 'qemu-7.2' | 'qemu-latest' | 'qemu-10.0';

/** The compat values, in the order messages list them. */
export const COMPAT_VALUES: readonly Compat[] = ['spec', 'qemu-7.2', 'qemu-latest', 'qemu-10.0'];

/** Properties by their QEMU names, so QEMU command lines map one to one. */
export interface VtdProperties {
  readonly 'aw-bits': AddressWidth;
  readonly 'caching-mode': boolean;
  readonly 'dma-drain': boolean;
  readonly intremap: OnOffAuto;
  readonly eim: OnOffAuto;
  readonly 'device-iotlb': boolean;
  readonly pt: boolean;
  readonly 'snoop-control': boolean;
  readonly 'dma-translation': boolean;
  readonly 'x-scalable-mode': boolean;
  readonly 'x-pasid-mode': boolean;
  readonly 'x-flts': boolean;
  readonly 'x-nested': boolean;
  readonly 'x-vcmd': boolean;
  /** PASID width the unit offers (ECAP.PSS + 1); 0: PSS reads 0 as QEMU 7.2 and 10.0.2 report it. */
  readonly 'x-pasid-bits': number;
  readonly compat: Compat;
}

/** A configuration after defaults and 'auto' were decided: what the unit runs with. */
export interface VtdConfig extends Omit<VtdProperties, 'intremap' | 'eim'> {
  readonly intremap: boolean;
  readonly eim: boolean;
}

type PropertyName = keyof VtdProperties;
type PropertyKind = 'bool' | 'on-off-auto' | 'aw-bits' | 'integer' | 'compat';

interface PropertyDescription {
  readonly name: PropertyName;
  readonly kind: PropertyKind;
  readonly origin: string;
  readonly description: string;
}

/** The properties the parser accepts, where each comes from, and what it does. */
export const VTD_PROPERTIES: readonly PropertyDescription[] = [
  { name: 'aw-bits', kind: 'aw-bits', origin: 'intel-iommu', description: 'guest address width: 39 (3-level) or 48 (4-level)' },
  {
    name: 'caching-mode',
    kind: 'bool',
    origin: 'intel-iommu',
    description: 'CAP.CM: guests invalidate after creating entries (needed for shadowing)',
  },
  { name: 'dma-drain', kind: 'bool', origin: 'intel-iommu', description: 'CAP.DRD and CAP.DWD' },
  { name: 'intremap', kind: 'on-off-auto', origin: 'x86-iommu', description: 'interrupt remapping (ECAP.IR)' },
  { name: 'eim', kind: 'on-off-auto', origin: 'intel-iommu', description: 'extended interrupt mode for x2APIC (ECAP.EIM)' },
  { name: 'device-iotlb', kind: 'bool', origin: 'x86-iommu', description: 'device TLBs / ATS (ECAP.DT)' },
  { name: 'pt', kind: 'bool', origin: 'x86-iommu', description: 'pass-through translation type (ECAP.PT)' },
  { name: 'snoop-control', kind: 'bool', origin: 'intel-iommu', description: 'snoop control (ECAP.SC)' },
  {
    name: 'dma-translation',
    kind: 'bool',
    origin: 'intel-iommu',
    description: 'DMA translation at all; off leaves SAGAW empty (interrupt remapping only)',
  },
  { name: 'x-scalable-mode', kind: 'bool', origin: 'intel-iommu', description: 'scalable-mode translation (ECAP.SMTS)' },
  { name: 'x-pasid-mode', kind: 'bool', origin: 'intel-iommu', description: 'requests with PASID (ECAP.PASID)' },
  { name: 'x-flts', kind: 'bool', origin: 'intel-iommu, newer than 7.2', description: 'first-stage translation (ECAP.FSTS)' },
  {
    name: 'x-nested',
    kind: 'bool',
    origin: 'viommu only',
    description: 'nested translation for guests (ECAP.NEST with SSTS beside x-flts FSTS); QEMU offers no such property',
  },
  {
    name: 'x-vcmd',
    kind: 'bool',
    origin: 'viommu only',
    description: 'the virtual command interface (ECAP.VCS, VCCAP.PAS): the guest allocates and frees PASIDs through VCMD/VCRSP; QEMU never merged it',
  },
  {
    name: 'x-pasid-bits',
    kind: 'integer',
    origin: 'viommu only',
    description: 'PASID width 1..20 (ECAP.PSS + 1), the range VCMD allocates from; 0 (default) leaves PSS 0 as QEMU 7.2 and 10.0.2 do',
  },
  {
    name: 'compat',
    kind: 'compat',
    origin: 'viommu only',
    description:
      "'spec' (default), 'qemu-7.2' (with QEMU 7.2's quirks), 'qemu-10.0' (QEMU 10.0.2's defaults and quirks) or 'qemu-latest' (the spec with the newest measured QEMU's capabilities, 10.0.2)",
  },
];

const DEFAULTS: Omit<VtdProperties, 'aw-bits'> = {
  'caching-mode': false,
  'dma-drain': true,
  intremap: 'auto',
  eim: 'auto',
  'device-iotlb': false,
  pt: true,
  'snoop-control': false,
  'dma-translation': true,
  'x-scalable-mode': false,
  'x-pasid-mode': false,
  'x-flts': false,
  'x-nested': false,
  'x-vcmd': false,
  'x-pasid-bits': 0,
  compat: 'spec',
};

/** QEMU 7.2 defaults to 39 bits (and so do 'spec' and 'qemu-7.2'); newer QEMU (9.2 on, 10.0.2 measured) to 48. */
function defaultAddressWidth(compat: Compat): AddressWidth {
  return compat === 'qemu-latest' || compat === 'qemu-10.0' ? 48 : 39;
}

// ---- errors ----

/** A configuration that QEMU (or this project) refuses; `rule` is the id of the rule in CONFIG_RULES. */
export class VtdConfigError extends ViommuError {
  constructor(
    readonly rule: string,
    message: string,
  ) {
    super('ERR_VTD_CONFIG', message);
    this.name = 'VtdConfigError';
  }
}

/** A property string that does not parse: unknown name or a value of the wrong kind. */
export class VtdPropertyError extends ViommuError {
  constructor(
    readonly property: string,
    message: string,
  ) {
    super('ERR_VTD_PROPERTY', message);
    this.name = 'VtdPropertyError';
  }
}

// ---- rules ----

interface ConfigRule {
  readonly id: string;
  readonly source: string;
  readonly violatedBy: (p: VtdProperties) => boolean;
  readonly message: string;
}

/*
 * The rules, each with where it comes from (QEMU hw/i386/intel_iommu.c unless stated):
 * - aw-bits-39-or-48: vtd_decide_config, "Supported values for aw-bits are: 39, 48" (all versions).
 * - eim-needs-intremap: vtd_decide_config, "eim=on cannot be selected without intremap=on" (all versions).
 * - scalable-needs-dma-drain: vtd_decide_config, "Need to set dma_drain for scalable mode" (5.x on).
 * - pasid-needs-scalable: vtd_decide_config, "Need to set scalable mode for PASID" (7.2 on).
 * - pasid-excludes-device-iotlb: vtd_realize, "PASID based device IOTLB is not supported" (7.2).
 * - flts-needs-scalable: vtd_decide_config, "Legacy mode: not support x-flts=on" (x-flts, 9.2 on).
 * - flts-needs-aw-bits-48: vtd_decide_config, "Scalable mode(flts=on): supported value for aw-bits is: 48".
 * Not applicable here: QEMU's kernel-irqchip rules (intremap with kernel-irqchip=on; eim=on needing KVM's
 * X2APIC API) concern KVM's in-kernel APIC, which a JavaScript VMM does not have. Like QEMU under TCG,
 * 'auto' resolves to intremap on and eim off.
 */
export const CONFIG_RULES: readonly ConfigRule[] = [
  {
    id: 'aw-bits-39-or-48',
    source: 'QEMU vtd_decide_config',
    violatedBy: (p) => p['aw-bits'] !== 39 && p['aw-bits'] !== 48,
    message: 'aw-bits must be 39 or 48',
  },
  {
    id: 'eim-needs-intremap',
    source: 'QEMU vtd_decide_config',
    violatedBy: (p) => p.eim === 'on' && p.intremap === 'off',
    message: 'eim=on needs intremap=on',
  },
  {
    id: 'scalable-needs-dma-drain',
    source: 'QEMU vtd_decide_config',
    violatedBy: (p) => p['x-scalable-mode'] && !p['dma-drain'],
    message: 'x-scalable-mode=on needs dma-drain=on',
  },
  {
    id: 'pasid-needs-scalable',
    source: 'QEMU 7.2 vtd_decide_config',
    violatedBy: (p) => p['x-pasid-mode'] && !p['x-scalable-mode'],
    message: 'x-pasid-mode=on needs x-scalable-mode=on',
  },
  {
    id: 'pasid-excludes-device-iotlb',
    source: 'QEMU 7.2 vtd_realize',
    violatedBy: (p) => p['x-pasid-mode'] && p['device-iotlb'],
    message: 'x-pasid-mode=on cannot be combined with device-iotlb=on (PASID-based device-TLB invalidation is not offered)',
  },
  {
    id: 'flts-needs-scalable',
    source: 'QEMU 9.2+ vtd_decide_config',
    violatedBy: (p) => p['x-flts'] && !p['x-scalable-mode'],
    message: 'x-flts=on needs x-scalable-mode=on',
  },
  {
    id: 'flts-needs-aw-bits-48',
    source: 'QEMU 9.2+ vtd_decide_config',
    violatedBy: (p) => p['x-flts'] && p['aw-bits'] !== 48,
    message: 'x-flts=on needs aw-bits=48 (first stage is 4-level, 48-bit)',
  },
  {
    id: 'nested-needs-flts',
    source: 'viommu (nesting composes both stages)',
    violatedBy: (p) => p['x-nested'] && !p['x-flts'],
    message: 'x-nested=on needs x-flts=on (and so x-scalable-mode=on, aw-bits=48)',
  },
  {
    id: 'vcmd-needs-pasid',
    source: 'viommu (VT-d: VCMD allocates PASIDs, which only requests with PASID use)',
    violatedBy: (p) => p['x-vcmd'] && !p['x-pasid-mode'],
    message: 'x-vcmd=on needs x-pasid-mode=on (and so x-scalable-mode=on)',
  },
  {
    id: 'pasid-bits-1-to-20',
    source: 'VT-d ECAP.PSS (PASIDs are at most 20 bits)',
    violatedBy: (p) => p['x-pasid-bits'] !== 0 && (p['x-pasid-bits'] < 1 || p['x-pasid-bits'] > MAX_PASID_BITS || !p['x-pasid-mode']),
    message: 'x-pasid-bits must be 1..20, with x-pasid-mode=on',
  },
];

/** PASIDs are 20 bits wide in every structure and descriptor. */
export const MAX_PASID_BITS = 20;

/** Fills in defaults, checks every rule and decides 'auto'; throws VtdConfigError naming the first broken rule. */
export function resolveVtdConfig(properties: Partial<VtdProperties> = {}): VtdConfig {
  const compat = properties.compat ?? DEFAULTS.compat;
  const full: VtdProperties = { ...DEFAULTS, 'aw-bits': defaultAddressWidth(compat), ...properties };
  for (const rule of CONFIG_RULES) {
    if (rule.violatedBy(full)) {
      throw new VtdConfigError(rule.id, `intel-iommu configuration refused (rule ${rule.id}, from ${rule.source}): ${rule.message}`);
    }
  }
  const intremap = full.intremap !== 'off';
  return { ...full, intremap, eim: full.eim === 'on' };
}

// ---- parsing QEMU property strings ----

const TRUE_WORDS = new Set(['on', 'yes', 'true', 'y']);
const FALSE_WORDS = new Set(['off', 'no', 'false', 'n']);

function parseValue(name: PropertyName, kind: PropertyKind, text: string): VtdProperties[PropertyName] {
  switch (kind) {
    case 'bool':
      if (TRUE_WORDS.has(text)) return true;
      if (FALSE_WORDS.has(text)) return false;
      throw new VtdPropertyError(name, `Parameter '${name}' expects 'on' or 'off' (also yes/no, true/false), got '${text}'`);
    case 'on-off-auto':
      if (text === 'on' || text === 'off' || text === 'auto') return text;
      throw new VtdPropertyError(name, `Parameter '${name}' expects 'on', 'off' or 'auto', got '${text}'`);
    case 'aw-bits': {
      const value = /^(0x[0-9a-f]+|[0-9]+)$/i.test(text) ? Number(text) : Number.NaN;
      if (!Number.isInteger(value) || value > 255) {
        throw new VtdPropertyError(name, `Parameter '${name}' expects a number (39 or 48), got '${text}'`);
      }
      // Range is a rule, not a parse error, so that the message names the rule like QEMU's does.
      return value as AddressWidth;
    }
    case 'integer': {
      const value = /^(0x[0-9a-f]+|[0-9]+)$/i.test(text) ? Number(text) : Number.NaN;
      if (!Number.isSafeInteger(value)) throw new VtdPropertyError(name, `Parameter '${name}' expects a number, got '${text}'`);
      return value;
    }
    case 'compat':
      if ((COMPAT_VALUES as readonly string[]).includes(text)) return text as Compat;
      throw new VtdPropertyError(name, `Parameter '${name}' expects ${COMPAT_VALUES.map((value) => `'${value}'`).join(', ')}, got '${text}'`);
  }
}

const propertiesByName = new Map(VTD_PROPERTIES.map((p) => [p.name as string, p]));

/**
 * Parses `aw-bits=48,caching-mode=on` (optionally led by the driver name, as in `-device intel-iommu,...`).
 * A later occurrence of a property wins. Only syntax and value kinds are checked here; resolveVtdConfig
 * applies the combination rules.
 */
export function parseVtdProperties(text: string): Partial<VtdProperties> {
  const result: Record<string, unknown> = {};
  const items = text.trim() === '' ? [] : text.split(',');
  items.forEach((item, index) => {
    const trimmed = item.trim();
    if (index === 0 && trimmed === 'intel-iommu') return;
    const equals = trimmed.indexOf('=');
    if (equals <= 0) {
      throw new VtdPropertyError(trimmed, `Expected 'property=value' in intel-iommu options, got '${trimmed}'`);
    }
    const name = trimmed.slice(0, equals);
    const description = propertiesByName.get(name);
    if (!description) {
      throw new VtdPropertyError(name, `Property 'intel-iommu.${name}' not found (known: ${VTD_PROPERTIES.map((p) => p.name).join(', ')})`);
    }
    result[name] = parseValue(description.name, description.kind, trimmed.slice(equals + 1));
  });
  return result as Partial<VtdProperties>;
}

/** Parses and resolves in one step. */
export function vtdConfigFromString(text: string): VtdConfig {
  return resolveVtdConfig(parseVtdProperties(text));
}

// ---- capabilities ----

/** Values QEMU hard-wires, expressed as field values (the bit positions live in CAP_FIELDS/ECAP_FIELDS). */
const DOMAIN_ID_BITS = 16;
const FIXED_CAP: CapabilityFieldValues<'CAP'> = {
  ND: (DOMAIN_ID_BITS - 4) / 2,
  FRO: FAULT_RECORD_OFFSET / 16,
  NFR: FAULT_RECORD_COUNT - 1,
  MAMV: 18,
  PSI: 1,
  SLLPS: 0b0011,
};
const FIXED_ECAP: CapabilityFieldValues<'ECAP'> = { QI: 1, IRO: IOTLB_REGISTERS_OFFSET / 16 };
const MAX_HANDLE_MASK = 15;
const SAGAW_39 = 0b00010;
const SAGAW_48 = 0b00100;
const CAPABILITY_TABLES = { CAP: CAP_FIELDS, ECAP: ECAP_FIELDS } as const;
export type CapabilityRegister = keyof typeof CAPABILITY_TABLES;
/** The field names of capability register R (of either register when R is the union). */
export type CapabilityFieldName<R extends CapabilityRegister> = R extends CapabilityRegister ? keyof (typeof CAPABILITY_TABLES)[R]['f'] : never;
type CapabilityFieldValues<R extends CapabilityRegister> = Partial<Readonly<Record<CapabilityFieldName<R>, number>>>;

/** One extension bit; `field` is checked against its own register's table. */
export type CapabilityExtension = { readonly [R in CapabilityRegister]: CapabilityExtensionOf<R> }[CapabilityRegister];

interface CapabilityExtensionOf<R extends CapabilityRegister> {
  readonly register: R;
  readonly field: CapabilityFieldName<R>;
  /** The field's value, or how the configuration gives it (`shown` then says so in documents). */
  readonly value: number | ((config: VtdConfig) => number);
  readonly shown?: string;
  readonly applies: (config: VtdConfig) => boolean;
  readonly origin: string;
  readonly note: string;
}

/**
 * Bits that QEMU 7.2 does not set for a configuration but newer QEMU (or this project) does. QEMU 7.2's own
 * logic is in computeCapabilities; everything beyond it is listed here.
 */
export const CAPABILITY_EXTENSIONS: readonly CapabilityExtension[] = [
  {
    register: 'ECAP',
    field: 'SMTS',
    value: 1,
    applies: (c) => c['x-flts'],
    origin: 'QEMU 9.2+ vtd_cap_init',
    note: 'x-flts: scalable mode with first stage only (SRS and SSTS stay clear)',
  },
  {
    register: 'ECAP',
    field: 'FSTS',
    value: 1,
    applies: (c) => c['x-flts'],
    origin: 'QEMU 9.2+ vtd_cap_init',
    note: 'x-flts: first-stage translation',
  },
  {
    register: 'CAP',
    field: 'FS1GP',
    value: 1,
    applies: (c) => c['x-flts'],
    origin: 'QEMU 9.2+ vtd_cap_init',
    note: 'x-flts: first-stage 1 GiB pages (QEMU property fs1gp, default on)',
  },
  {
    register: 'ECAP',
    field: 'SSTS',
    value: 1,
    applies: (c) => c['x-nested'],
    origin: 'viommu x-nested',
    note: 'x-nested: second-stage translation beside the first stage',
  },
  {
    register: 'ECAP',
    field: 'NEST',
    value: 1,
    applies: (c) => c['x-nested'],
    origin: 'viommu x-nested',
    note: 'x-nested: nested translation (PGTT 3)',
  },
  {
    register: 'ECAP',
    field: 'SRS',
    value: 1,
    applies: (c) => c['x-nested'],
    origin: 'viommu x-nested',
    note: 'x-nested: supervisor requests (SRE in PASID entries)',
  },
  {
    register: 'ECAP',
    field: 'VCS',
    value: 1,
    applies: (c) => c['x-vcmd'],
    origin: 'viommu x-vcmd (VT-d 3.3 virtual command interface)',
    note: 'x-vcmd: VCMD/VCRSP/VCCAP registers at 0xe00, 0xe10, 0xe30',
  },
  {
    register: 'ECAP',
    field: 'PSS',
    value: (c) => c['x-pasid-bits'] - 1,
    shown: 'x-pasid-bits - 1',
    applies: (c) => c['x-pasid-bits'] !== 0,
    origin: 'viommu x-pasid-bits',
    note: 'x-pasid-bits: PSS = width - 1 (QEMU after 10.0.2 sets 19 with x-pasid-mode)',
  },
];

function fieldOf<R extends CapabilityRegister>(register: R, name: CapabilityFieldName<R>): Field {
  // The conditional type ties `name` to `register`'s table; TypeScript cannot follow that into the index.
  return (CAPABILITY_TABLES[register].f as Readonly<Record<CapabilityFieldName<R>, Field>>)[name];
}

function setFixedFields<R extends CapabilityRegister>(words: Uint32Array, register: R, values: CapabilityFieldValues<R>): void {
  for (const field of CAPABILITY_TABLES[register].fields) {
    const value = (values as Readonly<Record<string, number | undefined>>)[field.name];
    if (value !== undefined) setField(words, field, value);
  }
}

/** CAP, ECAP and VCCAP for a configuration: QEMU 7.2's vtd_init logic, then CAPABILITY_EXTENSIONS. */
export function computeCapabilities(config: VtdConfig): CapabilityValues {
  const cap = new Uint32Array(2);
  const ecap = new Uint32Array(2);
  const c = CAP_FIELDS.f;
  const e = ECAP_FIELDS.f;

  setFixedFields(cap, 'CAP', FIXED_CAP);
  setField(cap, c.MGAW, config['aw-bits'] - 1);
  if (config['dma-drain']) {
    setField(cap, c.DRD, 1);
    setField(cap, c.DWD, 1);
  }
  if (config['dma-translation']) setField(cap, c.SAGAW, config['aw-bits'] === 48 ? SAGAW_39 | SAGAW_48 : SAGAW_39);
  if (config['caching-mode']) setField(cap, c.CM, 1);

  setFixedFields(ecap, 'ECAP', FIXED_ECAP);
  if (config.intremap) {
    setField(ecap, e.IR, 1);
    setField(ecap, e.MHMV, MAX_HANDLE_MASK);
    if (config.eim) setField(ecap, e.EIM, 1);
  }
  if (config['device-iotlb']) setField(ecap, e.DT, 1);
  if (config.pt) setField(ecap, e.PT, 1);
  if (config['x-scalable-mode'] && !config['x-flts']) {
    setField(ecap, e.SMTS, 1);
    setField(ecap, e.SRS, 1);
    setField(ecap, e.SSTS, 1);
  }
  if (config['snoop-control']) setField(ecap, e.SC, 1);
  if (config['x-pasid-mode']) setField(ecap, e.PASID, 1);

  for (const extension of CAPABILITY_EXTENSIONS) {
    if (!extension.applies(config)) continue;
    const value = typeof extension.value === 'number' ? extension.value : extension.value(config);
    setField(extension.register === 'CAP' ? cap : ecap, fieldOf(extension.register, extension.field), value);
  }
  return { cap: wordsToBig(cap), ecap: wordsToBig(ecap), vccap: config['x-vcmd'] ? wordsToBig(vccapWords()) : 0n };
}

/** VCCAP of a unit with the virtual command interface: PASID allocation is its one command set. */
function vccapWords(): Uint32Array {
  const vccap = new Uint32Array(2);
  setField(vccap, VCCAP_FIELDS.f.PAS, 1);
  return vccap;
}

/** Reads one capability field by name, e.g. capabilityField(caps, 'ECAP', 'SMTS'). */
export function capabilityField<R extends CapabilityRegister>(caps: CapabilityValues, register: R, name: CapabilityFieldName<R>): number {
  const value = register === 'CAP' ? caps.cap : caps.ecap;
  return Number(getFieldBig(value, fieldOf(register, name)));
}

/** The features that make optional structure bits legal (see FieldSpec.reservedUnless), from ECAP. */
export function enabledFeatures(caps: CapabilityValues): Set<string> {
  const words = bigToWords(caps.ecap, 2);
  const features = new Set<string>();
  for (const field of ECAP_FIELDS.fields) {
    if (field.width === 1 && ((words[field.lsb >>> 5]! >>> (field.lsb & 31)) & 1) === 1) features.add(field.name);
  }
  return features;
}
