/**
 * The firewall's IPv6 in network namespaces, with real nftables, the gateway's own Firewall class (policy apply, set
 * sync, conntrack deletion) and real packets. No tunnel data path: the "tunnel" is a veth pair whose gateway end is
 * named like the TUN (seng0), so what the app namespace sends arrives on the interface the rules name, with the
 * app's leased IPv6 source, as the TUN would deliver it (neighbour entries on it are static: the gateway chain drops
 * neighbour discovery from tunnels).
 *
 *   app (fd64:1::2) ──seng0── gw ──srv0── srv (2001:2:ff:1::2, listeners)
 *                             │
 *                           lan0 (unshielded) ── lan: a host with only link-local and SLAAC (EUI-64) addresses
 *
 * The LAN host's SLAAC address is assigned as the EUI-64 address SLAAC would form from its MAC in the LAN prefix
 * (no router namespace). Its rogue ND/RA messages are crafted by test/helpers/nd-send.py (raw ICMPv6, hop limit 255).
 * The gateway's LAN interface accepts RAs although it forwards (accept_ra=2, route information options up to /64,
 * redirects on): the worst case an operator could configure, so that only our table stands between a rogue RA and
 * the gateway's routes.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { Netns, NsProcess, ROOT, cleanupAll, nsChildRole, serveRpc } from "../helpers/netns.js";
import { TCP_TOOL, waitLine } from "../helpers/lab.js";
import { compilePolicy, type PolicyInput } from "../../src/firewall/model.js";
import { Firewall } from "../../src/firewall/firewall.js";
import { jsonLogger } from "../../src/gateway/log.js";
import { explain, parseService } from "../../src/firewall/explain.js";
import { parseCounters } from "../../src/firewall/nft.js";

const APP = "fd64:1::2";
const GW6 = "fd64::1";
const SRV = "2001:2:ff:1::2";
const LAN_PREFIX = "2001:2:0:10";
const ND_SEND = join(ROOT, "test/helpers/nd-send.py");

const INPUT: PolicyInput = {
  apps: [
    {
      name: "browser",
      mark: 0x5e000001,
      categories: ["web"],
      subnet: "100.64.1.0/24",
      shared: false,
      subnet6: "fd64:1::/64",
    },
  ],
  tun: "seng0",
  gateway: { address: "100.64.0.1", address6: GW6, dns: [] },
  firewall: {
    enabled: true,
    table: "seng",
    marks: true,
    exportSets: [],
    unshielded: { drop: true, interfaces: ["lan0"], allow: [] },
  },
  policy: {
    default: "deny",
    sets: { srv6: ["2001:2:ff::/48"] },
    rules: [
      { from: "browser", to: SRV, proto: "tcp", ports: [7000], action: "allow" },
      { from: "browser", to: "set:srv6", proto: "tcp", ports: [7001], action: "deny" },
      { from: "browser", to: "any", proto: "icmp", action: "allow" },
      { from: "browser", to: "gateway", proto: "tcp", ports: [9000], action: "allow" },
      // ICMP to the gateway is open: neighbour and router discovery from the tunnel must stay closed all the same.
      { from: "browser", to: "gateway", proto: "icmp", action: "allow" },
    ],
  },
};

if (nsChildRole() === "fw") {
  // The gateway's firewall, in the gateway namespace.
  let fw: Firewall | undefined;
  serveRpc(
    {
      start: async (input: PolicyInput) => {
        fw = new Firewall(compilePolicy(input), jsonLogger({ level: "error", write: () => {} }));
        await fw.start();
      },
      up: ([address, app]: [string, string]) => fw!.tunnelUp(address, app),
      down: (address: string) => fw!.tunnelDown(address),
      cut: (address: string) => fw!.cutFlows(address),
    },
    () => fw?.stop(),
  );
} else {
  const node = process.execPath;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  /** The EUI-64 interface identifier SLAAC forms from a MAC (RFC 4291 appendix A). */
  function eui64(mac: string): string {
    const b = mac.split(":").map((h) => parseInt(h, 16));
    const id = [b[0]! ^ 2, b[1]!, b[2]!, 0xff, 0xfe, b[3]!, b[4]!, b[5]!];
    return [0, 2, 4, 6].map((i) => ((id[i]! << 8) | id[i + 1]!).toString(16)).join(":");
  }

  describe("IPv6 firewall in namespaces", { concurrency: false }, () => {
    let gw: Netns, app: Netns, lan: Netns, srv: Netns;
    let fw: NsProcess;
    let udp: NsProcess;
    const listeners: NsProcess[] = [];
    let gwLL = "";
    let lanLL = "";
    let lanSlaac = "";
    let gwLanLL = "";

    const mac = async (ns: Netns, dev: string) =>
      (await ns.exec("cat", [`/sys/class/net/${dev}/address`])).stdout.trim();
    const sysctl = (ns: Netns, ...kv: string[]) => ns.exec("sysctl", ["-q", "-w", ...kv]);
    const counters = async () =>
      parseCounters((await gw.exec("nft", ["-j", "list", "table", "inet", "seng"])).stdout);
    const set = async (name: string) => (await gw.exec("nft", ["list", "set", "inet", "seng", name])).stdout;

    before(async () => {
      const made = await Promise.all(["v6gw", "v6app", "v6lan", "v6srv"].map((p) => Netns.create(p)));
      [gw, app, lan, srv] = made as [Netns, Netns, Netns, Netns];
      for (const ns of [gw, app, lan, srv])
        await sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0");
      await gw.ip("link", "add", "seng0", "type", "veth", "peer", "name", "app0", "netns", app.name);
      await gw.ip("link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lan.name);
      await gw.ip("link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns", srv.name);
      await sysctl(
        gw,
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv6.conf.lan0.accept_ra=2",
        "net.ipv6.conf.lan0.accept_ra_rt_info_max_plen=64",
        "net.ipv6.conf.lan0.accept_redirects=1",
        "net.ipv6.conf.seng0.accept_ra=2",
        "net.ipv6.conf.seng0.accept_ra_rt_info_max_plen=64",
      );
      for (const [ns, dev] of [
        [gw, "seng0"],
        [gw, "lan0"],
        [gw, "srv0"],
        [app, "app0"],
        [lan, "eth0"],
        [srv, "eth0"],
      ] as const)
        await ns.ip("link", "set", dev, "up");
      // The fake tunnel: the app's leased address, the gateway's TUN address, static neighbours.
      await gw.ip("-6", "addr", "add", `${GW6}/128`, "dev", "seng0");
      await gw.ip("-6", "route", "add", "fd64:1::/64", "dev", "seng0");
      await app.ip("-6", "addr", "add", `${APP}/64`, "dev", "app0");
      await app.ip("-6", "route", "add", `${GW6}/128`, "dev", "app0");
      await app.ip("-6", "route", "add", "default", "via", GW6, "dev", "app0");
      const [gwMac, appMac, lanMac] = [
        await mac(gw, "seng0"),
        await mac(app, "app0"),
        await mac(lan, "eth0"),
      ];
      gwLL = `fe80::${eui64(gwMac)}`;
      lanLL = `fe80::${eui64(lanMac)}`;
      lanSlaac = `${LAN_PREFIX}:${eui64(lanMac)}`;
      gwLanLL = `fe80::${eui64(await mac(gw, "lan0"))}`;
      await gw.ip("-6", "neigh", "replace", APP, "lladdr", appMac, "dev", "seng0", "nud", "permanent");
      for (const a of [GW6, gwLL])
        await app.ip("-6", "neigh", "replace", a, "lladdr", gwMac, "dev", "app0", "nud", "permanent");
      // The LAN: the gateway's address, and a host with its link-local address and its SLAAC (EUI-64) one only.
      await gw.ip("-6", "addr", "add", `${LAN_PREFIX}::1/64`, "dev", "lan0");
      await lan.ip("-6", "addr", "add", `${lanSlaac}/64`, "dev", "eth0");
      await lan.ip("-6", "route", "add", "default", "via", `${LAN_PREFIX}::1`, "dev", "eth0");
      // The server network.
      await gw.ip("-6", "addr", "add", "2001:2:ff:1::1/64", "dev", "srv0");
      await srv.ip("-6", "addr", "add", `${SRV}/64`, "dev", "eth0");
      await srv.ip("-6", "route", "add", "default", "via", "2001:2:ff:1::1", "dev", "eth0");

      fw = gw.runTs(import.meta.filename, { role: "fw" });
      await fw.ready();
      await fw.call("start", INPUT);
      for (const port of [7000, 7001, 7002]) {
        const s = srv.spawn(node, ["--import", "tsx", TCP_TOOL, "echo", "::", String(port)]);
        await waitLine(s, (o) => o.listening === true);
        listeners.push(s);
      }
      udp = srv.spawn(node, [
        "-e",
        `const d=require("dgram").createSocket("udp6");d.on("message",(m,r)=>console.log(JSON.stringify({remote:r.address})));` +
          `d.bind(7005,"::",()=>console.log(JSON.stringify({listening:true})))`,
      ]);
      await waitLine(udp, (o) => o.listening === true);
      for (const port of [9000, 9002]) {
        const s = gw.spawn(node, ["--import", "tsx", TCP_TOOL, "echo", "::", String(port)]);
        await waitLine(s, (o) => o.listening === true);
        listeners.push(s);
      }
      await fw.call("up", [APP, "browser"]);
      for (let i = 0; i < 100 && !(await set("seng_app6_browser")).includes(APP); i++) await sleep(50);
    });

    after(async () => {
      await fw?.close().catch(() => {});
      await cleanupAll();
    });

    /** A TCP connection from `ns` (source `from`) to `to` (1.5 s); true when it connects. */
    async function connects(ns: Netns, from: string, to: string, port: number): Promise<boolean> {
      const r = await ns.exec(
        node,
        [
          "-e",
          `const s=require("net").connect({host:${JSON.stringify(to)},port:${port},localAddress:${JSON.stringify(from)}},()=>{console.log("ok");s.destroy()});` +
            `s.on("error",()=>{});setTimeout(()=>process.exit(0),1500).unref()`,
        ],
        { check: false, timeoutMs: 10_000 },
      );
      return r.stdout.includes("ok");
    }

    /** One UDP datagram with any source (raw IPv6 from nd-send.py); true when the UDP listener got it within 1 s. */
    async function udpArrives(ns: Netns, from: string, to: string, port: number): Promise<boolean> {
      const seen = udp.stdout.length;
      await ns.exec("python3", [ND_SEND, "eth0", "udp", to, from, String(port)]);
      await sleep(1000);
      return udp.stdout.slice(seen).includes('"remote"');
    }

    async function pings(ns: Netns, from: string, to: string): Promise<boolean> {
      const r = await ns.exec("ping", ["-6", "-c", "1", "-W", "1", "-I", from, to], {
        check: false,
        timeoutMs: 10_000,
      });
      return r.code === 0;
    }

    test("a lease's IPv6 address is in the app's and category's IPv6 sets only", async () => {
      assert.match(await set("seng_app6_browser"), new RegExp(`elements = \\{ ${APP} \\}`));
      assert.match(await set("seng_cat6_web"), new RegExp(`elements = \\{ ${APP} \\}`));
      assert.ok(!(await set("seng_app_browser")).includes("elements"), "nothing in the IPv4 set");
    });

    test("explain's verdict is what IPv6 packets do, and the rule it names counted them", async () => {
      const appLL = `${gwLL}%app0`;
      const local = new Set([GW6, gwLL, "2001:2:ff:1::1", `${LAN_PREFIX}::1`]);
      const cases: {
        ns: Netns;
        from: string;
        to: string;
        service: string;
        inIf?: string;
        expect: string;
      }[] = [
        { ns: app, from: APP, to: SRV, service: "tcp/7000", expect: "policy.rules[0]" },
        { ns: app, from: APP, to: SRV, service: "tcp/7001", expect: "policy.rules[1]" },
        { ns: app, from: APP, to: SRV, service: "tcp/7002", expect: "policy.default" },
        { ns: app, from: APP, to: SRV, service: "icmp", expect: "policy.rules[2]" },
        { ns: app, from: APP, to: GW6, service: "tcp/9000", expect: "policy.rules[3]" },
        { ns: app, from: APP, to: GW6, service: "tcp/9002", expect: "gateway.default" },
        // The gateway's link-local address on the TUN is the gateway host too.
        { ns: app, from: APP, to: gwLL, service: "tcp/9002", expect: "gateway.default" },
        {
          ns: lan,
          from: lanSlaac,
          to: SRV,
          service: "tcp/7000",
          inIf: "lan0",
          expect: "firewall.unshielded",
        },
        { ns: lan, from: lanSlaac, to: SRV, service: "icmp", inIf: "lan0", expect: "firewall.unshielded" },
        // A link-local source, written by hand (raw IPv6): the kernel would not forward it either, uncounted.
        { ns: lan, from: lanLL, to: SRV, service: "udp/7005", inIf: "lan0", expect: "firewall.unshielded" },
      ];
      const counterOf = (d: string) =>
        ({
          "policy.default": "seng_policy_default",
          "firewall.unshielded": "seng_unshielded_drops",
          "gateway.default": "seng_gateway_default",
        })[d] ?? d;
      const model = compilePolicy(INPUT);
      for (const c of cases) {
        const svc = parseService(c.service);
        const e = explain(
          model,
          { from: c.from, to: c.to, ...svc, inInterface: c.inIf },
          (a) => (a === APP ? "browser" : undefined),
          (a) => local.has(a),
        );
        const label = `${c.from} → ${c.to} ${c.service}`;
        assert.equal(e.decidedBy, c.expect, `${label}: explain says ${e.decidedBy}\n${e.trace.join("\n")}`);
        const before = (await counters())[counterOf(e.decidedBy)] ?? 0;
        const dst = c.to === gwLL ? appLL : c.to;
        const passed =
          svc.proto === "icmp"
            ? await pings(c.ns, c.from, dst)
            : svc.proto === "udp"
              ? await udpArrives(c.ns, c.from, dst, svc.port!)
              : await connects(c.ns, c.from, dst, svc.port!);
        const afterN = (await counters())[counterOf(e.decidedBy)] ?? 0;
        assert.equal(
          passed,
          e.verdict === "accept",
          `${label}: packets ${passed ? "passed" : "dropped"}, explain ${e.verdict}`,
        );
        assert.ok(afterN > before, `${label}: counter ${counterOf(e.decidedBy)} ${before} → ${afterN}`);
      }
      // Nothing from the LAN host reached a listener; the app reached exactly what was allowed.
      const remotes = [...listeners, udp].flatMap((l) =>
        l.stdout
          .split("\n")
          .filter((x) => x.includes('"remote"'))
          .map((x) => (JSON.parse(x) as { remote: string }).remote),
      );
      assert.ok(!remotes.some((r) => r.startsWith(LAN_PREFIX) || r.startsWith("fe80:")), remotes.join(" "));
      assert.equal(listeners[0]!.stdout.match(/"remote"/g)?.length, 1, "7000: the app's one connection");
      assert.ok(!/"remote"/.test(listeners[1]!.stdout + listeners[2]!.stdout), "7001 and 7002 saw no one");
      assert.ok(!/"remote"/.test(listeners[4]!.stdout), "the gateway's closed port saw no one");
      assert.equal(listeners[3]!.stdout.match(/"remote"/g)?.length, 1, "the to: gateway rule opened 9000");
    });

    test("the LAN host cannot send with an app's address either: dropped, counted, nothing arrives", async () => {
      await lan.ip("-6", "addr", "add", `${APP}/128`, "dev", "eth0");
      try {
        const before = (await counters()).seng_unshielded_drops ?? 0;
        const lines = listeners[0]!.stdout.length;
        assert.equal(await connects(lan, APP, SRV, 7000), false);
        assert.ok(((await counters()).seng_unshielded_drops ?? 0) > before);
        assert.ok(
          !/"remote"/.test(listeners[0]!.stdout.slice(lines)),
          "the server saw the spoofed connection",
        );
      } finally {
        await lan.ip("-6", "addr", "del", `${APP}/128`, "dev", "eth0");
      }
    });

    test("rogue RAs, redirects and ND for app addresses from the LAN change nothing; the gateway's own ND works", async () => {
      const state = async () => ({
        routes: (await gw.exec("ip", ["-6", "route", "show", "table", "all"])).stdout
          .split("\n")
          .filter((l) => !/^(local|multicast|anycast) /.test(l) && !/ table local /.test(l))
          .map((l) => l.replace(/ expires \d+sec/, ""))
          .join("\n"),
        addrs: (await gw.exec("ip", ["-6", "-br", "addr", "show", "dev", "lan0"])).stdout,
        mtu: (await gw.exec("cat", ["/sys/class/net/lan0/mtu"])).stdout,
        hop: (await gw.exec("sysctl", ["-n", "net.ipv6.conf.lan0.hop_limit"])).stdout,
        neigh: (await gw.exec("ip", ["-6", "neigh", "show", "dev", "lan0"])).stdout,
      });
      const before = await state();
      const nd0 = (await counters()).seng_nd_drops ?? 0;
      const send = (...args: string[]) => lan.exec("python3", [ND_SEND, "eth0", ...args]);
      await send("ra", "ff02::1");
      await send("redirect", gwLanLL, lanLL, SRV);
      await send("na", "ff02::1", APP);
      await send("ns", gwLanLL, GW6);
      await sleep(1500);
      const afterState = await state();
      assert.equal(afterState.routes, before.routes, "a rogue RA or redirect changed the gateway's routes");
      assert.deepEqual(
        { ...afterState, neigh: undefined },
        { ...before, neigh: undefined },
        "a rogue RA changed the gateway's LAN addresses, MTU or hop limit",
      );
      assert.ok(
        !afterState.neigh.includes("fd64:"),
        `an app address got a LAN neighbour:\n${afterState.neigh}`,
      );
      assert.equal((await counters()).seng_nd_drops, nd0 + 4, "RA, redirect, NA and NS each counted");
      // The gateway's own neighbour discovery on the LAN keeps working, both ways.
      await gw.ip("-6", "neigh", "flush", "dev", "lan0");
      assert.ok(
        await pings(gw, `${LAN_PREFIX}::1`, lanSlaac),
        "the gateway resolves and reaches the LAN host",
      );
      assert.ok(
        await pings(lan, lanSlaac, `${LAN_PREFIX}::1`),
        "the LAN host resolves and reaches the gateway",
      );
      // Shielded traffic keeps flowing.
      assert.equal(await connects(app, APP, SRV, 7000), true);
    });

    test("from a tunnel, RAs and ND to the gateway are dropped although icmp to the gateway is allowed", async () => {
      const routes = async () => (await gw.exec("ip", ["-6", "route", "show"])).stdout;
      const addrs = async () => (await gw.exec("ip", ["-6", "-br", "addr", "show", "dev", "seng0"])).stdout;
      const [r0, a0] = [await routes(), await addrs()];
      const g0 = (await counters()).seng_gateway_default ?? 0;
      assert.ok(await pings(app, APP, GW6), "icmp to the gateway is allowed");
      const send = (...args: string[]) => app.exec("python3", [ND_SEND, "app0", ...args]);
      await send("ra", "ff02::1");
      await send("ns", gwLL, GW6);
      await send("na", "ff02::1", "fd64:1::77");
      await sleep(1500);
      assert.equal(await routes(), r0, "an RA from the tunnel changed the gateway's routes");
      assert.equal(await addrs(), a0, "an RA from the tunnel gave the gateway's TUN an address");
      assert.equal((await counters()).seng_gateway_default, g0 + 3, "each ND message counted as a drop");
    });

    test("revocation: the IPv6 flow's conntrack entry is deleted and the flow stops", async () => {
      const holder = app.spawn(node, [
        "-e",
        `let n=0;const s=require("net").connect({host:${JSON.stringify(SRV)},port:7000,localAddress:${JSON.stringify(APP)}},()=>{` +
          `setInterval(()=>s.write("x"),100)});s.on("data",(d)=>{n+=d.length;console.log(JSON.stringify({echoed:n}))});s.on("error",()=>{})`,
      ]);
      try {
        await waitLine(holder, (o) => typeof o.echoed === "number");
        const tracked = async () =>
          (
            await gw.exec("conntrack", ["-L", "-f", "ipv6", "-s", APP, "-p", "tcp", "--dport", "7000"], {
              check: false,
            })
          ).stdout;
        assert.match(await tracked(), /ESTABLISHED/);
        await fw.call("down", APP);
        const deleted = await fw.call<number>("cut", APP);
        assert.ok(deleted >= 1, `conntrack entries deleted: ${deleted}`);
        assert.ok(!(await set("seng_app6_browser")).includes(APP));
        await sleep(300);
        const echoed = () => {
          const m = [...holder.stdout.matchAll(/"echoed":(\d+)/g)];
          return Number(m.at(-1)?.[1] ?? 0);
        };
        const atCut = echoed();
        await sleep(1500);
        assert.equal(echoed(), atCut, "the flow kept going after its conntrack entry was deleted");
        assert.doesNotMatch(await tracked(), /dport=7000/, "the flow is tracked again");
      } finally {
        await holder.kill("SIGKILL");
      }
    });
  });
}
