/**
 * `seng gateway --config <file>` runs the gateway; `seng gateway keygen` makes its certificate and prints the
 * fingerprint runtimes pin; `seng test-client` is a tunnel client on a kernel TUN, for tests and trials before the
 * runtime.
 */
import { execFile } from "node:child_process";
import { createHash, generateKeyPairSync, webcrypto } from "node:crypto";
import { mkdirSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { Command } from "commander";
import { x509 } from "../attest/x509gen.js";
import { Gateway } from "../gateway/server.js";
import { Tun } from "../native/io.js";
import { ConfigError, loadConfig } from "../policy/config.js";
import { simRaTlsIdentity } from "../runtime/sim-attester.js";
import { TunnelClient } from "../tunnel/client.js";
import { action, UsageError } from "./errors.js";

const run = promisify(execFile);

function gatewayRun(): Command {
  return new Command("gateway")
    .description("run the SENG gateway")
    .option("--config <file>", "gateway configuration (YAML); required")
    .action(
      action(async (f: { config?: string }) => {
        // Not a requiredOption: commander would demand it of the subcommands (keygen) too.
        if (!f.config) throw new UsageError("gateway: --config <file> is required");
        let config;
        try {
          config = loadConfig(f.config);
        } catch (e) {
          if (e instanceof ConfigError) throw new UsageError(e.message);
          throw e;
        }
        const gw = new Gateway(config);
        await gw.start();
        process.on("SIGUSR1", () =>
          process.stdout.write(JSON.stringify({ event: "stats", ...gw.stats() }) + "\n"),
        );
        await new Promise<void>((resolve) => {
          const stop = () => {
            process.off("SIGINT", stop);
            process.off("SIGTERM", stop);
            resolve();
          };
          process.on("SIGINT", stop);
          process.on("SIGTERM", stop);
        });
        await gw.stop();
        return 0;
      }),
    )
    .addCommand(keygen());
}

function keygen(): Command {
  return new Command("keygen")
    .description("create the gateway's certificate and key; prints the fingerprint runtimes pin")
    .requiredOption("--dir <dir>", "where to write gateway.pem and gateway.key")
    .option("--name <cn>", "certificate common name", "SENG gateway")
    .action(
      action(async (f: { dir: string; name: string }) => {
        mkdirSync(f.dir, { recursive: true });
        const cert = join(f.dir, "gateway.pem");
        if (existsSync(cert)) throw new UsageError(`${cert} exists; remove it first`);
        const keys = generateKeyPairSync("ec", { namedCurve: "P-256" });
        const alg = { name: "ECDSA", namedCurve: "P-256" } as const;
        const c = await x509.X509CertificateGenerator.createSelfSigned({
          serialNumber: createHash("sha256").update(String(Date.now())).digest("hex").slice(0, 16),
          name: `CN=${f.name.replace(/[,=+]/g, " ")}`,
          notBefore: new Date(Date.now() - 3600_000),
          notAfter: new Date(Date.now() + 5 * 365 * 86400_000),
          keys: {
            privateKey: await webcrypto.subtle.importKey(
              "pkcs8",
              keys.privateKey.export({ type: "pkcs8", format: "der" }),
              alg,
              false,
              ["sign"],
            ),
            publicKey: await webcrypto.subtle.importKey(
              "spki",
              keys.publicKey.export({ type: "spki", format: "der" }),
              alg,
              true,
              ["verify"],
            ),
          },
          signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
        });
        writeFileSync(join(f.dir, "gateway.key"), keys.privateKey.export({ type: "pkcs8", format: "pem" }), {
          mode: 0o600,
        });
        writeFileSync(cert, c.toString("pem") + "\n");
        const fp = createHash("sha256").update(Buffer.from(c.rawData)).digest("hex");
        process.stdout.write(`${fp}\n`);
      }),
    );
}

async function ip(...args: string[]): Promise<void> {
  await run("ip", args);
}

function testClient(): Command {
  return new Command("test-client")
    .description("tunnel client on a kernel TUN with a simulated TEE identity (tests and trials; INSECURE)")
    .requiredOption("--gateway <host:port>", "gateway address")
    .requiredOption("--pin <sha256>", "gateway certificate fingerprint")
    .requiredOption("--sim-dir <dir>", "simulated TEE (seng attest sim init)")
    .requiredOption("--mrenclave <hex>", "MRENCLAVE to claim")
    .option("--mrsigner <hex>", "MRSIGNER", "00".repeat(32))
    .option("--isvprodid <n>", "ISVPRODID", "0")
    .option("--isvsvn <n>", "ISVSVN", "0")
    .option("--debug", "claim a debug enclave")
    .option("--tun <name>", "TUN interface to create", "sengc0")
    .option("--route <cidr...>", "destinations to route through the tunnel")
    .option("--dead-seconds <n>", "consider the tunnel lost after this long without an answer", "30")
    .action(
      action(async (f: Record<string, string | string[] | boolean | undefined>) => {
        const identity = await simRaTlsIdentity(String(f.simDir), {
          mrenclave: String(f.mrenclave),
          mrsigner: String(f.mrsigner),
          isvprodid: Number(f.isvprodid),
          isvsvn: Number(f.isvsvn),
          debug: !!f.debug,
        });
        const say = (o: object) => process.stdout.write(JSON.stringify(o) + "\n");
        const client = new TunnelClient({
          gateway: String(f.gateway),
          pin: String(f.pin),
          ...identity,
          deadSeconds: Number(f.deadSeconds),
        });
        let tun: Tun | undefined;
        let address = "";
        client.on("lease", async (lease) => {
          say({ event: "lease", ...lease });
          if (!tun) {
            tun = Tun.open(String(f.tun), { napi: true });
            tun.onPackets((p) => client.send(p));
            client.on("packets", (p) => tun!.writeMany(p));
            await ip("link", "set", "dev", tun.name, "mtu", String(lease.mtu), "up");
          }
          if (address !== lease.address) {
            if (address) await ip("addr", "del", `${address}/32`, "dev", tun.name).catch(() => {});
            await ip("addr", "add", `${lease.address}/32`, "dev", tun.name);
            for (const r of (f.route as string[] | undefined) ?? [])
              await ip("route", "replace", r, "dev", tun.name, "src", lease.address);
            address = lease.address;
          }
        });
        return await new Promise<number>((resolve) => {
          client.on("closed", (c) => {
            say({ event: "closed", ...c });
            if (c.final) finish(c.reason === "client-closed" ? 0 : 1);
          });
          const finish = (code: number) => {
            process.off("SIGTERM", onSig);
            process.off("SIGINT", onSig);
            tun?.close();
            resolve(code);
          };
          const onSig = () => {
            client.close();
            finish(0);
          };
          process.on("SIGTERM", onSig);
          process.on("SIGINT", onSig);
          client.connect();
        });
      }),
    );
}

export function gatewayCommands(): Command[] {
  return [gatewayRun(), testClient()];
}
