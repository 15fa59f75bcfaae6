#!/usr/bin/env bash
# Chaos run: the load simulator against a private RabbitMQ node (never the
# machine's shared broker) while faults are injected over and over, then the
# exactly-once check, a table of every fault with the time the system took to
# recover from it, and an exit code that says whether anything went wrong.
#
#   scripts/chaos.sh                          # 300 s of faults, seed 1
#   scripts/chaos.sh --duration 60s --seed 7  # a short run
#   scripts/chaos.sh --help                   # every option
#
# Every program (youtube_server, the simulator, the probes) reaches the node
# through `simulate proxy`, which resets every open connection at random
# intervals (--cut-every). On top of that the run cycles through, in an order
# drawn from the seed:
#
#   broker crash     kill -9 of the node's Erlang VM, restart on the same data,
#                    then a cut on demand while the programs are reconnecting
#   server crash     kill -9 of youtube_server, restart on the same database
#   broker stall     SIGSTOP of the node for 3 s, then SIGCONT
#   queue deleted    rabbitmqctl delete_queue of ytnotify.youtuber_requests.0-7,
#                    then (next round) ytnotify.user_requests.0-7
#
# Recovery time of a fault: from the fault until both paths work again for
# requests sent after it: the upload path (the first probe upload, a real
# `youtuber` sent twice a second, whose notification a real `user watch`
# session shows) and the request path of users (the first probe `user login`,
# sent once a second, that prints SUCCESS). It includes up to a second of
# waiting for the next probe, and the node's boot time (6-11 s) for a broker
# crash. If the simulator ends before the fault window does, the faults go on
# with the probes alone, so that every kind of fault is measured.
#
# Needs root (the private node runs with root's Erlang cookie, as in the fault
# tests), rabbitmq-server installed, and a release build (made here unless
# --no-build). Exits 0 only if the simulator's check found nothing lost,
# duplicated or unexpected, every simulated request was answered, every probe
# upload that printed SUCCESS was shown exactly once, every probe request was
# answered within 120 s, the system recovered from every fault, and no
# long-running process (server, simulator, watcher, proxy, node) ended
# unexpectedly. Every wait has a deadline: at worst the run takes the duration
# plus about 17 minutes (node boots, set-up, the simulator's 180 s request
# timeout and 120 s drain, the last probes); a normal run, the duration plus
# a minute or two.
#
# Not `set -e`: faults make commands fail on purpose; each failure is checked.
set -uo pipefail
export LC_ALL=C # EPOCHREALTIME with a '.', whatever the locale

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh
# shellcheck source=scripts/lib/node.sh
source scripts/lib/node.sh

usage() {
    cat <<'EOF'
usage: scripts/chaos.sh [options]

  --duration D      how long to upload and inject faults (default 300s; 90, 90s, 5m)
  --seed N          seed of the simulation, the fault order and the cut intervals (default 1)
  --cut-every R     interval range of the proxy's random cuts (default 0.5s..8s)
  --users N         simulated users (default 300; 3 subscriptions each)
  --youtubers N     simulated YouTubers (default 10)
  --upload-rate R   simulated uploads per second (default 6)
  --strict          also fail when a probe client gives up with an error (exit 1),
                    e.g. because a cut reset its first connection
  --no-build        use the binaries in target/release as they are
  --keep            keep the work directory (logs, database, node data) even on success
  -h, --help        this help
EOF
}

seconds_of() {
    local text=$1
    if [[ $text =~ ^([0-9]+)s?$ ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
    elif [[ $text =~ ^([0-9]+)m$ ]]; then
        printf '%s\n' "$((BASH_REMATCH[1] * 60))"
    elif [[ $text =~ ^([0-9]+)m([0-9]+)s$ ]]; then
        printf '%s\n' "$((BASH_REMATCH[1] * 60 + BASH_REMATCH[2]))"
    else
        return 1
    fi
}

duration=300
seed=1
cut_every=0.5s..8s
users=300
youtubers=10
upload_rate=6
build=1
keep=0
strict=0
while (($# > 0)); do
    case $1 in
        --duration)
            duration=$(seconds_of "${2:-}") || {
                echo "chaos.sh: --duration takes 90, 90s, 5m or 1m30s" >&2
                exit 2
            }
            shift 2
            ;;
        --seed)
            [[ ${2:-} =~ ^[0-9]+$ ]] || {
                echo "chaos.sh: --seed takes a number" >&2
                exit 2
            }
            seed=$2
            shift 2
            ;;
        --cut-every)
            cut_every=${2:-}
            shift 2
            ;;
        --users | --youtubers)
            [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || {
                echo "chaos.sh: $1 takes a positive number" >&2
                exit 2
            }
            if [[ $1 == --users ]]; then users=$2; else youtubers=$2; fi
            shift 2
            ;;
        --upload-rate)
            [[ ${2:-} =~ ^[0-9]+(\.[0-9]+)?$ ]] || {
                echo "chaos.sh: --upload-rate takes a number" >&2
                exit 2
            }
            upload_rate=$2
            shift 2
            ;;
        --no-build)
            build=0
            shift
            ;;
        --keep)
            keep=1
            shift
            ;;
        --strict)
            strict=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "chaos.sh: unknown option '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
done
if ((duration < 20)); then
    echo "chaos.sh: --duration must be at least 20s" >&2
    exit 2
fi

# The simulator's own limits: long enough to ride out a broker restart.
request_timeout=180
drain_timeout=120
# The vhost of the run on the private node.
vhost=ytnotify-chaos
bin=target/release

# --- time ---------------------------------------------------------------

# Microseconds since the epoch.
now_us() {
    local t=$EPOCHREALTIME
    printf '%s\n' "${t//[^0-9]/}"
}

# seconds_us US: "12.3" from microseconds (non-negative).
seconds_us() {
    printf '%d.%d' $(($1 / 1000000)) $((($1 % 1000000) / 100000))
}

run_us=0 # when the first upload was applied; faults are timed from it

say() {
    local t
    t=$(now_us)
    if ((run_us > 0)); then
        printf '[chaos] +%ss %s\n' "$(seconds_us $((t - run_us)))" "$*"
    else
        printf '[chaos] %s\n' "$*"
    fi
}

# Prefixes every line with the time it was read, in microseconds.
stamp() {
    local line t
    while IFS= read -r line; do
        t=$EPOCHREALTIME
        printf '%s %s\n' "${t//[^0-9]/}" "$line"
    done
}

# --- state and clean-up -------------------------------------------------

work=
proxy_pid=
server_pid=
sim_pid=
watcher_pid=
probe_pid=
failures=()
server_restarts=0

fail() {
    failures+=("$*")
    say "FAILURE: $*"
}

# stop_pid PID SECONDS: SIGTERM, then SIGKILL if it is still there after SECONDS.
stop_pid() {
    local pid=$1 tries=$(($2 * 10))
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null && ((tries > 0)); do
        sleep 0.1
        tries=$((tries - 1))
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -n $work ]] || exit "$status"
    # The probe loop stops its own youtuber processes when terminated.
    stop_pid "$probe_pid" 5
    stop_pid "$sim_pid" 5
    stop_pid "$watcher_pid" 5
    stop_pid "$server_pid" 10
    stop_pid "$proxy_pid" 5
    node_destroy
    if ((keep)) || ((status != 0)); then
        printf '[chaos] logs, database and node data kept in %s\n' "$work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted: cleaning up"; exit 130' INT TERM

# --- set-up -------------------------------------------------------------

rust_toolchain_check || exit 1
if ((build)); then
    say "building the release binaries"
    if ! cargo build --release --workspace --locked --quiet; then
        echo "chaos.sh: the build failed" >&2
        exit 1
    fi
fi
for program in simulate youtube_server user youtuber; do
    if [[ ! -x $bin/$program ]]; then
        echo "chaos.sh: $bin/$program is missing: run cargo build --release --workspace" >&2
        exit 1
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/ytnotify-chaos.XXXXXX")
say "work directory $work"
for file in faults.tsv upload_sent.tsv upload_done.tsv login_sent.tsv login_done.tsv login_out.log \
    probe_seen.log probe_youtuber.err probe_login.err proxy.log server.out server.err sim.out sim.err; do
    : >"$work/$file"
done
node_create "$work/node" || exit 1
say "starting a private RabbitMQ node $NODE_NAME on 127.0.0.1:$NODE_PORT"
boot_started=$(now_us)
node_boot || exit 1
say "node up in $(seconds_us $(($(now_us) - boot_started))) s"
if ! node_ctl add_vhost "$vhost" >/dev/null ||
    ! node_ctl set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null; then
    echo "chaos.sh: cannot create the vhost $vhost on $NODE_NAME" >&2
    exit 1
fi

proxy_port=$(node_free_port) || exit 1
setsid "$bin/simulate" proxy --listen "127.0.0.1:$proxy_port" --upstream "127.0.0.1:$NODE_PORT" \
    --cut-every "$cut_every" --paused --seed "$seed" 2> >(stamp >>"$work/proxy.log") &
proxy_pid=$!
app_url="amqp://guest:guest@127.0.0.1:$proxy_port/$vhost"
tries=100
until grep -q 'proxy: listening' "$work/proxy.log" 2>/dev/null; do
    if ! kill -0 "$proxy_pid" 2>/dev/null || ((tries == 0)); then
        echo "chaos.sh: the proxy did not start: $(tail -n 3 "$work/proxy.log" 2>/dev/null)" >&2
        exit 1
    fi
    sleep 0.1
    tries=$((tries - 1))
done
say "proxy on 127.0.0.1:$proxy_port, random cuts every $cut_every once the run starts"

start_server() {
    setsid "$bin/youtube_server" --amqp-url "$app_url" --db "$work/server.db" \
        >>"$work/server.out" 2> >(stamp >>"$work/server.err") &
    server_pid=$!
}

start_watcher() {
    setsid "$bin/user" watch chaosprobe --plain --amqp-url "$app_url" \
        > >(stamp >>"$work/probe_seen.log") 2> >(stamp >>"$work/probe_watch.err") &
    watcher_pid=$!
}

start_server
say "youtube_server started (pid $server_pid), through the proxy, database $work/server.db"

# The probe: one user following one YouTuber, watched by a real `user` session.
if ! out=$(timeout 90 "$bin/user" subscribe chaosprobe chaosprobe-yt --amqp-url "$app_url" --timeout 60s 2>&1); then
    echo "chaos.sh: the probe subscription failed: $out" >&2
    exit 1
fi
start_watcher

subscriptions=$((users * 3))
churn=$((users * 2))
say "simulator: $users users, $youtubers YouTubers, $subscriptions subscriptions, $upload_rate uploads/s for ${duration}s, $churn changes, 20% offline, seed $seed"
setsid "$bin/simulate" run --amqp-url "$app_url" --external-server --name chaos \
    --users "$users" --youtubers "$youtubers" --subscriptions "$subscriptions" \
    --upload-rate "$upload_rate" --duration "${duration}s" --upload-window 64 \
    --offline-share 0.2 --churn "$churn" --churn-rate "$(awk -v c="$churn" -v d="$duration" 'BEGIN { printf "%.3f", c / d }')" \
    --request-timeout "${request_timeout}s" --drain-timeout "${drain_timeout}s" \
    --seed "$seed" --no-ceiling --quiet --out "$work/report.json" \
    >"$work/sim.out" 2> >(stamp >>"$work/sim.err") &
sim_pid=$!

# Set-up (every subscription through the server) runs without faults; the run
# starts with the first upload the server applies.
setup_deadline=$(($(now_us) + 240 * 1000000))
until grep -q ' uploaded v[0-9]' "$work/server.out" 2>/dev/null; do
    if ! kill -0 "$sim_pid" 2>/dev/null; then
        fail "the simulator ended during set-up: $(tail -n 2 "$work/sim.err" | cut -d' ' -f2-)"
        exit 1
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        fail "youtube_server ended during set-up: $(tail -n 2 "$work/server.err" | cut -d' ' -f2-)"
        exit 1
    fi
    if (($(now_us) > setup_deadline)); then
        fail "set-up took more than 240 s"
        exit 1
    fi
    sleep 0.5
done
run_us=$(now_us)
say "run started: the server applied the first upload; random cuts on"
kill -USR2 "$proxy_pid"

# --- probes ---------------------------------------------------------------

# stamp_as TAG: like stamp, with TAG before the time.
stamp_as() {
    local tag=$1 line t
    while IFS= read -r line; do
        t=$EPOCHREALTIME
        printf '%s %s %s\n' "$tag" "${t//[^0-9]/}" "$line"
    done
}

# Two probe uploads a second (a real `youtuber` each, with its own connection)
# and one probe login (a real `user login`), until $work/stop_probes exists;
# then it waits for those still running. Files: <kind>_sent.tsv (n, time),
# <kind>_done.tsv (n, exit status, time reaped), login_out.log (n, time, line).
probe_loop() {
    local tick=0 uploads=0 logins=0 pid status kind n
    local -A running=()
    trap 'for pid in "${!running[@]}"; do kill -TERM "$pid" 2>/dev/null; done; exit 0' TERM
    while true; do
        if [[ ! -e $work/stop_probes ]]; then
            tick=$((tick + 1))
            uploads=$((uploads + 1))
            printf '%s %s\n' "$uploads" "$(now_us)" >>"$work/upload_sent.tsv"
            timeout -k 5 150 "$bin/youtuber" publish chaosprobe-yt "p$uploads" --amqp-url "$app_url" --timeout 120s \
                >/dev/null 2> >(stamp_as "$uploads" >>"$work/probe_youtuber.err") &
            running[$!]="upload $uploads"
            if ((tick % 2 == 1)); then
                logins=$((logins + 1))
                printf '%s %s\n' "$logins" "$(now_us)" >>"$work/login_sent.tsv"
                timeout -k 5 150 "$bin/user" login chaosprobe-login --amqp-url "$app_url" --timeout 120s \
                    > >(stamp_as "$logins" >>"$work/login_out.log") \
                    2> >(stamp_as "$logins" >>"$work/probe_login.err") &
                running[$!]="login $logins"
            fi
        elif ((${#running[@]} == 0)); then
            exit 0
        fi
        sleep 0.5
        for pid in "${!running[@]}"; do
            if ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid"
                status=$?
                read -r kind n <<<"${running[$pid]}"
                printf '%s %s %s\n' "$n" "$status" "$(now_us)" >>"$work/${kind}_done.tsv"
                unset "running[$pid]"
            fi
        done
    done
}
probe_loop &
probe_pid=$!

# --- faults -------------------------------------------------------------

RANDOM=$seed
kinds=(broker_kill server_kill broker_stall delete_youtuber_requests delete_user_requests)
rounds=$((duration >= 240 ? duration / 120 : 1))
schedule=()
for ((round = 0; round < rounds; round++)); do
    order=("${kinds[@]}")
    for ((i = ${#order[@]} - 1; i > 0; i--)); do
        j=$((RANDOM % (i + 1)))
        tmp=${order[i]}
        order[i]=${order[j]}
        order[j]=$tmp
    done
    schedule+=("${order[@]}")
done
count=${#schedule[@]}
gap_us=$((duration * 1000000 / (count + 1)))
fault_at=()
for ((i = 0; i < count; i++)); do
    # Evenly spread, each moved by up to a fifth of the gap either way.
    jitter=$(((RANDOM % 400 - 200) * gap_us / 1000))
    fault_at+=($((run_us + (i + 1) * gap_us + jitter)))
done
say "$count scripted faults over ${duration}s: ${schedule[*]}"

# record KIND DETAIL: a fault injected now.
record() {
    printf '%s\t%s\t%s\n' "$(now_us)" "$1" "$2" >>"$work/faults.tsv"
}

server_killed_by_us=0

inject() {
    local kind=$1 queue at pause
    case $kind in
        broker_kill)
            say "fault: kill -9 of the RabbitMQ node"
            record "broker crash" "kill -9, restart on the same data"
            if ! node_kill9; then
                fail "could not kill the node"
                return 1
            fi
            at=$(now_us)
            if ! node_boot; then
                fail "the node did not come back after kill -9"
                return 1
            fi
            say "node back after $(seconds_us $(($(now_us) - at))) s down"
            # Cut again while every program is reconnecting.
            pause=$((5 + RANDOM % 10))
            sleep "0.$pause"
            say "fault: cut on demand during the reconnection"
            kill -USR1 "$proxy_pid"
            ;;
        server_kill)
            say "fault: kill -9 of youtube_server (pid $server_pid)"
            record "server crash" "kill -9, restart on the same database"
            server_killed_by_us=1
            kill -9 "$server_pid" 2>/dev/null
            wait "$server_pid" 2>/dev/null
            server_killed_by_us=0
            server_restarts=$((server_restarts + 1))
            start_server
            say "youtube_server restarted (pid $server_pid)"
            ;;
        broker_stall)
            say "fault: SIGSTOP of the RabbitMQ node for 3 s"
            record "broker stall" "SIGSTOP 3 s, then SIGCONT"
            node_freeze
            sleep 3
            node_thaw
            ;;
        delete_youtuber_requests | delete_user_requests)
            # Every partition of the kind: the probes' among them.
            queues=ytnotify.${kind#delete_}.0-7
            say "fault: delete_queue $queues"
            record "queue deleted" "$queues"
            for partition in 0 1 2 3 4 5 6 7; do
                queue=ytnotify.${kind#delete_}.$partition
                if ! out=$(node_ctl delete_queue -p "$vhost" "$queue" 2>&1); then
                    say "delete_queue $queue failed: $(printf '%s' "$out" | tr '\n' ' ')"
                fi
            done
            ;;
    esac
}

# --- recovery -----------------------------------------------------------

# Writes all_faults.tsv (the scripted faults and the proxy's cuts since the
# run started that reset something, in time order: time, kind, detail) and
# recovery.tsv: for each fault, the first probe upload sent after it to be
# shown and the first probe login sent after it to be answered. Columns: time
# from the run's start, kind, detail, upload path, request path, recovered
# (the later of the two); times in microseconds, "-" for never.
compute_recovery() {
    {
        cat "$work/faults.tsv"
        awk -v from="$run_us" '
            / proxy: cut [0-9]+ connections? / && $1 >= from {
                n = $4
                if (n == 0) next
                kind = ($0 ~ /on demand/) ? "network cut (on demand)" : "network cut"
                printf "%s\t%s\t%s connection%s reset\n", $1, kind, n, (n == 1 ? "" : "s")
            }' "$work/proxy.log"
    } | sort -n >"$work/all_faults.tsv"
    awk -v run="$run_us" '
        FILENAME == ARGV[1] { usent[$1] = $2; next }
        FILENAME == ARGV[2] {
            if (match($0, / uploaded p[0-9]+$/)) {
                n = substr($0, RSTART + 11)
                if (!(n in shown)) shown[n] = $1
            }
            next
        }
        FILENAME == ARGV[3] { lsent[$1] = $2; next }
        FILENAME == ARGV[4] { if ($3 == "SUCCESS" && !($1 in answered)) answered[$1] = $2; next }
        {
            split($0, f, "\t")
            u = -1
            for (n in usent) if (usent[n] >= f[1] && (n in shown) && (u < 0 || shown[n] < u)) u = shown[n]
            l = -1
            for (n in lsent) if (lsent[n] >= f[1] && (n in answered) && (l < 0 || answered[n] < l)) l = answered[n]
            up = (u < 0) ? "-" : u - f[1]
            req = (l < 0) ? "-" : l - f[1]
            both = (u < 0 || l < 0) ? "-" : ((u > l ? u : l) - f[1])
            printf "%s\t%s\t%s\t%s\t%s\t%s\n", f[1] - run, f[2], f[3], up, req, both
        }' "$work/upload_sent.tsv" "$work/probe_seen.log" "$work/login_sent.tsv" "$work/login_out.log" \
        "$work/all_faults.tsv" >"$work/recovery.tsv"
}

# --- the run ------------------------------------------------------------

next=0
cuts_paused=0
last_progress=$run_us
window_end=$((run_us + duration * 1000000))
sim_deadline=$((run_us + (duration + request_timeout + drain_timeout + 120) * 1000000))
sim_status=
while true; do
    now=$(now_us)
    if [[ -n $sim_pid ]] && ! kill -0 "$sim_pid" 2>/dev/null; then
        wait "$sim_pid"
        sim_status=$?
        sim_pid=
        say "the simulator finished (exit $sim_status)"
        if ((now < window_end)); then
            say "the fault window runs until +${duration}s: faults go on, measured with the probes alone"
        fi
    fi
    if [[ -n $sim_pid ]] && ((now > sim_deadline)); then
        fail "the simulator was still running $(((sim_deadline - run_us) / 1000000)) s after the run started: killed"
        stop_pid "$sim_pid" 5
        sim_pid=
        sim_status=killed
    fi
    if [[ -z $sim_pid ]] && ((now >= window_end)); then
        break
    fi
    if ! kill -0 "$proxy_pid" 2>/dev/null; then
        wait "$proxy_pid"
        fail "the proxy ended (exit $?): $(tail -n 2 "$work/proxy.log" | cut -d' ' -f2-)"
        proxy_pid=
        break
    fi
    if ((!server_killed_by_us)) && ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid"
        fail "youtube_server ended unexpectedly (exit $?): $(tail -n 2 "$work/server.err" | cut -d' ' -f2- | tr '\n' ' ')"
        start_server
        say "youtube_server restarted (pid $server_pid)"
    fi
    if ! kill -0 "$watcher_pid" 2>/dev/null; then
        wait "$watcher_pid"
        fail "the probe's user watch ended unexpectedly (exit $?): $(tail -n 2 "$work/probe_watch.err" | cut -d' ' -f2- | tr '\n' ' ')"
        start_watcher
    fi
    if pid=$(node_pid) && ! kill -0 "$pid" 2>/dev/null; then
        fail "the RabbitMQ node died on its own; restarting it"
        node_boot || break
    fi
    if ((next < count && now >= fault_at[next])); then
        inject "${schedule[next]}" || break
        next=$((next + 1))
    fi
    if ((!cuts_paused && now >= window_end)); then
        kill -USR2 "$proxy_pid"
        cuts_paused=1
        say "fault window over: random cuts off; waiting for the simulator to get its answers and drain"
    fi
    if ((now - last_progress >= 15000000)); then
        last_progress=$now
        say "progress: $(grep -c ' uploaded v' "$work/server.out") uploads applied by the server," \
            "$(grep -c 'proxy: cut [1-9]' "$work/proxy.log") cuts so far;" \
            "probes: $(wc -l <"$work/upload_sent.tsv") uploads sent, $(grep -c ' uploaded p' "$work/probe_seen.log") shown," \
            "$(wc -l <"$work/login_sent.tsv") logins sent, $(grep -c ' SUCCESS$' "$work/login_out.log") answered"
    fi
    sleep 0.5
done
if ((!cuts_paused)) && [[ -n $proxy_pid ]]; then
    kill -USR2 "$proxy_pid"
fi
if ((next < count)); then
    say "$((count - next)) scripted faults not injected: the run ended first (${schedule[*]:next})"
fi

# Probes go on until every fault, the last ones too, is followed by working
# probes (90 s at most), so that a late fault is not reported unrecovered for
# want of probes after it.
say "waiting until the probes show recovery from every fault (90 s at most)"
tries=45
while ((tries > 0)) && kill -0 "$probe_pid" 2>/dev/null; do
    compute_recovery
    if ! awk -F'\t' '$6 == "-"' "$work/recovery.tsv" | grep -q .; then
        break
    fi
    sleep 2
    tries=$((tries - 1))
done
# Let the probes still in flight finish (each has 150 s at most).
touch "$work/stop_probes"
say "waiting for the last probes (150 s at most)"
tries=1700
while kill -0 "$probe_pid" 2>/dev/null && ((tries > 0)); do
    sleep 0.1
    tries=$((tries - 1))
done
stop_pid "$probe_pid" 1
probe_pid=
# And for the watcher to show the answered uploads (30 s at most).
answered=$(awk '$2 == 0' "$work/upload_done.tsv" | wc -l)
tries=60
while (($(grep -c ' uploaded p[0-9]*$' "$work/probe_seen.log") < answered)) && ((tries > 0)); do
    sleep 0.5
    tries=$((tries - 1))
done
sleep 1 # a duplicate would come right behind

# --- the report -----------------------------------------------------------

compute_recovery

echo
echo "[chaos] ==================== chaos run summary ===================="
echo "[chaos] the simulator's report:"
if [[ -s $work/sim.out ]]; then
    sed 's/^/    /' "$work/sim.out"
else
    echo "    (no report; the end of its log:)"
    cut -d' ' -f2- "$work/sim.err" | tail -n 3 | sed 's/^/    /'
fi
check_line=$(grep -m1 '^check ' "$work/sim.out")
if [[ -z $check_line ]]; then
    fail "the simulator ended without its check (exit ${sim_status:-?}): $(tail -n 1 "$work/sim.err" | cut -d' ' -f2-)"
else
    lost=$(sed -E 's/.* ([0-9,]+) lost.*/\1/' <<<"$check_line" | tr -d ,)
    dups=$(sed -E 's/.* ([0-9,]+) duplicates.*/\1/' <<<"$check_line" | tr -d ,)
    unexpected=$(sed -E 's/.* ([0-9,]+) unexpected.*/\1/' <<<"$check_line" | tr -d ,)
    ((lost == 0)) || fail "the simulator lost $lost notifications"
    ((dups == 0)) || fail "the simulator received $dups duplicates"
    ((unexpected == 0)) || fail "the simulator received $unexpected unexpected notifications"
    failed_requests=$(sed -nE 's/^failed +([0-9,]+) .*/\1/p' "$work/sim.out" | tr -d ,)
    if [[ -n $failed_requests ]]; then
        fail "$failed_requests simulated requests were refused or not answered within ${request_timeout}s"
    fi
    if [[ $sim_status != 0 ]] && ((lost + dups + unexpected == 0)); then
        fail "the simulator exited with $sim_status"
    fi
fi

echo
echo "[chaos] faults; recovered = from the fault until a probe upload sent after it is shown to the"
echo "[chaos] watching user AND a probe login sent after it is answered (the later of the two)"
printf '    %3s  %8s  %-24s  %-38s  %9s  %9s  %s\n' "#" "at" "fault" "detail" "upload" "login" "recovered"
awk -F'\t' '
    function s(v) { return (v == "-") ? "never" : sprintf("%.1f s", v / 1e6) }
    { printf "    %3d  %7.1fs  %-24s  %-38s  %9s  %9s  %s\n", NR, $1 / 1e6, $2, $3, s($4), s($5), s($6) }
' "$work/recovery.tsv"
faults_total=$(wc -l <"$work/recovery.tsv")
not_recovered=$(awk -F'\t' '$6 == "-"' "$work/recovery.tsv" | wc -l)
summary_of() {
    # summary_of LABEL [KIND-REGEX]: p50 and max of the recovery times.
    awk -F'\t' -v label="$1" -v kind="${2:-.}" '
        $2 ~ kind && $6 != "-" { v[++n] = $6 / 1e6 }
        $2 ~ kind && $6 == "-" { missing++ }
        END {
            if (n + missing == 0) exit
            if (n == 0) { printf "    %-18s never recovered (%d fault%s)\n", label, missing, (missing == 1 ? "" : "s"); exit }
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            printf "    %-18s p50 %5.1f s, max %5.1f s  (%d fault%s%s)\n", label, v[int((n + 1) / 2)], v[n], n,
                (n == 1 ? "" : "s"), (missing ? sprintf("; %d never recovered", missing) : "")
        }' "$work/recovery.tsv"
}
echo "[chaos] recovery times"
summary_of "all faults"
summary_of "broker crashes" "broker crash"
summary_of "server crashes" "server crash"
summary_of "broker stalls" "broker stall"
summary_of "deleted queues" "queue deleted"
summary_of "network cuts" "network cut"
if ((not_recovered > 0)); then
    fail "$not_recovered of $faults_total faults were not followed by a working upload path and request path"
fi

# The probes' own checks: every upload answered SUCCESS is shown exactly
# once, and no probe hangs. Exit status 3: the client's own 120 s timeout;
# 124 or 137: still running after 150 s, killed.
probe_counts() {
    awk '
        FILENAME == ARGV[1] { sent++; next }
        $2 == 0 { ok++; next }
        $2 == 3 { late++; next }
        $2 == 124 || $2 == 137 { hung++; next }
        { err++ }
        END { print sent + 0, ok + 0, late + 0, hung + 0, err + 0 }' "$1" "$2"
}
read -r up_sent up_ok up_late up_hung up_err < <(probe_counts "$work/upload_sent.tsv" "$work/upload_done.tsv")
read -r in_sent in_ok in_late in_hung in_err < <(probe_counts "$work/login_sent.tsv" "$work/login_done.tsv")
read -r up_lost up_dups < <(awk '
    FILENAME == ARGV[1] { if ($2 == 0) ok[$1] = 1; next }
    match($0, / uploaded p[0-9]+$/) { shown[substr($0, RSTART + 11)]++ }
    END {
        for (n in ok) if (!(n in shown)) lost++
        for (n in shown) if (shown[n] > 1) dups += shown[n] - 1
        print lost + 0, dups + 0
    }' "$work/upload_done.tsv" "$work/probe_seen.log")
echo "[chaos] probe uploads: $up_sent sent, $up_ok SUCCESS ($up_lost of those never shown, $up_dups shown twice)," \
    "$up_late not answered within 120 s, $up_hung hung past 150 s (killed), $up_err gave up with an error"
echo "[chaos] probe logins:  $in_sent sent, $in_ok SUCCESS, $in_late not answered within 120 s," \
    "$in_hung hung past 150 s (killed), $in_err gave up with an error"
((up_lost == 0)) || fail "$up_lost probe uploads answered SUCCESS were never shown to the watching user"
((up_dups == 0)) || fail "$up_dups probe notifications were shown twice in one session"
((up_late + in_late == 0)) || fail "$((up_late + in_late)) probe requests were not answered within 120 s"
((up_hung + in_hung == 0)) || fail "$((up_hung + in_hung)) probe clients hung past 150 s (ignoring their own 120 s timeout) and were killed"
if ((strict)); then
    ((up_err + in_err == 0)) || fail "$((up_err + in_err)) probe clients gave up with an error (--strict)"
fi
if ((up_err + up_late + in_err + in_late > 0)); then
    # A client that cannot connect, or whose connection is reset before it
    # has one, gives up with exit 1 as documented: listed, a failure only
    # with --strict.
    echo "[chaos] how probe clients ended, when not with SUCCESS (exit 1 'gave up' is a failure only with --strict):"
    cat "$work/probe_youtuber.err" "$work/probe_login.err" | grep -v ' WARN ' | cut -d' ' -f3- |
        sed -E 's/[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z *//' | cut -c1-200 | sort | uniq -c | sort -rn | head -n 6 |
        sed 's/^/    /'
fi
echo "[chaos] processes: youtube_server killed and restarted $server_restarts times by the script"
if [[ -n $proxy_pid ]]; then
    kill -TERM "$proxy_pid" 2>/dev/null
    wait "$proxy_pid"
    proxy_pid=
fi
grep -m1 'proxy: stopped' "$work/proxy.log" | cut -d' ' -f2- | sed 's/^/[chaos] /'

echo
if ((${#failures[@]} == 0)); then
    echo "[chaos] PASSED: nothing lost, nothing duplicated, every process where it should be"
    exit 0
fi
echo "[chaos] FAILED (${#failures[@]}):"
printf '    - %s\n' "${failures[@]}"
echo "[chaos] logs in $work: sim.out sim.err server.out server.err proxy.log probe_* login_* upload_* all_faults.tsv recovery.tsv node/log/"
exit 1
