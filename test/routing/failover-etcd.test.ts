/**
 * Failover on the shared store, end to end: two gateways on a three-member etcd (in namespaces), each announcing
 * over BGP (BIRD, BFD) to a router with a server behind it. An app under the runtime, given both gateways, carries
 * numbered messages on one TCP connection and datagrams; its gateway is killed with SIGKILL. Checked: the other
 * gateway gives the app the same address (the store moves the key's lease to it, from the dead gateway whose etcd
 * lease has not expired yet), the router routes that address to the other gateway, every message came back on the
 * same connection, and the server saw one peer address throughout. Timings are diagnostics (bench/cluster.ts).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ClusterLab, clusterYaml, FAILOVER_APP, FAILOVER_SERVER, SERVER_IP } from "../helpers/cluster-lab.js";
import { waitLine } from "../helpers/lab.js";
import type { NsProcess } from "../helpers/netns.js";

const MR = "c3".repeat(32);
const skip = process.getuid?.() !== 0 ? "needs root (namespaces)" : !hasBird() ? "needs bird2 (apt)" : false;

function hasBird(): boolean {
  try {
    execFileSync("bird", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

let lab: ClusterLab;
let srv: NsProcess;

before(async () => {
  if (skip) return;
  lab = await ClusterLab.create({
    gateways: 2,
    etcd: 3,
    extraYaml: clusterYaml,
    appsYaml: [
      "  - name: svc",
      "    subnet: 100.64.1.0/24",
      `    identities: [{ mrenclave: "${MR}" }]`,
      "policy:",
      "  rules:",
      `    - { from: svc, to: ${SERVER_IP}, proto: any, action: allow }`,
    ].join("\n"),
  });
  writeFileSync(join(lab.dir, "server.cjs"), FAILOVER_SERVER);
  writeFileSync(join(lab.dir, "app.cjs"), FAILOVER_APP);
  srv = lab.server(process.execPath, [join(lab.dir, "server.cjs")]);
  await waitLine(srv, (o) => o.event === "listening");
});

after(async () => {
  await lab?.destroy();
});

test(
  "etcd: kill -9 of the app's gateway: the other gateway gives it the same address, BGP moves the route, and its TCP connection survives",
  { skip },
  async (t) => {
    await lab.startGateway(0);
    await lab.startGateway(1);
    const app = lab.app(join(lab.dir, "app.cjs"), { ...lab.runtimeEnv(MR), SECONDS_TO_RUN: "10" });
    const first = (await waitLine(srv, (o) => o.event === "udp", 30_000)) as { from: string };
    const address = first.from;
    await lab.waitRoute(address, lab.uplink(0));
    await new Promise((r) => setTimeout(r, 1000));
    const killedAt = Date.now();
    await lab.killGateway(0);
    const exitedAt = Date.now();
    const back = (await waitLine(srv, (o) => o.event === "udp" && Number(o.t) > exitedAt, 30_000).catch(
      (e: Error) => {
        const gw2 = lab.gateways[1]?.stdout
          .split("\n")
          .filter((l) => !l.includes('"stats"'))
          .slice(-15);
        throw new Error(
          `${e.message.slice(0, 300)}\napp:\n${app.stderr.slice(-2500)}\ngateway 2:\n${gw2?.join("\n")}`,
        );
      },
    )) as {
      t: number;
      from: string;
    };
    assert.equal(back.from, address, "the same address through the other gateway");
    await lab.waitRoute(address, lab.uplink(1));
    const r = await app.wait(60_000);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const out = JSON.parse(r.stdout.trim().split("\n").pop()!) as {
      sent: number;
      got: string;
      echoes: number[];
    };
    assert.equal(
      out.got,
      Array.from({ length: out.sent }, (_, i) => `m${i};`).join(""),
      "every message, in order",
    );
    const conns = srv.stdout.split("\n").filter((x) => x.includes('"conn"'));
    assert.equal(conns.length, 1, srv.stdout);
    assert.ok(conns[0]!.includes(`"remote":"${address}"`), conns[0]);
    const echo = out.echoes.find((e) => e > exitedAt);
    t.diagnostic(
      `first datagram through gw2 ${back.t - killedAt} ms after the kill; first TCP echo ${echo ? echo - killedAt : "none"} ms`,
    );
  },
);
