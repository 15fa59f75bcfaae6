#!/usr/bin/env bash
# Classroom demo of ytnotify: a YouTube server, two YouTubers and three users,
# each program's output on its own labelled line.
#
#   scripts/demo.sh            # open mode: any client may act as anyone
#   scripts/demo.sh --secure   # secure mode: an account each, and a refused impostor
#
# Environment:
#   AMQP_URL    the broker (default amqp://guest:guest@127.0.0.1:5672/%2f); the
#               demo uses its own vhost, ytnotify-demo, created afresh
#   DEMO_PAUSE  seconds to pause between steps (default 1; 0 for none)
#   DEMO_KEEP=1 keep the temporary directory (database and server log)
#   NO_COLOR    set to turn colours off (they are off when not on a terminal)
#
# Everything the demo starts is stopped when it ends, also on Ctrl-C.
set -euo pipefail

SECURE=0
for arg in "$@"; do
    case $arg in
        --secure) SECURE=1 ;;
        -h | --help)
            # The comment at the top of this file, without its '#'.
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *)
            printf 'unknown option %s: run scripts/demo.sh, or scripts/demo.sh --secure\n' "$arg" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/broker.sh
source scripts/lib/broker.sh

DEMO_VHOST=ytnotify-demo
BIN=target/release
PAUSE=${DEMO_PAUSE:-1}
KEEP=${DEMO_KEEP:-0}
# How long to wait for an expected line before saying it did not come.
EXPECT_TIMEOUT=15

if [[ ! $PAUSE =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    printf 'DEMO_PAUSE must be a number of seconds, like 1 or 0.5 (not %s)\n' "$PAUSE" >&2
    exit 2
fi

if [[ -t 1 && -z ${NO_COLOR:-} ]]; then
    C_RESET=$'\e[0m' C_BOLD=$'\e[1m' C_DIM=$'\e[2m' C_RED=$'\e[31m'
else
    C_RESET='' C_BOLD='' C_DIM='' C_RED=''
fi

# The colour of each program's label.
colour_of() {
    [[ -n $C_RESET ]] || return 0
    case $1 in
        server) printf '\e[1;34m' ;;
        mkbhd | mkbhd-feed) printf '\e[33m' ;;
        veritasium) printf '\e[32m' ;;
        alice) printf '\e[35m' ;;
        bob) printf '\e[36m' ;;
        carol) printf '\e[38;5;208m' ;;
        mallory) printf '\e[31m' ;;
        *) printf '\e[1m' ;;
    esac
}

step() {
    printf '\n%s==> %s%s\n' "$C_BOLD" "$*" "$C_RESET"
}

# show_command WORDS...: the command being run, as one would type it.
show_command() {
    printf '%s    $ %s%s\n' "$C_DIM" "$*" "$C_RESET"
}

note() {
    printf '%s    (%s)%s\n' "$C_DIM" "$*" "$C_RESET"
}

pause() {
    if [[ $PAUSE != 0 ]]; then
        sleep "$PAUSE"
    fi
}

PROBLEMS=0
problem() {
    PROBLEMS=$((PROBLEMS + 1))
    printf '%s    !! %s%s\n' "$C_RED" "$*" "$C_RESET"
}

# fail MESSAGE: a step went wrong, so the rest would make no sense: stop.
fail() {
    problem "$* (stopping the demo)"
    exit 1
}

# label NAME [err] < lines: prints each line after NAME's label (stderr lines
# in red) and records stdout lines in $DEMO_DIR/NAME.seen for expect_line.
label() {
    local name=$1 kind=${2:-out} line tag colour
    colour=$(colour_of "$name")
    printf -v tag '%-13s' "[$name]"
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $kind == err ]]; then
            printf '%s%s%s%s%s%s\n' "$colour" "$tag" "$C_RESET" "$C_RED" "$line" "$C_RESET"
        else
            printf '%s%s%s%s\n' "$colour" "$tag" "$C_RESET" "$line"
            printf '%s\n' "$line" >>"$DEMO_DIR/$name.seen"
        fi
    done
}

# alive PID: true while the process runs (a finished child not yet waited
# for does not count).
alive() {
    local state
    if [[ -r /proc/$1/stat ]]; then
        read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null || return 1
        [[ $state != Z ]]
    else
        kill -0 "$1" 2>/dev/null
    fi
}

LABEL_PIDS=()
WATCHER_PIDS=()
SERVER_PID=

# start_background NAME STDERR COMMAND...: starts COMMAND in the background,
# its stdout labelled with NAME; STDERR is a file, or "label" to label it too.
# Sets STARTED_PID.
start_background() {
    local name=$1 stderr=$2 out err
    shift 2
    out=$(mktemp -u "$DEMO_DIR/$name.out.XXXXXX")
    mkfifo "$out"
    label "$name" <"$out" &
    LABEL_PIDS+=("$!")
    if [[ $stderr == label ]]; then
        err=$(mktemp -u "$DEMO_DIR/$name.err.XXXXXX")
        mkfifo "$err"
        label "$name" err <"$err" &
        LABEL_PIDS+=("$!")
    else
        err=$stderr
    fi
    "$@" >"$out" 2>"$err" &
    STARTED_PID=$!
}

# run NAME COMMAND...: runs COMMAND in the foreground, its stdout labelled
# with NAME as it comes, then its stderr in red. Returns COMMAND's status.
run() {
    local name=$1 status
    shift
    set +e
    "$@" 2>"$DEMO_DIR/stderr" | label "$name"
    status=${PIPESTATUS[0]}
    set -e
    label "$name" err <"$DEMO_DIR/stderr"
    return "$status"
}

# expect_line NAME LINE [PID]: waits until NAME has printed LINE. Stops the
# demo if PID, the process that should print it, ends first.
expect_line() {
    local name=$1 line=$2 pid=${3:-} tries=$((EXPECT_TIMEOUT * 10))
    while ((tries > 0)); do
        if [[ -f $DEMO_DIR/$name.seen ]] && grep -qxF -- "$line" "$DEMO_DIR/$name.seen"; then
            return 0
        fi
        if [[ -n $pid ]] && ! alive "$pid"; then
            sleep 0.2
            grep -qxF -- "$line" "$DEMO_DIR/$name.seen" 2>/dev/null ||
                fail "$name stopped without printing \"$line\""
            return 0
        fi
        sleep 0.1
        tries=$((tries - 1))
    done
    problem "$name did not print \"$line\" within ${EXPECT_TIMEOUT}s"
}

# settle: waits until no program has printed anything for 0.3 s (at most 3 s),
# so that each step's output is complete before the next step starts.
settle() {
    local before now quiet=0 tries=30
    before=$(cat "$DEMO_DIR"/*.seen 2>/dev/null | wc -c) || true
    while ((tries > 0 && quiet < 3)); do
        sleep 0.1
        now=$(cat "$DEMO_DIR"/*.seen 2>/dev/null | wc -c) || true
        if [[ $now == "$before" ]]; then
            quiet=$((quiet + 1))
        else
            quiet=0
            before=$now
        fi
        tries=$((tries - 1))
    done
}

# teacher ARGS...: youtube_server ARGS... with the administrator's URL; what
# it says on stderr is information here, labelled like its output.
teacher() {
    local status
    set +e
    "$BIN/youtube_server" --amqp-url "$ADMIN_URL" "$@" 2>&1 | label teacher
    status=${PIPESTATUS[0]}
    set -e
    return "$status"
}

# youtuber NAME VIDEO...: uploads a video, and waits for the server to say so.
youtuber() {
    local name=$1
    shift
    show_command youtuber "$name" "$@"
    run "$name" "$BIN/youtuber" "$name" "$@" || fail "youtuber $name failed"
    expect_line server "$name uploaded $*" "$SERVER_PID"
}

# stop PID...: asks each process to stop with SIGINT, as Ctrl-C does (unless
# Ctrl-C already did), then insists with SIGTERM and SIGKILL if it takes long.
stop() {
    local pid signal tries=50
    if [[ $INTERRUPTED == INT ]]; then
        tries=20
    else
        for pid in "$@"; do
            kill -INT "$pid" 2>/dev/null || true
        done
    fi
    for signal in TERM KILL; do
        for pid in "$@"; do
            while alive "$pid" && ((tries > 0)); do
                sleep 0.1
                tries=$((tries - 1))
            done
        done
        for pid in "$@"; do
            if alive "$pid"; then
                kill "-$signal" "$pid" 2>/dev/null || true
            fi
        done
        tries=30
    done
    for pid in "$@"; do
        wait "$pid" 2>/dev/null || true
    done
}

# The accounts of the secure demo, as role and name.
ACCOUNTS=(user:alice user:bob user:carol user:mallory youtuber:mkbhd youtuber:veritasium)
ACCOUNTS_MADE=

# forget_accounts: removes the demo's accounts, also those an earlier run
# left behind when its vhost went (they have no permissions anywhere).
forget_accounts() {
    local account role name perms
    for account in "${ACCOUNTS[@]}"; do
        role=${account%%:*} name=${account#*:}
        if "$BIN/youtube_server" --amqp-url "$ADMIN_URL" account remove "$role" "$name" >/dev/null 2>&1; then
            continue
        fi
        if [[ -n $CTL ]] &&
            perms=$(timeout 90 "$CTL" -q --no-table-headers list_user_permissions "$role.$name" 2>/dev/null) &&
            [[ -z ${perms//[[:space:]]/} ]]; then
            timeout 90 "$CTL" -q delete_user "$role.$name" >/dev/null 2>&1 || true
        fi
    done
}

DEMO_DIR=
INTERRUPTED=
VHOST_CREATED=
CTL=
cleanup() {
    local status=$?
    trap '' INT TERM
    trap - EXIT
    case $INTERRUPTED in
        INT) status=130 ;;
        TERM) status=143 ;;
    esac
    if ((${#WATCHER_PIDS[@]} > 0)) || [[ -n $SERVER_PID ]]; then
        step "Stopping the users and the server"
    fi
    if ((${#WATCHER_PIDS[@]} > 0)); then
        stop "${WATCHER_PIDS[@]}"
    fi
    if [[ -n $SERVER_PID ]]; then
        stop "$SERVER_PID"
    fi
    local pid
    for pid in "${LABEL_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $ACCOUNTS_MADE ]]; then
        forget_accounts
    fi
    if [[ -n $VHOST_CREATED ]]; then
        if ! timeout 90 "$CTL" -q delete_vhost "$DEMO_VHOST" >/dev/null 2>&1; then
            printf 'could not delete the vhost %s; remove it with: rabbitmqctl delete_vhost %s\n' "$DEMO_VHOST" "$DEMO_VHOST" >&2
        fi
    fi
    if ((PROBLEMS > 0 && status == 0)); then
        status=1
    fi
    if [[ -n $INTERRUPTED ]]; then
        printf 'Interrupted.\n'
    fi
    if [[ -n $DEMO_DIR ]]; then
        if [[ $KEEP == 1 || ($status != 0 && -z $INTERRUPTED && -n $SERVER_PID) ]]; then
            rm -f "$DEMO_DIR"/*.seen "$DEMO_DIR"/stderr "$DEMO_DIR"/*.out.* "$DEMO_DIR"/*.err.*
            printf '%sServer log and database kept in %s%s\n' "$C_DIM" "$DEMO_DIR" "$C_RESET"
        else
            rm -rf "$DEMO_DIR"
            if [[ -n $SERVER_PID ]]; then
                printf '%sServer log: %s (removed; DEMO_KEEP=1 keeps it)%s\n' "$C_DIM" "$SERVER_LOG" "$C_RESET"
            fi
        fi
    fi
    if ((PROBLEMS > 0)); then
        printf '%sThe demo did not go as expected: see the lines marked !! above.%s\n' "$C_RED" "$C_RESET"
    fi
    exit "$status"
}
trap cleanup EXIT
# Ctrl-C reaches every program of the demo; a SIGTERM only this script.
trap 'INTERRUPTED=INT; exit 130' INT
trap 'INTERRUPTED=TERM; exit 143' TERM

# --- Setting up ------------------------------------------------------------

rust_toolchain_check || exit 1
BASE_URL=${AMQP_URL:-$BROKER_DEFAULT_URL}
ensure_broker "$BASE_URL" || exit 1

DEMO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ytnotify-demo.XXXXXX")
SERVER_LOG=$DEMO_DIR/server.log

printf 'building… (cargo build --release; the first time takes a few minutes)\n'
if ! cargo build --release --bins --locked --quiet; then
    printf "the build failed: see cargo's messages above\n" >&2
    exit 1
fi

# A vhost of its own keeps the demo apart from anything else on the broker.
broker_parse_url "$BASE_URL"
demo_user=${BROKER_USERINFO%%:*}
if [[ -z $demo_user ]]; then
    demo_user=guest
fi
if broker_is_local "$BROKER_HOST" && CTL=$(broker_tool rabbitmqctl) &&
    timeout 90 "$CTL" -q list_vhosts >/dev/null 2>&1; then
    printf 'creating the RabbitMQ vhost %s…\n' "$DEMO_VHOST"
    timeout 90 "$CTL" -q delete_vhost "$DEMO_VHOST" >/dev/null 2>&1 || true
    VHOST_CREATED=1
    if ! timeout 90 "$CTL" -q add_vhost "$DEMO_VHOST" >/dev/null ||
        ! timeout 90 "$CTL" -q set_permissions -p "$DEMO_VHOST" "$demo_user" '.*' '.*' '.*' >/dev/null; then
        printf 'could not create the vhost %s with rabbitmqctl (is the broker overloaded?)\n' "$DEMO_VHOST" >&2
        exit 1
    fi
    AMQP_URL=$(broker_url_with_vhost "$BASE_URL" "$DEMO_VHOST")
    where="RabbitMQ vhost $DEMO_VHOST"
else
    AMQP_URL=$BASE_URL
    where="the vhost of AMQP_URL"
    printf '%srabbitmqctl cannot be used here, so the demo runs in the vhost of AMQP_URL; queues left by earlier runs may add notifications%s\n' \
        "$C_RED" "$C_RESET"
fi
export AMQP_URL
export YT_DB=$DEMO_DIR/demo.db
ADMIN_URL=$AMQP_URL
SERVER_FLAGS=()
if [[ $SECURE == 1 ]]; then
    # Accounts are added through RabbitMQ's management API.
    ensure_management "$BASE_URL" || exit 1
    SERVER_FLAGS=(--secure)
    # The clients find their accounts in files of the demo's own, and the
    # broker's administrator URL is given to the server alone.
    export XDG_CONFIG_HOME=$DEMO_DIR/config
    unset AMQP_URL
    ACCOUNTS_MADE=1
    forget_accounts
fi

# --- The demo ----------------------------------------------------------------

printf '\n%sytnotify: users subscribe to YouTubers and are notified of their uploads.%s\n' "$C_BOLD" "$C_RESET"
printf 'Each line starts with the program that printed it: [server] is youtube_server,\n'
printf '[mkbhd] and [veritasium] run youtuber, [alice], [bob] and [carol] run user.\n'
if [[ $SECURE == 1 ]]; then
    printf '[teacher] manages the accounts with youtube_server account; [mallory] is an impostor.\n'
fi

if [[ $SECURE == 1 ]]; then
    step "The YouTube server starts in secure mode ($where, empty database)"
    show_command youtube_server --secure
    start_background server "$SERVER_LOG" "$BIN/youtube_server" --amqp-url "$ADMIN_URL" --secure
else
    step "The YouTube server starts ($where, empty database)"
    show_command youtube_server
    start_background server "$SERVER_LOG" "$BIN/youtube_server"
fi
SERVER_PID=$STARTED_PID
tries=$((EXPECT_TIMEOUT * 10))
# The server logs "youtube_server ready" once it consumes the request queues.
until grep -q 'youtube_server ready' "$SERVER_LOG" 2>/dev/null; do
    if ! alive "$SERVER_PID"; then
        tail -n 5 "$SERVER_LOG" >&2 || true
        fail "youtube_server did not start (the end of its log is above)"
    fi
    if ((tries == 0)); then
        problem "youtube_server has not said it is ready after ${EXPECT_TIMEOUT}s; going on"
        break
    fi
    sleep 0.1
    tries=$((tries - 1))
done
note "it prints one line for each thing that happens"
pause

if [[ $SECURE == 1 ]]; then
    step "The teacher gives everyone an account: RabbitMQ checks who sends what"
    for account in "${ACCOUNTS[@]}"; do
        role=${account%%:*} name=${account#*:}
        [[ $name == mallory ]] && continue
        show_command youtube_server account add "$role" "$name" --save
        teacher account add "$role" "$name" --save || fail "youtube_server account add $role $name failed"
    done
    note "each account's URL, with its password, is saved where user and youtuber find it"
    show_command youtube_server account add user mallory
    MALLORY_URL=$("$BIN/youtube_server" --amqp-url "$ADMIN_URL" account add user mallory 2>"$DEMO_DIR/stderr") ||
        fail "youtube_server account add user mallory failed: $(cat "$DEMO_DIR/stderr")"
    printf '%s\n' "$MALLORY_URL" | label teacher
    note "without --save, the URL is printed instead, for mallory to use on her own machine"
    pause
fi

step "mkbhd and veritasium upload a first video each (nobody follows them yet)"
youtuber mkbhd Unboxing the new phone
youtuber veritasium Why the sky is blue
settle
pause

step "alice subscribes to mkbhd and stays online, waiting for notifications"
show_command user alice s mkbhd
start_background alice label "$BIN/user" alice s mkbhd
WATCHER_PIDS+=("$STARTED_PID")
ALICE_PID=$STARTED_PID
expect_line alice SUCCESS "$ALICE_PID"
settle
pause

step "bob subscribes to veritasium and stays online too"
show_command user bob s veritasium
start_background bob label "$BIN/user" bob s veritasium
WATCHER_PIDS+=("$STARTED_PID")
BOB_PID=$STARTED_PID
expect_line bob SUCCESS "$BOB_PID"
settle
pause

step "bob also subscribes to mkbhd, with a command that exits once done"
show_command user subscribe bob mkbhd
run bob "$BIN/user" subscribe bob mkbhd || fail "user subscribe bob mkbhd failed"
settle
pause

step "carol subscribes to veritasium, then goes offline"
show_command user subscribe carol veritasium
run carol "$BIN/user" subscribe carol veritasium || fail "user subscribe carol veritasium failed"
settle
pause

step "mkbhd uploads two videos: alice and bob are online and see them at once"
youtuber mkbhd Review of the new phone
expect_line alice "New Notification: mkbhd uploaded Review of the new phone" "$ALICE_PID"
expect_line bob "New Notification: mkbhd uploaded Review of the new phone" "$BOB_PID"
settle
pause
youtuber mkbhd Studio tour
expect_line alice "New Notification: mkbhd uploaded Studio tour" "$ALICE_PID"
expect_line bob "New Notification: mkbhd uploaded Studio tour" "$BOB_PID"
settle
pause

step "veritasium uploads a video: bob sees it; carol is offline, so it waits for her"
youtuber veritasium The science of rainbows
expect_line bob "New Notification: veritasium uploaded The science of rainbows" "$BOB_PID"
settle
pause

step "carol logs in: the notification that waited for her arrives at once"
show_command user carol
start_background carol label "$BIN/user" carol
WATCHER_PIDS+=("$STARTED_PID")
expect_line carol "New Notification: veritasium uploaded The science of rainbows" "$STARTED_PID"
settle
pause

step "mkbhd watches what users make of the videos; alice likes one and bob comments"
show_command youtuber watch mkbhd
start_background mkbhd-feed label "$BIN/youtuber" watch mkbhd --plain
WATCHER_PIDS+=("$STARTED_PID")
MKBHD_FEED_PID=$STARTED_PID
show_command user videos mkbhd --as alice
run alice "$BIN/user" videos mkbhd --as alice || fail "user videos mkbhd failed"
# The id of "Studio tour": the first column of its line.
STUDIO_TOUR=$(awk '/ Studio tour$/ { print $1 }' "$DEMO_DIR/alice.seen" | tail -n 1)
[[ -n $STUDIO_TOUR ]] || fail "user videos mkbhd did not list Studio tour"
show_command user like alice "$STUDIO_TOUR"
run alice "$BIN/user" like alice "$STUDIO_TOUR" || fail "user like alice failed"
expect_line mkbhd-feed 'alice liked "Studio tour"' "$MKBHD_FEED_PID"
show_command user comment bob "$STUDIO_TOUR" Great lighting in this one
run bob "$BIN/user" comment bob "$STUDIO_TOUR" Great lighting in this one || fail "user comment bob failed"
expect_line mkbhd-feed 'bob commented on "Studio tour": Great lighting in this one' "$MKBHD_FEED_PID"
settle
pause

step "Which YouTubers does bob follow?"
show_command user subscriptions bob
run bob "$BIN/user" subscriptions bob || fail "user subscriptions bob failed"
settle
pause

step "A mistake: alice unsubscribes from nobody, whom she does not follow"
show_command user alice u nobody
# Should it succeed after all, it would stay online: the timeout ends it.
if run alice timeout --foreground -s INT 20 "$BIN/user" alice u nobody; then
    problem "user alice u nobody succeeded; it should have failed"
else
    note "user stopped with exit status $?, giving the reason on the line above"
fi
settle
pause

if [[ $SECURE == 1 ]]; then
    step "mallory, with her own account, tries to unsubscribe alice from mkbhd"
    show_command 'user unsubscribe alice mkbhd --amqp-url "$MALLORY_URL"'
    if run mallory "$BIN/user" unsubscribe alice mkbhd --amqp-url "$MALLORY_URL"; then
        problem "mallory unsubscribed alice; the server should have refused"
    else
        note "refused by the server (exit status $?): her account is not alice's"
    fi
    settle
    pause
    step "mallory tries to upload as mkbhd"
    show_command 'youtuber mkbhd Fake video --amqp-url "$MALLORY_URL"'
    if run mallory "$BIN/youtuber" mkbhd Fake video --amqp-url "$MALLORY_URL"; then
        problem "mallory uploaded as mkbhd; the broker should have refused"
    else
        note "refused by RabbitMQ itself (exit status $?): a user's account may not publish uploads"
    fi
    settle
    pause
    step "alice still follows mkbhd"
    show_command user subscriptions alice
    run alice "$BIN/user" subscriptions alice || fail "user subscriptions alice failed"
    expect_line alice mkbhd
    settle
    pause
fi

step "Waiting 2 s for any last notification"
sleep 2
