/** Bench peers for the vfio-user and host figures: a server and our client in this process over a real UNIX socket. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { VfioUserClient, type VfioUserClientOptions } from '../lib/vfio-user/client';
import type { VfioUserDevice } from '../lib/vfio-user/server/device';
import { VfioUserServer, type VfioUserServerOptions } from '../lib/vfio-user/server/server';
import type { VfioUserSession } from '../lib/vfio-user/server/session';

/** A fresh socket path in a private temporary directory (removed by ServedPair.close). */
export function benchSocketPath(tag: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'viommu-bench-'));
  return path.join(dir, `${tag}.sock`);
}

/** A VfioUserServer listening on a UNIX socket in this process, and the session of the client it serves now. */
export class BenchServer {
  readonly server: VfioUserServer;
  readonly path: string;

  constructor(readonly device: VfioUserDevice, tag: string, options: VfioUserServerOptions = {}) {
    this.path = benchSocketPath(tag);
    this.server = VfioUserServer.listen(this.path, device, options);
    this.server.on('warning', (_client, message) => console.error(`bench server ${tag}: ${message}`));
  }

  get session(): VfioUserSession {
    const session = this.server.session;
    if (session === undefined) throw new Error(`bench server at ${this.path} serves no client`);
    return session;
  }

  /** Connects our client (VERSION and enumeration done when this resolves; the server's session is live). */
  connect(options: VfioUserClientOptions = {}): Promise<VfioUserClient> {
    return VfioUserClient.connect(this.path, { requestTimeoutMs: 60000, ...options });
  }

  /** Resolves once the served client has gone and the device was released. */
  disconnected(): Promise<void> {
    if (this.server.session === undefined) return Promise.resolve();
    return new Promise((resolve) => this.server.once('clientDisconnected', () => resolve()));
  }

  async close(): Promise<void> {
    await this.server.close();
    this.device.close();
    fs.rmSync(path.dirname(this.path), { recursive: true, force: true });
  }
}
