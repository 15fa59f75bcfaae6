//! The simulator against the real broker and the real `youtube_server`: a tiny
//! scenario with offline users and churn must lose nothing, duplicate nothing,
//! and fill every field of the report; likes and comments reach their
//! creators once each; a celebrity's uploads read from its stream are held
//! to the same check; a server on PostgreSQL is too, and so are two sharing
//! one. (Faults under load are in `faults.rs`; benchmarks
//! are not tests: see scripts/bench.sh.)

use std::time::Duration;

use ytnotify_simulate::{self as simulate, Options, Scenario, WsAcks, harness::ServerMode};
use ytnotify_testkit::{TestVhost, logs, program};

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

/// The JSON report has a value at each of `paths`, and the text report each
/// of `lines`.
fn assert_reported(report: &simulate::report::Report, paths: &[&str], lines: &[&str]) {
    let json: serde_json::Value = serde_json::to_value(report).unwrap();
    for path in paths {
        assert!(
            json.pointer(path).is_some_and(|v| !v.is_null()),
            "{path} missing"
        );
    }
    let text = report.to_string();
    for line in lines {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
}

/// Every notification that should have arrived did, once, and nothing else.
fn assert_exactly_once(report: &simulate::report::Report) {
    let (check, text) = (&report.check, report.to_string());
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
    // With no fault, the server publishes each notification once.
    assert_eq!(check.republished, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_run_with_churn_and_offline_users_loses_and_duplicates_nothing() {
    let vhost = TestVhost::new("simulate");
    let server = ServerMode::Spawn(program("youtube_server"));
    let scenario = tiny();
    let report = run(&scenario, &options(&vhost, server)).await;
    let text = report.to_string();
    assert_exactly_once(&report);

    let run = &report.run;
    assert_eq!(run.uploads, 12);
    assert_eq!(run.changes, 100);
    assert_eq!(run.failed_requests, 0, "{text}");
    assert!(run.deliveries >= report.check.expected, "{text}");
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
    assert_eq!(report.server.database, "sqlite");
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
    assert_reported(
        &report,
        &[
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
        ],
        &["latency ", "check       OK", "ours/ceiling"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likes_and_comments_reach_every_creator_once_and_are_measured_against_the_ceiling() {
    logs();
    let vhost = TestVhost::new("simulate-interactions");
    // Churn after the first uploads tells creators of subscribers too,
    // which the interactions' check must leave aside.
    let scenario = Scenario {
        name: "interactions".to_owned(),
        users: 50,
        youtubers: 3,
        subscriptions: 100,
        uploads: 9,
        upload_window: 3,
        churn: 30,
        churn_rate: 100.0,
        like_share: 0.5,
        comment_share: 0.2,
        interaction_window: 16,
        clients: 2,
        receivers: 4,
        drain_timeout: Duration::from_secs(20),
        seed: 3,
        ..Scenario::default()
    };
    let report = run(
        &scenario,
        &options(&vhost, ServerMode::Spawn(program("youtube_server"))),
    )
    .await;
    let text = report.to_string();
    assert!(report.check.ok, "{text}");

    let interactions = report.interactions.as_ref().expect("interaction figures");
    let check = &interactions.check;
    assert!(check.ok, "{text}");
    assert_eq!(
        (check.lost, check.duplicates, check.unexpected),
        (0, 0, 0),
        "{text}"
    );
    assert!(
        interactions.likes > 0 && interactions.comments > 0,
        "{text}"
    );
    let sent = interactions.likes + interactions.comments;
    assert_eq!(interactions.answered, sent, "{text}");
    assert_eq!(interactions.failed, 0, "{text}");
    assert_eq!(check.expected, sent, "{text}");
    assert_eq!(check.received, sent, "{text}");
    assert_eq!(check.not_checked, 0, "{text}");
    assert_eq!(interactions.events, sent, "{text}");
    assert!(
        interactions.creators > 0 && interactions.messages > 0,
        "{text}"
    );
    // Several events to a message, at least sometimes (the subscribers'
    // comings and goings travel in the same messages).
    assert!(
        interactions.messages < interactions.events + interactions.subscriber_events,
        "{text}"
    );
    assert!(
        interactions.requests_per_s > 0.0 && interactions.events_per_s > 0.0,
        "{text}"
    );
    let latency = &interactions.latency_ms;
    assert_eq!(latency.count, sent, "{text}");
    assert!(
        0.0 < latency.p50
            && latency.p50 <= latency.p90
            && latency.p90 <= latency.p99
            && latency.p99 <= latency.max,
        "{text}"
    );
    assert!(interactions.server_cpu_seconds.is_some(), "{text}");

    let ceiling = interactions.ceiling.as_ref().expect("the fan-in ceiling");
    assert_eq!(ceiling.publishes, sent, "{text}");
    assert_eq!(ceiling.deliveries, sent, "{text}");
    assert_eq!((ceiling.lost, ceiling.duplicates), (0, 0), "{text}");
    assert!(
        ceiling.confirmed_per_s > 0.0 && ceiling.deliveries_per_s > 0.0,
        "{text}"
    );
    assert_eq!(ceiling.publishers, 2, "{text}");
    let ratios = &interactions.ratios;
    assert!(
        ratios.requests_per_s.is_some()
            && ratios.events_per_s.is_some()
            && ratios.latency_p50.is_some()
            && ratios.latency_p99.is_some(),
        "{text}"
    );

    assert_reported(
        &report,
        &[
            "/interactions/requests_per_s",
            "/interactions/events_per_s",
            "/interactions/latency_ms/p50",
            "/interactions/latency_ms/p90",
            "/interactions/latency_ms/p99",
            "/interactions/latency_ms/max",
            "/interactions/check/lost",
            "/interactions/check/duplicates",
            "/interactions/check/unexpected",
            "/interactions/ceiling/deliveries_per_s",
            "/interactions/ratios/events_per_s",
        ],
        &[
            "interactions ",
            "  check     OK",
            "  ours/ceiling requests/s",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgresql_is_checked_the_same_way_and_its_database_dropped() {
    let vhost = TestVhost::new("simulate-postgres");
    let mut options = options(&vhost, ServerMode::Spawn(program("youtube_server")));
    let admin = ytnotify_testkit::postgres::admin_url();
    options.postgres = Some(admin.clone());
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let run_databases = async || {
        client
            .query_one(
                "SELECT COUNT(*) FROM pg_database WHERE datname LIKE 'ytnotify\\_sim\\_%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = run_databases().await;
    let report = run(&tiny(), &options).await;
    let text = report.to_string();
    assert_exactly_once(&report);
    assert_eq!(report.server.database, "postgres", "{text}");
    assert_eq!(report.run.failed_requests, 0, "{text}");
    assert_eq!(report.run.changes, 100, "{text}");
    // The run's database is gone with the run.
    assert_eq!(
        run_databases().await,
        before,
        "the run's database was left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_postgresql_share_the_partitions_and_are_both_measured() {
    let vhost = TestVhost::new("simulate-servers");
    let mut options = options(&vhost, ServerMode::Spawn(program("youtube_server")));
    options.postgres = Some(ytnotify_testkit::postgres::admin_url());
    options.servers = 2;
    options.ceiling = false;
    let report = run(&tiny(), &options).await;
    let text = report.to_string();
    assert_exactly_once(&report);
    assert_eq!(report.run.failed_requests, 0, "{text}");
    assert_eq!(report.server.servers, 2, "{text}");
    assert_eq!(report.server.each.len(), 2, "{text}");
    let each: f64 = report
        .server
        .each
        .iter()
        .map(|one| one.peak_rss_mb.expect("each server's memory"))
        .sum();
    let sum = report.server.peak_rss_mb.expect("the servers' memory");
    assert!((each - sum).abs() < 1e-6, "{text}");
    assert_reported(
        &report,
        &["/server/servers", "/server/each/1/cpu_seconds"],
        &["2 × process on postgres", "  server 1  memory"],
    );
}

/// The most followed YouTuber is a celebrity, the other not: after its
/// first upload, which the inboxes carry, each subscriber reads its uploads
/// from its stream, and one who was away is given what it missed when it
/// comes back. The report counts what came from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celebritys_subscribers_read_its_stream_once_each_even_after_being_away() {
    let vhost = TestVhost::new("simulate-celebrity");
    let mut scenario = Scenario {
        name: "celebrity-stream".to_owned(),
        users: 24,
        youtubers: 2,
        subscriptions: 30,
        spread: simulate::Spread::Zipf { exponent: 1.5 },
        uploads: 16,
        upload_window: 2,
        offline_share: 0.25,
        clients: 2,
        receivers: 4,
        drain_timeout: Duration::from_secs(20),
        seed: 3,
        ..Scenario::default()
    };
    let plan = scenario.plan();
    let audience = plan.audience(scenario.youtubers);
    let celebrity = (0..scenario.youtubers)
        .max_by_key(|&y| audience[y as usize])
        .unwrap();
    let followers = audience[celebrity as usize];
    assert!(
        audience.iter().filter(|&&n| n >= followers).count() == 1,
        "one YouTuber is the most followed: {audience:?}"
    );
    scenario.celebrities_from = followers;
    let its_uploads = plan.uploads.iter().filter(|&&y| y == celebrity).count() as u64;
    assert!(its_uploads >= 3, "the celebrity uploads several times");

    let mut options = options(&vhost, ServerMode::Spawn(program("youtube_server")));
    options.ceiling = false;
    // Any process is read the same way: this one stands in for the broker.
    options.broker_pids = vec![std::process::id()];
    let report = run(&scenario, &options).await;
    let text = report.to_string();
    assert_exactly_once(&report);
    assert!(report.run.catch_up_deliveries > 0, "{text}");
    // Every upload but the first, to every subscriber, from the stream (or,
    // for those away, from what the server said they missed).
    assert_eq!(
        report.run.streamed_deliveries,
        u64::from(followers) * (its_uploads - 1),
        "{text}"
    );
    assert!(
        report.run.deliveries > report.run.streamed_deliveries,
        "the other YouTuber's uploads came through the inboxes: {text}"
    );
    let broker = report.broker.as_ref().expect("the broker's usage");
    assert!(
        broker.peak_rss_mb > 1.0 && broker.cpu_seconds >= 0.0,
        "{text}"
    );
    assert_reported(
        &report,
        &["/run/streamed_deliveries", "/broker/peak_rss_mb"],
        &[
            "celebrities from",
            "from celebrities' streams",
            "broker      RabbitMQ: memory",
        ],
    );
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

/// Ten SSE and ten WebSocket clients, one per user, on two `gateway`
/// processes beside the server; the receivers read the same users'
/// notifications over AMQP in the same run.
fn browsers(ws_acks: WsAcks) -> Scenario {
    Scenario {
        name: "browsers".to_owned(),
        users: 20,
        youtubers: 3,
        subscriptions: 30,
        uploads: 30,
        upload_window: 2,
        offline_share: 0.0,
        churn: 0,
        clients: 2,
        receivers: 4,
        drain_timeout: Duration::from_secs(20),
        seed: 5,
        sse_clients: 10,
        ws_clients: 10,
        gateways: 2,
        ws_acks,
        ..Scenario::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_clients_through_two_gateways_get_every_notification_once() {
    logs();
    let vhost = TestVhost::new("simulate-browsers");
    // The WebSocket clients acknowledge on the socket, as the protocol
    // says; their acknowledgements keep arriving while notifications are on
    // their way, which once lost some (a cancelled wait in the gateway).
    let scenario = browsers(WsAcks::Socket);
    let mut options = options(&vhost, ServerMode::Spawn(program("youtube_server")));
    options.ceiling = false;
    options.gateway_bin = Some(program("gateway"));
    let report = run(&scenario, &options).await;
    let text = report.to_string();

    assert!(report.check.ok, "{text}");
    let browsers = report.browsers.as_ref().expect("browser figures");
    let check = &browsers.check;
    assert_eq!(check.clients, 20, "{text}");
    assert_eq!(browsers.connected, 20, "{text}");
    assert_eq!((check.lost, check.duplicates), (0, 0), "{text}");
    assert_eq!(check.unexpected, 0, "{text}");
    assert!(check.ok, "{text}");
    // One client per user: the clients expect what the inboxes expect.
    assert_eq!(check.expected, report.check.expected, "{text}");
    assert_eq!(check.received, check.expected, "{text}");
    assert_eq!(
        check.complete, 20,
        "every client got its notifications: {text}"
    );
    assert_eq!(browsers.deliveries, check.expected, "{text}");
    assert_eq!(browsers.left_in_inboxes, Some(0), "{text}");

    // The figures, beside the AMQP path's.
    assert!(browsers.deliveries_per_s > 0.0, "{text}");
    for latency in [
        &browsers.latency_ms,
        &browsers.sse_latency_ms,
        &browsers.ws_latency_ms,
    ] {
        assert!(latency.count > 0 && latency.p50 > 0.0, "{text}");
        assert!(
            latency.p50 <= latency.p99 && latency.p99 <= latency.max,
            "{text}"
        );
    }
    let ratios = &browsers.ratios;
    assert!(ratios.deliveries_per_s.is_some(), "{text}");
    assert!(
        ratios.latency_p50.is_some() && ratios.latency_p99.is_some(),
        "{text}"
    );
    assert!(ratios.completion.is_some(), "{text}");
    assert_eq!(browsers.gateways.len(), 2, "{text}");
    for gateway in &browsers.gateways {
        assert_eq!(gateway.clients, 10, "{text}");
        assert!(
            gateway.rss_mb_connected.is_some_and(|mb| mb > 1.0),
            "{text}"
        );
        assert!(gateway.kb_per_connection.is_some(), "{text}");
        assert!(gateway.peak_rss_mb.is_some(), "{text}");
        assert!(gateway.cpu_seconds_run.is_some(), "{text}");
    }

    assert_reported(
        &report,
        &[
            "/browsers/check/lost",
            "/browsers/check/duplicates",
            "/browsers/deliveries_per_s",
            "/browsers/latency_ms/p99",
            "/browsers/ratios/latency_p50",
            "/browsers/gateways/0/kb_per_connection",
            "/browsers/gateways/1/cpu_seconds_run",
        ],
        &[
            "browsers    10 SSE + 10 WebSocket",
            "  check      OK",
            "browser/AMQP",
        ],
    );
}
