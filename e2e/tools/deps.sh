#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need from Debian's packages and
# rustup, when it is missing. Idempotent and quiet when everything is there.
set -euo pipefail

die() { echo "deps.sh: $*" >&2; exit 1; }

missing=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v setpriv >/dev/null || missing+=(util-linux)
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
# pg_query (the PostgreSQL parser the proxy links) generates its bindings with libclang.
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)
# `make bench` compares against pgbouncer.
command -v pgbouncer >/dev/null || missing+=(pgbouncer)
# The drivers e2e test runs psycopg (in a venv), node-postgres and pgx (drivers.sh).
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v npm >/dev/null || missing+=(npm)

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]} with apt-get" >&2
  [ "$(id -u)" = 0 ] || die "step 'install ${missing[*]}': needs root (run: sudo apt-get install -y ${missing[*]})"
  log=$(mktemp)
  if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "step 'install ${missing[*]}': apt-get failed; full log: $log"
  fi
  rm -f "$log"
fi

command -v go >/dev/null || die "step 'find go': the Go toolchain (1.26 or newer) is needed to build kube-apiserver, etcd and kubectl"
command -v cargo >/dev/null || die "step 'find cargo': the Rust toolchain (rustup) is needed"
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    echo "deps.sh: adding the rustup component $component" >&2
    rustup component add "$component" >/dev/null || die "step 'rustup component add $component' failed"
  fi
done

# Client drivers for the e2e test `drivers::*`, cached by their pins.
"$(dirname "$0")/drivers.sh" >/dev/null
