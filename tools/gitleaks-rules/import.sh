#!/bin/sh
# Regenerates proxy/src/mask/gitleaks/rules.rs from the pinned gitleaks release.
# Needs the Go toolchain and the Go module proxy; rustfmt, when present, only
# checks that the output is formatted.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out="$root/proxy/src/mask/gitleaks/rules.rs"
cd "$here"
GOWORK=off go run . -out "$out" "$@"
if command -v rustfmt >/dev/null 2>&1; then
    (cd "$root" && rustfmt --edition 2024 --check "$out") || {
        echo "import.sh: the generated file is not rustfmt-clean (see the diff above)" >&2
        exit 1
    }
fi
echo "import.sh: wrote $out"
