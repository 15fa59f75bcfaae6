# shellcheck shell=bash
# Helpers shared by the scripts in scripts/ and .ci/. Source this file:
#
#   source scripts/lib/broker.sh
#   rust_toolchain_check || exit 1
#   ensure_broker || exit 1
#
# ensure_broker [URL]
#   Makes sure a RabbitMQ broker answers at URL (default: $AMQP_URL, else
#   amqp://guest:guest@127.0.0.1:5672/%2f). A broker already listening is
#   reused. On this machine (127.0.0.1, localhost, ::1) a missing broker is
#   started, and installed first with apt-get when running as root on
#   Debian/Ubuntu. Otherwise it says what to run and returns 1.
#   YTNOTIFY_NO_INSTALL=1 turns off starting and installing: only reuse.
#
# ensure_management [URL]
#   Makes sure RabbitMQ's management API (the rabbitmq_management plugin,
#   which secure mode's accounts are managed through) answers on port 15672
#   of URL's host: on this machine the plugin is enabled if it is not.
#   Otherwise it says what to run and returns 1.
#
# rust_toolchain_check
#   Returns 1, saying what to install, when cargo is missing.
#
# Messages go to stderr, one line each, prefixed with [broker] or [rust].

BROKER_DEFAULT_URL='amqp://guest:guest@127.0.0.1:5672/%2f'

# How long to wait for a broker that is starting, in seconds.
BROKER_START_TIMEOUT=60

broker_log() {
    printf '[broker] %s\n' "$*" >&2
}

# broker_parse_url URL
# Splits an AMQP URL into BROKER_SCHEME, BROKER_USERINFO (user:password, may
# be empty), BROKER_HOST, BROKER_PORT, BROKER_VHOST (still URL-encoded, may be
# empty) and BROKER_QUERY (without the '?', may be empty).
# shellcheck disable=SC2034 # the variables are for the callers
broker_parse_url() {
    local url=$1 rest authority hostport after
    if [[ $url != *://* ]]; then
        broker_log "AMQP_URL '$url' is not a URL; write it like $BROKER_DEFAULT_URL"
        return 1
    fi
    BROKER_SCHEME=${url%%://*}
    rest=${url#*://}
    BROKER_QUERY=
    if [[ $rest == *\?* ]]; then
        BROKER_QUERY=${rest#*\?}
        rest=${rest%%\?*}
    fi
    authority=${rest%%/*}
    BROKER_VHOST=
    if [[ $rest == */* ]]; then
        BROKER_VHOST=${rest#*/}
    fi
    BROKER_USERINFO=
    hostport=$authority
    if [[ $authority == *@* ]]; then
        BROKER_USERINFO=${authority%@*}
        hostport=${authority##*@}
    fi
    BROKER_PORT=
    if [[ $hostport == \[* ]]; then
        # IPv6 literal: [::1]:5672
        BROKER_HOST=${hostport#\[}
        BROKER_HOST=${BROKER_HOST%%\]*}
        after=${hostport#*\]}
        if [[ $after == :* ]]; then
            BROKER_PORT=${after#:}
        fi
    else
        BROKER_HOST=${hostport%%:*}
        if [[ $hostport == *:* ]]; then
            BROKER_PORT=${hostport##*:}
        fi
    fi
    if [[ -z $BROKER_HOST ]]; then
        BROKER_HOST=localhost
    fi
    if [[ -z $BROKER_PORT ]]; then
        if [[ $BROKER_SCHEME == amqps ]]; then
            BROKER_PORT=5671
        else
            BROKER_PORT=5672
        fi
    fi
    if [[ ! $BROKER_PORT =~ ^[0-9]+$ ]]; then
        broker_log "AMQP_URL has a bad port '$BROKER_PORT'; write it like $BROKER_DEFAULT_URL"
        return 1
    fi
}

# broker_url_with_vhost URL VHOST
# Prints URL with its vhost replaced by VHOST (a name without '/' or '%').
broker_url_with_vhost() {
    local url=$1 vhost=$2 base
    broker_parse_url "$url" || return 1
    base=${url%%\?*}
    base=${base#*://}
    base=${base%%/*}
    printf '%s://%s/%s%s\n' "$BROKER_SCHEME" "$base" "$vhost" "${BROKER_QUERY:+?$BROKER_QUERY}"
}

# broker_is_local HOST: true for this machine.
broker_is_local() {
    case $1 in
        127.* | localhost | ::1 | 0:0:0:0:0:0:0:1) return 0 ;;
        *) return 1 ;;
    esac
}

# broker_port_open HOST PORT: true if something accepts TCP there.
broker_port_open() {
    # shellcheck disable=SC2016 # $1 and $2 expand in the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' broker_probe "$1" "$2" 2>/dev/null
}

# broker_tool NAME: prints the path of a RabbitMQ program (rabbitmq-server,
# rabbitmqctl), which Debian installs in /usr/sbin, often not on a user's PATH.
broker_tool() {
    local dir
    if command -v "$1" 2>/dev/null; then
        return 0
    fi
    for dir in /usr/sbin /usr/local/sbin /usr/lib/rabbitmq/bin; do
        if [[ -x $dir/$1 ]]; then
            printf '%s\n' "$dir/$1"
            return 0
        fi
    done
    return 1
}

# broker_ctl ARGS...: runs rabbitmqctl quietly, true if it worked.
broker_ctl() {
    local ctl
    ctl=$(broker_tool rabbitmqctl) || return 1
    timeout 90 "$ctl" -q "$@" >/dev/null 2>&1
}

broker_install_hint() {
    broker_log "to run one here: sudo apt-get install -y rabbitmq-server && sudo rabbitmq-server -detached"
    broker_log "or point AMQP_URL at a running broker, e.g. AMQP_URL=amqp://guest:guest@HOST:5672/%2f"
}

# broker_wait_port HOST PORT SECONDS: polls every 0.5 s.
broker_wait_port() {
    local host=$1 port=$2 tries=$(($3 * 2))
    while ((tries > 0)); do
        if broker_port_open "$host" "$port"; then
            return 0
        fi
        sleep 0.5
        tries=$((tries - 1))
    done
    return 1
}

# broker_install: apt-get install rabbitmq-server (root on Debian/Ubuntu only).
broker_install() {
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/rabbitmq-install.XXXXXX.log")
    broker_log "RabbitMQ is not installed; installing it with apt-get (a minute or two; output in $log)"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server; } >"$log" 2>&1; then
        broker_log "installing rabbitmq-server failed; see $log"
        return 1
    fi
    broker_log "installed rabbitmq-server"
    rm -f "$log"
}

# broker_start PORT: starts the local RabbitMQ node in the background.
broker_start() {
    local port=$1 server out home=
    local -a cmd env=()
    # A broker started for a URL on another port listens on that port.
    if [[ $port != 5672 && -z ${RABBITMQ_NODE_PORT:-} ]]; then
        env=("RABBITMQ_NODE_PORT=$port")
    fi
    if ((EUID == 0)); then
        if [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]]; then
            # The /usr/sbin wrapper switches to the rabbitmq user, which
            # cannot write a root-owned temporary directory on some machines.
            # Running as root directly, use the rabbitmq user's home so the
            # node shares its Erlang cookie with rabbitmqctl (which that
            # wrapper runs as the rabbitmq user).
            home=$(getent passwd rabbitmq 2>/dev/null | cut -d: -f6) || home=
            if [[ -n $home && -d $home ]]; then
                env+=("HOME=$home")
            fi
            cmd=(/usr/lib/rabbitmq/bin/rabbitmq-server -detached)
        else
            server=$(broker_tool rabbitmq-server) || return 1
            cmd=("$server" -detached)
        fi
    elif command -v sudo >/dev/null 2>&1; then
        broker_log "starting RabbitMQ with sudo (it may ask for your password)"
        cmd=(sudo env "${env[@]}" rabbitmq-server -detached)
        env=()
    else
        broker_log "starting RabbitMQ needs root: ask an administrator to run  rabbitmq-server -detached  as root"
        broker_log "or point AMQP_URL at a running broker, e.g. AMQP_URL=amqp://guest:guest@HOST:5672/%2f"
        return 1
    fi
    broker_log "starting RabbitMQ: ${cmd[*]}"
    if ! out=$(env "${env[@]}" "${cmd[@]}" 2>&1); then
        broker_log "could not start RabbitMQ: $(printf '%s' "$out" | tr '\n' ' ')"
        return 1
    fi
    if [[ -n $home && -f $home/.erlang.cookie ]] && getent passwd rabbitmq >/dev/null 2>&1; then
        # A cookie the root-run node just created must stay readable by the
        # rabbitmq user, who runs rabbitmqctl.
        chown rabbitmq: "$home/.erlang.cookie" 2>/dev/null || true
    fi
}

# broker_await_startup: waits until rabbitmqctl says the node has booted.
# Only a warning if rabbitmqctl cannot be used (not root, no cookie).
broker_await_startup() {
    if broker_ctl await_startup || broker_ctl status; then
        return 0
    fi
    broker_log "the port is open, but rabbitmqctl could not confirm the broker is up; continuing"
}

# shellcheck disable=SC2120 # the URL argument is optional
ensure_broker() {
    local url=${1:-${AMQP_URL:-$BROKER_DEFAULT_URL}}
    broker_parse_url "$url" || return 1
    local host=$BROKER_HOST port=$BROKER_PORT where
    where="$host:$port"
    if [[ $host == *:* ]]; then
        where="[$host]:$port"
    fi

    if broker_port_open "$host" "$port"; then
        broker_log "using the RabbitMQ already running at $where"
        return 0
    fi

    if ! broker_is_local "$host"; then
        broker_log "nothing answers at $where: start RabbitMQ there, or set AMQP_URL to a running broker"
        return 1
    fi

    if [[ ${YTNOTIFY_NO_INSTALL:-} == 1 ]]; then
        broker_log "no RabbitMQ at $where (YTNOTIFY_NO_INSTALL=1: not starting or installing one)"
        broker_install_hint
        return 1
    fi

    if ! broker_tool rabbitmq-server >/dev/null; then
        if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
            broker_install || return 1
            # The package may start the service itself.
            if broker_wait_port "$host" "$port" 10; then
                broker_await_startup
                broker_log "RabbitMQ is running at $where"
                return 0
            fi
        else
            broker_log "no RabbitMQ at $where, and rabbitmq-server is not installed"
            broker_install_hint
            return 1
        fi
    elif broker_ctl ping; then
        # rabbitmqctl reaches a running node, yet nothing listens at $where.
        broker_log "a RabbitMQ node is running here but does not listen at $where"
        broker_log "use its port in AMQP_URL (usually 5672), or check its listeners: rabbitmq-diagnostics listeners"
        return 1
    fi

    broker_log "no RabbitMQ at $where; starting the one installed here"
    broker_start "$port" || return 1
    if ! broker_wait_port "$host" "$port" "$BROKER_START_TIMEOUT"; then
        broker_log "RabbitMQ did not open port $port within ${BROKER_START_TIMEOUT}s; see its logs in ${RABBITMQ_LOG_BASE:-/var/log/rabbitmq}/"
        return 1
    fi
    broker_await_startup
    broker_log "RabbitMQ is running at $where"
}

# How long the management API may take to open once its plugin is enabled.
MANAGEMENT_START_TIMEOUT=60

# shellcheck disable=SC2120 # the URL argument is optional
ensure_management() {
    local url=${1:-${AMQP_URL:-$BROKER_DEFAULT_URL}} plugins out
    broker_parse_url "$url" || return 1
    local host=$BROKER_HOST port=15672
    if broker_port_open "$host" "$port"; then
        return 0
    fi
    if ! broker_is_local "$host"; then
        broker_log "RabbitMQ's management API does not answer at $host:$port: on the broker's machine run  sudo rabbitmq-plugins enable rabbitmq_management"
        return 1
    fi
    if ! plugins=$(broker_tool rabbitmq-plugins); then
        broker_log "rabbitmq-plugins is not installed here; install rabbitmq-server, then run  sudo rabbitmq-plugins enable rabbitmq_management"
        return 1
    fi
    broker_log "enabling RabbitMQ's management API (rabbitmq_management), which secure mode's accounts need"
    if ! out=$(timeout 120 "$plugins" enable rabbitmq_management 2>&1); then
        broker_log "could not enable it: $(printf '%s' "$out" | tr '\n' ' '); run  sudo rabbitmq-plugins enable rabbitmq_management"
        return 1
    fi
    if ! broker_wait_port "$host" "$port" "$MANAGEMENT_START_TIMEOUT"; then
        broker_log "the management API did not open port $port within ${MANAGEMENT_START_TIMEOUT}s"
        return 1
    fi
    broker_log "RabbitMQ's management API is running at $host:$port"
}

# How many queues a broker may already hold before the tests warn that it is
# loaded: each test adds a few dozen, and a 2-core node holding a benchmark's
# 10,000 inboxes answers rabbitmqctl slowly.
BROKER_BUSY_QUEUES=5000

# broker_preflight [URL]: fails if the broker is in a memory or disk alarm
# (publishers are blocked, so every test would time out), and warns when it
# already holds many queues (a benchmark's vhost left behind: the tests'
# rabbitmqctl calls then crawl). Needs the management API; says nothing when
# it does not answer.
broker_preflight() {
    local url=${1:-${AMQP_URL:-$BROKER_DEFAULT_URL}} nodes overview queues
    broker_parse_url "$url" || return 1
    local api="http://$BROKER_HOST:15672/api" auth=${BROKER_USERINFO:-guest:guest}
    nodes=$(curl -fsS --max-time 20 -u "$auth" "$api/nodes?columns=name,mem_alarm,disk_free_alarm" 2>/dev/null) || return 0
    if [[ $nodes == *'"mem_alarm":true'* || $nodes == *'"disk_free_alarm":true'* ]]; then
        broker_log "RabbitMQ at $BROKER_HOST is in a memory or disk alarm and blocks every publisher; free it first (rabbitmqctl list_vhosts, then rabbitmqctl delete_vhost <a benchmark's vhost>) or restart it"
        return 1
    fi
    overview=$(curl -fsS --max-time 20 -u "$auth" "$api/overview?columns=object_totals" 2>/dev/null) || return 0
    queues=$(printf '%s' "$overview" | grep -o '"queues":[0-9]*' | head -n 1 | cut -d: -f2)
    if [[ -n $queues ]] && ((queues > BROKER_BUSY_QUEUES)); then
        broker_log "warning: RabbitMQ at $BROKER_HOST already holds $queues queues, and the tests will run slowly; see which vhost holds them with  rabbitmqctl list_vhosts  and delete a benchmark's with  rabbitmqctl delete_vhost <name>"
    fi
}

rust_toolchain_check() {
    if command -v cargo >/dev/null 2>&1; then
        return 0
    fi
    if [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
        printf '[rust] cargo is installed in %s but not on PATH: run  source "%s/env"  (or open a new shell)\n' \
            "${CARGO_HOME:-$HOME/.cargo}/bin" "${CARGO_HOME:-$HOME/.cargo}" >&2
    else
        printf '[rust] cargo is missing: install Rust from https://rustup.rs, then open a new shell\n' >&2
    fi
    return 1
}
