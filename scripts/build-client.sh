#!/usr/bin/env bash
# Builds the web client into dist/ the way `trunk build --release` does, without trunk (which
# takes ten minutes to compile on a new machine): cargo for wasm32 with the client's
# wasm-release profile, the wasm-bindgen CLI at the version Cargo.lock pins, `wasm-opt -Oz`,
# content-hashed file names, and dist/index.html naming them. `trunk serve` stays the way to
# work on the client (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
cargo build --quiet -p client --target wasm32-unknown-unknown --profile wasm-release
wasm-bindgen --target web --no-typescript --out-dir "$staging" --out-name client \
  target/wasm32-unknown-unknown/wasm-release/client.wasm
wasm-opt -Oz --output "$staging/client_opt.wasm" "$staging/client_bg.wasm"

# A name that changes with the content: the server serves these as immutable.
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
app=$(hash_of "$staging/client.js" "$staging/client_opt.wasm")
style=$(hash_of client/style.css)

rm -rf dist
mkdir dist
cp "$staging/client.js" "dist/client-$app.js"
cp "$staging/client_opt.wasm" "dist/client-${app}_bg.wasm"
cp client/style.css "dist/style-$style.css"
loader="<script type=\"module\">import init from '/client-$app.js'; await init({ module_or_path: '/client-${app}_bg.wasm' });</script>"
preload="<link rel=\"modulepreload\" href=\"/client-$app.js\"><link rel=\"preload\" href=\"/client-${app}_bg.wasm\" as=\"fetch\" type=\"application/wasm\" crossorigin>"
sed -e "s|<link data-trunk rel=\"rust\"[^>]*>|$loader $preload|" \
    -e "s|<link data-trunk rel=\"css\"[^>]*>|<link rel=\"stylesheet\" href=\"/style-$style.css\">|" \
    index.html > dist/index.html
if grep -q 'data-trunk' dist/index.html; then
  echo "dist/index.html still has a trunk link: index.html changed shape" >&2
  exit 1
fi
