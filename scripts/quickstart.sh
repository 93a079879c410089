#!/usr/bin/env bash
# The README's two commands. On a fresh Debian 12 machine with Node 20, as root:
#   bash scripts/quickstart.sh demo   # installs what is missing, then runs the demo
#   bash scripts/quickstart.sh test   # installs what is missing, then runs every test
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-}
case "$what" in
  demo | test) ;;
  *)
    echo "usage: bash scripts/quickstart.sh demo|test" >&2
    exit 2
    ;;
esac

# Debian packages the project needs (tests and demo). Installed only when missing. clang: the fuzz harnesses of the
# native code (libFuzzer with ASan/UBSan). etcd-server: the cluster store's tests start their own etcd (/usr/bin/etcd)
# on random loopback ports; the packaged service is not used. bird2: the gateways' BGP announcements (src/routing/;
# each gateway runs its own BIRD as a child, the cluster tests and demo a router's BIRD in a namespace; the packaged
# bird.service is not used).
APT_PACKAGES=(python3 make g++ clang iproute2 iputils-ping procps curl liblwip-dev nftables conntrack chromium etcd-server bird2)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "quickstart: missing Debian packages (${missing[*]}); run as root or install them" >&2
    exit 2
  fi
  echo "quickstart: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "quickstart: Node.js 20 or later is required (found $(node --version 2>/dev/null || echo none))" >&2
  exit 2
fi

# Native addons (ours, better-sqlite3) build against the headers that come with Node, never downloaded ones (the
# network may reach only the npm registry and Debian). Node installs them under its own prefix: /usr for Debian's
# and NodeSource's packages, /usr/local or the tarball's folder for the official builds.
if [ -z "$(npm config get nodedir 2>/dev/null | grep -v '^undefined$')" ]; then
  node_prefix=$(node -p 'require("node:path").resolve(process.execPath, "../..")')
  for prefix in "$node_prefix" /usr; do
    if [ -f "$prefix/include/node/node.h" ]; then
      export npm_config_nodedir="$prefix"
      break
    fi
  done
  if [ -z "${npm_config_nodedir:-}" ]; then
    echo "quickstart: Node's C headers (include/node/node.h) were not found next to $(command -v node);" >&2
    echo "quickstart: node-gyp will try to download them (needs access to nodejs.org)" >&2
  fi
fi

# npm packages and the build (npm ci runs `install`, the native build, and `prepare`, which compiles TypeScript).
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
else
  npm run --silent install >/dev/null # the addon again: native sources may have changed since the last install
  npm run --silent build
fi

if [ "$what" = demo ]; then
  exec node bin/seng.js demo
else
  exec npm test
fi
