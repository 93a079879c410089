/**
 * Steering of a multi-queue TUN by destination address (native/src/steer.cc): the kernel hands a packet for an
 * address in the map to the queue the map names, any other packet to queue 0. IPv4 destinations only. Needs
 * CAP_BPF/CAP_SYS_ADMIN (root) and a TUN opened with IFF_MULTI_QUEUE whose queues are attached in queue order.
 */
import { native } from "./load.js";

interface NativeSteer {
  set(address: number, queue: number): boolean;
  delete(address: number): boolean;
  close(): void;
}

// TUNSETIFF flags (linux/if_tun.h) of the queues the steering attaches next to.
const IFF_TUN = 0x0001;
const IFF_NO_PI = 0x1000;
const IFF_NAPI = 0x0010;
const IFF_VNET_HDR = 0x4000;

export class TunSteering {
  readonly #h: NativeSteer;

  private constructor(h: NativeSteer) {
    this.#h = h;
  }

  /**
   * Loads the program and its map (room for `maxEntries` addresses) and attaches it to TUN `name`, whose queues
   * were opened with `napi` and `offload` as given (a queue of other flags would change the device's).
   * @throws Error with `syscall` (e.g. "bpf(BPF_PROG_LOAD)", "ioctl(TUNSETSTEERINGEBPF)") when refused.
   */
  static attach(name: string, opts: { napi: boolean; offload: boolean; maxEntries: number }): TunSteering {
    const { SteerHandle } = native<{ SteerHandle: new (n: string, f: number, m: number) => NativeSteer }>();
    const flags = IFF_TUN | IFF_NO_PI | (opts.napi ? IFF_NAPI : 0) | (opts.offload ? IFF_VNET_HDR : 0);
    return new TunSteering(new SteerHandle(name, flags, opts.maxEntries));
  }

  /** Packets to `address` (an IPv4 address as a number) go to queue `queue`; false when the map refused it. */
  set(address: number, queue: number): boolean {
    return this.#h.set(address >>> 0, queue);
  }

  delete(address: number): boolean {
    return this.#h.delete(address >>> 0);
  }

  close(): void {
    this.#h.close();
  }
}
