#!/usr/bin/env bash
# Installs the client drivers the e2e test `drivers::*` runs (psycopg 3, node-postgres,
# pgx v5; pinned in e2e/drivers) into a cache outside the repo, keyed by the hash of
# the pin files: a second run with the same pins does nothing.
#
#   e2e/tools/drivers.sh          # prints the drivers folder on its last line
#
# The folder then holds py/bin/python (a venv with psycopg), node/node_modules (from
# `npm ci` of the committed lockfile) and go/scenario (the built pgx program).
# Environment: GATEHOUSE_CACHE (default ~/.cache/gatehouse).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
drivers=$(cd "$here/../drivers" && pwd)
cache=${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}
logs="$cache/logs"
key=$(cd "$drivers" && cat python/requirements.txt node/package.json node/package-lock.json go/go.mod go/go.sum go/main.go | sha256sum | cut -c1-16)
out="$cache/drivers/$key"
mkdir -p "$out" "$logs"

die() { echo "drivers.sh: $*" >&2; exit 1; }

# step NAME LOG COMMAND...: runs COMMAND with its output in LOG, and on failure
# shows the log's tail and names the step.
step() {
  local name=$1 log=$2; shift 2
  if ! "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "step '$name' failed; full log: $log"
  fi
}

if [ ! -e "$out/py/.done" ]; then
  command -v python3 >/dev/null || die "step 'find python3': Python 3.10 or newer is needed for psycopg 3"
  echo "drivers.sh: installing psycopg into $out/py" >&2
  rm -rf "$out/py"
  step "create the Python venv" "$logs/drivers-py.log" python3 -m venv "$out/py"
  step "pip install -r e2e/drivers/python/requirements.txt" "$logs/drivers-pip.log" \
    "$out/py/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$drivers/python/requirements.txt"
  touch "$out/py/.done"
fi

if [ ! -e "$out/node/.done" ]; then
  command -v npm >/dev/null || die "step 'find npm': Node.js 18 or newer with npm is needed for node-postgres"
  echo "drivers.sh: installing node-postgres into $out/node" >&2
  rm -rf "$out/node"
  mkdir -p "$out/node"
  cp "$drivers/node/package.json" "$drivers/node/package-lock.json" "$out/node/"
  # `npm ci` installs exactly the lockfile (which names no registry: the
  # configured one is used) and fails if it disagrees with package.json.
  step "npm ci (e2e/drivers/node)" "$logs/drivers-npm.log" \
    npm ci --prefix "$out/node" --ignore-scripts --no-audit --no-fund
  touch "$out/node/.done"
fi

if [ ! -x "$out/go/scenario" ]; then
  command -v go >/dev/null || die "step 'find go': the Go toolchain is needed for the pgx program"
  echo "drivers.sh: building the pgx program into $out/go" >&2
  mkdir -p "$out/go"
  step "go build (e2e/drivers/go)" "$logs/drivers-go.log" \
    bash -c "cd '$drivers/go' && go build -mod=readonly -trimpath -o '$out/go/scenario.tmp' ."
  mv "$out/go/scenario.tmp" "$out/go/scenario"
fi

echo "$out"
