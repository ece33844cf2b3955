# Installs, when missing, the tools that build and test videoroom; sourced by run.sh and test.sh.
# Each check is quiet when the tool is already there at the right version. Nothing is downloaded
# outside the package registries (trunk, for `trunk serve`, is pointed at these tools instead of
# fetching its own).

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  say "installing $* (apt)"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# The wasm-bindgen version the client links against, as pinned by Cargo.lock.
locked_wasm_bindgen_version() {
  if [ ! -f Cargo.lock ]; then cargo generate-lockfile --quiet; fi
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

ensure_client_tools() {
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi

  local bindgen_version
  bindgen_version=$(locked_wasm_bindgen_version)
  if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $bindgen_version" ]; then
    say "installing wasm-bindgen-cli $bindgen_version (about 2 minutes, once)"
    # Without --locked: its own lockfile names a crate version the registry no longer serves.
    cargo install wasm-bindgen-cli --version "$bindgen_version" --force
  fi

  # Debian's binaryen is too old for current rustc output; npm's binaryen 132 is what Trunk.toml names.
  if ! wasm-opt --version 2>/dev/null | grep -q 'version 132'; then
    command -v npm >/dev/null || apt_install nodejs npm
    say "installing wasm-opt (npm binaryen@132)"
    as_root npm install --global --silent binaryen@132
    hash -r
  fi
}

ensure_browser() {
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
  fi
  if ! command -v firefox-esr >/dev/null; then
    apt_install firefox-esr
  fi
  # Debian has no geckodriver package; crates.io has it.
  local geckodriver_version=0.37.1
  if ! geckodriver --version 2>/dev/null | grep -q "^geckodriver $geckodriver_version"; then
    say "installing geckodriver $geckodriver_version (about 2 minutes, once)"
    cargo install geckodriver --version "$geckodriver_version" --locked
  fi
}

# redis-server, which the cluster tests start on a loopback port of their own.
ensure_redis() {
  if ! command -v redis-server >/dev/null; then
    apt_install redis-server
  fi
}

# trunk, for `trunk serve` while working on the client (scripts/build-client.sh builds without it).
ensure_trunk() {
  local trunk_version=0.21.14 # 0.22 needs a newer rustc than these machines have
  if [ "$(trunk --version 2>/dev/null)" != "trunk $trunk_version" ]; then
    say "installing trunk $trunk_version (about 10 minutes, once)"
    cargo install trunk --version "$trunk_version" --locked
  fi
}

# cargo-fuzz and the nightly toolchain it builds with (libFuzzer needs nightly's sanitizer flags).
ensure_fuzz_tools() {
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzzing needs a nightly toolchain beside stable: rustup toolchain install nightly" >&2
    return 1
  fi
  local fuzz_version=0.13.2
  if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $fuzz_version" ]; then
    say "installing cargo-fuzz $fuzz_version (about 2 minutes, once)"
    cargo install cargo-fuzz --version "$fuzz_version" --locked
  fi
}
