/**
 * The self-check of Node internals (src/runtime/node-internals.ts): the real Node passes; a Node with one internal
 * missing or changed, or of an untested version, is refused with ERR_SENG_UNSUPPORTED_NODE and a line naming it;
 * the preload stops the app before it runs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import net from "node:net";
import tls from "node:tls";
import { fileURLToPath } from "node:url";
import {
  checkNodeInternals,
  isSupportedNode,
  SUPPORTED_NODE,
  type NodeUnderTest,
} from "../../src/runtime/node-internals.js";

const real = (): NodeUnderTest => ({
  version: process.version,
  net,
  tls,
  process: process as { binding?: unknown },
});
const REGISTER = fileURLToPath(new URL("../../src/runtime/register.ts", import.meta.url));

const refused = (n: NodeUnderTest, what: RegExp) =>
  assert.throws(
    () => checkNodeInternals(n),
    (e: NodeJS.ErrnoException) =>
      e.code === "ERR_SENG_UNSUPPORTED_NODE" && what.test(e.message) && !e.message.includes("\n"),
  );

test("this Node passes the self-check, and package.json pins the same range", async () => {
  checkNodeInternals(real());
  checkNodeInternals();
  const pkg = (await import("../../package.json", { with: { type: "json" } })).default as {
    engines: { node: string };
  };
  assert.equal(pkg.engines.node, SUPPORTED_NODE);
  assert.ok(isSupportedNode("v20.20.2"));
  for (const v of ["v20.19.5", "v21.0.0", "v22.12.0", "v18.20.0", "garbage"])
    assert.equal(isSupportedNode(v), false, v);
});

test("an untested version, or a missing or changed internal, is refused with a clear line", () => {
  refused({ ...real(), version: "v22.12.0" }, /Node v22\.12\.0 is not supported .*untested version/);

  // A net.Server without _listeningId (as if a release renamed it).
  class NoListeningId extends net.Server {
    constructor() {
      super();
      delete (this as unknown as Record<string, unknown>)._listeningId;
    }
  }
  refused({ ...real(), net: { Socket: net.Socket, Server: NoListeningId } }, /_listeningId/);

  // A net.Socket whose remoteAddress no longer goes through _getpeername.
  class OwnPeer extends net.Socket {
    constructor() {
      super();
      Object.defineProperty(this, "remoteAddress", { get: () => undefined });
    }
  }
  refused({ ...real(), net: { Socket: OwnPeer, Server: net.Server } }, /_getpeername/);

  // A net.Server whose close() no longer closes its _handle.
  class OwnClose extends net.Server {
    override close(cb?: (err?: Error) => void): this {
      (this as unknown as { _handle: unknown })._handle = null;
      cb?.();
      return this;
    }
  }
  refused({ ...real(), net: { Socket: net.Socket, Server: OwnClose } }, /close\(\)/);

  // A TLS socket that no longer keeps the stream it runs over where the runtime looks.
  class Opaque extends tls.TLSSocket {
    constructor(s: net.Socket) {
      super(s);
      const h = (this as unknown as { _handle: Record<string, unknown> | null })._handle;
      if (h) h._parentWrap = undefined;
    }
  }
  refused({ ...real(), tls: { TLSSocket: Opaque } }, /_parentWrap/);

  refused({ ...real(), process: {} }, /process\.binding/);
});

test("the preload refuses to start the app on a Node it does not support", () => {
  // Simulated by removing an internal before the preload loads.
  const r = spawnSync(
    process.execPath,
    [
      "--import",
      "tsx",
      "--import",
      "data:text/javascript,import net from 'node:net'; Object.defineProperty(net.Server.prototype, '_emitCloseIfDrained', { value: undefined });",
      "--import",
      REGISTER,
      "-e",
      "console.log('APP RAN')",
    ],
    {
      encoding: "utf8",
      env: { ...process.env, SENG_GATEWAY: "198.18.0.1:4433", SENG_PIN: "0".repeat(64) },
      timeout: 60_000,
    },
  );
  assert.equal(r.status, 1, r.stderr);
  assert.doesNotMatch(r.stdout, /APP RAN/);
  assert.match(
    r.stderr,
    /^seng: Node v20\.\d+\.\d+ is not supported .*_emitCloseIfDrained.*; the app is not started$/m,
  );
});
