/**
 * The routing pieces without a network: the `routing:` settings (errors name the key), the BIRD config the gateway
 * writes (BIRD itself parses it), and the announcer's bookkeeping (a route follows the tunnels of its address; an
 * address inside the gateway's blocks needs no host route; a failed reconfiguration is retried).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseConfig } from "../../src/policy/config.js";
import { Bird, gatewayBirdConfig, routerBirdConfig } from "../../src/routing/bird.js";
import { RouteAnnouncer } from "../../src/routing/announcer.js";
import { routingSchema } from "../../src/routing/config.js";
import { jsonLogger } from "../../src/gateway/log.js";
import type { TunnelInfo } from "../../src/gateway/server.js";

const BASE = `listen: 0.0.0.0:4433
certificate: gw.pem
key: gw.key
database: state/seng.db
tun: { address: 100.64.0.1/32 }
apps:
  - name: a
    subnet: 100.64.1.0/24
    identities: [{ mrenclave: ${"aa".repeat(32)} }]
`;

const ROUTING = routingSchema.parse({
  asn: 65001,
  routerId: "198.18.11.1",
  neighbors: [{ address: "198.18.11.254", asn: 65000 }],
  blocks: ["100.64.1.0/25"],
});

function hasBird(): boolean {
  try {
    execFileSync("bird", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

test("routing settings: defaults, and errors that name the key", () => {
  const c = parseConfig(
    BASE +
      "routing: { asn: 65001, routerId: 198.18.11.1, neighbors: [{ address: 198.18.11.254, asn: 65000 }] }\n",
    "gw.yaml",
  );
  assert.deepEqual(
    { bfd: c.routing?.bfd, hold: c.routing?.holdSeconds, blocks: c.routing?.blocks },
    { bfd: true, hold: 3, blocks: [] },
  );
  const bad: [string, RegExp][] = [
    [
      "routing: { asn: 0, routerId: 198.18.11.1, neighbors: [{ address: 1.2.3.4, asn: 1 }] }",
      /gw\.yaml: routing\.asn: expected an AS number/,
    ],
    [
      "routing: { asn: 1, routerId: fd00::1, neighbors: [{ address: 1.2.3.4, asn: 1 }] }",
      /routing\.routerId: expected an IPv4 address/,
    ],
    [
      "routing: { asn: 1, routerId: 1.1.1.1, neighbors: [] }",
      /routing\.neighbors: expected at least one neighbor/,
    ],
    [
      "routing: { asn: 1, routerId: 1.1.1.1, neighbors: [{ address: x, asn: 1 }] }",
      /routing\.neighbors\[0\]\.address: expected an IP address/,
    ],
    [
      "routing: { asn: 1, routerId: 1.1.1.1, neighbors: [{ address: 1.2.3.4, asn: 1 }], blocks: [100.64.1.1/24] }",
      /routing\.blocks\[0\]: expected a CIDR .*no host bits/,
    ],
    [
      "routing: { asn: 1, routerId: 1.1.1.1, neighbors: [{ address: 1.2.3.4, asn: 1 }], holdSeconds: 1 }",
      /routing\.holdSeconds: expected at least 3/,
    ],
    [
      "routing: { asn: 1, routerId: 1.1.1.1, neighbors: [{ address: 1.2.3.4, asn: 1 }], bgp: 1 }",
      /routing: unknown key\(s\) bgp/,
    ],
  ];
  for (const [yaml, re] of bad) assert.throws(() => parseConfig(BASE + yaml + "\n", "gw.yaml"), re, yaml);
});

test(
  "the gateway's and the router's BIRD configs are accepted by BIRD",
  { skip: !hasBird() && "needs bird2" },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "seng-bird-"));
    try {
      const text = gatewayBirdConfig(ROUTING, ["100.64.1.200/32", "fd64:1::5/128"]);
      assert.match(text, /route 100\.64\.1\.0\/25 blackhole;/);
      assert.match(text, /route 100\.64\.1\.200\/32 blackhole;/);
      assert.match(text, /route fd64:1::5\/128 blackhole;/);
      assert.match(text, /bfd on;/);
      const b = new Bird({ dir });
      b.write(text);
      await b.parse();
      b.write(
        routerBirdConfig({
          routerId: "198.18.2.1",
          asn: 65000,
          peers: [{ address: "198.18.11.1", asn: 65001 }],
        }),
      );
      await b.parse();
      b.write(text.replace("blackhole;", "nowhere;"));
      await assert.rejects(b.parse(), /BIRD refused .*bird\.conf/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

/** A stand-in for the BIRD daemon: records each configuration it is told to load. */
class FakeBird {
  configs: string[] = [];
  text = "";
  fail = 0;
  pid = 1;
  write(t: string) {
    this.text = t;
  }
  start() {
    this.configs.push(this.text);
    return Promise.resolve();
  }
  configure() {
    if (this.fail > 0) {
      this.fail--;
      return Promise.reject(new Error("birdc: unable to connect"));
    }
    this.configs.push(this.text);
    return Promise.resolve();
  }
  stop() {
    return Promise.resolve();
  }
}

const tunnel = (address: string) => ({ address }) as TunnelInfo;
const settle = () => new Promise((r) => setTimeout(r, 30));

test("the announcer: a host route follows the tunnels of its address; addresses in the blocks need none", async () => {
  const bird = new FakeBird();
  const a = new RouteAnnouncer(ROUTING, bird as unknown as Bird, jsonLogger({ write: () => {} }), 1);
  await a.start();
  assert.deepEqual(a.routes(), []);
  a.tunnelUp(tunnel("100.64.1.200"));
  a.tunnelUp(tunnel("100.64.1.200")); // a reconnection: the new tunnel comes up before the old one goes
  a.tunnelUp(tunnel("100.64.1.5")); // inside 100.64.1.0/25: the block covers it
  await settle();
  assert.deepEqual(a.routes(), ["100.64.1.200/32"]);
  assert.match(bird.configs.at(-1)!, /route 100\.64\.1\.200\/32 blackhole;/);
  assert.doesNotMatch(bird.configs.at(-1)!, /100\.64\.1\.5\/32/);
  a.tunnelDown(tunnel("100.64.1.200"));
  await settle();
  assert.match(bird.configs.at(-1)!, /100\.64\.1\.200\/32/, "still one tunnel for it");
  bird.fail = 1;
  a.tunnelDown(tunnel("100.64.1.200"));
  await settle();
  assert.match(bird.configs.at(-1)!, /100\.64\.1\.200\/32/, "the failed reconfiguration changed nothing yet");
  assert.equal(a.stats.failures, 1);
  await new Promise((r) => setTimeout(r, 1200)); // retried after a second
  assert.doesNotMatch(bird.configs.at(-1)!, /100\.64\.1\.200\/32/, "withdrawn");
  await a.stop();
});

test("the announcer: a fenced gateway ends BIRD (every route withdrawn) and announces nothing more", async () => {
  const bird = new FakeBird();
  let stopped = 0;
  bird.stop = () => {
    stopped++;
    return Promise.resolve();
  };
  const a = new RouteAnnouncer(ROUTING, bird as unknown as Bird, jsonLogger({ write: () => {} }), 1);
  await a.start();
  await a.fenced();
  assert.equal(stopped, 1);
  const n = bird.configs.length;
  a.tunnelUp(tunnel("100.64.1.201"));
  await settle();
  assert.equal(bird.configs.length, n, "no reconfiguration after fencing");
  await a.fenced();
  assert.equal(stopped, 1, "once");
});

test("the announcer: a gateway whose store reports it fenced withdraws everything by itself", async () => {
  const bird = new FakeBird();
  let stopped = 0;
  bird.stop = () => {
    stopped++;
    return Promise.resolve();
  };
  const a = new RouteAnnouncer(ROUTING, bird as unknown as Bird, jsonLogger({ write: () => {} }), 1);
  await a.start();
  let held = true;
  a.watchFence(() => ({ held }), 10);
  await settle();
  assert.equal(stopped, 0, "held: BIRD keeps running");
  held = false;
  await settle();
  assert.equal(stopped, 1, "fenced: BIRD ended, every route withdrawn");
  await a.stop();
});
