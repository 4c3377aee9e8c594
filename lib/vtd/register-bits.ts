/** 32-bit masks and offsets derived once from the register field tables, for the unit's hot and status paths. */

import { ViommuError } from '../errors';
import type { Field } from './bitfield';
import { EVENT_CONTROL_FIELDS, FSTS_FIELDS, GCMD_FIELDS, GSTS_FIELDS, ICS_FIELDS, findRegister, type RegisterName } from './registers';

/** The mask of a field that lies inside one 32-bit word, positioned within that word. */
export function wordMask(field: Field): number {
  if (field.segments.length !== 1) {
    throw new ViommuError('ERR_FIELD_TABLE', `${field.name} spans two words; use getField64 instead of a word mask`);
  }
  const segment = field.segments[0]!;
  return (segment.mask << segment.shift) >>> 0;
}

/** Offset of a register by name (the table is the only place offsets are written). */
export function registerOffset(name: RegisterName): number {
  return findRegister(name).offset;
}

export const OFFSET = {
  CAP: registerOffset('CAP'),
  ECAP: registerOffset('ECAP'),
  GCMD: registerOffset('GCMD'),
  GSTS: registerOffset('GSTS'),
  RTADDR: registerOffset('RTADDR'),
  CCMD: registerOffset('CCMD'),
  FSTS: registerOffset('FSTS'),
  FECTL: registerOffset('FECTL'),
  FEDATA: registerOffset('FEDATA'),
  FEADDR: registerOffset('FEADDR'),
  IQH: registerOffset('IQH'),
  IQT: registerOffset('IQT'),
  IQA: registerOffset('IQA'),
  ICS: registerOffset('ICS'),
  IECTL: registerOffset('IECTL'),
  IEDATA: registerOffset('IEDATA'),
  IEADDR: registerOffset('IEADDR'),
  IRTA: registerOffset('IRTA'),
  IVA: registerOffset('IVA'),
  IOTLB: registerOffset('IOTLB'),
  VCMD: registerOffset('VCMD'),
} as const;

export const GCMD = {
  TE: wordMask(GCMD_FIELDS.f.TE),
  SRTP: wordMask(GCMD_FIELDS.f.SRTP),
  WBF: wordMask(GCMD_FIELDS.f.WBF),
  QIE: wordMask(GCMD_FIELDS.f.QIE),
  IRE: wordMask(GCMD_FIELDS.f.IRE),
  SIRTP: wordMask(GCMD_FIELDS.f.SIRTP),
  CFI: wordMask(GCMD_FIELDS.f.CFI),
} as const;

export const GSTS = {
  TES: wordMask(GSTS_FIELDS.f.TES),
  RTPS: wordMask(GSTS_FIELDS.f.RTPS),
  WBFS: wordMask(GSTS_FIELDS.f.WBFS),
  QIES: wordMask(GSTS_FIELDS.f.QIES),
  IRES: wordMask(GSTS_FIELDS.f.IRES),
  IRTPS: wordMask(GSTS_FIELDS.f.IRTPS),
  CFIS: wordMask(GSTS_FIELDS.f.CFIS),
} as const;

export const FSTS = {
  PFO: wordMask(FSTS_FIELDS.f.PFO),
  PPF: wordMask(FSTS_FIELDS.f.PPF),
  IQE: wordMask(FSTS_FIELDS.f.IQE),
  ICE: wordMask(FSTS_FIELDS.f.ICE),
  ITE: wordMask(FSTS_FIELDS.f.ITE),
  FRI: wordMask(FSTS_FIELDS.f.FRI),
  FRI_SHIFT: FSTS_FIELDS.f.FRI.lsb,
} as const;

export const EVENT_CONTROL = {
  IM: wordMask(EVENT_CONTROL_FIELDS.f.IM),
  IP: wordMask(EVENT_CONTROL_FIELDS.f.IP),
} as const;

export const ICS = { IWC: wordMask(ICS_FIELDS.f.IWC) } as const;
