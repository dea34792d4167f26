#!/usr/bin/env bash
# build.sh — build everything the system needs, start it, test it.
#
#   ./build.sh          build bin/: sensor, worker, app, svckit, the examples
#                       (producer, splitter, tracker, hop: built from examples/,
#                       a module of its own, as a program importing svckit is)
#                       and the real programs (consul, nsqd, nsqlookupd,
#                       nsqadmin, goreman)
#   ./build.sh start    build, then run the Procfile under goreman
#   ./build.sh test     build, then run every test (the examples module's too)
#   ./build.sh bench    build, then run the go benchmarks
#   ./build.sh images   build, then docker build every images/<name>/Dockerfile
#                       as svckit/<name>:<version> and svckit/<name>:latest
#   ./build.sh up DC/HOST [docker-compose up options]
#                       run datacenters/DC/HOST/docker-compose.yml on the Docker
#                       engine (DOCKER_HOST) as project DC-HOST, creating the
#                       datacenter's shared network (svckit-DC) when it uses one
#   ./build.sh down DC/HOST [--volumes]
#                       stop and remove that host's containers; volumes are kept
#                       unless --volumes
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

# The examples are a module of their own (examples/go.mod requires svckit
# through a replace to this checkout): built as an importer builds svckit.
# `svckit bench` compares bin/hop with the same hop built here.
build_examples() {
  step "building the examples from their own module: producer, splitter, tracker, hop"
  (cd examples && go build -trimpath -ldflags "-s -w -X main.version=$VERSION" -o "$BIN/" ./producer ./splitter ./tracker ./hop) \
    || die "building the examples failed (examples/; see the go output above)"
}

build() { build_tools; build_project; build_examples; }

need_docker() {
  command -v docker >/dev/null || die "docker is not on PATH"
  docker info >/dev/null 2>&1 \
    || die "no Docker engine answers (docker info failed; DOCKER_HOST=${DOCKER_HOST:-unset})"
}

# images: every images/<name>/Dockerfile, FROM scratch with binaries from bin/.
# Paths in the Dockerfiles are relative to the repository root, so
# `docker build -f images/<name>/Dockerfile .` works by hand (.dockerignore
# keeps that context to bin/ and images/); here each build gets only
# images/ and the binaries its Dockerfile names, which is much faster.
images() {
  need_docker
  build
  local tag=${VERSION//[^A-Za-z0-9_.-]/-} df name out try
  ctx=$(mktemp "${TMPDIR:-/tmp}/svckit-image.XXXXXX") # global: the trap runs after return
  trap 'rm -f "$ctx" "$ctx.err"' EXIT
  for df in images/*/Dockerfile; do
    name=$(basename "$(dirname "$df")")
    local bins=()
    for b in $(grep -oE 'bin/[A-Za-z0-9_-]+' "$df" | sort -u); do
      [ -f "$b" ] && bins+=("$b")
    done
    step "image svckit/$name:$tag (${bins[*]:-no binaries})"
    # Another build writing bin/ meanwhile makes tar fail ("file changed as
    # we read it"): take the context again rather than build a torn binary.
    for try in 1 2 3 4 5; do
      tar -cf "$ctx" --exclude=.keep images ${bins[@]+"${bins[@]}"} 2>"$ctx.err" && break
      grep -q 'changed as we read it' "$ctx.err" && [ "$try" -lt 5 ] \
        || { cat "$ctx.err" >&2; die "packing the build context of $df failed"; }
      sleep 2
    done
    out=$(docker build -f "$df" -t "svckit/$name:$tag" -t "svckit/$name:latest" \
          --label "org.opencontainers.image.version=$VERSION" - <"$ctx" 2>&1) \
      || { echo "$out" >&2; die "docker build of $df failed"; }
  done
  # Images that lost their last tag to this build (ours only).
  docker image prune -f --filter label=org.opencontainers.image.vendor=svckit >/dev/null
  docker images --filter 'reference=svckit/*:latest' --format '    {{.Repository}}:{{.Tag}}\t{{.Size}}'
}

# host_file DC/HOST: the host's compose file; sets dc, host, project, network.
host_file() {
  local target=${1:-}
  if ! [[ $target =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
    die "want DC/HOST, one of: $(cd datacenters 2>/dev/null && ls -d -- */*/ | sed 's|/$||' | tr '\n' ' ')"
  fi
  dc=${target%%/*} host=${target#*/} project="${target%%/*}-${target#*/}"
  file=datacenters/$target/docker-compose.yml
  [ -f "$file" ] || die "no $file"
  command -v docker-compose >/dev/null || die "docker-compose is not on PATH"
  # The hosts of a datacenter share one external network (see the files).
  network=""
  if grep -qE '^[[:space:]]+external:[[:space:]]*true' "$file"; then
    network=${DC_NETWORK:-svckit-$dc}
    export DC_NETWORK=$network
  fi
}

up() {
  host_file "${1:-}"
  shift || true
  need_docker
  local img
  for img in $(docker-compose -p "$project" -f "$file" config | awk '$1 == "image:" {print $2}' | sort -u); do
    docker image inspect "$img" >/dev/null 2>&1 \
      || die "image $img is not on this engine (nothing can be pulled): run ./build.sh images first, with the same DOCKER_HOST"
  done
  if [ -n "$network" ] && ! docker network inspect "$network" >/dev/null 2>&1; then
    # One engine: a bridge network. A swarm manager: an attachable overlay,
    # so that hosts on different machines (DOCKER_HOST) share it.
    local opts=(--driver bridge)
    if [ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ]; then
      opts=(--driver overlay --attachable)
    fi
    step "creating network $network (${opts[*]}) for the hosts of datacenter $dc"
    docker network create "${opts[@]}" "$network" >/dev/null
  fi
  step "starting $dc/$host (docker-compose project $project)"
  docker-compose -p "$project" -f "$file" up -d "$@"
  docker-compose -p "$project" -f "$file" ps
}

down() {
  host_file "${1:-}"
  shift || true
  need_docker
  step "stopping $dc/$host (docker-compose project $project)"
  docker-compose -p "$project" -f "$file" down "$@"
  # The shared network goes with the datacenter's last host.
  if [ -n "$network" ] && [ "$(docker network inspect -f '{{len .Containers}}' "$network" 2>/dev/null)" = 0 ]; then
    docker network rm "$network" >/dev/null && step "removed network $network (no host of $dc uses it)"
  fi
}

cmd=${1:-build}
shift || true
case "$cmd" in
  build) build ;;
  start)
    build
    # The same as `goreman start` from here: the Procfile creates what it
    # needs under var/ and takes its ports from LAPTOP_* (see the Procfile).
    step "starting the Procfile under goreman (Ctrl-C stops everything)"
    echo "    Consul UI  http://127.0.0.1:${LAPTOP_CONSUL_HTTP_PORT:-8500}/ui"
    echo "    nsqadmin   http://127.0.0.1:${LAPTOP_NSQADMIN_HTTP_PORT:-4171}"
    exec "$BIN/goreman" -f Procfile start "$@"
    ;;
  test)
    build
    export SVCKIT_BIN="$BIN"
    # The library (and the go-nsq copy it carries) runs under the race
    # detector, which needs cgo for the test build only: the binaries
    # above stay static. The process-level suites start bin/'s programs
    # and gain nothing from -race but time.
    lib=$(go list ./svckit/... ./third_party/... ./internal/... ./pipeline/...)
    step "running the library's tests under the race detector"
    CGO_ENABLED=1 go test -race -count=1 -timeout 40m "$@" $lib || die "tests failed (library, -race)"
    step "running the process-level suites (e2e, faulttest, securitytest, dockertest)"
    go test -count=1 -timeout 40m "$@" $(go list ./... | grep -vxF -f <(printf '%s\n' $lib)) || die "tests failed (process-level suites)"
    step "running the examples module's tests (examples/: svckit used as an importer uses it)"
    (cd examples && go test -count=1 -timeout 40m "$@" ./...) || die "tests failed (examples)"
    ;;
  bench)
    build
    step "running the benchmarks"
    export SVCKIT_BIN="$BIN"
    go test -run '^$' -bench . -benchmem "$@" ./... || die "benchmarks failed"
    ;;
  images) images ;;
  up) up "$@" ;;
  down) down "$@" ;;
  -h|--help|help) sed -n '2,/^[^#]/p' "$0" | sed '$d' ;;
  *) die "unknown command '$cmd' (want: build, start, test, bench, images, up, down)" ;;
esac
