/**
 * A stand-in for the tunnel client that only hands out a lease (100.64.99.2/24) and swallows packets: a
 * ShieldedStack on it talks to itself over lwIP's loopback, for SDK tests without a gateway. (The tunnel itself is
 * tested with a real gateway in the namespace lab.)
 */
import { EventEmitter } from "node:events";
import type { Lease } from "../../src/tunnel/protocol.js";

export const LOOPBACK_ADDRESS = "100.64.99.2";

export class LeaseOnlyTunnel extends EventEmitter {
  sent = 0;
  send(p: Buffer[]): void {
    this.sent += p.length;
  }
  connect(): void {
    const lease: Lease = {
      address: LOOPBACK_ADDRESS,
      prefix: 24,
      gateway: "100.64.99.1",
      mtu: 1400,
      dns: [],
      lifetime: 60,
      app: "loopback",
    };
    setTimeout(() => this.emit("lease", lease), 20);
  }
  close(): void {}
}
