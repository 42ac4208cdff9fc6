#!/usr/bin/env bash
# Provide etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet and helm for the
# local platform (the quick start, the e2e tests and the real node).
#
# Usage: e2e/build-binaries.sh [--print-dir] [--check]
#
#   (no option)  reuse or build the binaries; progress goes to stderr, and the
#                last line on stdout is KUBEBUILDER_ASSETS=<dir>
#   --print-dir  same, but print only <dir>
#   --check      build nothing; exit 1 when a binary is missing or stale
#
# $KUBEBUILDER_ASSETS wins when it holds all the binaries. Otherwise they are
# built once from the wrapper Go module in e2e/k8s (Kubernetes and etcd
# versions pinned by its go.mod/go.sum) and cached, keyed by version, in
# ${MAITRED_CACHE:-$HOME/.cache/maitred}/kubernetes/<version>/. Later runs only check
# the cache. A cold build takes a while on 2 cores; concurrent callers wait on
# a lock instead of building twice. Each binary keeps its own key (the module
# versions it is built from), so adding a binary to go.mod builds only that one.
set -euo pipefail

HELM_VERSION=v3.17.3
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet helm)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
module="$here/k8s"
print_dir=false check=false
for arg in "$@"; do
  case "$arg" in
    --print-dir) print_dir=true ;;
    --check) check=true ;;
    *) echo "usage: $0 [--print-dir] [--check]" >&2; exit 2 ;;
  esac
done

log() { echo "build-binaries: $*" >&2; }

report() {
  if $print_dir; then echo "$1"; else echo "KUBEBUILDER_ASSETS=$1"; fi
}

complete() {
  local dir=$1 b
  for b in "${BINARIES[@]}"; do [[ -x "$dir/$b" ]] || return 1; done
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" ]] && complete "$KUBEBUILDER_ASSETS"; then
  log "using \$KUBEBUILDER_ASSETS"
  report "$KUBEBUILDER_ASSETS"
  exit 0
fi

k8s_version="$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$module/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$module/go.mod")"
cache="${MAITRED_CACHE:-$HOME/.cache/maitred}"
dest="$cache/kubernetes/$k8s_version"
# The stamp ties the cached binaries to the exact module contents and helm version.
stamp="$(cat "$module/go.mod" "$module/go.sum" <(echo "$HELM_VERSION ${BINARIES[*]}") | sha256sum | cut -c1-16)"

fresh() { complete "$dest" && [[ "$(cat "$dest/.stamp" 2>/dev/null)" == "$stamp" ]]; }

if fresh; then
  report "$dest"
  exit 0
fi
if $check; then
  log "binaries missing or stale in $dest"
  exit 1
fi

go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if ! "$go" version >/dev/null 2>&1; then
  log "no Go toolchain found (set GO=/path/to/go): cannot build the binaries"
  exit 1
fi

mkdir -p "$cache/kubernetes"
exec 9>"$cache/kubernetes/.build.lock"
if ! flock -n 9; then
  log "another build is running; waiting for it"
  flock 9
fi
if fresh; then
  report "$dest"
  exit 0
fi

work="$(mktemp -d "$cache/kubernetes/.build.XXXXXX")"
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly
start=$SECONDS

minor="${k8s_version#v1.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
go_version="$("$go" version | cut -d' ' -f3)"

main_package() {
  case "$1" in
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    helm) echo "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

# A binary's own key: the versions of the modules it is built from, the toolchain and the flags. A change to
# go.mod that leaves a binary's modules alone (another binary added) keeps that binary.
key() {
  if [[ $1 == helm ]]; then echo "helm $HELM_VERSION $go_version"; return; fi
  { (cd "$module" && "$go" list -deps -f '{{with .Module}}{{.Path}}@{{.Version}}{{end}}' "$(main_package "$1")") \
      | sort -u; echo "$go_version $ldflags"; } | sha256sum | cut -c1-16
}

build=()
for b in "${BINARIES[@]}"; do
  k="$(key "$b")"
  echo "$k" >"$work/.key-$b"
  if [[ -x "$dest/$b" && "$(cat "$dest/.key-$b" 2>/dev/null)" == "$k" ]]; then
    cp -p "$dest/$b" "$work/$b"
  else
    build+=("$b")
  fi
done
log "building ${build[*]} ($k8s_version, etcd $etcd_version, $go_version; long on a cold cache)"
# A line a minute while Go works, so a cold build does not look hung.
( while sleep 60; do log "still building ($(( (SECONDS - start) / 60 )) min so far)"; done ) &
heartbeat=$!
trap 'kill $heartbeat 2>/dev/null; rm -rf "$work"' EXIT
kube=()
for b in "${build[@]}"; do
  case "$b" in
    etcd) (cd "$module" && "$go" build -trimpath -ldflags "-s -w" -o "$work/etcd" "$(main_package etcd)") ;;
    helm) GOBIN="$work" GOFLAGS= "$go" install -trimpath \
            -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "$(main_package helm)" ;;
    *) kube+=("$(main_package "$b")") ;;
  esac
done
if [[ ${#kube[@]} -gt 0 ]]; then
  (cd "$module" && "$go" build -trimpath -ldflags "$ldflags" -o "$work/" "${kube[@]}")
fi

echo "$stamp" >"$work/.stamp"
kill $heartbeat 2>/dev/null
rm -rf "$dest"
mv "$work" "$dest"
trap - EXIT
log "done after $((SECONDS - start))s: $dest"
report "$dest"
