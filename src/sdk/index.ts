/**
 * The SENG SDK in one import (`import { net, ShieldedStack } from "seng/sdk"`): the shielded sockets, UDP, DNS,
 * HTTP agents and fetch dispatcher for an app that chooses what goes through the tunnel, without the preload.
 * Each part is also its own entry point: `seng/net`, `seng/dgram`, `seng/dns`, `seng/http`, `seng/fetch`,
 * `seng/stack` (docs/RUNTIME.md, "The SDK").
 */
export * as net from "../runtime/net.js";
export * as dgram from "../runtime/dgram.js";
export * as dns from "../runtime/dns.js";
export * as http from "../runtime/agents.js";
export * as fetch from "../runtime/fetch.js";
export { ShieldedStack, ShieldedStackError } from "../runtime/stack.js";
export type { StackConfig, StackEvent } from "../runtime/stack.js";
export { ShieldedHttpAgent, ShieldedHttpsAgent } from "../runtime/agents.js";
export { createShieldedDispatcher, shieldedFetch } from "../runtime/fetch.js";
export { detectAttester, makeIdentity, AttesterError } from "../runtime/attesters.js";
