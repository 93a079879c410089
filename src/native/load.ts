/**
 * Loads the native addon (built by `npm install` through node-gyp into build/Release). The path is found from the
 * package root, so the same code works from src/ (tsx), dist/src/ (compiled) and an installed package
 * (node_modules/seng/dist/src).
 */
import { createRequire } from "node:module";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The nearest folder above this file whose package.json is seng's (the checkout, or node_modules/seng). */
export function packageRoot(from = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: unknown };
      if (pkg.name === "seng") return dir;
    } catch {
      // no package.json here (or not JSON): keep going up
    }
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find the seng package root (package.json) above ${from}`);
    dir = up;
  }
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
    if (!existsSync(path))
      throw new Error(
        `native addon not built (${path} missing): run npm install (or npm rebuild seng) with the build tools of docs/INSTALL.md`,
      );
    addon = createRequire(import.meta.url)(path) as Record<string, unknown>;
  }
  return addon as T;
}
