#!/usr/bin/env bash
# Kiln local test/demo environment (run as root).
#
#   scripts/dev-env.sh [up]    install packages, start dockerd + two registries, build/push base images
#   scripts/dev-env.sh status  show what runs and what is present
#   scripts/dev-env.sh stop    stop the worker Engines, dockerd and registries that this script started
#
# Worker Engines for the pool tests (`up` starts them too; KILN_WORKERS=N, default 2, 0 = none):
#   scripts/dev-env.sh workers-up | workers-down | workers-status
#   scripts/dev-env.sh worker-start N | worker-stop N   start / gracefully stop worker N (1-based)
#   scripts/dev-env.sh worker-kill N    kill -9 worker N's dockerd (a crash; worker-start cleans up)
#   scripts/dev-env.sh worker-reset N   stop worker N, delete its data root, start it (a cold worker)
#
# Idempotent: every step checks first and says "already ..." when nothing is to do.
#
# What it sets up (state dir = ${KILN_ENV_DIR:-/var/lib/kiln-env}):
#   - Debian's dockerd (docker.io, Engine 20.10) on /var/run/docker.sock, log in $KILN_ENV_DIR/log/
#   - registry 127.0.0.1:5000 (open) and 127.0.0.1:5001 (htpasswd/bcrypt), Debian's docker-registry
#     binary, each with its own config/storage/log under $KILN_ENV_DIR/registry-<port>/
#   - $KILN_ENV_DIR/registry-auth.env     KILN_TEST_REGISTRY_USER / KILN_TEST_REGISTRY_PASSWORD
#   - $KILN_ENV_DIR/docker-config/config.json   auths for 127.0.0.1:5001 (use: docker --config DIR)
#   - images kiln/bookworm:minbase (debootstrap --variant=minbase) and kiln/bookworm-python:minbase
#     (+ python3, python3-pip), pushed to 127.0.0.1:500{0,1}/kiln/...:minbase
#   - $KILN_ENV_DIR/dockerd.env           flags dockerd was started with, network builds must use
#   - the same dockerd also on tcp://127.0.0.1:2376 with mutual TLS (--tlsverify): a CA, server and
#     client certificates made with openssl in $KILN_ENV_DIR/docker-tls/ (client files in
#     docker-tls/client/{ca,cert,key}.pem, the DOCKER_CERT_PATH layout; a client signed by
#     another CA in docker-tls/wrong-ca/ for tests that must be refused)
#   - worker Engines w1..wN: dockerd with its own --data-root ($KILN_ENV_DIR/worker-N/data),
#     --exec-root (/run/kiln-wN/exec), --pidfile ($KILN_ENV_DIR/run/worker-N.pid), socket
#     unix:///run/kiln-wN/docker.sock and tcp://127.0.0.1:(2376+N) with mutual TLS (same CA,
#     server and client certificates as above), sharing docker0 (see section 5 below); their
#     endpoints in $KILN_ENV_DIR/workers.env and as kiln.toml tables in $KILN_ENV_DIR/workers.toml
#
# Environment overrides:
#   KILN_ENV_DIR            state dir (default /var/lib/kiln-env)
#   KILN_DEBIAN_MIRROR      Debian mirror (default: the one the host's apt uses)
#   KILN_DEBIAN_SECURITY    Debian security mirror (default: the one the host's apt uses)
#   KILN_DOCKER_DATA_ROOT   dockerd --data-root (default /var/lib/docker)
#   KILN_DOCKERD_FLAGS      extra dockerd flags, replaces the automatic fallback chain
#   KILN_WORKERS            number of worker Engines `up` and `workers-up` keep running (default 2)
set -Eeuo pipefail

STATE=${KILN_ENV_DIR:-/var/lib/kiln-env}
RUN_DIR=$STATE/run
LOG_DIR=$STATE/log
CACHE_DIR=$STATE/cache
WORK_DIR=$STATE/work
DOCKER_CONFIG_DIR=$STATE/docker-config
AUTH_ENV=$STATE/registry-auth.env
DOCKERD_ENV=$STATE/dockerd.env
# The Engine's embedded BuildKit cuts a step's log at 2 MiB and throttles it past 100 KiB/s by
# default ("[output clipped, log limit 2MiB reached]"): a job log must keep all of a step's
# output, so every Engine this script starts has both limits raised. Not -1: the BuildKit of
# Engine 20.10 takes -1 literally and clips every step at once ("log limit -1B reached"), and
# ignores a size past 32 bits (10 GiB left the 2 MiB default in place): 2 GiB per step it is.
BUILDKIT_LOG_ENV=(BUILDKIT_STEP_LOG_MAX_SIZE=2147483647 BUILDKIT_STEP_LOG_MAX_SPEED=1073741824)
DOCKERD_PID=$RUN_DIR/dockerd.pid
DOCKERD_LOG=$LOG_DIR/dockerd.log
DATA_ROOT=${KILN_DOCKER_DATA_ROOT:-/var/lib/docker}
SUITE=bookworm
BASE_IMAGE=kiln/bookworm:minbase
PY_IMAGE=kiln/bookworm-python:minbase
BASE_CACHE=$CACHE_DIR/bookworm-minbase.tar          # rootfs tarball (docker import)
PY_CACHE=$CACHE_DIR/bookworm-python-minbase.tar     # docker save archive (docker load)
REGISTRY_USER=kiln
OPEN_PORT=5000
AUTH_PORT=5001
PACKAGES=(docker.io docker-registry debootstrap apache2-utils curl jq openssl)
TLS_DIR=$STATE/docker-tls
TLS_PORT=2376

DOCKER=()          # docker client command that talks to the engine (set by pick_docker)
BUILD_NETWORK=default

say() { printf '[dev-env] %s\n' "$*"; }
die() { printf '[dev-env] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; printf "[dev-env] ERROR: command failed (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

# Show the last lines of a log file on stderr (used before failing).
tail_log() { [[ -f $1 ]] && { printf -- '--- last lines of %s ---\n' "$1"; tail -n "${2:-30}" "$1"; } >&2; return 0; }

# pid from a pid file if that process is alive and its command name matches $2.
live_pid() {
    local file=$1 name=$2 pid comm
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name"* ]] || return 1
    printf '%s\n' "$pid"
}

# Stop a process from a pid file (only if it is the expected program), wait up to $3 seconds.
stop_pid() {
    local file=$1 name=$2 timeout=$3 what=$4 pid i
    if ! pid=$(live_pid "$file" "$name"); then
        rm -f "$file"
        say "$what: not running (nothing started by this script)"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        say "$what: pid $pid did not stop in ${timeout}s, killed"
    else
        say "$what: stopped (pid $pid)"
    fi
    rm -f "$file"
}

# Start a command detached (own session, no inherited lock fd), its pid written to $1.
spawn() {
    local pidfile=$1 log=$2
    shift 2
    # bash writes its own pid, then execs the program: the pid file holds the program's pid.
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ > "$1"; shift; exec "$@"' spawn "$pidfile" "$@" \
        </dev/null >>"$log" 2>&1 9>&- &
}

docker_answers() { "$@" info >/dev/null 2>&1; }

# Pick a docker client that talks to the running engine. /usr/local/bin/docker (newer CLI) and
# Debian's /usr/bin/docker both negotiate the API version down; whichever answers first is used.
pick_docker() {
    local c seen=()
    for c in "$(command -v docker || true)" /usr/bin/docker; do
        [[ -n $c && -x $c ]] || continue
        [[ " ${seen[*]-} " == *" $c "* ]] && continue
        seen+=("$c")
        if "$c" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
            DOCKER=("$c")
            return 0
        fi
    done
    return 1
}

need_root() { [[ $(id -u) -eq 0 ]] || die "run as root"; }

# ---------------------------------------------------------------------------------------------
# 1. packages
# ---------------------------------------------------------------------------------------------
pkg_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

ensure_packages() {
    local missing=() p log=$LOG_DIR/apt.log
    for p in "${PACKAGES[@]}"; do pkg_installed "$p" || missing+=("$p"); done
    if ((${#missing[@]} == 0)); then
        say "packages: already installed (${PACKAGES[*]})"
        return 0
    fi
    local need_update=0
    for p in "${missing[@]}"; do
        apt-cache show "$p" >/dev/null 2>&1 || need_update=1
    done
    export DEBIAN_FRONTEND=noninteractive
    : >"$log"
    if ((need_update)); then
        say "packages: apt-get update (no candidate for some of: ${missing[*]})"
        apt-get update >>"$log" 2>&1 || { tail_log "$log"; die "apt-get update failed"; }
    fi
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
        if ((need_update)); then tail_log "$log"; die "apt-get install ${missing[*]} failed"; fi
        # Package lists may be stale (404 on an old version): update once and retry.
        say "packages: install failed, retrying after apt-get update"
        apt-get update >>"$log" 2>&1 || { tail_log "$log"; die "apt-get update failed"; }
        apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1 ||
            { tail_log "$log"; die "apt-get install ${missing[*]} failed"; }
    fi
    say "packages: installed ${missing[*]}"
}

# ---------------------------------------------------------------------------------------------
# 2. dockerd
# ---------------------------------------------------------------------------------------------
# MTU of the interface carrying the default route (containers get the same, avoids PMTU trouble).
host_mtu() {
    local dev
    dev=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
    [[ -n $dev && -r /sys/class/net/$dev/mtu ]] && cat "/sys/class/net/$dev/mtu"
    return 0
}

# Start dockerd with the given flags; wait up to 60 s for `docker info`. Returns 1 on failure.
try_dockerd() {
    local i
    printf '\n===== %s dockerd %s =====\n' "$(date -Is)" "$*" >>"$DOCKERD_LOG"
    rm -f "$DOCKERD_PID"
    # dockerd writes its own pid file (--pidfile) and removes it on exit.
    setsid env "${BUILDKIT_LOG_ENV[@]}" dockerd --pidfile "$DOCKERD_PID" --data-root "$DATA_ROOT" "$@" \
        </dev/null >>"$DOCKERD_LOG" 2>&1 9>&- &
    local spawned=$!
    for ((i = 0; i < 600; i++)); do
        if pick_docker; then return 0; fi
        # dockerd died: no point in waiting
        if ((i > 30)) && ! kill -0 "$spawned" 2>/dev/null && ! live_pid "$DOCKERD_PID" dockerd >/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    # timed out: stop it before the caller tries something else
    local pid
    if pid=$(live_pid "$DOCKERD_PID" dockerd); then kill -TERM "$pid" 2>/dev/null || true; sleep 3; fi
    kill -KILL "$spawned" 2>/dev/null || true
    return 1
}

# A CA, a server certificate for 127.0.0.1/localhost and a client certificate for dockerd's
# TLS listener, made once (10 years); plus a client from an unrelated CA for refusal tests.
ensure_tls_certs() {
    if [[ -s $TLS_DIR/client/key.pem && -s $TLS_DIR/wrong-ca/key.pem && -s $TLS_DIR/server-key.pem ]]; then
        say "docker TLS: certificates already in $TLS_DIR"
        return 0
    fi
    local tmp log=$LOG_DIR/openssl.log
    tmp=$(mktemp -d "$STATE/tls.XXXXXX")
    : >"$log"
    (
        set -e
        cd "$tmp"
        mkdir client wrong-ca
        ossl() { openssl "$@" >>"$log" 2>&1; }
        ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Kiln test Docker CA" -keyout ca-key.pem -out ca.pem
        ossl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server-key.pem -out server.csr
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
        ossl x509 -req -days 3650 -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -extfile server.ext -out server-cert.pem
        ossl req -newkey rsa:2048 -nodes -subj "/CN=kiln-client" -keyout client/key.pem -out client.csr
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        ossl x509 -req -days 3650 -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -extfile client.ext -out client/cert.pem
        cp ca.pem client/ca.pem
        # wrong-ca: a CA dockerd does not trust; its ca.pem does not vouch for dockerd either.
        ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Unrelated CA" -keyout wrong-ca/ca-key.pem -out wrong-ca/ca.pem
        ossl req -newkey rsa:2048 -nodes -subj "/CN=stranger" -keyout wrong-ca/key.pem -out wrong.csr
        ossl x509 -req -days 3650 -in wrong.csr -CA wrong-ca/ca.pem -CAkey wrong-ca/ca-key.pem -CAcreateserial -extfile client.ext -out wrong-ca/cert.pem
        rm -f ./*.csr ./*.ext ./*.srl wrong-ca/ca-key.pem
        chmod 600 ca-key.pem server-key.pem client/key.pem wrong-ca/key.pem
    ) || { tail_log "$log"; rm -rf "$tmp"; die "openssl could not make the docker TLS certificates"; }
    rm -rf "$TLS_DIR"
    mv "$tmp" "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    say "docker TLS: made CA, server and client certificates in $TLS_DIR"
}

# dockerd flags for the TLS listener (the unix socket stays as it is, unauthenticated for root).
tls_flags() {
    printf '%s ' -H unix:///var/run/docker.sock -H "tcp://127.0.0.1:$TLS_PORT" --tlsverify \
        --tlscacert "$TLS_DIR/ca.pem" --tlscert "$TLS_DIR/server-cert.pem" --tlskey "$TLS_DIR/server-key.pem"
}

tls_answers() {
    curl -sf -m 5 --cacert "$TLS_DIR/client/ca.pem" --cert "$TLS_DIR/client/cert.pem" \
        --key "$TLS_DIR/client/key.pem" "https://127.0.0.1:$TLS_PORT/_ping" >/dev/null 2>&1
}

ensure_dockerd() {
    if pick_docker; then
        local ver drv
        ver=$("${DOCKER[@]}" version --format '{{.Server.Version}}')
        drv=$("${DOCKER[@]}" info --format '{{.Driver}}')
        if live_pid "$DOCKERD_PID" dockerd >/dev/null; then
            say "dockerd: already running (started by this script, Engine $ver, $drv, client ${DOCKER[0]})"
        else
            say "dockerd: already answering (not started by this script, Engine $ver, $drv, client ${DOCKER[0]})"
        fi
        if [[ -f $DOCKERD_ENV ]]; then
            # shellcheck disable=SC1090
            BUILD_NETWORK=$(. "$DOCKERD_ENV" && printf '%s' "${KILN_ENV_BUILD_NETWORK:-default}")
        fi
        if tls_answers; then
            say "dockerd: TLS listener answers on tcp://127.0.0.1:$TLS_PORT"
            return 0
        fi
        local running
        if ! running=$(live_pid "$DOCKERD_PID" dockerd); then
            say "dockerd: WARNING no TLS listener on 127.0.0.1:$TLS_PORT, and this dockerd was not started here (the TLS Engine tests will fail)"
            return 0
        fi
        # Started by an older version of this script: restart it once with the TLS listener.
        say "dockerd: restarting (pid $running) to add the TLS listener on 127.0.0.1:$TLS_PORT"
        stop_pid "$DOCKERD_PID" dockerd 30 "dockerd"
    fi
    command -v dockerd >/dev/null || die "dockerd not found (package docker.io)"
    local pid
    if pid=$(live_pid "$DOCKERD_PID" dockerd); then
        die "dockerd (pid $pid) runs but 'docker info' does not answer; see $DOCKERD_LOG or run '$0 stop'"
    fi

    local mtu mtu_flag=()
    mtu=$(host_mtu)
    [[ -n $mtu && $mtu != 1500 ]] && mtu_flag=(--mtu "$mtu")

    # Flag sets tried in order. On this sandbox the first one works (overlay2, bridge + iptables
    # NAT, so RUN steps reach the network with the default network mode).
    local -a attempts
    if [[ -n ${KILN_DOCKERD_FLAGS:-} ]]; then
        attempts=("$KILN_DOCKERD_FLAGS|default")
    else
        attempts=(
            "${mtu_flag[*]}|default"
            "--storage-driver=vfs ${mtu_flag[*]}|default"
            "--storage-driver=vfs --iptables=false --ip-masq=false --bridge=none|host"
        )
    fi
    local a flags net
    for a in "${attempts[@]}"; do
        flags=${a%|*}
        net=${a##*|}
        local -a argv=()
        read -r -a argv <<<"$(tls_flags) $flags"
        say "dockerd: starting (dockerd --data-root $DATA_ROOT ${flags:-<no extra flags>}; log $DOCKERD_LOG)"
        if try_dockerd "${argv[@]}"; then
            BUILD_NETWORK=$net
            printf 'KILN_ENV_DOCKERD_FLAGS=%q\nKILN_ENV_BUILD_NETWORK=%s\n' "$flags" "$net" >"$DOCKERD_ENV"
            tls_answers || say "dockerd: WARNING the TLS listener on 127.0.0.1:$TLS_PORT does not answer (see $DOCKERD_LOG)"
            say "dockerd: running (pid $(<"$DOCKERD_PID"), TLS on tcp://127.0.0.1:$TLS_PORT, Engine $("${DOCKER[@]}" version --format '{{.Server.Version}}'), storage $("${DOCKER[@]}" info --format '{{.Driver}}'), build network '$net', client ${DOCKER[0]})"
            return 0
        fi
        say "dockerd: did not come up with '${flags}'"
        tail_log "$DOCKERD_LOG" 15
    done
    tail_log "$DOCKERD_LOG" 40
    die "dockerd did not answer 'docker info' within 60 s with any flag set (log: $DOCKERD_LOG)"
}

# ---------------------------------------------------------------------------------------------
# 3. registries
# ---------------------------------------------------------------------------------------------
random_password() {
    local pw
    pw=$(head -c 48 /dev/urandom | base64 -w0 | tr -d '+/=')
    [[ ${#pw} -ge 32 ]] || die "could not generate a password"
    printf '%s' "${pw:0:32}"
}

ensure_credentials() {
    if [[ -s $AUTH_ENV ]]; then
        # shellcheck disable=SC1090
        . "$AUTH_ENV"
        [[ -n ${KILN_TEST_REGISTRY_USER:-} && -n ${KILN_TEST_REGISTRY_PASSWORD:-} ]] ||
            die "$AUTH_ENV is incomplete; delete it to regenerate"
        say "credentials: already generated ($AUTH_ENV)"
    else
        KILN_TEST_REGISTRY_USER=$REGISTRY_USER
        KILN_TEST_REGISTRY_PASSWORD=$(random_password)
        (
            umask 077
            printf 'KILN_TEST_REGISTRY_USER=%s\nKILN_TEST_REGISTRY_PASSWORD=%s\n' \
                "$KILN_TEST_REGISTRY_USER" "$KILN_TEST_REGISTRY_PASSWORD" >"$AUTH_ENV.tmp"
        )
        mv "$AUTH_ENV.tmp" "$AUTH_ENV"
        rm -f "$STATE/registry-$AUTH_PORT/htpasswd"
        say "credentials: generated user '$KILN_TEST_REGISTRY_USER' with a random 32-char password ($AUTH_ENV)"
    fi
    local htp=$STATE/registry-$AUTH_PORT/htpasswd
    mkdir -p "$STATE/registry-$AUTH_PORT"
    if [[ ! -s $htp ]] || ! htpasswd -vbB "$htp" "$KILN_TEST_REGISTRY_USER" "$KILN_TEST_REGISTRY_PASSWORD" >/dev/null 2>&1; then
        (umask 077 && htpasswd -Bbn "$KILN_TEST_REGISTRY_USER" "$KILN_TEST_REGISTRY_PASSWORD" >"$htp.tmp")
        mv "$htp.tmp" "$htp"
        say "credentials: wrote bcrypt htpasswd $htp"
    fi
}

# Registry config; rewritten only when it changes (then a running registry is restarted).
registry_config() {
    local port=$1 dir=$STATE/registry-$1 auth=""
    if [[ $port == "$AUTH_PORT" ]]; then
        auth="auth:
  htpasswd:
    realm: kiln-test-registry
    path: $dir/htpasswd
"
    fi
    if [[ ! -s $STATE/registry-http-secret ]]; then
        (umask 077 && random_password >"$STATE/registry-http-secret")
    fi
    cat <<EOF
# generated by scripts/dev-env.sh
version: 0.1
log:
  level: info
  fields:
    service: kiln-registry-$port
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$port
  secret: $(<"$STATE/registry-http-secret")
  headers:
    X-Content-Type-Options: [nosniff]
${auth}health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
EOF
}

http_code() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$@" 2>/dev/null || true; }

registry_ready() {
    local port=$1
    if [[ $port == "$AUTH_PORT" ]]; then
        [[ $(http_code "http://127.0.0.1:$port/v2/") == 401 ]] &&
            [[ $(http_code -u "$KILN_TEST_REGISTRY_USER:$KILN_TEST_REGISTRY_PASSWORD" "http://127.0.0.1:$port/v2/") == 200 ]]
    else
        [[ $(http_code "http://127.0.0.1:$port/v2/") == 200 ]]
    fi
}

ensure_registry() {
    local port=$1 dir=$STATE/registry-$1 pidfile=$RUN_DIR/registry-$1.pid log=$LOG_DIR/registry-$1.log
    local cfg=$dir/config.yml changed=0 pid i
    mkdir -p "$dir/data"
    registry_config "$port" >"$cfg.tmp"
    if [[ -f $cfg ]] && cmp -s "$cfg" "$cfg.tmp"; then
        rm -f "$cfg.tmp"
    else
        mv "$cfg.tmp" "$cfg"
        changed=1
    fi
    if pid=$(live_pid "$pidfile" docker-registry); then
        if ((changed)); then
            stop_pid "$pidfile" docker-registry 10 "registry :$port (config changed)"
        elif registry_ready "$port"; then
            say "registry 127.0.0.1:$port: already running (pid $pid)"
            return 0
        else
            stop_pid "$pidfile" docker-registry 10 "registry :$port (not answering as expected)"
        fi
    elif [[ $(http_code "http://127.0.0.1:$port/v2/") != 000 ]]; then
        registry_ready "$port" ||
            die "127.0.0.1:$port is taken by something not started by this script and it does not answer as expected"
        say "registry 127.0.0.1:$port: already answering (not started by this script)"
        return 0
    fi
    spawn "$pidfile" "$log" docker-registry serve "$cfg"
    for ((i = 0; i < 200; i++)); do
        registry_ready "$port" && break
        if ((i > 5)) && ! live_pid "$pidfile" docker-registry >/dev/null; then
            tail_log "$log"
            die "registry 127.0.0.1:$port exited during start"
        fi
        sleep 0.1
    done
    registry_ready "$port" || { tail_log "$log"; die "registry 127.0.0.1:$port did not become ready in 20 s"; }
    if [[ $port == "$AUTH_PORT" ]]; then
        say "registry 127.0.0.1:$port: started (pid $(<"$pidfile"), htpasswd auth: 401 without, 200 with credentials; log $log)"
    else
        say "registry 127.0.0.1:$port: started (pid $(<"$pidfile"), open; log $log)"
    fi
}

ensure_docker_config() {
    local cfg=$DOCKER_CONFIG_DIR/config.json want have log=$LOG_DIR/docker-login.log
    want=$(printf '%s:%s' "$KILN_TEST_REGISTRY_USER" "$KILN_TEST_REGISTRY_PASSWORD" | base64 -w0)
    have=$(jq -r --arg r "127.0.0.1:$AUTH_PORT" '.auths[$r].auth // empty' "$cfg" 2>/dev/null || true)
    if [[ $have == "$want" ]]; then
        say "docker config: already holds auth for 127.0.0.1:$AUTH_PORT ($cfg)"
        return 0
    fi
    mkdir -p "$DOCKER_CONFIG_DIR"
    chmod 700 "$DOCKER_CONFIG_DIR"
    # docker login --config writes the auths entry (plain base64, no credential store configured).
    if ! printf '%s' "$KILN_TEST_REGISTRY_PASSWORD" |
        "${DOCKER[@]}" --config "$DOCKER_CONFIG_DIR" login --username "$KILN_TEST_REGISTRY_USER" \
            --password-stdin "127.0.0.1:$AUTH_PORT" >"$log" 2>&1; then
        tail_log "$log"
        die "docker login 127.0.0.1:$AUTH_PORT failed"
    fi
    have=$(jq -r --arg r "127.0.0.1:$AUTH_PORT" '.auths[$r].auth // empty' "$cfg" 2>/dev/null || true)
    if [[ $have != "$want" ]]; then
        # e.g. a credential helper swallowed it: write the plain entry ourselves
        (umask 077 && jq -n --arg r "127.0.0.1:$AUTH_PORT" --arg a "$want" '{auths: {($r): {auth: $a}}}' >"$cfg")
    fi
    chmod 600 "$cfg"
    say "docker config: logged in to 127.0.0.1:$AUTH_PORT, auth stored in $cfg"
}

# ---------------------------------------------------------------------------------------------
# 4. base images
# ---------------------------------------------------------------------------------------------
# First "URIs:"/"deb" URL of the host's apt sources whose path ends in /$1 (debian, debian-security).
host_mirror() {
    local want=$1 f url
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        url=$(awk -v want="$want" '
            /^[[:space:]]*#/ { next }
            $1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }
            $1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }
        ' "$f" | sed 's:/*$::' | grep -E "^https?://[^ ]*/${want}\$" | head -n 1 || true)
        if [[ -n $url ]]; then
            printf '%s\n' "$url"
            return 0
        fi
    done
    return 0
}

image_exists() { "${DOCKER[@]}" image inspect "$1" >/dev/null 2>&1; }

image_size() { "${DOCKER[@]}" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1000000}'; }

ensure_base_image() {
    if image_exists "$BASE_IMAGE"; then
        say "image $BASE_IMAGE: already present ($(image_size "$BASE_IMAGE"))"
        if [[ ! -s $BASE_CACHE ]]; then
            # Re-create the rootfs cache from the image so that an empty engine re-imports.
            local cid
            cid=$("${DOCKER[@]}" create "$BASE_IMAGE" /bin/true)
            "${DOCKER[@]}" export "$cid" >"$BASE_CACHE.tmp" && mv "$BASE_CACHE.tmp" "$BASE_CACHE"
            "${DOCKER[@]}" rm "$cid" >/dev/null
            say "image $BASE_IMAGE: rootfs cache re-created from the image ($BASE_CACHE)"
        fi
        return 0
    fi
    if [[ ! -s $BASE_CACHE ]]; then
        local mirror security rootfs=$WORK_DIR/bookworm-minbase log=$LOG_DIR/debootstrap.log
        mirror=${KILN_DEBIAN_MIRROR:-$(host_mirror debian)}
        mirror=${mirror:-http://deb.debian.org/debian}
        security=${KILN_DEBIAN_SECURITY:-$(host_mirror debian-security)}
        security=${security:-http://deb.debian.org/debian-security}
        [[ $(http_code "$mirror/dists/$SUITE/Release") == 200 ]] ||
            die "Debian mirror $mirror is not reachable ($mirror/dists/$SUITE/Release); set KILN_DEBIAN_MIRROR"
        say "image $BASE_IMAGE: debootstrap --variant=minbase $SUITE from $mirror (about a minute; log $log)"
        rm -rf "$rootfs"
        mkdir -p "$rootfs"
        if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$log" 2>&1; then
            tail_log "$log"
            die "debootstrap failed"
        fi
        # apt sources the containers use (same mirror as the host, reachable from containers)
        printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
            "$mirror" "$SUITE" "$mirror" "$SUITE" "$security" "$SUITE" >"$rootfs/etc/apt/sources.list"
        # smaller image, nothing host-specific inside (docker bind-mounts these at run time)
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
            "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/*
        mkdir -p "$rootfs/var/lib/apt/lists/partial"
        : >"$rootfs/etc/resolv.conf"
        : >"$rootfs/etc/hostname"
        tar --numeric-owner -C "$rootfs" -cf "$BASE_CACHE.tmp" .
        mv "$BASE_CACHE.tmp" "$BASE_CACHE"
        rm -rf "$rootfs"
        rm -f "$PY_CACHE" # built on the previous base: stale
        say "image $BASE_IMAGE: rootfs cached ($BASE_CACHE, $(du -h "$BASE_CACHE" | cut -f1))"
    fi
    "${DOCKER[@]}" import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
        --message "debootstrap --variant=minbase $SUITE" - "$BASE_IMAGE" <"$BASE_CACHE" >/dev/null ||
        die "docker import of $BASE_CACHE failed"
    say "image $BASE_IMAGE: imported from $BASE_CACHE ($(image_size "$BASE_IMAGE"))"
}

ensure_python_image() {
    if image_exists "$PY_IMAGE"; then
        say "image $PY_IMAGE: already present ($(image_size "$PY_IMAGE"))"
        if [[ ! -s $PY_CACHE ]]; then
            "${DOCKER[@]}" save -o "$PY_CACHE.tmp" "$PY_IMAGE" && mv "$PY_CACHE.tmp" "$PY_CACHE"
            say "image $PY_IMAGE: cache re-created from the image ($PY_CACHE)"
        fi
        return 0
    fi
    local log=$LOG_DIR/build-python.log
    if [[ -s $PY_CACHE ]]; then
        "${DOCKER[@]}" load -i "$PY_CACHE" >"$log" 2>&1 || { tail_log "$log"; die "docker load $PY_CACHE failed"; }
        if image_exists "$PY_IMAGE"; then
            say "image $PY_IMAGE: loaded from $PY_CACHE ($(image_size "$PY_IMAGE"))"
            return 0
        fi
        rm -f "$PY_CACHE"
    fi
    local ctx=$WORK_DIR/python-context
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
EOF
    say "image $PY_IMAGE: building FROM $BASE_IMAGE (+ python3 python3-pip, network '$BUILD_NETWORK'; log $log)"
    if ! DOCKER_BUILDKIT=0 "${DOCKER[@]}" build --network "$BUILD_NETWORK" -t "$PY_IMAGE" "$ctx" >"$log" 2>&1; then
        tail_log "$log"
        die "build of $PY_IMAGE failed (can build containers reach the Debian mirror?)"
    fi
    rm -rf "$ctx"
    "${DOCKER[@]}" save -o "$PY_CACHE.tmp" "$PY_IMAGE" && mv "$PY_CACHE.tmp" "$PY_CACHE"
    say "image $PY_IMAGE: built ($(image_size "$PY_IMAGE")), cached as $PY_CACHE"
}

# Digest of repo:tag in a registry (HEAD on the manifest), empty if absent.
remote_digest() {
    local port=$1 repo=$2 tag=$3 auth=()
    [[ $port == "$AUTH_PORT" ]] && auth=(-u "$KILN_TEST_REGISTRY_USER:$KILN_TEST_REGISTRY_PASSWORD")
    curl -sfI -m 5 "${auth[@]}" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$port/v2/$repo/manifests/$tag" 2>/dev/null |
        tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}' || true
}

ensure_pushed() {
    local image=$1 port=$2 repo=${1%:*} tag=${1##*:} target local_digests remote log=$LOG_DIR/push.log
    target=127.0.0.1:$port/$image
    remote=$(remote_digest "$port" "$repo" "$tag")
    local_digests=$("${DOCKER[@]}" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$image")
    if [[ -n $remote ]] && grep -qxF "127.0.0.1:$port/$repo@$remote" <<<"$local_digests"; then
        say "push $target: already up to date (${remote:0:19})"
        return 0
    fi
    "${DOCKER[@]}" tag "$image" "$target"
    if ! "${DOCKER[@]}" --config "$DOCKER_CONFIG_DIR" push "$target" >"$log" 2>&1; then
        tail_log "$log"
        die "docker push $target failed"
    fi
    remote=$(remote_digest "$port" "$repo" "$tag")
    [[ -n $remote ]] || die "pushed $target but the registry does not list it"
    say "push $target: pushed (${remote:0:19})"
}

# ---------------------------------------------------------------------------------------------
# 5. worker Engines (the pool tests): extra dockerds on this machine, each with its own state
# ---------------------------------------------------------------------------------------------
# Worker i (1..KILN_WORKERS) is a dockerd with
#   --data-root $STATE/worker-i/data   --exec-root /run/kiln-wi/exec   --pidfile $RUN_DIR/worker-i.pid
#   -H unix:///run/kiln-wi/docker.sock  -H tcp://127.0.0.1:(2376+i) with mutual TLS (the main
#   Engine's CA and server certificate; clients use $TLS_DIR/client like for the main Engine)
# It shares the main Engine's bridge: `--bridge=docker0 --fixed-cidr=172.17.(200+i).0/24
# --iptables=false --ip-forward=false --ip-masq=false`. A dockerd given `--bridge=none` or any
# other bridge deletes the host's docker0 the moment it starts, and the main Engine then fails
# every build and `docker run` ("could not find bridge docker0") until it is restarted. The
# worker's containers reach the network through the main Engine's NAT rules (172.17.0.0/16).
# The registries on 127.0.0.1 need no `insecure-registries`: dockerd treats 127.0.0.0/8 as
# insecure (plain http) by default, and it pulls from the host's network namespace.
# A dockerd killed with -9 leaves its containerd (and that containerd's shims, runc processes
# and mounts) behind; worker-start and worker-stop clean that up by PID and by mount point.
WORKERS_ENV=$STATE/workers.env
WORKERS_TOML=$STATE/workers.toml
WORKER_TCP_BASE=2376

worker_count() {
    local n=${KILN_WORKERS:-2}
    if ! [[ $n =~ ^[0-9]+$ ]] || ((n > 55)); then die "KILN_WORKERS must be a number from 0 to 55 (got '$n')"; fi
    printf '%s\n' "$n"
}
worker_check_index() {
    if ! [[ ${1:-} =~ ^[1-9][0-9]*$ ]] || (($1 > 55)); then die "worker index must be 1..55 (got '${1:-}')"; fi
}
worker_dir() { printf '%s\n' "$STATE/worker-$1"; }
worker_run() { printf '/run/kiln-w%s\n' "$1"; }
worker_sock() { printf '%s/docker.sock\n' "$(worker_run "$1")"; }
worker_pidfile() { printf '%s\n' "$RUN_DIR/worker-$1.pid"; }
worker_log() { printf '%s\n' "$LOG_DIR/worker-$1.log"; }
worker_port() { printf '%s\n' "$((WORKER_TCP_BASE + $1))"; }

worker_answers() { docker -H "unix://$(worker_sock "$1")" version --format '{{.Server.Version}}' >/dev/null 2>&1; }
worker_tls_answers() {
    curl -sf -m 5 --cacert "$TLS_DIR/client/ca.pem" --cert "$TLS_DIR/client/cert.pem" \
        --key "$TLS_DIR/client/key.pem" "https://127.0.0.1:$(worker_port "$1")/_ping" >/dev/null 2>&1
}

# The host's docker0 must exist before and after every worker start: say so loudly otherwise.
check_docker0() {
    ip link show docker0 >/dev/null 2>&1 ||
        die "the host bridge docker0 is missing ($1): the main Engine cannot run containers until it is restarted"
}

# pids of every descendant of the given pids (children first found by ppid in /proc).
descendants() {
    local -A parent_of=()
    local stat pid ppid rest
    for stat in /proc/[0-9]*/stat; do
        read -r pid rest <"$stat" 2>/dev/null || continue
        rest=${rest##*) }
        ppid=${rest#* }
        ppid=${ppid%% *}
        parent_of[$pid]=$ppid
    done
    local -a queue=("$@") out=()
    local -A visited=()
    while ((${#queue[@]})); do
        local p=${queue[0]}
        queue=("${queue[@]:1}")
        for pid in "${!parent_of[@]}"; do
            if [[ ${parent_of[$pid]} == "$p" && -z ${visited[$pid]:-} ]]; then
                visited[$pid]=1
                out+=("$pid")
                queue+=("$pid")
            fi
        done
    done
    printf '%s\n' "${out[@]}"
}

# What a dead worker dockerd leaves behind: its containerd (pid file in the exec root), the
# shims and runc processes naming its directories, their children (the containers), and
# mounts under its data and exec roots. Never touches anything outside those directories.
worker_cleanup() {
    local i=$1 dir run pid pids=() cpid m n=0
    dir=$(worker_dir "$i")
    run=$(worker_run "$i")
    if cpid=$(live_pid "$run/exec/containerd/containerd.pid" containerd); then pids+=("$cpid"); fi
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [[ $pid == "$$" ]] && continue
        case $(cat "/proc/$pid/comm" 2>/dev/null || true) in
            containerd | containerd-shim* | runc | docker-proxy | dockerd) ;;
            *) continue ;;
        esac
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE -- "($run/|$dir/)"; then
            [[ " ${pids[*]-} " == *" $pid "* ]] || pids+=("$pid")
        fi
    done
    # Container processes outlive their runc / shim parents (re-parented to init): find them by
    # cgroup, /docker/ID for the worker's containers and /docker/buildkit/ID for its BuildKit
    # steps (the main Engine uses the same cgroup parents, but never the same IDs).
    local -A ids=()
    local d cg
    for d in "$dir"/data/containers/* "$dir"/data/buildkit/executor/*; do
        [[ -d $d ]] && ids[${d##*/}]=1
    done
    if ((${#ids[@]})); then
        for cg in /proc/[0-9]*/cgroup; do
            pid=${cg#/proc/}
            pid=${pid%/cgroup}
            d=$(awk -F: '$1 == "0" { print $3 }' "$cg" 2>/dev/null || true)
            [[ $d == /docker/* ]] || continue
            if [[ -n ${ids[${d##*/}]:-} && " ${pids[*]-} " != *" $pid "* ]]; then pids+=("$pid"); fi
        done
    fi
    if ((${#pids[@]})); then
        local all
        mapfile -t all < <(descendants "${pids[@]}")
        all+=("${pids[@]}")
        kill -KILL "${all[@]}" 2>/dev/null || true
        for ((n = 0; n < 50; n++)); do
            local alive=0
            for pid in "${all[@]}"; do [[ -d /proc/$pid ]] && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        say "worker $i: killed ${#all[@]} leftover process(es) (containerd pid ${cpid:-none}, shims, runc, containers)"
    fi
    # mounts under the worker's roots, deepest first
    local -a mounts
    mapfile -t mounts < <(awk -v a="$dir/" -v b="$run/" 'index($5, a) == 1 || index($5, b) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    n=0
    for m in "${mounts[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        n=$((n + 1))
    done
    ((n == 0)) || say "worker $i: unmounted $n leftover mount(s)"
    rm -f "$(worker_pidfile "$i")" "$run/exec/containerd/containerd.pid"
}

worker_start() {
    local i=$1 dir run sock pidfile log port pid k mtu mtu_flag=()
    dir=$(worker_dir "$i")
    run=$(worker_run "$i")
    sock=$(worker_sock "$i")
    pidfile=$(worker_pidfile "$i")
    log=$(worker_log "$i")
    port=$(worker_port "$i")
    if pid=$(live_pid "$pidfile" dockerd) && worker_answers "$i"; then
        say "worker $i: already running (pid $pid, unix://$sock, tcp://127.0.0.1:$port)"
        return 0
    fi
    [[ -s $TLS_DIR/server-key.pem ]] || die "no TLS material in $TLS_DIR: run '$0 up' first"
    check_docker0 "before starting worker $i"
    if pid=$(live_pid "$pidfile" dockerd); then
        say "worker $i: pid $pid does not answer, stopping it"
        stop_pid "$pidfile" dockerd 30 "worker $i"
    fi
    worker_cleanup "$i"
    mkdir -p "$dir/data" "$run/exec"
    # An empty daemon config of its own: a future /etc/docker/daemon.json is not read.
    [[ -s $dir/daemon.json ]] || printf '{}\n' >"$dir/daemon.json"
    mtu=$(host_mtu)
    [[ -n $mtu && $mtu != 1500 ]] && mtu_flag=(--mtu "$mtu")
    local -a argv=(
        --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$run/exec"
        --pidfile "$pidfile" -H "unix://$sock" -H "tcp://127.0.0.1:$port" --tlsverify
        --tlscacert "$TLS_DIR/ca.pem" --tlscert "$TLS_DIR/server-cert.pem" --tlskey "$TLS_DIR/server-key.pem"
        --bridge=docker0 "--fixed-cidr=172.17.$((200 + i)).0/24"
        --iptables=false --ip-forward=false --ip-masq=false "${mtu_flag[@]}"
    )
    printf '\n===== %s dockerd %s =====\n' "$(date -Is)" "${argv[*]}" >>"$log"
    setsid env "${BUILDKIT_LOG_ENV[@]}" dockerd "${argv[@]}" </dev/null >>"$log" 2>&1 9>&- &
    local spawned=$!
    for ((k = 0; k < 600; k++)); do
        worker_answers "$i" && break
        if ((k > 30)) && ! kill -0 "$spawned" 2>/dev/null; then
            tail_log "$log" 20
            worker_cleanup "$i"
            check_docker0 "after worker $i failed to start"
            die "worker $i: dockerd exited during start (log $log)"
        fi
        sleep 0.1
    done
    if ! worker_answers "$i"; then
        tail_log "$log" 20
        kill -KILL "$spawned" 2>/dev/null || true
        worker_cleanup "$i"
        die "worker $i: dockerd did not answer within 60 s (log $log)"
    fi
    check_docker0 "after starting worker $i"
    worker_tls_answers "$i" || say "worker $i: WARNING the TLS listener on 127.0.0.1:$port does not answer (log $log)"
    say "worker $i: started (pid $(<"$pidfile"), unix://$sock, tcp://127.0.0.1:$port mTLS, containers 172.17.$((200 + i)).0/24 on docker0; log $log)"
}

# Graceful stop (SIGTERM, 30 s), then whatever is left is cleaned up.
worker_stop() {
    local i=$1
    stop_pid "$(worker_pidfile "$i")" dockerd 30 "worker $i"
    worker_cleanup "$i"
    # The exec root is runtime state only: gone once nothing is mounted under it any more.
    local run
    run=$(worker_run "$i")
    if ! awk -v b="$run/" 'index($5, b) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
        rm -rf "$run"
    fi
    check_docker0 "after stopping worker $i"
}

# A crash: kill -9 of the worker's dockerd only (its containerd and mounts stay, as after a real
# crash; worker-start cleans them up).
worker_kill() {
    local i=$1 pid
    if ! pid=$(live_pid "$(worker_pidfile "$i")" dockerd); then
        say "worker $i: not running"
        return 0
    fi
    kill -KILL "$pid"
    while [[ -d /proc/$pid ]]; do sleep 0.05; done
    say "worker $i: dockerd pid $pid killed with SIGKILL (containerd and mounts left as after a crash)"
}

# The endpoints the tests read: a shell file and the matching [[workers]] tables for kiln.toml.
write_workers_env() {
    local n=$1 i tmp
    tmp=$(mktemp "$STATE/workers.env.XXXXXX")
    {
        printf '# generated by scripts/dev-env.sh: the worker Engines for the pool tests\n'
        printf 'KILN_WORKERS=%s\nKILN_WORKER_CERT_PATH=%s\n' "$n" "$TLS_DIR/client"
        for ((i = 1; i <= n; i++)); do
            printf 'KILN_WORKER_%s_NAME=w%s\n' "$i" "$i"
            printf 'KILN_WORKER_%s_UNIX=unix://%s\n' "$i" "$(worker_sock "$i")"
            printf 'KILN_WORKER_%s_TCP=tcp://127.0.0.1:%s\n' "$i" "$(worker_port "$i")"
            printf 'KILN_WORKER_%s_PIDFILE=%s\n' "$i" "$(worker_pidfile "$i")"
            printf 'KILN_WORKER_%s_DATA_ROOT=%s\n' "$i" "$(worker_dir "$i")/data"
        done
    } >"$tmp"
    chmod 644 "$tmp"
    mv "$tmp" "$WORKERS_ENV"
    tmp=$(mktemp "$STATE/workers.toml.XXXXXX")
    {
        printf '# generated by scripts/dev-env.sh: the worker Engines as kiln.toml [[workers]] tables\n'
        for ((i = 1; i <= n; i++)); do
            printf '\n[[workers]]\nname = "w%s"\nkind = "docker"\nendpoint = "tcp://127.0.0.1:%s"\ncapacity = 2\ntls_verify = true\ncert_path = "%s"\n' \
                "$i" "$(worker_port "$i")" "$TLS_DIR/client"
        done
    } >"$tmp"
    chmod 644 "$tmp"
    mv "$tmp" "$WORKERS_TOML"
}

# Workers 1..n up; workers above n that this script started earlier are stopped.
ensure_workers() {
    local n i
    n=$(worker_count)
    for ((i = 1; i <= n; i++)); do worker_start "$i"; done
    for ((i = n + 1; i <= 55; i++)); do
        [[ -e $(worker_pidfile "$i") || -d $(worker_run "$i") ]] || continue
        worker_stop "$i"
    done
    write_workers_env "$n"
    ((n == 0)) || say "workers: $n up, endpoints in $WORKERS_ENV, kiln.toml tables in $WORKERS_TOML"
}

workers_down() {
    local i
    for ((i = 1; i <= 55; i++)); do
        [[ -e $(worker_pidfile "$i") || -d $(worker_run "$i") ]] || continue
        worker_stop "$i"
    done
}

workers_status() {
    local i pid rc=0 n
    n=$(worker_count)
    for ((i = 1; i <= n; i++)); do
        if pid=$(live_pid "$(worker_pidfile "$i")" dockerd) && worker_answers "$i"; then
            local tls=no
            worker_tls_answers "$i" && tls=yes
            say "worker $i: running (pid $pid, unix://$(worker_sock "$i"), tcp://127.0.0.1:$(worker_port "$i") TLS answers: $tls)"
        else
            say "worker $i: not running"
            rc=1
        fi
    done
    return "$rc"
}

lock_state() {
    need_root
    mkdir -p "$STATE" "$RUN_DIR" "$LOG_DIR"
    exec 9>"$STATE/.lock"
    flock -w 900 9 || die "another dev-env.sh holds $STATE/.lock"
}

# ---------------------------------------------------------------------------------------------
cmd_up() {
    need_root
    mkdir -p "$STATE" "$RUN_DIR" "$LOG_DIR" "$CACHE_DIR" "$WORK_DIR"
    exec 9>"$STATE/.lock"
    flock -w 900 9 || die "another dev-env.sh holds $STATE/.lock"
    local t0=$SECONDS
    ensure_packages
    ensure_tls_certs
    ensure_dockerd
    ensure_credentials
    ensure_registry "$OPEN_PORT"
    ensure_registry "$AUTH_PORT"
    ensure_docker_config
    ensure_base_image
    ensure_python_image
    local img port
    for img in "$BASE_IMAGE" "$PY_IMAGE"; do
        for port in "$OPEN_PORT" "$AUTH_PORT"; do ensure_pushed "$img" "$port"; done
    done
    ensure_workers
    say "ready in $((SECONDS - t0)) s: docker ${DOCKER[0]} (TLS: tcp://127.0.0.1:$TLS_PORT, DOCKER_CERT_PATH=$TLS_DIR/client), build network '$BUILD_NETWORK', registries 127.0.0.1:$OPEN_PORT (open) 127.0.0.1:$AUTH_PORT (auth: $AUTH_ENV, docker --config $DOCKER_CONFIG_DIR)"
}

cmd_stop() {
    need_root
    mkdir -p "$STATE" "$RUN_DIR"
    exec 9>"$STATE/.lock"
    flock -w 900 9 || die "another dev-env.sh holds $STATE/.lock"
    workers_down
    stop_pid "$RUN_DIR/registry-$AUTH_PORT.pid" docker-registry 10 "registry 127.0.0.1:$AUTH_PORT"
    stop_pid "$RUN_DIR/registry-$OPEN_PORT.pid" docker-registry 10 "registry 127.0.0.1:$OPEN_PORT"
    stop_pid "$DOCKERD_PID" dockerd 30 "dockerd"
}

cmd_status() {
    local rc=0 pid port
    if pid=$(live_pid "$DOCKERD_PID" dockerd); then
        say "dockerd: running, started by this script (pid $pid, log $DOCKERD_LOG)"
    else
        say "dockerd: not started by this script"
    fi
    [[ -f $DOCKERD_ENV ]] && say "dockerd: $(tr '\n' ' ' <"$DOCKERD_ENV")"
    if pick_docker; then
        say "engine: answers (Engine $("${DOCKER[@]}" version --format '{{.Server.Version}}'), storage $("${DOCKER[@]}" info --format '{{.Driver}}'), client ${DOCKER[0]})"
        local img
        for img in "$BASE_IMAGE" "$PY_IMAGE"; do
            if image_exists "$img"; then say "image $img: present ($(image_size "$img"))"; else say "image $img: missing"; rc=1; fi
        done
        if tls_answers; then
            say "engine: TLS listener answers on tcp://127.0.0.1:$TLS_PORT (client files $TLS_DIR/client)"
        else
            say "engine: no TLS listener on tcp://127.0.0.1:$TLS_PORT"
            rc=1
        fi
    else
        say "engine: 'docker info' does not answer"
        rc=1
    fi
    if [[ -f $WORKERS_ENV ]]; then workers_status || rc=1; fi
    if [[ -s $AUTH_ENV ]]; then
        # shellcheck disable=SC1090
        . "$AUTH_ENV"
        say "credentials: $AUTH_ENV (user $KILN_TEST_REGISTRY_USER), docker config $DOCKER_CONFIG_DIR/config.json"
    else
        say "credentials: not generated yet"
        rc=1
    fi
    for port in "$OPEN_PORT" "$AUTH_PORT"; do
        local who="not started by this script" catalog auth=()
        pid=$(live_pid "$RUN_DIR/registry-$port.pid" docker-registry) && who="started by this script, pid $pid"
        [[ $port == "$AUTH_PORT" && -n ${KILN_TEST_REGISTRY_USER:-} ]] &&
            auth=(-u "$KILN_TEST_REGISTRY_USER:$KILN_TEST_REGISTRY_PASSWORD")
        if catalog=$(curl -sf -m 3 "${auth[@]}" "http://127.0.0.1:$port/v2/_catalog" 2>/dev/null); then
            say "registry 127.0.0.1:$port: answers ($who), repositories: $(jq -r '.repositories | join(" ")' <<<"$catalog")"
        else
            say "registry 127.0.0.1:$port: not answering ($who)"
            rc=1
        fi
    done
    return "$rc"
}

case ${1:-up} in
    up | start) cmd_up ;;
    stop) cmd_stop ;;
    status) cmd_status || exit $? ;;
    workers-up) lock_state && ensure_workers ;;
    workers-down) lock_state && workers_down && rm -f "$WORKERS_ENV" "$WORKERS_TOML" ;;
    workers-status) workers_status || exit $? ;;
    worker-start) worker_check_index "${2:-}" && lock_state && worker_start "$2" ;;
    worker-stop) worker_check_index "${2:-}" && lock_state && worker_stop "$2" ;;
    worker-kill) worker_check_index "${2:-}" && lock_state && worker_kill "$2" ;;
    worker-reset) worker_check_index "${2:-}" && lock_state && worker_stop "$2" && rm -rf "$(worker_dir "$2")/data" && worker_start "$2" ;;
    -h | --help | help) sed -n '2,/^set -/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
    *) die "usage: $0 [up|status|stop|workers-up|workers-down|workers-status|worker-start N|worker-stop N|worker-kill N|worker-reset N]" ;;
esac
