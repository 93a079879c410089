/**
 * One HTTP request from inside a test namespace, printed as a JSON line {"status","headers","body"}:
 *   http-tool.ts <METHOD> <url> [--token T] [--cookie C] [--header K:V] [--json BODY] [--form BODY]
 */
const [method, url, ...rest] = process.argv.slice(2);
const headers: Record<string, string> = {};
let body: string | undefined;
for (let i = 0; i < rest.length; i += 2) {
  const [k, v] = [rest[i], rest[i + 1] ?? ""];
  if (k === "--token") headers.authorization = `Bearer ${v}`;
  else if (k === "--cookie") headers.cookie = v;
  else if (k === "--header") headers[v.slice(0, v.indexOf(":"))] = v.slice(v.indexOf(":") + 1);
  else if (k === "--json") {
    headers["content-type"] = "application/json";
    body = v;
  } else if (k === "--form") {
    headers["content-type"] = "application/x-www-form-urlencoded";
    body = v;
  }
}
const res = await fetch(url!, { method, headers, body, redirect: "manual" });
process.stdout.write(
  JSON.stringify({
    status: res.status,
    headers: Object.fromEntries(res.headers),
    body: await res.text(),
  }) + "\n",
);
