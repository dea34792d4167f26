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
#   ./build.sh secrets DC
#                       make datacenter DC's secrets (CA, certificates, gossip
#                       key, Consul tokens, replay secret) once, in
#                       $SVCKIT_SECRETS/DC (default ~/.svckit/secrets/DC, 0700;
#                       never in the repository); again makes only what is
#                       missing
#   ./build.sh up DC/HOST [docker-compose up options]
#                       install the host's secrets into its volumes, run
#                       datacenters/DC/HOST/docker-compose.yml on the Docker
#                       engine (DOCKER_HOST) as project DC-HOST (DC_PROJECT),
#                       creating the datacenter's shared network (svckit-DC,
#                       an encrypted overlay across machines) when it uses
#                       one, then apply the datacenter's Consul ACLs once it
#                       has a leader (DC_ACL_WAIT: how long to wait for one)
#   ./build.sh acl DC/HOST
#                       apply the ACLs through that host's Consul (waits up to
#                       DC_ACL_WAIT, default 3m, for a leader)
#   ./build.sh down DC/HOST [--volumes]
#                       stop and remove that host's containers; volumes are kept
#                       unless --volumes (the secrets' volumes are kept always)
#
# Third-party programs come from tools/go.mod, tools/nats/go.mod and
# tools/jaeger/go.mod (pinned
# versions, Go module proxy only) and are rebuilt only when their pinned
# version changes: Consul takes minutes to build.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
BIN=$ROOT/bin
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)

die() { echo "build.sh: $*" >&2; exit 1; }
# Interrupted: stop here (bash would go on after a child's SIGINT); the
# EXIT trap still removes what holds secrets.
trap 'exit 130' INT
trap 'exit 143' TERM
step() { echo "==> $*"; }

# tool name → package, module (its pinned version decides rebuilds), the
# tools module that pins it: tools/ (consul, nsq, goreman), tools/nats/
# (nats-server, for svckit bench --peer jetstream) or tools/jaeger/ (the
# OTLP receiver the tracing tests export to): modules of their own, so that
# their dependencies do not move the versions Consul and nsqd are built with
TOOLS=(
  "consul github.com/hashicorp/consul github.com/hashicorp/consul tools"
  "nsqd github.com/nsqio/nsq/apps/nsqd github.com/nsqio/nsq tools"
  "nsqlookupd github.com/nsqio/nsq/apps/nsqlookupd github.com/nsqio/nsq tools"
  "nsqadmin github.com/nsqio/nsq/apps/nsqadmin github.com/nsqio/nsq tools"
  "goreman github.com/mattn/goreman github.com/mattn/goreman tools"
  "nats-server github.com/nats-io/nats-server/v2 github.com/nats-io/nats-server/v2 tools/nats"
  "jaeger github.com/jaegertracing/jaeger/cmd/jaeger github.com/jaegertracing/jaeger tools/jaeger"
)

pinned() { # module, tools module dir → version pinned in its go.mod
  awk -v m="$1" '$1==m && $2 ~ /^v/ {print $2; exit} $1=="require" && $2==m {print $3; exit}' "$2/go.mod"
}

build_tools() {
  command -v go >/dev/null || die "go is not on PATH (need Go $(awk '/^go /{print $2}' go.mod))"
  mkdir -p "$BIN"
  local stale=() names=() dirs=() all=()
  for t in "${TOOLS[@]}"; do
    read -r name pkg mod dir <<<"$t"
    all+=("$name")
    local ver; ver=$(pinned "$mod" "$dir")
    [ -n "$ver" ] || die "$dir/go.mod pins no version of $mod (needed for $name)"
    local stamp="$mod@$ver $(go env GOVERSION)"
    if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
      continue
    fi
    stale+=("$pkg"); names+=("$name"); dirs+=("$dir")
  done
  if [ ${#stale[@]} -eq 0 ]; then
    step "tools up to date (${all[*]})"
    return
  fi
  step "building tools: ${names[*]} (consul takes several minutes the first time)"
  local d i pkgs
  for d in $(printf '%s\n' "${dirs[@]}" | sort -u); do
    pkgs=()
    for i in "${!stale[@]}"; do
      [ "${dirs[$i]}" = "$d" ] && pkgs+=("${stale[$i]}")
    done
    (cd "$d" && go build -trimpath -ldflags "-s -w" -o "$BIN/" "${pkgs[@]}") \
      || die "building tools failed: ${names[*]} (see the go output above)"
  done
  for t in "${TOOLS[@]}"; do
    read -r name pkg mod dir <<<"$t"
    for n in "${names[@]}"; do
      [ "$n" = "$name" ] && echo "$mod@$(pinned "$mod" "$dir") $(go env GOVERSION)" >"$BIN/.$name.stamp"
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

SECRETS_ROOT=${SVCKIT_SECRETS:-${HOME:-/root}/.svckit/secrets}

# acl_flags DC: svckit acl apply's flags of the datacenter (acl.flags).
acl_flags() {
  local f=datacenters/$1/acl.flags
  [ -f "$f" ] || return 0
  sed -e 's/#.*//' "$f" | tr -s ' \t' '\n' | sed '/^$/d'
}

# secrets DC: make the datacenter's secrets (svckit secrets init).
secrets() {
  local dc=${1:-}
  [[ $dc =~ ^[A-Za-z0-9_-]+$ ]] && [ -d "datacenters/$dc" ] \
    || die "want a datacenter, one of: $(cd datacenters && ls -d -- */ | tr -d / | tr '\n' ' ')"
  [ -f "datacenters/$dc/acl.flags" ] || die "datacenters/$dc/acl.flags is missing: it names the services that get a Consul token"
  # bin/svckit as ./build.sh or ./build.sh images left it (building it
  # again here could rewrite it under a concurrent run of it).
  [ -x "$BIN/svckit" ] || build_project
  local args=(--dc "$dc" --out "$SECRETS_ROOT/$dc") h s
  for h in datacenters/"$dc"/*/; do
    [ -f "$h/docker-compose.yml" ] && args+=(--host "$(basename "$h")")
  done
  for s in $(acl_flags "$dc" | sed -n -e 's/^--service=//p' -e 's/^--nsqauth=//p' -e 's/^--owner=\([^=]*\)=.*/\1/p' | sort -u); do
    args+=(--service "$s")
  done
  mkdir -p "$SECRETS_ROOT" && chmod 700 "$SECRETS_ROOT"
  "$BIN/svckit" secrets init "${args[@]}" || die "making the secrets of $dc failed"
  echo "    Keep $SECRETS_ROOT/$dc: the datacenter's hosts are brought up from it"
  echo "    (./build.sh up $dc/HOST on the machine that holds it, DOCKER_HOST pointing at"
  echo "    each host's engine). management.token is the operator's: the Consul UI's login."
}

# host_file DC/HOST: the host's compose file; sets dc, host, project, network.
host_file() {
  local target=${1:-}
  if ! [[ $target =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
    die "want DC/HOST, one of: $(cd datacenters 2>/dev/null && ls -d -- */*/ | sed 's|/$||' | tr '\n' ' ')"
  fi
  dc=${target%%/*} host=${target#*/} project=${DC_PROJECT:-${target%%/*}-${target#*/}}
  # The secrets' volumes are named after the project (see the files).
  export DC_SECRETS=$project
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

# private_tmp: a new directory (0700); the caller adds it to PRIVATE_TMP,
# which cleanup_private removes when build.sh exits, however it exits.
PRIVATE_TMP=()
private_tmp() {
  local d; d=$(mktemp -d "${TMPDIR:-/tmp}/svckit-secrets.XXXXXX") || die "mktemp failed"
  echo "$d"
}
ACL_CONTAINER=""
cleanup_private() {
  [ -z "$ACL_CONTAINER" ] || docker rm -f "$ACL_CONTAINER" >/dev/null 2>&1 || true
  [ ${#PRIVATE_TMP[@]} -eq 0 ] || rm -rf "${PRIVATE_TMP[@]}"
}

# tar_secrets DIR [MODE]: DIR as a tar stream of files that belong to the
# images' user (65534) and only it may read (docker cp keeps the archive's
# owners; its -a would look USER 65534:65534 up in a passwd database and
# fail).
tar_secrets() {
  tar -C "$1" --owner=65534 --group=65534 --numeric-owner --mode="${2:-u=rX,go=}" -cf - .
}

# install_secrets: fill the host's secrets volumes (<project>-secrets-<id>,
# the ids the compose file names) from the datacenter's secrets directory,
# on the engine DOCKER_HOST points at. docker cp works on remote engines too.
install_secrets() {
  local ids; ids=$(grep -oE '\}-secrets-[a-z0-9_]+' "$file" | sed 's/^}-secrets-//' | sort -u)
  [ -n "$ids" ] || return 0
  local src=$SECRETS_ROOT/$dc
  [ -f "$src/ca.pem" ] && [ -d "$src/hosts/$host" ] \
    || die "no secrets of datacenter $dc for host $host in $src: run ./build.sh secrets $dc first (once per datacenter; SVCKIT_SECRETS moves it)"
  local tag=${DC_IMAGE_TAG:-latest} id stage ctr vol
  stage=$(private_tmp) && PRIVATE_TMP+=("$stage") && trap cleanup_private EXIT
  for id in $ids; do
    rm -rf "${stage:?}/$id" && mkdir -p "$stage/$id"
    cp "$src/ca.pem" "$stage/$id/"
    case $id in
      consul)
        mkdir -p "$stage/$id/hosts/$host"
        cp "$src/hosts/$host/consul.hcl" "$src/hosts/$host/consul.pem" "$src/hosts/$host/consul-key.pem" "$stage/$id/hosts/$host/" ;;
      nsqd)
        cp "$src/hosts/$host/nsqd.pem" "$src/hosts/$host/nsqd-key.pem" "$stage/$id/" ;;
      nsqdstats)
        # svckit nsqd-stats beside nsqd: its own secret, which its /stats's
        # reader (the console) signs with, not the replay secret; no
        # Consul token (it registers nothing)
        [ -f "$src/nsqdstats.secret" ] || die "$src/nsqdstats.secret is missing: run ./build.sh secrets $dc (it makes what is missing)"
        cp "$src/nsqdstats.secret" "$stage/$id/" ;;
      *)
        [ -f "$src/tokens/$id.token" ] || die "$src/tokens/$id.token is missing: add --service=$id to datacenters/$dc/acl.flags and run ./build.sh secrets $dc"
        cp "$src/tokens/$id.token" "$stage/$id/consul.token"
        cp "$src/replay.secret" "$stage/$id/"
        [ -f "$src/metrics.token" ] || die "$src/metrics.token is missing: run ./build.sh secrets $dc (it makes what is missing)"
        cp "$src/metrics.token" "$stage/$id/"
        if [ "$id" = nsqauth ]; then
          [ -f "$src/hosts/$host/nsqauth.pem" ] || die "$src/hosts/$host/nsqauth.pem is missing: run ./build.sh secrets $dc (it makes what is missing)"
          cp "$src/hosts/$host/nsqauth.pem" "$src/hosts/$host/nsqauth-key.pem" "$stage/$id/"
        fi
        if [ "$id" = console ]; then
          [ -f "$src/hosts/$host/console.pem" ] && [ -f "$src/operator.token" ] && [ -f "$src/nsqdstats.secret" ] \
            || die "$src/hosts/$host/console.pem, $src/operator.token or $src/nsqdstats.secret is missing: run ./build.sh secrets $dc (it makes what is missing)"
          cp "$src/hosts/$host/console.pem" "$src/hosts/$host/console-key.pem" "$src/operator.token" "$src/nsqdstats.secret" "$stage/$id/"
        fi ;;
    esac
    # What the volume holds, to tell a rotated secret from the same one.
    local sum old
    sum=$(cd "$stage/$id" && find . -type f ! -name .svckit-sum | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64)
    echo "$sum" >"$stage/$id/.svckit-sum"
    vol=$project-secrets-$id
    local existed=false
    docker volume inspect "$vol" >/dev/null 2>&1 && existed=true
    docker volume create --label svckit.secrets="$dc/$host" "$vol" >/dev/null
    ctr=$(docker create -v "$vol:/s" "svckit/svckit:$tag") || die "creating a container to fill volume $vol failed"
    old=$(docker cp "$ctr:/s/.svckit-sum" - 2>/dev/null | tar -xOf - 2>/dev/null || true)
    tar_secrets "$stage/$id" | docker cp - "$ctr:/s" || { docker rm -f "$ctr" >/dev/null; die "filling volume $vol failed"; }
    docker rm -f "$ctr" >/dev/null
    # Programs read their secrets at start: those running with the old
    # ones restart after the up (ROTATED).
    # (A volume filled before sums were kept counts as changed.)
    if [ "$existed" = true ] && [ "$old" != "$sum" ]; then ROTATED+=("$vol"); fi
  done
  step "installed the secrets of $dc/$host from $src into volumes $project-secrets-{$(echo $ids | tr ' ' ,)}"
}

# restart_rotated: restart the running containers that mount a secrets
# volume whose content changed (a rotated token or secret).
ROTATED=()
restart_rotated() {
  local vol id name grace health deadline
  for vol in ${ROTATED[@]+"${ROTATED[@]}"}; do
    for id in $(docker ps -q --filter "volume=$vol"); do
      # One at a time, each given its own stop grace period (nsqd writes
      # its queues, a service saves its state), and healthy again before
      # the next: a datacenter's Consul servers never all restart at once.
      name=$(docker inspect -f '{{.Name}}' "$id" | tr -d /)
      grace=$(docker inspect -f '{{if .Config.StopTimeout}}{{.Config.StopTimeout}}{{else}}10{{end}}' "$id")
      step "restarting $name: its secrets ($vol) changed"
      docker restart -t "$grace" "$id" >/dev/null
      deadline=$((SECONDS + 180))
      while :; do
        health=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
        [ "$health" = healthy ] || [ "$health" = none ] && break
        [ "$SECONDS" -lt "$deadline" ] || die "$name is not healthy 3 minutes after its restart (docker logs $name)"
        sleep 2
      done
    done
  done
}

# acl: apply the datacenter's ACLs (svckit acl apply --bootstrap) through
# this host's Consul, from a container in its network namespace that gets
# the management token and the token files by docker cp and is removed
# after. Waits up to $1 for a leader; returns 75 if there is none.
acl() {
  local wait=$1 flags=()
  mapfile -t flags < <(acl_flags "$dc")
  [ ${#flags[@]} -gt 0 ] || return 0
  local src=$SECRETS_ROOT/$dc consul stage ctr rc=0
  consul=$(docker-compose -p "$project" -f "$file" ps -q consul) && [ -n "$consul" ] \
    || die "$dc/$host has no consul container: ./build.sh up $dc/$host first"
  stage=$(private_tmp) && PRIVATE_TMP+=("$stage") && trap cleanup_private EXIT
  mkdir -p "$stage/acl/tokens"
  cp "$src/ca.pem" "$src/management.token" "$stage/acl/"
  cp "$src"/tokens/*.token "$stage/acl/tokens/"
  local policy=()
  if [ -f "datacenters/$dc/nsqauth-policy.json" ]; then
    cp "datacenters/$dc/nsqauth-policy.json" "$stage/acl/"
    policy=(--nsqauth-policy /tmp/acl/nsqauth-policy.json)
  fi
  ctr=$(docker create --network "container:$consul" \
    -e CONSUL_HTTP_ADDR=https://127.0.0.1:8501 -e CONSUL_CACERT=/tmp/acl/ca.pem \
    -e CONSUL_HTTP_TOKEN_FILE=/tmp/acl/management.token \
    "svckit/svckit:${DC_IMAGE_TAG:-latest}" acl apply --bootstrap --wait "$wait" \
    --tokens /tmp/acl/tokens ${policy[@]+"${policy[@]}"} "${flags[@]}") || die "creating the container that applies the ACLs failed"
  # It holds the management token: removed however build.sh ends.
  ACL_CONTAINER=$ctr
  tar_secrets "$stage" u=rwX,go= | docker cp - "$ctr:/tmp" \
    || { docker rm -f "$ctr" >/dev/null; die "copying the ACL inputs failed"; }
  docker start -a "$ctr" | sed 's/^/    /' || true
  # Its exit status once it has ended (docker wait waits for it).
  rc=$(docker wait "$ctr") || die "waiting for the container that applies the ACLs failed"
  docker rm -f "$ctr" >/dev/null
  ACL_CONTAINER=""
  return "$rc"
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
    # The overlay is encrypted: IPsec (ESP) between the machines. A kernel
    # without ESP (CONFIG_INET_ESP) drops that traffic silently, and the
    # hosts never meet: DC_OVERLAY_ENCRYPTED=false there (README).
    local opts=(--driver bridge)
    if [ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ]; then
      opts=(--driver overlay --attachable)
      [ "${DC_OVERLAY_ENCRYPTED:-true}" = false ] || opts+=(--opt encrypted)
    fi
    step "creating network $network (${opts[*]}) for the hosts of datacenter $dc"
    docker network create "${opts[@]}" "$network" >/dev/null
  elif [ -n "$network" ] && [ "${DC_OVERLAY_ENCRYPTED:-true}" != false ] \
    && [ "$(docker network inspect -f '{{.Driver}}' "$network")" = overlay ] \
    && ! docker network inspect -f '{{json .Options}}' "$network" | grep -q '"encrypted"'; then
    echo "build.sh: warning: network $network exists unencrypted (made before, or with DC_OVERLAY_ENCRYPTED=false): recreate it with every host of $dc down to encrypt it" >&2
  fi
  install_secrets
  step "starting $dc/$host (docker-compose project $project)"
  docker-compose -p "$project" -f "$file" up -d "$@"
  docker-compose -p "$project" -f "$file" ps
  if [ -n "$(acl_flags "$dc")" ]; then
    # One host: its Consul elects itself. Several: a leader needs enough of
    # their servers, so the first host's up does not wait long.
    local wait=${DC_ACL_WAIT:-2m}
    [ -n "$network" ] && wait=${DC_ACL_WAIT:-30s}
    step "applying the Consul ACLs of $dc (svckit acl apply, through $host's Consul; waiting up to $wait for a leader)"
    local rc=0
    acl "$wait" || rc=$?
    case $rc in
      0) ;;
      75) [ -n "$network" ] || die "Consul of $dc has no leader: see docker-compose -p $project logs consul"
          echo "    not yet: the ACLs are applied by the next ./build.sh up of a host of $dc, or ./build.sh acl $dc/$host once enough hosts are up" ;;
      *) die "applying the ACLs of $dc failed (exit status $rc; see above)" ;;
    esac
  fi
  # After the ACLs: a rotated token is Consul's before its service uses it.
  restart_rotated
}

acl_cmd() {
  host_file "${1:-}"
  need_docker
  local rc=0
  acl "${DC_ACL_WAIT:-3m}" || rc=$?
  [ "$rc" = 0 ] || die "applying the ACLs of $dc failed (exit status $rc; 75: no Consul leader yet)"
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
    lib=$(go list ./svckit/... ./third_party/... ./internal/... ./pipeline/... ./cmd/svckit/internal/...)
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
  secrets) secrets "$@" ;;
  up) up "$@" ;;
  acl) acl_cmd "$@" ;;
  down) down "$@" ;;
  -h|--help|help) sed -n '2,/^[^#]/p' "$0" | sed '$d' ;;
  *) die "unknown command '$cmd' (want: build, start, test, bench, images, secrets, up, acl, down)" ;;
esac
