/**
 * The web dashboard in headless Chromium (Debian's chromium, driven by playwright-core). The browser runs in the
 * lab's server namespace, which reaches the gateway's admin listener on 198.18.2.1 and nothing else: it never
 * touches the root namespace's network. This file is also the browser's process (role "browser").
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Lab, waitLine } from "../helpers/lab.js";
import { nsChildRole, ROOT, serveRpc, type NsProcess } from "../helpers/netns.js";

const BROWSER = "b0".repeat(32);
const STRANGER = "ee".repeat(32);
const TOKEN = "5a".repeat(32);
const ADMIN = "http://198.18.2.1:9443";
/** docs/dashboard.png with SENG_UPDATE_SCREENSHOT=1 (so ordinary test runs leave the work tree clean). */
const SCREENSHOT_TO_DOCS = process.env.SENG_UPDATE_SCREENSHOT === "1";

/**
 * The page's document in functions run by the browser (the project compiles without the DOM library; those
 * functions are sent as source, so they can use nothing from this module but types).
 */
interface Dom {
  document: {
    querySelector(s: string): { textContent: string | null } | null;
    getElementById(id: string): { textContent: string | null } | null;
  };
}

if (nsChildRole() === "browser") {
  const { chromium } = await import("playwright-core");
  const profile = mkdtempSync(join(tmpdir(), "seng-chromium-"));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    viewport: { width: 1280, height: 860 },
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  const row = (address: string) => `#tunnels tr[data-address="${address}"]`;
  serveRpc(
    {
      /** Opens the dashboard; returns the status of the first answer (the login form) and whether a form is shown. */
      async open(url: string) {
        const res = await page.goto(url);
        return {
          status: res?.status() ?? 0,
          loginForm: (await page.locator('form[action="/login"]').count()) > 0,
        };
      },
      async login(token: string) {
        await page.fill('input[name="token"]', token);
        await Promise.all([page.waitForURL(/\/$/), page.click('button[type="submit"]')]);
        await page.waitForSelector("#conn.ok", { timeout: 15_000 });
        return { error: await page.locator("#login-error").count() };
      },
      async cookie() {
        const c = (await ctx.cookies()).find((x) => x.name === "seng_session");
        return c && { httpOnly: c.httpOnly, sameSite: c.sameSite };
      },
      async waitTunnel(address: string) {
        await page.waitForSelector(row(address), { timeout: 15_000 });
        return (await page.locator(row(address)).innerText()).split("\t").map((s) => s.trim());
      },
      async waitTunnelGone(address: string) {
        await page.waitForSelector(row(address), { state: "detached", timeout: 15_000 });
        return true;
      },
      /** Waits until the app's row shows `packets` packets in; returns the row's cells. */
      async waitAppPackets(arg: { app: string; packets: number }) {
        const sel = `#apps tr[data-app="${arg.app}"] td:nth-child(4)`;
        await page.waitForFunction(
          (a) => (globalThis as unknown as Dom).document.querySelector(a.sel)?.textContent === a.want,
          { sel, want: String(arg.packets) },
          { timeout: 15_000 },
        );
        return (await page.locator(`#apps tr[data-app="${arg.app}"]`).innerText())
          .split("\t")
          .map((x) => x.trim());
      },
      async clickClose(address: string) {
        await page.click(`${row(address)} button.close`);
        return true;
      },
      async waitRecent(event: string) {
        await page.waitForSelector(`#recent tr[data-event="${event}"]`, { timeout: 15_000 });
        return page.locator(`#recent tr[data-event="${event}"]`).first().innerText();
      },
      async searchAudit() {
        await page.click('#audit-form button[type="submit"]');
        await page.waitForFunction(
          () =>
            !/searching/.test(
              (globalThis as unknown as Dom).document.getElementById("audit-status")?.textContent ?? "",
            ),
        );
        return page.locator("#audit-status").innerText();
      },
      async auditAddresses() {
        return page.$$eval("#audit tbody tr", (trs) =>
          trs.map((tr) => (tr as unknown as { dataset: { address?: string } }).dataset.address ?? ""),
        );
      },
      async screenshot(path: string) {
        await page.screenshot({ path, fullPage: true });
        return true;
      },
    },
    async () => {
      await ctx.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  );
} else {
  describe("dashboard in headless Chromium", { concurrency: false }, () => {
    let lab: Lab;
    let browser: NsProcess | undefined;

    before(async () => {
      lab = await Lab.create({
        clients: 2,
        apps: [{ name: "browser", subnet: "100.64.1.0/24", identities: [{ mrenclave: BROWSER }] }],
        extraYaml: [
          "tunnel: { keepaliveSeconds: 1, idleTimeoutSeconds: 30, leaseGraceSeconds: 60 }",
          "admin: { tcp: 198.18.2.1:9443, tokenFile: admin.token }",
        ].join("\n"),
      });
      writeFileSync(join(lab.dir, "admin.token"), TOKEN + "\n", { mode: 0o600 });
      const gw = await lab.startGateway();
      await waitLine(gw, (o) => o.event === "admin-started");
    });

    after(async () => {
      await browser?.close().catch(() => {});
      await lab?.destroy();
    });

    test("the page loads behind the login, shows a tunnel a test opened, and updates when tunnels close", async () => {
      browser = lab.srv.runTs(fileURLToPath(import.meta.url), { role: "browser" });
      await browser.ready(60_000);
      const first = await browser.call<{ status: number; loginForm: boolean }>("open", ADMIN + "/", 60_000);
      assert.deepEqual(first, { status: 401, loginForm: true }, "no dashboard without the token");
      await browser.call("login", TOKEN, 60_000);
      assert.deepEqual(await browser.call("cookie"), { httpOnly: true, sameSite: "Strict" });

      // A refused stranger shows up among the recent refusals, with its reason.
      const stranger = lab.startClient(STRANGER, { client: 1 });
      await waitLine(stranger, (o) => o.event === "closed");
      await stranger.kill();
      assert.match(await browser.call<string>("waitRecent", "tunnel-refused", 30_000), /no app matches/);

      const a = lab.startClient(BROWSER, { client: 0 });
      const b = lab.startClient(BROWSER, { client: 1 });
      const la = await waitLine<{ address: string }>(a, (o) => o.event === "lease");
      const lb = await waitLine<{ address: string }>(b, (o) => o.event === "lease");
      const cells = await browser.call<string[]>("waitTunnel", la.address, 30_000);
      assert.ok(cells.includes("browser") && cells.includes(la.address), cells.join(" | "));
      await browser.call("waitTunnel", lb.address, 30_000);
      // Traffic shows up live: 3 echo requests of 84 bytes (20 IP + 8 ICMP + 56) from the first tunnel.
      const ping = await lab.clients[0]!.exec("ping", ["-c", "3", "-i", "0.2", "-W", "2", "198.18.2.2"], {
        check: false,
        timeoutMs: 10_000,
      });
      assert.equal(ping.code, 0, ping.stdout);
      const app = await browser.call<string[]>("waitAppPackets", { app: "browser", packets: 3 }, 30_000);
      assert.deepEqual(app.slice(0, 5), ["browser", "100.64.1.0/24", "2", "3", "252 B"]);
      // The audit search finds the grants of both tunnels.
      assert.match(await browser.call<string>("searchAudit", undefined, 30_000), /^\d+ entries$/);
      const rows = await browser.call<string[]>("auditAddresses");
      assert.ok(rows.includes(la.address) && rows.includes(lb.address), rows.join(" "));
      const shot = SCREENSHOT_TO_DOCS ? join(ROOT, "docs/dashboard.png") : join(lab.dir, "dashboard.png");
      await browser.call("screenshot", shot, 30_000);
      assert.ok(statSync(shot).size > 10_000, "a real screenshot");

      // The client ends its tunnel: the row goes away by itself.
      await a.kill("SIGTERM");
      assert.equal(await browser.call("waitTunnelGone", la.address, 30_000), true);
      // The Close button closes the other one through the API: the runtime is told it was revoked.
      await browser.call("clickClose", lb.address, 30_000);
      const closed = await waitLine<{ reason: string }>(b, (o) => o.event === "closed", 15_000);
      assert.equal(closed.reason, "revoked");
      assert.equal(await browser.call("waitTunnelGone", lb.address, 30_000), true);
      await b.kill();
    });
  });
}
