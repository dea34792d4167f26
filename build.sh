#!/usr/bin/env bash
# build.sh — build everything the system needs, start it, test it.
#
#   ./build.sh          build bin/: sensor, worker, app, svckit and the real
#                       programs (consul, nsqd, nsqlookupd, nsqadmin, goreman)
#   ./build.sh start    build, then run the Procfile under goreman
#   ./build.sh test     build, then run every test
#   ./build.sh bench    build, then run the go benchmarks
#
# Third-party programs come from tools/go.mod (pinned versions, Go module
# proxy only) and are rebuilt only when their pinned version changes: Consul
# takes minutes to build.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
BIN=$ROOT/bin
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)

die() { echo "build.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

# tool name → package, module (the module's pinned version decides rebuilds)
TOOLS=(
  "consul github.com/hashicorp/consul github.com/hashicorp/consul"
  "nsqd github.com/nsqio/nsq/apps/nsqd github.com/nsqio/nsq"
  "nsqlookupd github.com/nsqio/nsq/apps/nsqlookupd github.com/nsqio/nsq"
  "nsqadmin github.com/nsqio/nsq/apps/nsqadmin github.com/nsqio/nsq"
  "goreman github.com/mattn/goreman github.com/mattn/goreman"
)

pinned() { # module → version pinned in tools/go.mod
  awk -v m="$1" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' tools/go.mod
}

build_tools() {
  command -v go >/dev/null || die "go is not on PATH (need Go $(awk '/^go /{print $2}' go.mod))"
  mkdir -p "$BIN"
  local stale=() names=()
  for t in "${TOOLS[@]}"; do
    read -r name pkg mod <<<"$t"
    local ver; ver=$(pinned "$mod")
    [ -n "$ver" ] || die "tools/go.mod pins no version of $mod (needed for $name)"
    local stamp="$mod@$ver $(go env GOVERSION)"
    if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
      continue
    fi
    stale+=("$pkg"); names+=("$name")
  done
  if [ ${#stale[@]} -eq 0 ]; then
    step "tools up to date (consul, nsqd, nsqlookupd, nsqadmin, goreman)"
    return
  fi
  step "building tools: ${names[*]} (consul takes several minutes the first time)"
  (cd tools && go build -trimpath -ldflags "-s -w" -o "$BIN/" "${stale[@]}") \
    || die "building tools failed: ${names[*]} (see the go output above)"
  for t in "${TOOLS[@]}"; do
    read -r name pkg mod <<<"$t"
    for n in "${names[@]}"; do
      [ "$n" = "$name" ] && echo "$mod@$(pinned "$mod") $(go env GOVERSION)" >"$BIN/.$name.stamp"
    done
  done
}

build_project() {
  step "building sensor, worker, app, svckit ($VERSION)"
  go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$BIN/" ./sensor ./worker ./app ./cmd/svckit \
    || die "building the project's binaries failed (see the go output above)"
}

build() { build_tools; build_project; }

cmd=${1:-build}
shift || true
case "$cmd" in
  build) build ;;
  start)
    build
    mkdir -p var/nsqd
    step "starting the Procfile under goreman (Ctrl-C stops everything)"
    echo "    Consul UI  http://127.0.0.1:8500/ui"
    echo "    nsqadmin   http://127.0.0.1:4171"
    exec "$BIN/goreman" -f Procfile start "$@"
    ;;
  test)
    build
    step "running the tests"
    export SVCKIT_BIN="$BIN"
    go test -count=1 -timeout 40m "$@" ./... || die "tests failed"
    ;;
  bench)
    build
    step "running the benchmarks"
    export SVCKIT_BIN="$BIN"
    go test -run '^$' -bench . -benchmem "$@" ./... || die "benchmarks failed"
    ;;
  -h|--help|help) sed -n '2,12p' "$0" ;;
  *) die "unknown command '$cmd' (want: build, start, test, bench)" ;;
esac
