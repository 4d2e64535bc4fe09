#!/usr/bin/env bash
# Builds the real components the e2e harness runs (kube-apiserver, kubectl,
# etcd, the S3 server, helm) from their Go modules into a cache outside the
# repo, keyed by version: a second run with the same pins does nothing.
#
#   e2e/tools/build.sh            # prints the bin folder on its last line
#
# Environment: GATEHOUSE_CACHE (default ~/.cache/gatehouse).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}
bin="$cache/tools/kube-$KUBE_VERSION-etcd-$ETCD_VERSION-versitygw-$VERSITYGW_VERSION/bin"
logs="$cache/logs"
mkdir -p "$bin" "$logs"

die() { echo "build.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "step 'find go': the go toolchain is not on PATH (install Go 1.26 or newer)"

# build NAME MODULE_DIR PACKAGE [LDFLAGS]
build() {
  local name=$1 dir=$2 pkg=$3 ldflags=${4:-}
  [ -x "$bin/$name" ] && return 0
  local log="$logs/build-$name.log"
  echo "build.sh: building $name ($pkg) — log: $log" >&2
  if ! (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$name.tmp" "$pkg") >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "step 'build $name': 'go build $pkg' in $dir failed; full log: $log"
  fi
  mv "$bin/$name.tmp" "$bin/$name"
}

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
kver="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
cver="-X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build etcd "$here/etcd" go.etcd.io/etcd/server/v3
build kube-apiserver "$here/kube" k8s.io/kubernetes/cmd/kube-apiserver "$kver $cver"
build kubectl "$here/kube" k8s.io/kubernetes/cmd/kubectl "$kver $cver"
build versitygw "$here/s3" github.com/versity/versitygw/cmd/versitygw
# helm is keyed by its own version inside the folder (so a new helm pin does
# not rebuild the control plane); `helm` points at the pinned build.
helm_k8s=$(sed -n 's|^\s*k8s.io/client-go v0\.\([0-9]*\)\..*|\1|p' "$here/helm/go.mod")
[ -n "$helm_k8s" ] || die "step 'read helm's client-go version': no k8s.io/client-go in $here/helm/go.mod"
hver="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
hver="$hver -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$helm_k8s"
hver="$hver -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$helm_k8s"
build "helm-$HELM_VERSION" "$here/helm" helm.sh/helm/v3/cmd/helm "$hver"
ln -sfn "helm-$HELM_VERSION" "$bin/helm"

echo "$bin"
