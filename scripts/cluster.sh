#!/usr/bin/env bash
# A RabbitMQ cluster of three private nodes on this machine (never the shared
# broker on port 5672): to run the programs on quorum queues, and to show what
# they do when a node of the cluster dies.
#
#   scripts/cluster.sh up        # start three nodes, join them, print the URLs
#   scripts/cluster.sh status    # each node: name, port, running or not
#   scripts/cluster.sh kill N    # kill -9 of node N (1, 2 or 3)
#   scripts/cluster.sh start N   # boot node N again on its data, back in the cluster
#   scripts/cluster.sh down      # stop the three nodes and remove their data
#
# `up` prints the comma-separated list of the nodes' AMQP URLs on stdout, and
# only that, so that
#
#   export AMQP_URL=$(scripts/cluster.sh up)
#   youtube_server --queue-type quorum
#
# runs the server on the cluster. It returns once all three nodes run as
# members of the cluster: a quorum queue declared before that would get fewer
# than three replicas. Run again, it prints the URLs of the cluster that is up.
#
# The state (each node's data, logs and pid file, and the file `nodes` that
# lists their names and ports) is kept in $YT_CLUSTER_DIR, by default
# /tmp/ytnotify-cluster, so that any shell can manage the cluster. Needs root,
# as the tests' private nodes do (the nodes and rabbitmqctl share root's Erlang
# cookie), and rabbitmq-server installed. Progress and errors go to stderr,
# prefixed with [cluster] (or [node]).
set -euo pipefail

# Absolute, before the cd below.
CLUSTER_DIR=$(realpath -m "${YT_CLUSTER_DIR:-/tmp/ytnotify-cluster}")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
# shellcheck source=scripts/lib/node.sh
source scripts/lib/node.sh

# How long the nodes may take to list each other as running members.
CLUSTER_JOIN_TIMEOUT=60
# How long a node may take to stop on SIGTERM before it is killed.
CLUSTER_STOP_TIMEOUT=30

# The nodes as the file `nodes` records them, by number (1, 2, 3).
declare -a NAMES=() PORTS=() DIST_PORTS=()

usage() {
    cat <<'EOF'
usage: scripts/cluster.sh up|status|down|kill N|start N

  up        start three private RabbitMQ nodes, join them into a cluster, wait
            until all three run as members; print their AMQP URLs, comma-separated
  status    each node's name, port and state, and the cluster's running members
  kill N    kill -9 of node N (1, 2 or 3), as a crash would
  start N   boot node N again on its data; wait until it runs in the cluster again
  down      stop the three nodes (kill -9 after 30 s) and remove their data

State: $YT_CLUSTER_DIR (default /tmp/ytnotify-cluster). Needs root.
EOF
}

say() {
    printf '[cluster] %s\n' "$*" >&2
}

fail() {
    say "$*"
    exit 1
}

# oneline TEXT: TEXT on one line, for an error message.
oneline() {
    printf '%s' "$1" | tr -s '\n' ' '
}

need_root() {
    if ((EUID != 0)); then
        fail "scripts/cluster.sh needs root (the nodes run with root's Erlang cookie): run it with sudo"
    fi
}

# cluster_load: reads the file `nodes`; false if there is none.
cluster_load() {
    local n name port dist rest
    [[ -f $CLUSTER_DIR/nodes ]] || return 1
    while read -r n name port dist rest; do
        [[ -z $n || $n == \#* ]] && continue
        if [[ ! $n =~ ^[123]$ || ! $port =~ ^[0-9]+$ || ! $dist =~ ^[0-9]+$ || -z $name ]]; then
            fail "$CLUSTER_DIR/nodes has a bad line '$n $name $port $dist $rest': remove $CLUSTER_DIR by hand (after stopping its nodes)"
        fi
        NAMES[n]=$name
        PORTS[n]=$port
        DIST_PORTS[n]=$dist
    done <"$CLUSTER_DIR/nodes"
    if ((${#NAMES[@]} != 3)); then
        fail "$CLUSTER_DIR/nodes does not list three nodes: remove $CLUSTER_DIR by hand (after stopping its nodes)"
    fi
}

# select_node N: points node.sh's NODE_* variables at node N.
# shellcheck disable=SC2034 # the variables are node.sh's
select_node() {
    NODE_NAME=${NAMES[$1]}
    NODE_PORT=${PORTS[$1]}
    NODE_DIST_PORT=${DIST_PORTS[$1]}
    NODE_DIR=$CLUSTER_DIR/node$1
    NODE_URL="amqp://guest:guest@127.0.0.1:$NODE_PORT/%2f"
}

urls() {
    local n list=()
    for n in 1 2 3; do
        list+=("amqp://guest:guest@127.0.0.1:${PORTS[n]}/%2f")
    done
    local IFS=,
    printf '%s\n' "${list[*]}"
}

print_urls() {
    local list
    list=$(urls)
    printf '%s\n' "$list"
    say "use it: AMQP_URL=$list youtube_server --queue-type quorum"
}

# node_number NAME: the number of the node called NAME, else NAME itself.
node_number() {
    local n
    for n in 1 2 3; do
        if [[ ${NAMES[n]} == "$1" ]]; then
            printf 'node %s\n' "$n"
            return 0
        fi
    done
    printf '%s\n' "$1"
}

# members N: the nodes that node N's cluster_status lists as running, one a line.
members() {
    local json list pattern='"running_nodes":\[([^]]*)\]'
    select_node "$1"
    json=$(node_ctl cluster_status --formatter json 2>/dev/null) || return 1
    [[ $json =~ $pattern ]] || return 1
    list=${BASH_REMATCH[1]//\"/}
    printf '%s\n' "${list//,/$'\n'}"
}

# wait_members N M...: waits until node N lists nodes M... as running members.
wait_members() {
    local who=$1 m missing listed deadline=$((SECONDS + CLUSTER_JOIN_TIMEOUT))
    shift
    while :; do
        missing=()
        listed=$(members "$who") || listed=
        for m in "$@"; do
            if ! grep -qxF "${NAMES[m]}" <<<"$listed"; then
                missing+=("$m")
            fi
        done
        ((${#missing[@]} == 0)) && return 0
        if ((SECONDS >= deadline)); then
            say "after ${CLUSTER_JOIN_TIMEOUT}s node $who still does not list node(s) ${missing[*]} as running members; see the logs in $CLUSTER_DIR/node*/log"
            return 1
        fi
        sleep 1
    done
}

# ctl_or_fail N ARGS...: rabbitmqctl ARGS on node N; on failure, one line and exit.
ctl_or_fail() {
    local n=$1 out
    shift
    select_node "$n"
    if ! out=$(node_ctl "$@" 2>&1); then
        fail "rabbitmqctl $* on node $n failed: $(oneline "$out")"
    fi
}

# node_arg N: checks that N is a node number.
node_arg() {
    if [[ ! ${1:-} =~ ^[123]$ ]]; then
        fail "which node? give its number: 1, 2 or 3 (e.g. scripts/cluster.sh ${2:-kill} 2)"
    fi
}

load_or_fail() {
    if [[ ! -e $CLUSTER_DIR ]]; then
        fail "no cluster in $CLUSTER_DIR: start one with scripts/cluster.sh up (or set YT_CLUSTER_DIR to its state dir)"
    fi
    cluster_load || fail "$CLUSTER_DIR has no file 'nodes', so it is no cluster's state dir: set YT_CLUSTER_DIR to the right one"
}

# kill_beams NAME: kill -9 of the Erlang VM started as node NAME, whether or
# not it has written its pid file yet.
kill_beams() {
    local proc
    for proc in /proc/[0-9]*; do
        if [[ $(cat "$proc/comm" 2>/dev/null) == beam.smp ]] &&
            grep -qzxF "RABBITMQ_NODENAME=$1" "$proc/environ" 2>/dev/null; then
            kill -9 "${proc#/proc/}" 2>/dev/null || true
        fi
    done
}

# kill_tree PID: kill -9 of process PID and of every process under it.
kill_tree() {
    local child
    kill -STOP "$1" 2>/dev/null || return 0
    for child in $(pgrep -P "$1"); do
        kill_tree "$child"
    done
    kill -9 "$1" 2>/dev/null || true
}

# Set while `up` runs: what to clean up if it fails.
up_booting=0
declare -a boot_pids=()

# shellcheck disable=SC2317 # run by the EXIT trap
up_cleanup() {
    local status=$? n round
    trap - EXIT INT TERM
    ((status == 0)) && return 0
    if ((up_booting)); then
        # A boot still under way (after Ctrl-C) would start its node later:
        # stop it, then kill the nodes for a few seconds.
        for n in "${!boot_pids[@]}"; do
            kill_tree "${boot_pids[n]}"
        done
        for round in 1 2 3; do
            for n in 1 2 3; do
                kill_beams "${NAMES[n]}"
            done
            ((round == 3)) || sleep 1
        done
        say "the cluster did not start; stopped its nodes and kept their logs in $CLUSTER_DIR/node*/log; scripts/cluster.sh down removes them"
    else
        rm -rf "$CLUSTER_DIR"
    fi
    exit "$status"
}

cmd_up() {
    local n m id clash down=() failed=()
    need_root
    if [[ -e $CLUSTER_DIR && -n $(ls -A "$CLUSTER_DIR" 2>/dev/null) ]]; then
        if ! cluster_load; then
            fail "$CLUSTER_DIR exists but is no cluster's state dir: remove it, or set YT_CLUSTER_DIR to another dir"
        fi
        if [[ ! -f $CLUSTER_DIR/ready ]]; then
            fail "the cluster in $CLUSTER_DIR did not finish starting: run scripts/cluster.sh down, then up again"
        fi
        for n in 1 2 3; do
            select_node "$n"
            node_alive || down+=("$n")
        done
        if ((${#down[@]} > 0)); then
            fail "the cluster in $CLUSTER_DIR is up but node(s) ${down[*]} not running: scripts/cluster.sh start N for each, or down, then up"
        fi
        say "a cluster is already up in $CLUSTER_DIR"
        print_urls
        return 0
    fi

    trap up_cleanup EXIT
    trap 'exit 130' INT TERM
    mkdir -p "$CLUSTER_DIR"
    id=$(printf '%04x' "$RANDOM")
    for n in 1 2 3; do
        # Six different ports: none is in use yet, so two picks may clash.
        while :; do
            node_create "$CLUSTER_DIR/node$n" "ytnotify-cluster-$id-$n@localhost" || exit 1
            clash=0
            for ((m = 1; m < n; m++)); do
                case " ${PORTS[m]} ${DIST_PORTS[m]} " in
                    *" $NODE_PORT "* | *" $NODE_DIST_PORT "*) clash=1 ;;
                esac
            done
            ((clash)) || break
        done
        NAMES[n]=$NODE_NAME
        PORTS[n]=$NODE_PORT
        DIST_PORTS[n]=$NODE_DIST_PORT
    done
    {
        printf '# node name amqp_port dist_port pid_file\n'
        for n in 1 2 3; do
            printf '%s %s %s %s %s\n' "$n" "${NAMES[n]}" "${PORTS[n]}" "${DIST_PORTS[n]}" "$CLUSTER_DIR/node$n/pid"
        done
    } >"$CLUSTER_DIR/nodes"

    up_booting=1
    say "starting three RabbitMQ nodes on ports ${PORTS[1]}, ${PORTS[2]} and ${PORTS[3]} (state in $CLUSTER_DIR)"
    for n in 1 2 3; do
        (
            select_node "$n"
            node_boot
        ) &
        boot_pids[n]=$!
    done
    for n in 1 2 3; do
        wait "${boot_pids[n]}" || failed+=("$n")
    done
    boot_pids=()
    if ((${#failed[@]} > 0)); then
        fail "node(s) ${failed[*]} did not start (see the [node] line above)"
    fi

    for n in 2 3; do
        say "joining node $n to node 1"
        ctl_or_fail "$n" stop_app
        ctl_or_fail "$n" join_cluster "${NAMES[1]}"
        ctl_or_fail "$n" start_app
    done
    wait_members 1 1 2 3 || exit 1
    touch "$CLUSTER_DIR/ready"
    trap - EXIT INT TERM
    say "the cluster is up: ${NAMES[1]}, ${NAMES[2]} and ${NAMES[3]} all run as members"
    print_urls
}

cmd_status() {
    local n state seen='' listed line members_text=''
    need_root
    load_or_fail
    printf 'cluster in %s\n' "$CLUSTER_DIR"
    for n in 1 2 3; do
        select_node "$n"
        if ! node_alive; then
            state=down
        elif broker_port_open 127.0.0.1 "$NODE_PORT"; then
            state=running
            [[ -n $seen ]] || seen=$n
        else
            state='starting (no AMQP yet)'
        fi
        printf 'node %s  %s  127.0.0.1:%s  %s\n' "$n" "$NODE_NAME" "$NODE_PORT" "$state"
    done
    if [[ -z $seen ]]; then
        printf 'running members: none (no node is running)\n'
    elif listed=$(members "$seen"); then
        while read -r line; do
            [[ -n $line ]] && members_text+="${members_text:+, }$(node_number "$line")"
        done < <(sort <<<"$listed")
        printf 'running members, as node %s sees them: %s\n' "$seen" "$members_text"
    else
        printf 'running members: unknown (rabbitmqctl cluster_status on node %s failed)\n' "$seen"
    fi
    printf 'AMQP_URL=%s\n' "$(urls)"
}

cmd_kill() {
    local n=${1:-}
    need_root
    node_arg "$n" kill
    load_or_fail
    select_node "$n"
    if ! node_alive; then
        say "node $n ($NODE_NAME) is not running: nothing to kill"
        return 0
    fi
    node_kill9 || fail "could not kill node $n ($NODE_NAME): see the [node] line above"
    say "killed node $n ($NODE_NAME, port $NODE_PORT) with kill -9; boot it again with: scripts/cluster.sh start $n"
}

cmd_start() {
    local n=${1:-} m others=() who
    need_root
    node_arg "$n" start
    load_or_fail
    for m in 1 2 3; do
        select_node "$m"
        if ((m != n)) && node_alive; then
            others+=("$m")
        fi
    done
    select_node "$n"
    if node_alive; then
        say "node $n ($NODE_NAME) is running already"
        return 0
    fi
    if broker_port_open 127.0.0.1 "$NODE_PORT"; then
        fail "another program listens on port $NODE_PORT, node $n's: stop it, or run scripts/cluster.sh down, then up (new ports)"
    fi
    say "booting node $n ($NODE_NAME) again on its data"
    if ! node_boot; then
        node_destroy
        if ((${#others[@]} == 0)); then
            fail "node $n did not start: with every node down, only the one that stopped last boots alone (the others wait for it), so start that one first; or down, then up"
        fi
        fail "node $n did not start (see the [node] line above); its logs are in $NODE_DIR/log"
    fi
    # Ask a node that stayed up, which knows the cluster, unless none did.
    who=${others[0]:-$n}
    wait_members "$who" "$n" "${others[@]}" || exit 1
    say "node $n runs as a member of the cluster again"
}

cmd_down() {
    local n deadline pids=()
    need_root
    if [[ ! -e $CLUSTER_DIR ]]; then
        say "no cluster in $CLUSTER_DIR: nothing to stop"
        return 0
    fi
    load_or_fail
    # SIGTERM: each node shuts down cleanly, all three at once. A node removes
    # its pid file as it begins to stop, hence the pids kept here.
    for n in 1 2 3; do
        select_node "$n"
        if node_alive; then
            pids[n]=$(node_pid)
            kill -TERM "${pids[n]}" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + CLUSTER_STOP_TIMEOUT))
    for n in "${!pids[@]}"; do
        select_node "$n"
        while node_alive "${pids[n]}" && ((SECONDS < deadline)); do
            sleep 0.5
        done
        if node_alive "${pids[n]}"; then
            say "node $n did not stop within ${CLUSTER_STOP_TIMEOUT}s: killing it"
            kill -CONT "${pids[n]}" 2>/dev/null || true
            kill -9 "${pids[n]}" 2>/dev/null || true
        fi
    done
    rm -rf "$CLUSTER_DIR"
    say "stopped the cluster's nodes and removed $CLUSTER_DIR"
}

case ${1:-} in
    up) cmd_up ;;
    status) cmd_status ;;
    kill) cmd_kill "${2:-}" ;;
    start) cmd_start "${2:-}" ;;
    down) cmd_down ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
