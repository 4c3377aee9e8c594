/**
 * A process at its fd limit: the listener does not spin on a connection it cannot accept and reports it once, takes
 * it when an fd is free again, and a message whose fds could not be received closes with an error naming the limit.
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { tempSocketPath } from '../helpers';
import type { FdLimitReport } from './fd-limit-child';

const CHILD = path.join(__dirname, 'fd-limit-child.js');
const FD_LIMIT = 64;
/** Out of the child's one-second measurement; a spinning accept loop uses all of it. */
const MAX_CPU_MS = 250;

function runAtFdLimit(limit: number): Promise<FdLimitReport> {
  return new Promise((resolve, reject) => {
    const child = spawn('prlimit', [`--nofile=${limit}:${limit}`, '--', process.execPath, CHILD, tempSocketPath('fd-limit')], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`the child exited with ${code ?? signal}: ${stderr.slice(0, 2000)}`));
      else resolve(JSON.parse(stdout) as FdLimitReport);
    });
  });
}

describe('a process at its fd limit', function () {
  this.timeout(15000);
  let report: FdLimitReport;
  before(async () => {
    report = await runAtFdLimit(FD_LIMIT);
  });

  it('does not spin on a connection it cannot accept, and reports the failure once, naming the limit', () => {
    assert.ok(report.cpuMs < MAX_CPU_MS, `${report.cpuMs} ms of CPU in ${Math.round(report.measuredMs)} ms (${report.errorCount} errors)`);
    assert.equal(report.errorCount, 1, `errors: ${report.errors.join(' | ')}`);
    assert.match(report.errors[0]!, /^EMFILE: accept4 .*fd limit \(RLIMIT_NOFILE 64, \d+ open\).*retried in 100 ms/);
  });

  it('accepts the waiting connection once an fd is free again', () => {
    assert.equal(report.accepted, 1);
  });

  it('closes a socket whose message lost its fds with EMFILE and a message naming the fd limit', () => {
    assert.notEqual(typeof report.receiverClose, 'string', `the receiver is ${String(report.receiverClose)}`);
    const close = report.receiverClose as { code?: string; message?: string };
    assert.equal(close.code, 'EMFILE', close.message);
    assert.match(close.message ?? '', /could not be received: this process is at its fd limit \(RLIMIT_NOFILE 64/);
  });
});
