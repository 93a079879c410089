/**
 * Loads the native addon (built by `npm install` through node-gyp into build/Release). The path is found from the
 * package root, so the same code works from src/ (tsx) and dist/src/ (compiled).
 */
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "binding.gyp"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("cannot find the seng package root (binding.gyp)");
    dir = up;
  }
  return dir;
}

let addon: Record<string, unknown> | undefined;

/** Where SENG's own addon is (the runtime's addon guard always lets it load). */
export function nativeAddonPath(): string {
  return join(packageRoot(), "build", "Release", "seng_native.node");
}

/** The addon's exports. Throws a clear error when it was not built. */
export function native<T>(): T {
  if (!addon) {
    const path = nativeAddonPath();
    if (!existsSync(path)) throw new Error(`native addon not built (${path} missing): run npm install`);
    addon = createRequire(import.meta.url)(path) as Record<string, unknown>;
  }
  return addon as T;
}
