/** IPv6 address text: strict parsing (no zones, no dotted tails), RFC 5952 output, prefixes and offsets. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  addOffset6,
  canonicalIp6,
  formatIp6,
  inPrefix6,
  offsetIn6,
  overlaps6,
  parseCidr6,
  parseIp6,
  unicastIp6,
} from "../../src/packet/addr6.js";

test("parse and format: canonical RFC 5952 text, garbage refused", () => {
  for (const [input, canon] of [
    ["fd64:1::2", "fd64:1::2"],
    ["FD64:0001:0000:0000:0000:0000:0000:0002", "fd64:1::2"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], // the first of two equal runs
    ["2001:db8::1:0:0:0:1", "2001:db8:0:1::1"], // the longest run
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // a single zero group is not compressed
    ["::", "::"],
    ["::1", "::1"],
    ["1::", "1::"],
  ])
    assert.equal(canonicalIp6(input!), canon, input);
  for (const bad of [
    "",
    ":",
    ":::",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7",
    "1::2::3",
    "12345::",
    "fe80::1%eth0",
    "::ffff:1.2.3.4",
    "g::",
    " ::1",
    "1:2:3:4:5:6:7::8",
  ])
    assert.equal(parseIp6(bad), undefined, bad);
});

test("unicast: no unspecified, loopback, multicast, link-local or IPv4-mapped address", () => {
  assert.equal(unicastIp6("fd64:1::2"), "fd64:1::2");
  assert.equal(unicastIp6("2001:2:ff::10"), "2001:2:ff::10");
  for (const bad of ["::", "::1", "ff02::1", "fe80::1", "::ffff:6440:102"])
    assert.equal(unicastIp6(bad), undefined, bad);
});

test("prefixes: host bits, containment, overlap, offsets", () => {
  const p = parseCidr6("fd64:1::/64");
  assert.equal(p.prefix, 64);
  assert.throws(() => parseCidr6("fd64:1::1/64"), /host bits/);
  assert.throws(() => parseCidr6("fd64:1::/129"), /above 128/);
  assert.throws(() => parseCidr6("100.64.0.0/10"), /not an IPv6 prefix/);
  assert.equal(inPrefix6(p, parseIp6("fd64:1::ffff")!), true);
  assert.equal(inPrefix6(p, parseIp6("fd64:1:0:1::")!), false);
  assert.equal(inPrefix6(parseCidr6("fd64:200::/23"), parseIp6("fd64:3ff::1")!), true);
  assert.equal(inPrefix6(parseCidr6("fd64:200::/23"), parseIp6("fd64:400::1")!), false);
  assert.equal(overlaps6(p, parseCidr6("fd64::/16")), true);
  assert.equal(overlaps6(parseCidr6("fd64::/16"), p), true);
  assert.equal(overlaps6(p, parseCidr6("fd64:2::/64")), false);
  assert.equal(formatIp6(addOffset6(p, 258n)), "fd64:1::102");
  assert.equal(formatIp6(addOffset6(parseCidr6("fd64:1::ff00/120"), 255n)), "fd64:1::ffff");
  assert.equal(offsetIn6(p, parseIp6("fd64:1::102")!), 258n);
});
