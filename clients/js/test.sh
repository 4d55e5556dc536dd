#!/usr/bin/env bash
# Installs the JS client's dev dependencies (typescript, @types/node, Express, Fastify and
# Hono for the adapters' tests, and the Bun and Deno binaries for the runtime tests: from
# package-lock.json), builds it, type-checks the adapters against the frameworks' own types,
# builds the TypeScript chat example (examples/ts_chat), and runs the tests with Node's test
# runner against a real gateway process.
# Needs Node 20+ and `durable-gateway` on PATH (or its path in $DURABLE_GATEWAY).
set -euo pipefail
cd "$(dirname "$0")"

command -v node >/dev/null || { echo "clients/js: node is not installed" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if (( major < 20 )); then
  echo "clients/js: tests need Node 20+ (node --test), found $(node --version)" >&2
  exit 1
fi
if [[ -z "${DURABLE_GATEWAY:-}" ]] && ! command -v durable-gateway >/dev/null; then
  echo "clients/js: durable-gateway is not on PATH (pip install -e . at the repository root)" >&2
  exit 1
fi

npm ci --no-audit --no-fund --loglevel=error
# Bun and Deno come from npm as dev dependencies; their install scripts put the binary for
# this platform in place (allowed in package.json's allowScripts). test/runtimes.test.mjs
# runs the client under each.
for runtime in bun deno; do
  if ! version=$("node_modules/.bin/$runtime" --version 2>&1 | head -n 1); then
    echo "clients/js: node_modules/.bin/$runtime does not run (were install scripts skipped?): $version" >&2
    exit 1
  fi
  echo "clients/js: $runtime ${version#deno }"
done
npm run build
npm run check-types
# The package as published (built just above, so no prepack again) must hold every entry point.
npm pack --dry-run --json --ignore-scripts --loglevel=error | node -e '
  const [pack] = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const files = new Set(pack.files.map((f) => f.path));
  for (const entry of ["index", "node", "web", "express", "fastify", "hono"]) {
    for (const f of [`dist/${entry}.js`, `dist/${entry}.d.ts`]) {
      if (!files.has(f)) { console.error(`npm pack is missing ${f}`); process.exit(1); }
    }
  }
  const pkg = JSON.parse(require("fs").readFileSync("package.json", "utf8"));
  if (Object.keys(pkg.dependencies ?? {}).length) { console.error("the package must have no runtime dependencies"); process.exit(1); }
  console.log(`npm pack: ${pack.filename}, ${pack.files.length} files`);
'
# The TypeScript chat example (examples/ts_chat), which test/ts_chat.test.mjs runs behind
# the gateway: its own lockfile (typescript, @types/node, this client linked), compiled.
npm --prefix ../../examples/ts_chat ci --no-audit --no-fund --loglevel=error
npm --prefix ../../examples/ts_chat run --silent compile
node --test test/*.test.mjs
