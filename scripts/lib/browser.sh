# shellcheck shell=bash
# Chromium and its WebDriver, for the browser tests of the gateway
# (crates/gateway/tests/browser.rs). Source scripts/lib/broker.sh first.
#
#   ensure_browser   # chromium and chromedriver on PATH, installed with
#                    # apt-get when running as root; else says what to run

ensure_browser() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
        local log
        log=$(mktemp "${TMPDIR:-/tmp}/chromium-install.XXXXXX.log")
        broker_log "the browser tests need Chromium; installing chromium and chromium-driver with apt-get (output in $log)"
        if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; } >"$log" 2>&1; then
            broker_log "installing chromium failed; see $log"
            return 1
        fi
        rm -f "$log"
        return 0
    fi
    broker_log "the browser tests need Chromium and its WebDriver: sudo apt-get install -y chromium chromium-driver"
    return 1
}
