#!/usr/bin/env bash
# Builds the binaries that tests/k8senv runs on loopback, from Go modules only:
#   kube-apiserver, kube-controller-manager, kube-scheduler  (k8s.io/kubernetes, pinned in go.mod)
#   kine   (etcd API on SQLite)                               (KINE_VERSION below)
#   kwok   (fakes kubelets: nodes Ready, pods Running)        (KWOK_VERSION below)
# and copies kwok's default Stage definitions (from the kwok module) to share/kwok-stages.yaml.
#
# Output goes to the cache dir (never into the repo):
#   ${CVMH_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvmharness/k8s-testenv}/{bin,share,stamp}
# A build whose stamp matches (versions, go.mod/go.sum hash, Go version) is skipped.
#
# Usage: tools/k8s-testenv/build.sh [--force]
# Env:   CVMH_K8S_CACHE   cache dir (see above)
#        GO               go binary (default: go on PATH, else /usr/local/go/bin/go)
#        CVMH_BUILD_NICE  nice level for the compiler (default 10; 0 = no nice)
#        KINE_CGO         1 = mattn/go-sqlite3 (needs a C compiler), 0 = pure-Go modernc sqlite
#                         (default: 1 when cc is found)
set -euo pipefail

KINE_VERSION=v0.17.5
KWOK_VERSION=v0.8.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${CVMH_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cvmharness/k8s-testenv}"
bin="$cache/bin"
share="$cache/share"
force=0
[[ "${1:-}" == "--force" ]] && force=1

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
[[ -x "$GO" ]] || { echo "build.sh: no go toolchain (set GO=/path/to/go)" >&2; exit 2; }
# Never fetch another toolchain: every module here builds with go1.26.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:-} -buildvcs=false -trimpath"
nice_level="${CVMH_BUILD_NICE:-10}"
if [[ "$nice_level" != 0 ]]; then runq=(nice -n "$nice_level"); else runq=(); fi

if [[ -z "${KINE_CGO:-}" ]]; then
  if command -v "${CC:-cc}" >/dev/null 2>&1; then KINE_CGO=1; else KINE_CGO=0; fi
fi

k8s_version="$(awk '{ for (i = 1; i < NF; i++) if ($i == "k8s.io/kubernetes" && $(i + 1) ~ /^v1[.]/) { print $(i + 1); exit } }' "$here/go.mod")"
[[ -n "$k8s_version" ]] || { echo "build.sh: go.mod requires no k8s.io/kubernetes v1.x" >&2; exit 2; }
go_version="$("$GO" env GOVERSION)"
mod_hash="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
stamp_text="format=2 k8s=$k8s_version kine=$KINE_VERSION kwok=$KWOK_VERSION kine_cgo=$KINE_CGO go=$go_version mod=$mod_hash"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kine kwok)

all_present() {
  local b
  for b in "${binaries[@]}"; do [[ -x "$bin/$b" ]] || return 1; done
  [[ -s "$share/kwok-stages.yaml" ]]
}

if [[ $force == 0 && -f "$cache/stamp" && "$(cat "$cache/stamp")" == "$stamp_text" ]] && all_present; then
  echo "k8s-testenv: up to date in $cache ($stamp_text)"
  exit 0
fi

mkdir -p "$bin" "$share"
rm -f "$cache/stamp"
t_all=$SECONDS
step() { # name, then the command
  local name="$1" t0=$SECONDS
  shift
  echo "k8s-testenv: building $name ..."
  "$@"
  echo "k8s-testenv: $name done in $((SECONDS - t0))s"
}

# --- k8s.io/kubernetes: one `go build` so the shared packages compile once -------------
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
build_k8s() {
  # Static binaries, as upstream's release builds (CGO_ENABLED=0).
  (cd "$here" && CGO_ENABLED=0 "${runq[@]}" "$GO" build -ldflags "$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)
}
step "kube-apiserver, kube-controller-manager, kube-scheduler $k8s_version" build_k8s

# --- kine and kwok: `go install mod@version` uses each module's own go.mod/go.sum --------
build_kine() {
  GOBIN="$bin" CGO_ENABLED="$KINE_CGO" "${runq[@]}" "$GO" install \
    -ldflags "-s -w -X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION" \
    "github.com/k3s-io/kine@$KINE_VERSION"
}
step "kine $KINE_VERSION (CGO_ENABLED=$KINE_CGO)" build_kine

build_kwok() {
  GOBIN="$bin" CGO_ENABLED=0 "${runq[@]}" "$GO" install -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}
step "kwok $KWOK_VERSION" build_kwok

# --- kwok's default stages, taken from the same kwok module version -----------------------
kwok_dir="$(cd "$here" && "$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
stage_files=(
  kustomize/stage/node/fast/node-initialize.yaml
  kustomize/stage/node/heartbeat/node-heartbeat.yaml
  kustomize/stage/pod/fast/pod-ready.yaml
  kustomize/stage/pod/fast/pod-complete.yaml
  kustomize/stage/pod/fast/pod-delete.yaml
)
{
  echo "# kwok default stages, copied from sigs.k8s.io/kwok@$KWOK_VERSION (Apache-2.0) by build.sh"
  for f in "${stage_files[@]}"; do
    echo "---"
    cat "$kwok_dir/$f"
  done
} > "$share/kwok-stages.yaml.tmp"
mv "$share/kwok-stages.yaml.tmp" "$share/kwok-stages.yaml"

all_present || { echo "k8s-testenv: a binary is missing after the build" >&2; exit 1; }
echo "$stamp_text" > "$cache/stamp"
echo "k8s-testenv: built in $((SECONDS - t_all))s into $bin"
ls -l "$bin"
du -sh "$cache"
