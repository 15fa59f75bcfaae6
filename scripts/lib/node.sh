# shellcheck shell=bash
# A private RabbitMQ node on spare ports, to crash, stall or restart without
# touching the machine's shared broker: the bash twin of
# tests/common/broker_node.rs. Source scripts/lib/broker.sh first.
#
#   node_create DIR [NAME]  # picks ports (and a name), writes DIR/rabbitmq.conf
#   node_boot            # starts it on DIR's data, waits until it serves AMQP
#   node_alive [PID]     # true while its Erlang VM runs
#   node_kill9           # kill -9 of its Erlang VM, waits until the port is closed
#   node_freeze / node_thaw   # SIGSTOP / SIGCONT
#   node_ctl ARGS...     # rabbitmqctl -n <node> ARGS (60 s at most)
#   node_destroy         # SIGCONT then SIGKILL; safe to call twice
#
# It sets NODE_NAME, NODE_PORT, NODE_DIST_PORT, NODE_DIR and NODE_URL
# (amqp://guest:guest@127.0.0.1:<port>/%2f). Starting a node needs root (as
# the fault tests do): the server script under /usr/lib is run directly, since
# the /usr/sbin wrapper switches to the rabbitmq user, who cannot write DIR.
# Messages go to stderr, prefixed with [node].

# How long a node may take to boot (about 7 s on a 2-core machine).
NODE_BOOT_TIMEOUT=90

node_log() {
    printf '[node] %s\n' "$*" >&2
}

# node_tool NAME: the program under /usr/lib/rabbitmq/bin if there, else on PATH.
node_tool() {
    if [[ -x /usr/lib/rabbitmq/bin/$1 ]]; then
        printf '%s\n' "/usr/lib/rabbitmq/bin/$1"
    else
        broker_tool "$1"
    fi
}

# node_free_port: prints a port on 127.0.0.1 that nothing listens on.
node_free_port() {
    local port tries=200
    while ((tries > 0)); do
        port=$((20000 + RANDOM % 40000))
        if ! broker_port_open 127.0.0.1 "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
        tries=$((tries - 1))
    done
    node_log "found no free port between 20000 and 60000"
    return 1
}

# shellcheck disable=SC2034 # NODE_URL is for the callers
node_create() {
    NODE_DIR=$1
    local name=${2:-ytnotify-chaos-$$-$RANDOM@localhost}
    if ((EUID != 0)); then
        node_log "a private RabbitMQ node is started as root (its Erlang cookie must be root's); run this with sudo"
        return 1
    fi
    if ! node_tool rabbitmq-server >/dev/null || ! node_tool rabbitmqctl >/dev/null; then
        node_log "rabbitmq-server is not installed: sudo apt-get install -y rabbitmq-server"
        return 1
    fi
    NODE_PORT=$(node_free_port) || return 1
    NODE_DIST_PORT=$(node_free_port) || return 1
    while [[ $NODE_DIST_PORT == "$NODE_PORT" ]]; do
        NODE_DIST_PORT=$(node_free_port) || return 1
    done
    NODE_NAME=$name
    NODE_URL="amqp://guest:guest@127.0.0.1:$NODE_PORT/%2f"
    mkdir -p "$NODE_DIR/mnesia" "$NODE_DIR/log" || return 1
    # Its own listener: the machine's rabbitmq.conf pins the shared port.
    printf 'listeners.tcp.1 = 127.0.0.1:%s\n' "$NODE_PORT" >"$NODE_DIR/rabbitmq.conf"
    # No plugins, so no management listener to clash with the shared node's.
    printf '[].\n' >"$NODE_DIR/enabled_plugins"
}

node_pid() {
    local pid
    pid=$(cat "$NODE_DIR/pid" 2>/dev/null) || return 1
    pid=${pid//[^0-9]/}
    [[ -n $pid ]] || return 1
    printf '%s\n' "$pid"
}

node_boot() {
    local server out tries
    server=$(node_tool rabbitmq-server) || return 1
    rm -f "$NODE_DIR/pid"
    if ! out=$(cd "$NODE_DIR" && env \
        RABBITMQ_NODENAME="$NODE_NAME" \
        RABBITMQ_NODE_PORT="$NODE_PORT" \
        RABBITMQ_DIST_PORT="$NODE_DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$NODE_DIR/mnesia" \
        RABBITMQ_LOG_BASE="$NODE_DIR/log" \
        RABBITMQ_PID_FILE="$NODE_DIR/pid" \
        RABBITMQ_CONFIG_FILE="$NODE_DIR/rabbitmq.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$NODE_DIR/enabled_plugins" \
        timeout 60 "$server" -detached 2>&1); then
        node_log "rabbitmq-server -detached failed: $(printf '%s' "$out" | tr '\n' ' ')"
        return 1
    fi
    if ! broker_wait_port 127.0.0.1 "$NODE_PORT" "$NODE_BOOT_TIMEOUT"; then
        node_log "the node did not open port $NODE_PORT within ${NODE_BOOT_TIMEOUT}s; see $NODE_DIR/log"
        return 1
    fi
    # The port opens a moment before the node has booted all the way.
    if ! node_ctl await_startup; then
        node_log "rabbitmqctl await_startup failed on $NODE_NAME; see $NODE_DIR/log"
        return 1
    fi
    # The pid file is written as the node starts; make sure it is there.
    tries=20
    until node_pid >/dev/null || ((tries == 0)); do
        sleep 0.25
        tries=$((tries - 1))
    done
    node_pid >/dev/null
}

# node_alive [PID]: true while the node's Erlang VM runs: the process in its
# pid file (or PID), if that process runs as this node (not one that got the
# pid of a node killed long ago). A node removes its pid file as it begins to
# stop: to wait for the end of a stop, pass the pid read before.
node_alive() {
    local pid=${1:-}
    if [[ -z $pid ]]; then
        pid=$(node_pid) || return 1
    fi
    grep -qzxF "RABBITMQ_NODENAME=$NODE_NAME" "/proc/$pid/environ" 2>/dev/null
}

node_kill9() {
    local pid tries=$((NODE_BOOT_TIMEOUT * 10))
    pid=$(node_pid) || {
        node_log "no pid file in $NODE_DIR: is the node running?"
        return 1
    }
    kill -9 "$pid" 2>/dev/null || return 1
    while broker_port_open 127.0.0.1 "$NODE_PORT"; do
        if ((tries == 0)); then
            node_log "the node still accepts connections after kill -9"
            return 1
        fi
        sleep 0.1
        tries=$((tries - 1))
    done
}

node_freeze() {
    local pid
    pid=$(node_pid) && kill -STOP "$pid"
}

node_thaw() {
    local pid
    pid=$(node_pid) && kill -CONT "$pid"
}

node_ctl() {
    local ctl
    ctl=$(node_tool rabbitmqctl) || return 1
    timeout 60 "$ctl" -q -n "$NODE_NAME" "$@"
}

node_destroy() {
    local pid
    [[ -n ${NODE_DIR:-} ]] || return 0
    if pid=$(node_pid); then
        kill -CONT "$pid" 2>/dev/null
        kill -9 "$pid" 2>/dev/null
        rm -f "$NODE_DIR/pid"
    fi
    return 0
}
