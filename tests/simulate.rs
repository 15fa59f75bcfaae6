//! The simulator against the real broker and the real `youtube_server`: a tiny
//! scenario with offline users and churn must lose nothing, duplicate nothing,
//! and fill every field of the report. (Benchmarks are not tests: see
//! scripts/bench.sh.)

mod common;

use std::{path::PathBuf, time::Duration};

use common::TestVhost;
use ytnotify::simulate::{self, Options, Scenario, harness::ServerMode};

fn tiny() -> Scenario {
    Scenario {
        name: "tiny".to_owned(),
        users: 20,
        youtubers: 3,
        subscriptions: 40,
        uploads: 12,
        upload_window: 2,
        offline_share: 0.25,
        churn: 100,
        churn_window: 16,
        clients: 2,
        receivers: 4,
        drain_timeout: Duration::from_secs(20),
        seed: 7,
        ..Scenario::default()
    }
}

fn options(vhost: &TestVhost, server: ServerMode) -> Options {
    let mut options = Options::new(vhost.url.clone());
    options.fresh_vhost = false;
    options.server = server;
    options.request_timeout = Duration::from_secs(20);
    options
}

async fn run(scenario: &Scenario, options: &Options) -> simulate::report::Report {
    tokio::time::timeout(Duration::from_secs(120), simulate::run(scenario, options))
        .await
        .expect("the simulation finished within 120s")
        .expect("the simulation ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_run_with_churn_and_offline_users_loses_and_duplicates_nothing() {
    let vhost = TestVhost::new("simulate");
    let server = ServerMode::Spawn(PathBuf::from(env!("CARGO_BIN_EXE_youtube_server")));
    let scenario = tiny();
    let report = run(&scenario, &options(&vhost, server)).await;
    let text = report.to_string();

    let check = &report.check;
    assert!(check.ok, "{text}");
    assert_eq!(
        (check.lost, check.duplicates, check.unexpected),
        (0, 0, 0),
        "{text}"
    );
    assert!(
        check.expected > 0 && check.received == check.expected,
        "{text}"
    );

    let run = &report.run;
    assert_eq!(run.uploads, 12);
    assert_eq!(run.changes, 100);
    assert_eq!(run.failed_requests, 0, "{text}");
    assert!(run.deliveries >= check.expected, "{text}");
    assert!(
        run.catch_up_deliveries > 0,
        "offline users caught up: {text}"
    );
    assert!(
        run.deliveries_per_s > 0.0 && run.requests_per_s > 0.0,
        "{text}"
    );
    assert!(run.changes_per_s.is_some_and(|rate| rate > 0.0), "{text}");
    let latency = &run.latency_ms;
    assert!(latency.count > 0, "{text}");
    assert!(
        0.0 < latency.p50
            && latency.p50 <= latency.p90
            && latency.p90 <= latency.p99
            && latency.p99 <= latency.max,
        "{text}"
    );
    assert!(run.fanout_ms.count > 0, "{text}");

    assert_eq!(report.setup.requests, 40);
    assert!(report.setup.requests_per_s > 0.0);
    assert_eq!(report.server.mode, "process");
    assert!(
        report.server.peak_rss_mb.is_some_and(|mb| mb > 1.0),
        "{text}"
    );
    assert!(report.server.cpu_seconds.is_some(), "{text}");

    let ceiling = &report.ceiling;
    assert_eq!((ceiling.lost, ceiling.duplicates), (0, 0), "{text}");
    assert!(
        ceiling.deliveries > 0 && ceiling.deliveries_per_s > 0.0,
        "{text}"
    );
    assert!(
        ceiling.changes_per_s.is_some_and(|rate| rate > 0.0),
        "{text}"
    );
    assert!(report.ratios.deliveries_per_s.is_some(), "{text}");
    assert!(report.ratios.changes_per_s.is_some(), "{text}");

    // The JSON report carries the same figures under stable names.
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    for path in [
        "/run/requests_per_s",
        "/run/deliveries_per_s",
        "/run/latency_ms/p50",
        "/run/latency_ms/p90",
        "/run/latency_ms/p99",
        "/run/latency_ms/max",
        "/check/lost",
        "/check/duplicates",
        "/server/peak_rss_mb",
        "/server/cpu_seconds",
        "/ceiling/deliveries_per_s",
        "/ratios/deliveries_per_s",
    ] {
        assert!(
            json.pointer(path).is_some_and(|v| !v.is_null()),
            "{path} missing"
        );
    }
    for line in ["latency ", "check       OK", "ours/ceiling"] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_server_is_checked_the_same_way() {
    let vhost = TestVhost::new("simulate-inproc");
    let scenario = Scenario {
        churn: 0,
        offline_share: 0.0,
        ..tiny()
    };
    let mut options = options(&vhost, ServerMode::InProcess);
    options.ceiling = false;
    let report = run(&scenario, &options).await;
    assert!(report.check.ok, "{report}");
    assert!(report.check.expected > 0);
    assert_eq!(report.server.mode, "in-process");
    assert_eq!(report.server.peak_rss_mb, None);
    assert_eq!(report.ratios.deliveries_per_s, None);
}
