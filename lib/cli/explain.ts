/**
 * `viommu explain SNAPSHOT`: replays a fault snapshot's request (or another request against the same state) through
 * a restored unit and prints the whole walk and where and why it stopped; `--html FILE` also draws the 2-D walk.
 */
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { buildWalkModel } from '../explain/walk-model';
import { renderWalkHtml } from '../explain/render-html';
import { renderWalkText } from '../explain/render-text';
import { readSnapshot } from '../explain/snapshot-file';
import { faultPlace, hex } from '../explain/walk-words';
import { describeFaultReason } from '../vtd/fault-reasons';
import { PASID_PGTT } from '../vtd/structures';
import type { TranslationRequest } from '../vtd/translation-result';
import { replaySnapshot, type UnitSnapshot } from '../vtd/unit-snapshot';

export interface ExplainCommandOptions {
  html?: string;
  sid?: string;
  iova?: string;
  pasid?: string;
  write?: boolean;
  exec?: boolean;
  supervisor?: boolean;
}

export interface ExplainIo {
  readonly stdout: NodeJS.WritableStream;
}

export function registerExplainCommand(program: Command): void {
  program
    .command('explain')
    .description(
      'replay a fault snapshot (written by --snapshot-on-fault) through a restored unit and show the whole walk: root, context, PASID structures, each first-stage level with the second-stage walk of its table, the fields that decided, and where and why it stopped',
    )
    .argument('<snapshot>', 'a snapshot file, as `viommu qtest|demo|smoke --snapshot-on-fault DIR` writes them')
    .option('--html <file>', 'also write the walk as a self-contained HTML page with the 2-D walk drawn')
    .option('--sid <id>', "explain another request against the snapshot's state: its requester id, as 0x20, 32 or 00:04.0 (default: the snapshot's)")
    .option('--iova <address>', "the other request's input address (default: the snapshot's)")
    .option('--pasid <pasid>', 'the other request carries this PASID')
    .option('--write', 'the other request writes (default: a read)')
    .option('--exec', 'the other request asks for execute (with --pasid)')
    .option('--supervisor', 'the other request is privileged (with --pasid)')
    .action((file: string, options: ExplainCommandOptions) => {
      runExplain(file, options, { stdout: process.stdout });
    });
}

function parseNumber(text: string, option: string, limit: bigint): bigint {
  const trimmed = text.trim();
  if (!/^(0x[0-9a-f]+|[0-9]+)$/i.test(trimmed)) throw new Error(`${option} ${text}: a number, decimal or 0x-prefixed hex`);
  const value = BigInt(trimmed);
  if (value >= limit) throw new Error(`${option} ${text}: must be below ${hex(limit)}`);
  return value;
}

/** A requester id as a number, or as bus:device.function. */
function parseSid(text: string): number {
  const bdf = /^([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$/i.exec(text.trim());
  if (bdf === null) return Number(parseNumber(text, '--sid', 1n << 16n));
  const [bus, device, fn] = [parseInt(bdf[1]!, 16), parseInt(bdf[2]!, 16), Number(bdf[3])];
  if (device > 31) throw new Error(`--sid ${text}: the device number is 0 to 1f`);
  return (bus << 8) | (device << 3) | fn;
}

/** The request to explain: the snapshot's own, or the one the options describe (unspecified sid and IOVA from the snapshot). */
export function requestFromOptions(snapshot: UnitSnapshot, options: ExplainCommandOptions): TranslationRequest {
  const other =
    options.sid !== undefined ||
    options.iova !== undefined ||
    options.pasid !== undefined ||
    options.write !== undefined ||
    options.exec !== undefined ||
    options.supervisor !== undefined;
  if (!other) return snapshot.request;
  const pasid = options.pasid === undefined ? undefined : Number(parseNumber(options.pasid, '--pasid', 1n << 20n));
  if (pasid === undefined && (options.exec === true || options.supervisor === true)) {
    throw new Error('--exec and --supervisor describe requests with a PASID: add --pasid');
  }
  return {
    sid: options.sid === undefined ? snapshot.request.sid : parseSid(options.sid),
    iova: options.iova === undefined ? snapshot.request.iova : parseNumber(options.iova, '--iova', 1n << 64n),
    write: options.write === true,
    ...(pasid === undefined ? {} : { pasid, supervisor: options.supervisor === true, execute: options.exec === true }),
  };
}

/**
 * Where the snapshot came from, and what the live unit reported when it was taken: the reason it recorded and where
 * its walk stopped (`nested`: the snapshot's walk is nested, which that place may depend on).
 */
function snapshotHeading(file: string, snapshot: UnitSnapshot, ownRequest: boolean, nested: boolean): string[] {
  const lines = [
    `snapshot: ${file} (taken ${snapshot.takenAt}${snapshot.source === undefined ? '' : ` by ${snapshot.source}`}, ${snapshot.pages.size} page(s))`,
  ];
  const observed = snapshot.observed;
  if (ownRequest && observed !== undefined) {
    if ('fault' in observed) {
      const { fault } = observed;
      lines.push(`live unit: ${describeFaultReason(fault.reason)}; ${faultPlace(fault, nested)}; fault record: ${observed.recording}`);
    } else {
      // A version 1 snapshot kept the reason and one level number only.
      const level = observed.level === undefined ? '' : `, level ${observed.level}`;
      lines.push(`live unit: ${describeFaultReason(observed.reason)}${level}; fault record: ${observed.recording}`);
    }
  } else if (!ownRequest) {
    lines.push("explaining another request against the snapshot's state (its pages are those the snapshot's own request read)");
  }
  return lines;
}

export function runExplain(file: string, options: ExplainCommandOptions, io: ExplainIo): void {
  const snapshot = readSnapshot(file);
  const request = requestFromOptions(snapshot, options);
  const model = buildWalkModel(replaySnapshot(snapshot, request));
  const heading = snapshotHeading(file, snapshot, request === snapshot.request, model.pgtt === PASID_PGTT.NESTED);
  io.stdout.write(`${[...heading, '', renderWalkText(model)].join('\n')}\n`);
  if (options.html !== undefined) {
    try {
      fs.writeFileSync(options.html, renderWalkHtml(model, heading).html);
    } catch (error) {
      throw new Error(`--html ${options.html}: ${(error as Error).message}`);
    }
    io.stdout.write(`\nwrote ${options.html}\n`);
  }
}
