/**
 * A stand-in for the tunnel client that only hands out a lease (100.64.99.2/24 by default; any other lease, e.g.
 * dual-stack or IPv6-only, can be given) and swallows packets: a ShieldedStack on it talks to itself over lwIP's
 * loopback, for SDK tests without a gateway. `capture` keeps copies of what lwIP sent into the "tunnel"; `inject`
 * hands packets to the stack as if they came from the gateway. (The tunnel itself is tested with a real gateway in
 * the namespace lab.)
 */
import { EventEmitter } from "node:events";
import type { Lease } from "../../src/tunnel/protocol.js";
import type { DualLease } from "../../src/runtime/stack.js";

export const LOOPBACK_ADDRESS = "100.64.99.2";
export const LOOPBACK_ADDRESS6 = "fd64:99::2";

export class LeaseOnlyTunnel extends EventEmitter {
  sent = 0;
  /** Copies of the packets sent, when `capture` is on. */
  readonly packets: Buffer[] = [];
  capture = false;
  readonly lease: DualLease;

  constructor(lease?: Partial<DualLease>) {
    super();
    const base: Lease = {
      address: LOOPBACK_ADDRESS,
      prefix: 24,
      gateway: "100.64.99.1",
      mtu: 1400,
      dns: [],
      lifetime: 60,
      app: "loopback",
    };
    this.lease = { ...base, ...lease };
  }

  send(p: Buffer[]): void {
    this.sent += p.length;
    if (this.capture) for (const x of p) this.packets.push(Buffer.from(x));
  }

  /** Packets "from the gateway". */
  inject(p: Buffer[]): void {
    this.emit("packets", p);
  }

  connect(): void {
    setTimeout(() => this.emit("lease", this.lease), 20);
  }

  close(): void {}
}
