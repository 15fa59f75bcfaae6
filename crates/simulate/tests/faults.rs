//! The simulator under faults: the real `youtube_server`, the simulator's
//! clients and receivers, and something broken on purpose in the middle of
//! the uploads — a private RabbitMQ node killed (`kill -9`) and restarted, a
//! private PostgreSQL crashed and restarted. Every confirmed upload must
//! reach every subscriber, none shown twice, and every program carry on by
//! itself.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use ytnotify::topology;
use ytnotify_simulate::{self as simulate, Options, Scenario, harness::ServerMode, report::Report};
use ytnotify_testkit::{
    TestVhost, broker_node::BrokerNode, logs, postgres::PostgresServer, program, require_broker,
};

/// How long a run under a fault may take, set-up and drain included.
const RUN: Duration = Duration::from_secs(150);

/// 300 users following 10 YouTubers, 200 uploads at 20/s, all online.
fn steady_uploads(name: &str) -> Scenario {
    Scenario {
        name: name.to_owned(),
        users: 300,
        youtubers: 10,
        subscriptions: 900,
        uploads: 200,
        upload_rate: 20.0,
        upload_window: 4,
        offline_share: 0.0,
        churn: 0,
        clients: 2,
        receivers: 4,
        drain_timeout: Duration::from_secs(60),
        seed: 11,
        ..Scenario::default()
    }
}

/// The real `youtube_server` as a child process on `url` (its vhost made by
/// the test), with requests that wait long enough to ride out a fault.
fn options(url: &str) -> Options {
    let mut options = Options::new(url);
    options.fresh_vhost = false;
    options.ceiling = false;
    options.server = ServerMode::Spawn(program("youtube_server"));
    options.request_timeout = Duration::from_secs(120);
    options
}

/// Runs `scenario` while `fault` breaks something in the middle of it: the
/// report, and what the fault returned. A run that fails fails the test at
/// once, whatever the fault is waiting for.
async fn run_through<T>(
    scenario: &Scenario,
    options: &Options,
    fault: impl Future<Output = T>,
) -> (Report, T) {
    let simulation = async {
        tokio::time::timeout(RUN, simulate::run(scenario, options))
            .await
            .unwrap_or_else(|_| panic!("the simulation finished within {RUN:?}"))
            .unwrap_or_else(|err| panic!("the simulation ran: {err}"))
    };
    tokio::join!(simulation, fault)
}

/// Waits until the run's uploads have begun: every inbox has its consumer
/// (the receivers open them right before the uploads start), plus a second.
async fn uploads_under_way(url: &str, scenario: &Scenario) {
    let probe = ytnotify::broker::connect(&ytnotify::broker::Endpoint::new(url), "probe")
        .await
        .unwrap();
    let watched = [
        simulate::scenario::user_name(0),
        simulate::scenario::user_name(scenario.users - 1),
    ];
    let started = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let mut open = true;
            for user in &watched {
                // Not declared yet is not open yet (and closes the channel).
                let channel = probe.create_channel().await.unwrap();
                let consumers = match topology::inspect(&channel, &topology::inbox(user)).await {
                    Ok((_, consumers)) => consumers,
                    Err(_) => 0,
                };
                let _ = channel.close(200, "probed".into()).await;
                open &= consumers > 0;
            }
            if open {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        started.is_ok(),
        "the simulator opened every inbox within 120 s"
    );
    let _ = probe.close(200, "bye".into()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Every confirmed upload reached every subscriber, and none was shown
/// twice: the copies of notifications whose ack a crash lost are dropped by
/// id, as a user session drops them (`check.redelivered`).
fn assert_nothing_lost_through_the_crash(report: &Report) {
    let (check, text) = (&report.check, report.to_string());
    assert!(check.expected > 0, "{text}");
    assert_eq!(
        (check.lost, check.duplicates, check.unexpected),
        (0, 0, 0),
        "{text}"
    );
    assert!(check.ok, "{text}");
    assert_eq!(check.received, check.expected, "{text}");
    assert_eq!(report.run.failed_requests, 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_simulated_load_a_broker_crash_loses_no_confirmed_upload() {
    logs();
    require_broker();
    let node = BrokerNode::start().await;
    // The real youtube_server as a child process, the simulator's clients
    // and receivers, and a kill -9 of the broker in the middle of it.
    let scenario = steady_uploads("broker-crash");
    let crash = async {
        uploads_under_way(&node.url, &scenario).await;
        let killed = Instant::now();
        node.kill9().await;
        node.boot().await;
        killed.elapsed()
    };
    let (report, down) = run_through(&scenario, &options(&node.url), crash).await;
    eprintln!(
        "broker down {:.1} s during the run\n{report}",
        down.as_secs_f64()
    );
    assert_nothing_lost_through_the_crash(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_simulated_load_a_postgresql_crash_loses_no_confirmed_upload() {
    logs();
    let vhost = TestVhost::new("simulate-postgres-crash");
    let postgres = PostgresServer::start().await;
    // The real youtube_server as a child process on a private PostgreSQL,
    // the simulator's clients and receivers, and PostgreSQL stopped at once
    // (no checkpoint) in the middle of it, then started again.
    let scenario = steady_uploads("postgres-crash");
    let mut options = options(&vhost.url);
    options.postgres = Some(postgres.url.clone());
    let crash = async {
        uploads_under_way(&vhost.url, &scenario).await;
        let crashed = Instant::now();
        postgres.crash().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        postgres.boot().await;
        crashed.elapsed()
    };
    let (report, down) = run_through(&scenario, &options, crash).await;
    eprintln!(
        "PostgreSQL down {:.1} s during the run\n{report}",
        down.as_secs_f64()
    );
    assert_eq!(report.server.database, "postgres");
    assert_nothing_lost_through_the_crash(&report);
}
