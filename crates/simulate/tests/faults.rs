//! The simulator under faults: the real `youtube_server` processes, the
//! simulator's clients and receivers, and something broken on purpose in
//! the middle of the uploads — a private RabbitMQ node or a node of a private
//! cluster killed (`kill -9`) and restarted, a private PostgreSQL crashed and
//! restarted, one of several servers killed. Every confirmed upload must reach
//! every subscriber, none shown twice, and every program carry on by itself.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use ytnotify::topology::{self, QueueType};
use ytnotify_simulate::{
    self as simulate, Options, Scenario,
    harness::{ServerMode, Servers},
    report::Report,
};
use ytnotify_testkit::{
    TestVhost, broker_node::BrokerNode, cluster::Cluster, logs, postgres::PostgresServer, program,
    require_broker, unique,
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
/// the test), logging into `logs`, with requests that wait long enough to
/// ride out a fault.
fn options(url: &str, logs: &TempDir) -> Options {
    let mut options = Options::new(url);
    options.server_logs = Some(logs.path().to_owned());
    options.fresh_vhost = false;
    options.ceiling = false;
    options.server = ServerMode::Spawn(program("youtube_server"));
    options.request_timeout = Duration::from_secs(120);
    options
}

/// The lines of server `i`'s log in `logs` that contain `what`.
fn logged(logs: &TempDir, i: u32, what: &str) -> Vec<String> {
    let log = Servers::log(logs.path(), i);
    std::fs::read_to_string(&log)
        .unwrap_or_else(|err| panic!("{}: {err}", log.display()))
        .lines()
        .filter(|line| line.contains(what))
        .map(str::to_owned)
        .collect()
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

/// Looks every 100 ms until what `look` sees is `done`, for `limit` at most
/// (each look included): what it saw last, and whether that was done.
async fn poll<T>(
    limit: Duration,
    mut look: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> (Option<T>, bool) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen = None;
    while let Ok(now) = tokio::time::timeout_at(deadline, look()).await {
        let finished = done(&now);
        seen = Some(now);
        if finished {
            return (seen, true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (seen, false)
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
    let inboxes_open = async || {
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
        open
    };
    let (_, started) = poll(Duration::from_secs(120), inboxes_open, |open| *open).await;
    assert!(started, "the simulator opened every inbox within 120 s");
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

/// How many partitions each server holds, fewest first, over every
/// database of the private PostgreSQL at `url`: the servers' claims are
/// advisory locks in their namespace ("ytn2"), one session per server.
/// `None` while PostgreSQL does not answer.
async fn claims(url: &str) -> Option<Vec<i64>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .ok()?;
    let driver = tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
               AND classid = x'79746e32'::int::oid \
             GROUP BY pid ORDER BY 1",
            &[],
        )
        .await
        .ok();
    drop(client);
    let _ = driver.await;
    Some(rows?.iter().map(|row| row.get(0)).collect())
}

/// Waits until the servers on the private PostgreSQL at `url` hold
/// `expected` partitions each (fewest first); how long that took.
async fn shared_out(url: &str, expected: &[i64]) -> Duration {
    let started = Instant::now();
    let (seen, shared) = poll(
        Duration::from_secs(60),
        async || claims(url).await,
        |seen| seen.as_deref() == Some(expected),
    )
    .await;
    assert!(
        shared,
        "the partitions were not shared out as {expected:?} within 60 s: {seen:?}"
    );
    started.elapsed()
}

/// The connections to `vhost` that node `i` of `cluster` serves, by the
/// name each program gave its own (`youtube_server`, `simulate-client-0`, …).
fn connections_on(cluster: &Cluster, vhost: &str, i: usize) -> Vec<String> {
    let listed = tokio::task::block_in_place(|| {
        cluster.ctl(
            i,
            &[
                "list_connections",
                "vhost",
                "port",
                "client_properties",
                "--formatter",
                "json",
            ],
        )
    });
    let listed: serde_json::Value = serde_json::from_str(&listed)
        .unwrap_or_else(|err| panic!("list_connections: {err}: {listed}"));
    let port = u64::from(cluster.node(i).port());
    // Client properties are listed as [name, type, value] triples.
    let name = |connection: &serde_json::Value| {
        connection["client_properties"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|property| property[0] == "connection_name")
            .and_then(|property| property[2].as_str())
            .unwrap_or("(no name)")
            .to_owned()
    };
    let mut names: Vec<String> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|connection| connection["vhost"] == vhost && connection["port"] == port)
        .map(name)
        .collect();
    names.sort();
    names
}

/// How many of the queues of `vhost` node `i` of `cluster` leads, and how
/// many queues there are.
fn led_by(cluster: &Cluster, vhost: &str, i: usize) -> (usize, usize) {
    let listed = tokio::task::block_in_place(|| {
        cluster.ctl(
            i,
            &[
                "list_queues",
                "-p",
                vhost,
                "name",
                "leader",
                "--formatter",
                "json",
            ],
        )
    });
    let listed: serde_json::Value =
        serde_json::from_str(&listed).unwrap_or_else(|err| panic!("list_queues: {err}: {listed}"));
    let queues = listed.as_array().map_or(&[][..], Vec::as_slice);
    let led = queues
        .iter()
        .filter(|queue| queue["leader"] == cluster.name(i))
        .count();
    (led, queues.len())
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
    let logs = TempDir::new().unwrap();
    let (report, down) = run_through(&scenario, &options(&node.url, &logs), crash).await;
    eprintln!(
        "broker down {:.1} s during the run\n{report}",
        down.as_secs_f64()
    );
    assert_nothing_lost_through_the_crash(&report);
}

/// `servers` servers as child processes on a private PostgreSQL, the
/// simulator's clients and receivers, and PostgreSQL stopped at once (no
/// checkpoint) in the middle of the uploads, then started again: every
/// server loses its claims on the partitions with its connection, and they
/// must share them out again by themselves.
async fn postgresql_crash_under(servers: u32) {
    logs();
    let vhost = TestVhost::new(&format!("simulate-postgres-crash-{servers}"));
    let postgres = PostgresServer::start().await;
    let scenario = steady_uploads(&format!("postgres-crash-{servers}"));
    let logs = TempDir::new().unwrap();
    let mut options = options(&vhost.url, &logs);
    options.postgres = Some(postgres.url.clone());
    options.servers = servers;
    let share = i64::from(topology::PARTITIONS) / i64::from(servers);
    let crash = async {
        uploads_under_way(&vhost.url, &scenario).await;
        let crashed = Instant::now();
        postgres.crash().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        postgres.boot().await;
        let down = crashed.elapsed();
        let shared = shared_out(&postgres.url, &vec![share; servers as usize]).await;
        (down, shared)
    };
    let (report, (down, shared)) = run_through(&scenario, &options, crash).await;
    eprintln!(
        "PostgreSQL down {:.1} s during the run of {servers} server(s); the partitions \
         shared out again {:.1} s after it was back\n{report}",
        down.as_secs_f64(),
        shared.as_secs_f64()
    );
    assert_eq!(report.server.servers, servers);
    assert_eq!(report.server.database, "postgres");
    assert_nothing_lost_through_the_crash(&report);
    for i in 0..servers {
        // Said once the crash cut its connection; the claims above show
        // that it took its share again.
        let lost = logged(&logs, i, "handing them over");
        eprintln!("server {i}: {}", lost.join("\n"));
        assert!(
            !lost.is_empty(),
            "server {i} saw its claims go with PostgreSQL"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_simulated_load_a_postgresql_crash_loses_no_confirmed_upload() {
    postgresql_crash_under(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_simulated_load_a_postgresql_crash_under_two_servers_loses_no_confirmed_upload() {
    postgresql_crash_under(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_simulated_load_a_killed_server_of_four_loses_no_confirmed_upload() {
    logs();
    let vhost = TestVhost::new("simulate-server-kill");
    let postgres = PostgresServer::start().await;
    // Four servers on one PostgreSQL, 2 of the 8 partitions each; one is
    // killed (-9) in the middle of the uploads, with the requests of its
    // partitions in hand and prefetched. The other three must take its
    // partitions and answer every request.
    let scenario = steady_uploads("server-kill");
    let logs = TempDir::new().unwrap();
    let mut options = options(&vhost.url, &logs);
    options.postgres = Some(postgres.url.clone());
    options.servers = 4;
    let (pids, mut started) = tokio::sync::watch::channel(Vec::new());
    options.server_pids = Some(pids);
    let kill = async {
        let pids = tokio::time::timeout(
            Duration::from_secs(60),
            started.wait_for(|pids| pids.len() == 4),
        )
        .await
        .expect("the four servers started within 60 s")
        .expect("the simulator told their pids")
        .clone();
        uploads_under_way(&vhost.url, &scenario).await;
        assert_eq!(claims(&postgres.url).await, Some(vec![2, 2, 2, 2]));
        let killed = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pids[0].to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -9 of youtube_server {}", pids[0]);
        shared_out(&postgres.url, &[2, 3, 3]).await;
        killed.elapsed()
    };
    let (report, taken) = run_through(&scenario, &options, kill).await;
    eprintln!(
        "the killed server's partitions were taken {:.1} s after the kill\n{report}",
        taken.as_secs_f64()
    );
    assert_eq!(report.server.servers, 4);
    assert_nothing_lost_through_the_crash(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_simulated_load_a_killed_cluster_node_loses_no_confirmed_upload() {
    logs();
    let cluster = Cluster::start().await;
    let vhost = unique("simulate-node-kill");
    cluster.add_vhost(&vhost);
    let urls = cluster.urls_on(&vhost);
    let postgres = PostgresServer::start().await;
    // Two servers on a private PostgreSQL and a three-node cluster, on
    // quorum queues, as `simulate --cluster` runs. Node 0 is the one
    // killed (-9) in the middle of the uploads, and restarted: every program
    // connects to the first node of its list that answers, so node 0 serves
    // both servers, the clients and the receivers, and leads the queues
    // declared through it.
    //
    // A third of the users, whose uploads are spread over 20 s: each inbox
    // is a Raft group on all three nodes, which share the machine's cores,
    // and the node takes 10 s or more to boot again.
    let scenario = Scenario {
        users: 100,
        subscriptions: 300,
        upload_rate: 10.0,
        ..steady_uploads("node-kill")
    };
    let logs = TempDir::new().unwrap();
    let mut options = options(&urls, &logs);
    options.postgres = Some(postgres.url.clone());
    options.servers = 2;
    options.queue_type = Some(QueueType::Quorum);
    let kill = async {
        uploads_under_way(&urls, &scenario).await;
        let connections = connections_on(&cluster, &vhost, 0);
        let servers = connections
            .iter()
            .filter(|name| *name == "youtube_server")
            .count();
        assert_eq!(servers, 2, "both servers are on node 0: {connections:?}");
        for other in [1, 2] {
            let elsewhere = connections_on(&cluster, &vhost, other);
            assert!(elsewhere.is_empty(), "node {other} serves {elsewhere:?}");
        }
        let (led, queues) = led_by(&cluster, &vhost, 0);
        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.kill(0));
        cluster.restart(0).await;
        (connections, led, queues, killed.elapsed())
    };
    let (report, (on_node, led, queues, down)) = run_through(&scenario, &options, kill).await;
    eprintln!(
        "node 0 served every connection of the run ({}) and led {led} of its {queues} \
         queues; killed, and back in the cluster {:.1} s later\n{report}",
        on_node.join(", "),
        down.as_secs_f64()
    );
    assert_eq!(report.server.servers, 2);
    assert_nothing_lost_through_the_crash(&report);
    for i in 0..2 {
        let back = logged(&logs, i, "connected to RabbitMQ again");
        eprintln!("server {i}: {}", back.join("\n"));
        assert!(
            !back.is_empty(),
            "server {i} connected through another node by itself"
        );
    }
}
