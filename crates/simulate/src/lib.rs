//! The load simulator: many simulated users and YouTubers driving the real
//! server over real RabbitMQ connections, checked for exactly-once delivery
//! and measured against the broker's own ceiling for the same shape.
//!
//! A run, in order:
//!
//! 1. a fresh vhost and database; the server under test (a child
//!    `youtube_server` when one is found, so that its memory and CPU can be
//!    read), or several on one PostgreSQL database ([`Options::servers`]),
//!    waited for until each holds its share of the request queues'
//!    partitions; the broker is the URL's, or a three-node cluster on
//!    quorum queues ([`Options::cluster`]);
//! 2. set-up, not measured: every subscription made through the server, pipelined
//!    on a few [`Client`]s;
//! 3. the run: every inbox consumed on a few connections; uploads (one at a
//!    time, in a window, or at a rate) and subscription churn at once, some users
//!    closing their inbox for a while; then waiting until every expected
//!    notification has arrived, or the drain timeout;
//! 4. with likes and comments: once every notification has arrived, each
//!    user likes and comments on some of the videos it received
//!    ([`Scenario::interactions`]), through the server, in a window, on the
//!    same clients; every creator inbox is read by the simulator's own
//!    consumers ([`creators`]) until each applied request's event is there;
//! 5. the [`check`]: expected (user, upload) pairs against what arrived;
//!    with [`browser`] clients, the same per client of each user, and their
//!    figures beside the receivers'; the interactions' events by id;
//! 6. the [`ceiling`]: the server stopped, the same queues and bindings driven
//!    with plain lapin, and the ratio ours / ceiling; for the interactions,
//!    the same count of messages through one durable queue to one consumer.
//!
//! Latency is measured with one clock, the simulator's: from the moment an
//! upload is sent to the moment a user's consumer has it (titles carry the
//! upload's sequence number), and from the moment a like or comment is sent
//! to the moment its event is in the creator's inbox (the event carries the
//! request's id).
//!
//! Browser clients (`sse_clients`, `ws_clients`) connect through `gateway`
//! processes started for the run, after set-up and before the uploads. Their
//! users log in with a history, so that every client of a user sees every
//! notification; the receivers then read those users' notifications from a
//! queue of their own bound beside the inbox ([`receiver::tap`]), since the
//! gateways' sessions consume the inbox.

pub mod bench;
pub mod browser;
pub mod ceiling;
pub mod celebrities;
pub mod check;
pub mod creators;
pub mod harness;
pub mod proxy;
pub mod random;
pub mod receiver;
pub mod report;
pub mod scenario;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;
use uuid::Uuid;

use browser::{Browsers, Gateways};
use celebrities::Following;
use check::{Answer, ChangeRecord, Expectations, InteractionRecord, UploadRecord};
use creators::{CreatorReaders, CreatorTally};
use harness::{Cluster, Rabbitmqctl, ScratchDir, ServerMode, Servers, Usage, Vhost};
use receiver::{Receivers, Tally, title};
use report::{
    BrowserRatios, Ceiling, GatewayUsage, InteractionRatios, Interactions, Latency, OneServer,
    Ratios, Report, Run, ServerUsage, Setup,
};
use scenario::{Interaction, InteractionKind, Plan, user_name, youtuber_name};
pub use scenario::{PRESETS, Scenario, Spread, WsAcks};
use ytnotify::{
    client::{Client, ClientConfig},
    protocol::{CreatorEvent, CreatorEvents, Reaction, Reply, Request},
    topology::{self, QueueType},
};

/// Why a simulation could not run. (A run that loses notifications is not an
/// error: its report says so.)
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is not runnable.
    #[error("{0}")]
    Scenario(String),
    /// A library call failed (connecting, a request).
    #[error(transparent)]
    Library(#[from] ytnotify::Error),
    /// A broker operation failed.
    #[error("RabbitMQ error: {0}")]
    Broker(#[from] lapin::Error),
    /// The simulator's own machinery failed (vhost, server process, a task).
    #[error("{0}")]
    Harness(String),
}

/// How to run a scenario, apart from the scenario itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker. With a fresh vhost, only its address and credentials count.
    pub amqp_url: String,
    pub server: ServerMode,
    /// Create a vhost for the run (and delete it after) instead of using the URL's.
    pub fresh_vhost: bool,
    /// Keep the fresh vhost after the run.
    pub keep_vhost: bool,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
    /// How long one request may wait for the server's reply.
    pub request_timeout: Duration,
    /// Measure the ceiling too.
    pub ceiling: bool,
    /// The `gateway` program for browser clients; `None`: the one beside
    /// this executable.
    pub gateway_bin: Option<PathBuf>,
    /// Run the server on PostgreSQL: a database made for the run on the
    /// PostgreSQL server of this URL (whose role may create databases), and
    /// dropped after it. `None`: a SQLite file.
    pub postgres: Option<String>,
    /// How many servers to start, sharing the request queues' partitions;
    /// more than one needs `postgres`.
    pub servers: u32,
    /// Run on a three-node RabbitMQ cluster (`scripts/cluster.sh up`), on
    /// quorum queues, instead of `amqp_url`'s broker.
    pub cluster: bool,
    /// The cluster script; `None`: the workspace's `scripts/cluster.sh`.
    pub cluster_script: Option<PathBuf>,
    /// The type the servers declare the vhost's queues with; `None`: quorum
    /// with `cluster`, else the servers' own choice (classic on a new
    /// vhost). Quorum for a cluster that `amqp_url` lists.
    pub queue_type: Option<QueueType>,
    /// Sent the process ids of the servers once they have started (of
    /// child processes only): for a test that kills one in the middle of a run.
    pub server_pids: Option<tokio::sync::watch::Sender<Vec<u32>>>,
    /// Where the servers write their logs (`youtube_server-<i>.log`), kept
    /// after the run; `None`: a scratch directory, removed with it.
    pub server_logs: Option<PathBuf>,
    /// The process ids of the broker's Erlang VMs on this machine, whose
    /// memory and CPU the report then gives.
    pub broker_pids: Vec<u32>,
}

impl Options {
    pub fn new(amqp_url: impl Into<String>) -> Options {
        Options {
            amqp_url: amqp_url.into(),
            server: ServerMode::beside_current_exe(),
            fresh_vhost: true,
            keep_vhost: false,
            progress: false,
            request_timeout: Duration::from_secs(120),
            ceiling: true,
            gateway_bin: None,
            postgres: None,
            servers: 1,
            cluster: false,
            cluster_script: None,
            queue_type: None,
            server_pids: None,
            server_logs: None,
            broker_pids: Vec::new(),
        }
    }

    /// Whether the options go together, before anything starts.
    pub fn check(&self) -> Result<(), SimError> {
        let servers = self.servers;
        if servers == 0 {
            return Err(SimError::Scenario(
                "--servers must be at least 1".to_owned(),
            ));
        }
        if servers > 1 && self.server == ServerMode::External {
            return Err(SimError::Scenario(format!(
                "--servers {servers} starts servers; an external server is one the simulator does not start"
            )));
        }
        if servers > 1 && self.postgres.is_none() {
            return Err(SimError::Scenario(format!(
                "--servers {servers} needs --postgres URL: on SQLite one server consumes and the other {} would be hot standbys",
                servers - 1
            )));
        }
        if self.cluster && self.server == ServerMode::External {
            return Err(SimError::Scenario(
                "--cluster starts a cluster for the run's own servers: it does not go with an external server"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// Runs a scenario from start to report. See the module documentation for the steps.
pub async fn run(scenario: &Scenario, options: &Options) -> Result<Report, SimError> {
    scenario.validate().map_err(SimError::Scenario)?;
    options.check()?;
    // Found before anything starts, so that a missing program costs nothing.
    let gateway = if scenario.browser_clients() > 0 {
        Some(browser::find_gateway(options.gateway_bin.as_deref())?)
    } else {
        None
    };
    let plan = scenario.plan();
    // Declared before the vhost, so dropped after it.
    let cluster = if options.cluster {
        let script = Cluster::find_script(options.cluster_script.as_deref())?;
        Some(tokio::task::block_in_place(|| Cluster::up(&script))?)
    } else {
        None
    };
    let (broker_url, ctl) = match &cluster {
        Some(cluster) => (cluster.urls.as_str(), Rabbitmqctl::on_node(&cluster.node)),
        None => (options.amqp_url.as_str(), Rabbitmqctl::default()),
    };
    let mut vhost = if options.fresh_vhost && options.server != ServerMode::External {
        Vhost::fresh(broker_url, &ctl)?
    } else {
        Vhost::existing(broker_url)
    };
    vhost.keep |= options.keep_vhost;
    if let (true, Some(name)) = (options.keep_vhost, vhost.name()) {
        tracing::info!("the run's vhost {name} is kept");
    }
    let scratch = ScratchDir::new()?;
    let logs = match &options.server_logs {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| SimError::Harness(format!("cannot create {}: {e}", dir.display())))?;
            dir.clone()
        }
        None => scratch.0.clone(),
    };
    let postgres = match &options.postgres {
        Some(admin_url) => Some(harness::ScratchDatabase::create(admin_url).await?),
        None => None,
    };
    let database = match &postgres {
        Some(postgres) => ytnotify::store::Database::Postgres(postgres.url.clone()),
        None => ytnotify::store::Database::Sqlite(scratch.0.join("server.db")),
    };
    let queue_type = options
        .queue_type
        .or(cluster.as_ref().map(|_| QueueType::Quorum));
    let settings = harness::ServerSettings {
        queue_type,
        celebrities_from: scenario.celebrities_from,
    };
    let mut servers = Servers::start(
        options.servers,
        &options.server,
        &vhost.url,
        &database,
        settings,
        &logs,
    )
    .await?;
    if let Some(pids) = &options.server_pids {
        pids.send_replace(servers.pids());
    }
    let outcome = Simulation {
        scenario,
        plan: &plan,
        url: &vhost.url,
        options,
        scratch: &scratch.0,
        gateway: gateway.as_deref(),
        postgres: postgres.as_ref().map(|p| p.url.as_str()),
        cluster: cluster.is_some(),
    }
    .run(&mut servers)
    .await;
    let outcome = match outcome {
        Err(err) => {
            let exited = servers.exited();
            servers.stop().await;
            return Err(match exited {
                Some((i, status)) => {
                    let log = Servers::log(&logs, i as u32);
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    let last = log.lines().last().unwrap_or_default();
                    SimError::Harness(format!(
                        "youtube_server {i} exited ({status}): {last}; the simulation stopped: {err}"
                    ))
                }
                None => err,
            });
        }
        Ok(outcome) => outcome,
    };
    let (mut report, sent) = outcome;
    let ended = servers.usage();
    let sum = harness::summed(&ended);
    report.server.rss_mb_end = sum.map(|u| u.rss_mb);
    report.server.peak_rss_mb = sum.map(|u| u.peak_rss_mb);
    for (one, ended) in report.server.each.iter_mut().zip(&ended) {
        one.rss_mb_end = ended.map(|u| u.rss_mb);
        one.peak_rss_mb = ended.map(|u| u.peak_rss_mb);
    }
    servers.stop().await;
    if options.ceiling {
        let simulation = Simulation {
            scenario,
            plan: &plan,
            url: &vhost.url,
            options,
            scratch: &scratch.0,
            gateway: None,
            postgres: None,
            cluster: cluster.is_some(),
        };
        report.ceiling = simulation.ceiling(&sent.changes).await?;
        report.ratios = Ratios::of(&report.run, &report.ceiling);
        if let Some(interactions) = &mut report.interactions {
            let publishing = bar(options, "fan-in", sent.told.len() as u64);
            let ceiling = ceiling::interactions(
                &vhost.url,
                &sent.told,
                scenario.clients,
                scenario.interaction_window,
                scenario.drain_timeout,
                &publishing,
            )
            .await?;
            publishing.finish();
            interactions.ratios = InteractionRatios::of(interactions, &ceiling);
            interactions.ceiling = Some(ceiling);
        }
    }
    Ok(report)
}

/// What the ceiling repeats of a run with plain lapin.
struct Sent {
    changes: Vec<ChangeRecord>,
    /// Per like or comment sent, the message that tells its creator of it alone.
    told: Vec<CreatorEvents>,
}

struct Simulation<'a> {
    scenario: &'a Scenario,
    plan: &'a Plan,
    url: &'a str,
    options: &'a Options,
    /// Where the gateways log.
    scratch: &'a Path,
    /// The `gateway` program, when the scenario has browser clients.
    gateway: Option<&'a Path>,
    /// The servers' PostgreSQL database, where their claims can be seen.
    postgres: Option<&'a str>,
    /// Whether the broker is a cluster, on quorum queues.
    cluster: bool,
}

/// Send and answer times of a batch of requests: 0 = not yet, else nanoseconds + 1.
struct Stamps {
    sent: Vec<AtomicU64>,
    done: Vec<AtomicU64>,
    refused: Vec<AtomicBool>,
}

impl Stamps {
    fn new(n: usize) -> Arc<Stamps> {
        Arc::new(Stamps {
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            done: (0..n).map(|_| AtomicU64::new(0)).collect(),
            refused: (0..n).map(|_| AtomicBool::new(false)).collect(),
        })
    }

    fn get(slot: &AtomicU64) -> Option<u64> {
        match slot.load(Ordering::Acquire) {
            0 => None,
            at => Some(at - 1),
        }
    }

    fn set(slot: &AtomicU64, at: u64) {
        slot.store(at + 1, Ordering::Release);
    }
}

fn bar(options: &Options, prefix: &'static str, len: u64) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_prefix(prefix);
    // The template is a constant; a mistake in it is a bug caught by any run.
    let style = ProgressStyle::with_template(
        "{prefix:>10} [{bar:32}] {human_pos}/{human_len} {per_sec:>12} {elapsed:>4}",
    )
    .expect("a valid progress template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// The message that tells a like's or comment's creator of it alone, as
/// the server would: what the ceiling sends once per request.
fn told_alone(record: &InteractionRecord, tally: &Tally) -> CreatorEvents {
    let Interaction { user, seq, kind } = record.interaction;
    let (id, user) = (record.id.unwrap_or_else(Uuid::new_v4), user_name(user));
    let (video_id, video) = (tally.video(seq).unwrap_or_default(), title(seq));
    let at_ms = ytnotify::store::now_ms();
    let event = match kind {
        InteractionKind::Like => CreatorEvent::Reacted {
            id,
            user,
            video_id,
            video,
            reaction: Reaction::Like,
            at_ms,
        },
        InteractionKind::Comment => CreatorEvent::Commented {
            id,
            user,
            video_id,
            video,
            text: record.interaction.text(),
            at_ms,
        },
    };
    CreatorEvents {
        youtuber: youtuber_name(record.youtuber),
        events: vec![event],
    }
}

fn wait_failed(err: impl std::fmt::Display) -> SimError {
    SimError::Harness(format!("a request task failed: {err}"))
}

fn micros_histogram() -> Histogram<u64> {
    // Constant, valid bounds: 1 µs to 10 minutes.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn per_second(count: u64, nanos: u64) -> f64 {
    if nanos == 0 {
        0.0
    } else {
        count as f64 / (nanos as f64 / 1e9)
    }
}

/// What the receivers saw of a run's uploads.
struct Deliveries {
    received: u64,
    /// From the first upload sent to the last delivery.
    per_s: f64,
    latency_ms: Latency,
    /// Per upload, from sent to its last live delivery.
    fanout_ms: Latency,
    /// Deliveries that had waited in an inbox while its user was away.
    catch_up: u64,
}

fn deliveries(tally: &Tally, uploads: u32) -> Deliveries {
    let first_sent = (0..uploads).filter_map(|seq| tally.sent(seq)).min();
    let received = tally.received();
    let rate = first_sent.map_or(0.0, |first| {
        per_second(received, tally.last_delivery().saturating_sub(first))
    });
    let mut fanout = micros_histogram();
    for seq in 0..uploads {
        if let (Some(sent), Some(last)) = (tally.sent(seq), tally.last_live(seq)) {
            let _ = fanout.record((last.saturating_sub(sent) / 1_000).max(1));
        }
    }
    let (latency, catch_up) =
        tally.with_counts(|counts| (Latency::from_micros(&counts.latency), counts.catch_up));
    Deliveries {
        received,
        per_s: rate,
        latency_ms: latency,
        fanout_ms: Latency::from_micros(&fanout),
        catch_up,
    }
}

/// The gateways and browser clients of a run, with the gateways' usage at
/// each step.
struct Browsing {
    gateways: Gateways,
    browsers: Browsers,
    /// Gateway addresses, kept once the gateways have stopped.
    addresses: Vec<String>,
    before: Vec<Option<Usage>>,
    connected: Vec<Option<Usage>>,
    drained: Vec<Option<Usage>>,
    connected_at: std::time::Instant,
    drained_at: std::time::Instant,
}

/// The browser clients' figures, beside the AMQP receivers' (`run`).
fn browser_report(
    s: &Scenario,
    b: &Browsing,
    run: &Run,
    tally: &Tally,
    expectations: &Expectations,
    left_in_inboxes: Option<u64>,
) -> report::Browsers {
    let first_sent = (0..s.uploads).filter_map(|seq| tally.sent(seq)).min();
    let received = b.browsers.received();
    let browser_span = first_sent.map(|first| b.browsers.last_delivery().saturating_sub(first));
    let amqp_span = first_sent.map(|first| tally.last_delivery().saturating_sub(first));
    let (latency, sse_latency, ws_latency) = b.browsers.latency();
    let ratio = |ours: f64, theirs: f64| (ours > 0.0 && theirs > 0.0).then(|| ours / theirs);
    let deliveries_per_s = browser_span.map_or(0.0, |span| per_second(received, span));
    let ratios = BrowserRatios {
        deliveries_per_s: ratio(deliveries_per_s, run.deliveries_per_s),
        completion: browser_span
            .zip(amqp_span)
            .and_then(|(ours, theirs)| ratio(ours as f64, theirs as f64)),
        latency_p50: ratio(latency.p50, run.latency_ms.p50),
        latency_p99: ratio(latency.p99, run.latency_ms.p99),
        latency_max: ratio(latency.max, run.latency_ms.max),
    };
    let per_gateway = b.browsers.connected_per_gateway(b.addresses.len());
    let run_wall = b.drained_at.duration_since(b.connected_at).as_secs_f64();
    let gateways = b
        .addresses
        .iter()
        .enumerate()
        .map(|(k, address)| {
            let (before, connected, drained) = (b.before[k], b.connected[k], b.drained[k]);
            let clients = per_gateway[k];
            let cpu_run = connected
                .zip(drained)
                .map(|(a, z)| z.cpu_seconds - a.cpu_seconds);
            GatewayUsage {
                address: address.clone(),
                clients,
                rss_mb_before: before.map(|u| u.rss_mb),
                rss_mb_connected: connected.map(|u| u.rss_mb),
                kb_per_connection: before
                    .zip(connected)
                    .filter(|_| clients > 0)
                    .map(|(a, z)| (z.rss_mb - a.rss_mb) * 1024.0 / clients as f64),
                peak_rss_mb: drained.map(|u| u.peak_rss_mb),
                cpu_seconds_connecting: before
                    .zip(connected)
                    .map(|(a, z)| z.cpu_seconds - a.cpu_seconds),
                cpu_seconds_run: cpu_run,
                cpu_cores: cpu_run.map(|cpu| cpu / run_wall.max(1e-9)),
            }
        })
        .collect();
    report::Browsers {
        sse_clients: s.sse_clients,
        ws_clients: s.ws_clients,
        connected: b.browsers.connected(),
        connect_seconds: b.browsers.connect_seconds,
        deliveries: received,
        deliveries_per_s,
        latency_ms: latency,
        sse_latency_ms: sse_latency,
        ws_latency_ms: ws_latency,
        check: b.browsers.check(expectations, &b.addresses),
        ratios,
        gateways,
        left_in_inboxes,
    }
}

/// Waits until every expected pair has arrived, or the timeout.
async fn drain(tally: &Tally, expected: &[(u32, u32)], timeout: Duration, bar: &ProgressBar) {
    let deadline = tokio::time::Instant::now() + timeout;
    let want = expected.len() as u64;
    bar.set_length(want);
    loop {
        let received = tally.received();
        let arrived = if received >= want {
            tally.with_counts(|counts| check::arrived(expected, &counts.per_pair))
        } else {
            received
        };
        bar.set_position(arrived);
        if arrived >= want || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(if received >= want {
            50
        } else {
            10
        }))
        .await;
    }
    // A duplicate would come right behind; give it a moment to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bar.finish();
}

/// Waits until every event in `expected` has reached a creator, or the timeout.
async fn drain_events(
    tally: &CreatorTally,
    expected: &HashSet<Uuid>,
    timeout: Duration,
    bar: &ProgressBar,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let want = expected.len() as u64;
    bar.set_length(want);
    loop {
        let arrived = if tally.events() >= want {
            tally.with_counts(|counts| {
                expected
                    .iter()
                    .filter(|id| counts.arrivals.contains_key(id))
                    .count() as u64
            })
        } else {
            tally.events().min(want)
        };
        bar.set_position(arrived);
        if arrived >= want || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A copy sent again would come right behind; give it a moment to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bar.finish();
}

/// The servers' claims on the request queues' partitions, as PostgreSQL
/// shows them: advisory locks in the claims' namespace ("ytn2"), one
/// connection (pid) per server.
struct ClaimsView {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

impl ClaimsView {
    async fn connect(url: &str) -> Result<ClaimsView, SimError> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|err| SimError::Harness(format!("cannot read the servers' claims: {err}")))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(ClaimsView { client, driver })
    }

    /// How many partitions each server claims, most first.
    async fn holders(&self) -> Result<Vec<u32>, SimError> {
        let rows = self
            .client
            .query(
                "SELECT count(*) FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
                   AND classid = x'79746e32'::int::oid \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 GROUP BY pid ORDER BY 1 DESC",
                &[],
            )
            .await
            .map_err(|err| SimError::Harness(format!("cannot read the servers' claims: {err}")))?;
        Ok(rows
            .iter()
            .map(|row| u32::try_from(row.get::<_, i64>(0)).unwrap_or(u32::MAX))
            .collect())
    }
}

impl Drop for ClaimsView {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Whether `servers` servers hold every partition between them, none more
/// than its share (partitions over servers, rounded up): `claims` is each
/// holder's count.
fn shares_out(claims: &[u32], servers: usize) -> bool {
    let partitions = u32::from(topology::PARTITIONS);
    let share = partitions.div_ceil(servers.max(1) as u32);
    claims.len() == servers
        && claims.iter().sum::<u32>() == partitions
        && claims.iter().all(|&held| held <= share)
}

impl Simulation<'_> {
    async fn run(&self, server: &mut Servers) -> Result<(Report, Sent), SimError> {
        let s = self.scenario;
        let started_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let config = ClientConfig {
            broker: ytnotify::broker::Endpoint::new(self.url),
            timeout: self.options.request_timeout,
        };
        let mut clients = Vec::new();
        for i in 0..s.clients {
            clients.push(Arc::new(
                Client::connect(&config, &format!("simulate-client-{i}")).await?,
            ));
        }
        self.wait_for_server(&clients[0], server).await?;

        let setup = self.setup(&clients).await?;
        let after_setup = server.usage();
        let broker_after_setup = self.broker_usage();

        let tally = Tally::new(s.uploads);
        let tapped = s.browser_users();
        if tapped > 0 {
            let channel = clients[0]
                .link()
                .session()
                .await?
                .connection()
                .create_channel()
                .await?;
            receiver::declare_taps(&channel, tapped).await?;
            let _ = channel.close(200, "taps declared".into()).await;
        }
        let mut receivers = Receivers::connect(self.url, s.receivers, Arc::clone(&tally), "run")
            .await?
            .reading_taps(tapped);
        if s.celebrities_from > 0 {
            let requests = clients.iter().map(|client| client.requests()).collect();
            receivers = receivers.following(Following::start(self.url, requests).await?);
        }
        let receivers = Arc::new(receivers);
        receivers.open_all((0..s.users).collect(), true).await?;
        let mut browsing = match self.gateway {
            Some(exe) => Some(self.start_browsers(exe, &tally).await?),
            None => None,
        };
        let before_run = server.usage();
        let broker_before_run = self.broker_usage();
        let run_started = tally.now();
        let requests = bar(
            self.options,
            "run",
            u64::from(s.uploads) + u64::from(s.churn),
        );
        let (uploads, changes) = tokio::try_join!(
            self.uploads(&clients, &receivers, &tally, &requests),
            self.churn(&clients, &tally, &requests),
        )?;
        requests.finish();
        let mut away: Vec<u32> = (0..s.users).collect();
        let open: std::collections::HashSet<u32> = receivers.open_users().into_iter().collect();
        away.retain(|user| !open.contains(user));
        receivers.open_all(away, true).await?;

        let expectations = check::expectations(&self.plan.subscriptions, &uploads, &changes);
        let draining = bar(self.options, "drain", 0);
        drain(&tally, &expectations.expected, s.drain_timeout, &draining).await;
        if let Some(browsing) = &mut browsing {
            let draining = bar(self.options, "browsers", 0);
            browsing
                .browsers
                .drain(&expectations, s.drain_timeout, &draining)
                .await;
            browsing.drained = browsing.gateways.usage();
            browsing.drained_at = std::time::Instant::now();
        }
        let after_run = server.usage();
        let broker_after_run = self.broker_usage();
        let interactions = if s.has_interactions() {
            Some(self.interact(&clients, &tally, &uploads, server).await?)
        } else {
            None
        };
        Arc::clone(&receivers).shut().await?;
        let browsing = match browsing {
            Some(browsing) => Some(self.stop_browsers(browsing, &clients[0]).await),
            None => None,
        };
        for client in clients {
            if let Ok(client) = Arc::try_unwrap(client) {
                let _ = client.close().await;
            }
        }

        let mut report = self.report(
            started_at,
            setup,
            &tally,
            run_started,
            &uploads,
            &changes,
            &expectations,
            [after_setup, before_run, after_run],
        );
        if let Some((browsing, left)) = browsing {
            report.browsers = Some(browser_report(
                s,
                &browsing,
                &report.run,
                &tally,
                &expectations,
                left,
            ));
        }
        report.broker = broker_after_setup
            .zip(broker_before_run)
            .zip(broker_after_run)
            .map(|((after_setup, before_run), after_run)| {
                let run_wall = tally.now().saturating_sub(run_started) as f64 / 1e9;
                let cpu = after_run.cpu_seconds - before_run.cpu_seconds;
                report::BrokerUsage {
                    nodes: self.options.broker_pids.len() as u32,
                    rss_mb_after_setup: after_setup.rss_mb,
                    rss_mb_end: after_run.rss_mb,
                    peak_rss_mb: after_run.peak_rss_mb,
                    cpu_seconds: cpu,
                    cpu_cores: cpu / run_wall.max(1e-9),
                }
            });
        let (interactions, told) = interactions.unzip();
        report.interactions = interactions;
        Ok((
            report,
            Sent {
                changes,
                told: told.unwrap_or_default(),
            },
        ))
    }

    /// The broker's memory and CPU, summed over its nodes: `None` unless it
    /// was given and every node could be read.
    fn broker_usage(&self) -> Option<Usage> {
        let pids = &self.options.broker_pids;
        if pids.is_empty() {
            return None;
        }
        harness::summed(&pids.iter().map(|&pid| Usage::of(pid)).collect::<Vec<_>>())
    }

    /// Each user likes and comments on some of the videos it received, as
    /// the scenario says, through the server; the creators' inboxes are read
    /// until every applied one's event is there. Returns the figures and,
    /// for the ceiling, the message that tells each event alone.
    async fn interact(
        &self,
        clients: &[Arc<Client>],
        tally: &Arc<Tally>,
        uploads: &[UploadRecord],
        server: &Servers,
    ) -> Result<(Interactions, Vec<CreatorEvents>), SimError> {
        let s = self.scenario;
        // Only videos whose upload was answered: their creator inbox exists.
        let answered: HashSet<u32> = (0..uploads.len() as u32)
            .filter(|&seq| uploads[seq as usize].done.is_some() && tally.video(seq).is_some())
            .collect();
        let received: Vec<(u32, u32)> = tally.with_counts(|counts| {
            counts
                .per_pair
                .keys()
                .copied()
                .filter(|(_, seq)| answered.contains(seq))
                .collect()
        });
        let planned = s.interactions(&received);
        let creators: Vec<u32> = answered
            .iter()
            .map(|&seq| uploads[seq as usize].youtuber)
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        let creator_tally = CreatorTally::new(tally.start());
        let readers =
            CreatorReaders::open(self.url, s.receivers, &creators, &creator_tally).await?;
        let before = harness::summed(&server.usage());
        let sending = bar(self.options, "interact", planned.len() as u64);
        let records = self
            .send_interactions(clients, &planned, uploads, tally, &sending)
            .await;
        sending.finish();
        let records = match records {
            Ok(records) => records,
            Err(err) => {
                readers.shut().await;
                return Err(err);
            }
        };
        let expected: HashSet<Uuid> = records
            .iter()
            .filter(|r| r.answer == Some(Answer::Applied))
            .filter_map(|r| r.id)
            .collect();
        let draining = bar(self.options, "creators", 0);
        drain_events(&creator_tally, &expected, s.drain_timeout, &draining).await;
        let after = harness::summed(&server.usage());
        readers.shut().await;

        let told = records
            .iter()
            .map(|record| told_alone(record, tally))
            .collect();
        let figures = creator_tally.with_counts(|counts| {
            let check = check::check_interactions(&records, &counts.arrivals);
            let mut latency = micros_histogram();
            for record in &records {
                let arrival = record.id.and_then(|id| counts.arrivals.get(&id));
                if let (Some(sent), Some(arrival), Some(Answer::Applied)) =
                    (record.sent, arrival, record.answer)
                {
                    let _ = latency.record((arrival.at.saturating_sub(sent) / 1_000).max(1));
                }
            }
            let first_sent = records.iter().filter_map(|r| r.sent).min().unwrap_or(0);
            let last_done = records
                .iter()
                .filter_map(|r| r.done)
                .max()
                .unwrap_or(first_sent);
            let last_event = creator_tally.last_arrival().max(first_sent);
            let answered = records.iter().filter(|r| r.answer.is_some()).count() as u64;
            let count = |kind| planned.iter().filter(|i| i.kind == kind).count() as u64;
            Interactions {
                likes: count(InteractionKind::Like),
                comments: count(InteractionKind::Comment),
                videos: planned.iter().map(|i| i.seq).collect::<HashSet<_>>().len() as u64,
                creators: creators.len() as u64,
                answered,
                failed: records
                    .iter()
                    .filter(|r| matches!(r.answer, None | Some(Answer::Refused)))
                    .count() as u64,
                seconds: last_done.max(last_event).saturating_sub(first_sent) as f64 / 1e9,
                requests_per_s: per_second(answered, last_done.saturating_sub(first_sent)),
                events: creator_tally.events(),
                events_per_s: per_second(
                    creator_tally.events(),
                    last_event.saturating_sub(first_sent),
                ),
                messages: counts.messages,
                latency_ms: Latency::from_micros(&latency),
                subscriber_events: counts.subscribers,
                server_cpu_seconds: before
                    .zip(after)
                    .map(|(a, b)| b.cpu_seconds - a.cpu_seconds),
                check,
                ceiling: None,
                ratios: InteractionRatios::default(),
            }
        });
        Ok((figures, told))
    }

    /// Sends the likes and comments, at most `interaction_window` in flight,
    /// each user's on the client its set-up went through.
    async fn send_interactions(
        &self,
        clients: &[Arc<Client>],
        planned: &[Interaction],
        uploads: &[UploadRecord],
        tally: &Arc<Tally>,
        progress: &ProgressBar,
    ) -> Result<Vec<InteractionRecord>, SimError> {
        let stamps = Stamps::new(planned.len());
        let ids: Arc<Vec<OnceLock<Uuid>>> =
            Arc::new(planned.iter().map(|_| OnceLock::new()).collect());
        let answers: Arc<Vec<OnceLock<Answer>>> =
            Arc::new(planned.iter().map(|_| OnceLock::new()).collect());
        let window = Arc::new(Semaphore::new(self.scenario.interaction_window as usize));
        let mut tasks = Vec::with_capacity(planned.len());
        for (index, interaction) in planned.iter().enumerate() {
            let video = tally
                .video(interaction.seq)
                .ok_or_else(|| SimError::Harness("a planned video has no id".to_owned()))?
                .to_string();
            let user = user_name(interaction.user);
            let request = match interaction.kind {
                InteractionKind::Like => Request::React {
                    user,
                    video,
                    reaction: Some(Reaction::Like),
                },
                InteractionKind::Comment => Request::Comment {
                    user,
                    video,
                    text: interaction.text(),
                },
            };
            let permit = Arc::clone(&window)
                .acquire_owned()
                .await
                .map_err(|_| SimError::Harness("the interactions' window closed".to_owned()))?;
            let client = Arc::clone(&clients[interaction.user as usize % clients.len()]);
            let (stamps, ids, answers, tally, progress) = (
                Arc::clone(&stamps),
                Arc::clone(&ids),
                Arc::clone(&answers),
                Arc::clone(tally),
                progress.clone(),
            );
            tasks.push(tokio::spawn(async move {
                Stamps::set(&stamps.sent[index], tally.now());
                let pending = client.send(request).await?;
                let _ = ids[index].set(pending.id());
                let reply = client.wait(pending).await;
                drop(permit);
                let answer = match reply {
                    Ok(Reply::Done { notice: None }) => Some(Answer::Applied),
                    Ok(Reply::Done {
                        notice: Some(notice),
                    }) => {
                        tracing::warn!(%notice, "a like or comment changed nothing");
                        Some(Answer::Unchanged)
                    }
                    Ok(other) => {
                        tracing::warn!(?other, "unexpected reply to a like or comment");
                        Some(Answer::Refused)
                    }
                    Err(ytnotify::Error::Refused(reason)) => {
                        tracing::warn!(%reason, "a like or comment was refused");
                        Some(Answer::Refused)
                    }
                    Err(err) => {
                        tracing::warn!(%err, "a like or comment was not answered");
                        None
                    }
                };
                if let Some(answer) = answer {
                    let _ = answers[index].set(answer);
                    Stamps::set(&stamps.done[index], tally.now());
                }
                progress.inc(1);
                Ok::<(), SimError>(())
            }));
        }
        for task in tasks {
            task.await.map_err(wait_failed)??;
        }
        Ok(planned
            .iter()
            .enumerate()
            .map(|(index, &interaction)| InteractionRecord {
                interaction,
                youtuber: uploads[interaction.seq as usize].youtuber,
                id: ids[index].get().copied(),
                sent: Stamps::get(&stamps.sent[index]),
                done: Stamps::get(&stamps.done[index]),
                answer: answers[index].get().copied(),
            })
            .collect())
    }

    /// Starts the gateways and connects every browser client, measuring the
    /// gateways' memory before and after.
    async fn start_browsers(&self, exe: &Path, tally: &Arc<Tally>) -> Result<Browsing, SimError> {
        let s = self.scenario;
        let gateways = Gateways::start(exe, s.gateway_count(), self.url, self.scratch).await?;
        let before = gateways.usage();
        let browsers = Browsers::connect(s, &gateways, Arc::clone(tally)).await;
        let connected = gateways.usage();
        let connected_at = std::time::Instant::now();
        Ok(Browsing {
            addresses: gateways.addresses(),
            gateways,
            browsers,
            before,
            drained: connected.clone(),
            connected,
            connected_at,
            drained_at: connected_at,
        })
    }

    /// Closes the clients and stops the gateways; then counts what their
    /// users' inboxes still hold (shown, never acknowledged) and empties
    /// them and the taps, so that the ceiling starts from empty queues.
    async fn stop_browsers(
        &self,
        mut browsing: Browsing,
        client: &Client,
    ) -> (Browsing, Option<u64>) {
        browsing.browsers.stop().await;
        std::mem::replace(&mut browsing.gateways, Gateways::none())
            .stop()
            .await;
        let users = self.scenario.browser_users();
        let left = async {
            let channel = client
                .link()
                .session()
                .await?
                .connection()
                .create_channel()
                .await?;
            let mut left = 0;
            for user in 0..users {
                let inbox = topology::inbox(&scenario::user_name(user));
                let (messages, _) = topology::inspect(&channel, &inbox).await?;
                left += u64::from(messages);
                channel
                    .queue_purge(
                        inbox.as_str().into(),
                        lapin::options::QueuePurgeOptions::default(),
                    )
                    .await?;
            }
            receiver::delete_taps(&channel, users).await?;
            let _ = channel.close(200, "inboxes counted".into()).await;
            Ok::<u64, SimError>(left)
        }
        .await;
        let left = match left {
            Ok(left) => Some(left),
            Err(err) => {
                tracing::warn!(%err, "could not count what the browser users' inboxes hold");
                None
            }
        };
        (browsing, left)
    }

    /// Waits until the servers consume every partition of the request
    /// queues the run uses and, with several, until each holds its share.
    async fn wait_for_server(
        &self,
        client: &Client,
        servers: &mut Servers,
    ) -> Result<(), SimError> {
        let channel = client
            .link()
            .session()
            .await?
            .connection()
            .create_channel()
            .await?;
        let count = servers.count();
        let claims = match (self.postgres, count > 1) {
            (Some(url), true) => Some(ClaimsView::connect(url).await?),
            _ => None,
        };
        // Several servers take their shares a balancing round (1 s) at a time.
        let wait = Duration::from_secs(if count > 1 { 60 } else { 30 });
        let deadline = tokio::time::Instant::now() + wait;
        let kinds = if self.scenario.has_interactions() {
            &topology::RequestKind::ALL[..]
        } else {
            &topology::RequestKind::ALL[..2]
        };
        loop {
            let shared = match &claims {
                Some(claims) => claims.holders().await?,
                None => Vec::new(),
            };
            let mut ready = claims.is_none() || shares_out(&shared, count);
            if ready {
                for queue in kinds.iter().flat_map(|kind| kind.queues()) {
                    let (_, consumers) = topology::inspect(&channel, queue.name()).await?;
                    ready &= consumers > 0;
                }
            }
            if ready {
                let _ = channel.close(200, "ready".into()).await;
                return Ok(());
            }
            if let Some((i, status)) = servers.exited() {
                return Err(SimError::Harness(format!(
                    "youtube_server {i} exited at start-up ({status})"
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SimError::Harness(if claims.is_some() {
                    format!(
                        "the {count} servers did not share the {} partitions out within {}s: \
                         claims per server {:?}; see their logs",
                        topology::PARTITIONS,
                        wait.as_secs(),
                        shared
                    )
                } else {
                    format!(
                        "no youtube_server consumes every partition of {} on {} after {}s; start one, or drop --external-server",
                        topology::RequestKind::Users.unpartitioned(),
                        ytnotify::broker::redact(self.url),
                        wait.as_secs()
                    )
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Logs every user in (those without subscriptions, and those with
    /// browser clients, with a history) and makes every subscription,
    /// through the server, pipelined on all clients.
    async fn setup(&self, clients: &[Arc<Client>]) -> Result<Setup, SimError> {
        let s = self.scenario;
        let browsing = s.browser_users();
        let total: u64 = self
            .plan
            .subscriptions
            .iter()
            .enumerate()
            .map(|(user, follows)| {
                if (user as u32) < browsing {
                    follows.len() as u64 + 1
                } else {
                    follows.len().max(1) as u64
                }
            })
            .sum();
        let progress = bar(self.options, "set-up", total);
        let window = Arc::new(Semaphore::new(s.setup_window as usize));
        let started = std::time::Instant::now();
        let mut lanes = Vec::new();
        for (lane, client) in clients.iter().enumerate() {
            let mut requests = Vec::new();
            for user in (lane as u32..s.users).step_by(clients.len()) {
                let follows = &self.plan.subscriptions[user as usize];
                if user < browsing {
                    // A history, so that each of the user's browser
                    // clients reads every notification from its own position.
                    requests.push(Request::Login {
                        user: user_name(user),
                        history: true,
                    });
                } else if follows.is_empty() {
                    requests.push(Request::login(user_name(user)));
                }
                for &youtuber in follows {
                    requests.push(Request::ChangeSubscription {
                        user: user_name(user),
                        youtuber: youtuber_name(youtuber),
                        subscribe: true,
                    });
                }
            }
            let (client, window, progress) =
                (Arc::clone(client), Arc::clone(&window), progress.clone());
            lanes.push(tokio::spawn(async move {
                let mut waits = Vec::new();
                for request in requests {
                    let permit = Arc::clone(&window).acquire_owned().await;
                    let pending = client.send(request).await?;
                    let (client, progress) = (Arc::clone(&client), progress.clone());
                    waits.push(tokio::spawn(async move {
                        let reply = client.wait(pending).await;
                        drop(permit);
                        progress.inc(1);
                        reply
                    }));
                }
                for wait in waits {
                    wait.await.map_err(wait_failed)??;
                }
                Ok::<(), SimError>(())
            }));
        }
        for lane in lanes {
            lane.await.map_err(wait_failed)??;
        }
        progress.finish();
        let seconds = started.elapsed().as_secs_f64();
        Ok(Setup {
            requests: total,
            seconds,
            requests_per_s: total as f64 / seconds.max(1e-9),
            queues: u64::from(s.users),
            bindings: s.subscriptions,
        })
    }

    /// Sends every upload, as the scenario paces them, taking users offline
    /// and back as planned.
    async fn uploads(
        &self,
        clients: &[Arc<Client>],
        receivers: &Arc<Receivers>,
        tally: &Arc<Tally>,
        progress: &ProgressBar,
    ) -> Result<Vec<UploadRecord>, SimError> {
        let s = self.scenario;
        let stamps = Stamps::new(self.plan.uploads.len());
        let window = Arc::new(Semaphore::new(s.upload_window as usize));
        if s.upload_senders > 1 {
            self.upload_lanes(clients, tally, progress, &stamps, &window)
                .await?;
            return Ok(self.upload_records(&stamps));
        }
        let started = tokio::time::Instant::now();
        let mut waits = Vec::new();
        for (seq, &youtuber) in self.plan.uploads.iter().enumerate() {
            let seq32 = seq as u32;
            let away = |pick: fn(&scenario::OfflineWindow) -> u32| -> Vec<u32> {
                self.plan
                    .offline
                    .iter()
                    .filter(|w| w.from < w.until && pick(w) == seq32)
                    .map(|w| w.user)
                    .collect()
            };
            let (leaving, returning) = (away(|w| w.from), away(|w| w.until));
            if !leaving.is_empty() {
                receivers.open_all(leaving, false).await?;
            }
            if !returning.is_empty() {
                receivers.open_all(returning, true).await?;
            }
            if s.upload_rate > 0.0 {
                let due = Duration::from_secs_f64(seq as f64 / s.upload_rate);
                tokio::time::sleep_until(started + due).await;
            }
            let client = &clients[seq % clients.len()];
            waits
                .push(send_upload(client, &window, seq, youtuber, &stamps, tally, progress).await?);
        }
        for wait in waits {
            wait.await.map_err(wait_failed)?;
        }
        Ok(self.upload_records(&stamps))
    }

    fn upload_records(&self, stamps: &Stamps) -> Vec<UploadRecord> {
        self.plan
            .uploads
            .iter()
            .enumerate()
            .map(|(seq, &youtuber)| UploadRecord {
                youtuber,
                sent: Stamps::get(&stamps.sent[seq]),
                done: Stamps::get(&stamps.done[seq]),
            })
            .collect()
    }

    /// Sends every upload from `upload_senders` tasks at once, in one
    /// window: each task a share of the YouTubers, their uploads in order.
    async fn upload_lanes(
        &self,
        clients: &[Arc<Client>],
        tally: &Arc<Tally>,
        progress: &ProgressBar,
        stamps: &Arc<Stamps>,
        window: &Arc<Semaphore>,
    ) -> Result<(), SimError> {
        let senders = self.scenario.upload_senders as usize;
        let mut lanes = vec![Vec::new(); senders];
        for (seq, &youtuber) in self.plan.uploads.iter().enumerate() {
            lanes[youtuber as usize % senders].push((seq, youtuber));
        }
        let mut tasks = Vec::new();
        for (lane, uploads) in lanes.into_iter().enumerate() {
            let (client, window, stamps, tally, progress) = (
                Arc::clone(&clients[lane % clients.len()]),
                Arc::clone(window),
                Arc::clone(stamps),
                Arc::clone(tally),
                progress.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut waits = Vec::new();
                for (seq, youtuber) in uploads {
                    waits.push(
                        send_upload(&client, &window, seq, youtuber, &stamps, &tally, &progress)
                            .await?,
                    );
                }
                for wait in waits {
                    wait.await.map_err(wait_failed)?;
                }
                Ok::<(), SimError>(())
            }));
        }
        for task in tasks {
            task.await.map_err(wait_failed)??;
        }
        Ok(())
    }

    /// Sends the churn: each user's changes on one client, in order.
    async fn churn(
        &self,
        clients: &[Arc<Client>],
        tally: &Arc<Tally>,
        progress: &ProgressBar,
    ) -> Result<Vec<ChangeRecord>, SimError> {
        let changes = &self.plan.churn;
        let stamps = Stamps::new(changes.len());
        let window = Arc::new(Semaphore::new(self.scenario.churn_window as usize));
        let mut lanes = vec![Vec::new(); clients.len()];
        for (index, change) in changes.iter().enumerate() {
            lanes[change.user as usize % clients.len()].push((index, *change));
        }
        let mut tasks = Vec::new();
        let rate = self.scenario.churn_rate;
        let started = tokio::time::Instant::now();
        for (lane, client) in lanes.into_iter().zip(clients) {
            let (client, window, stamps, tally, progress) = (
                Arc::clone(client),
                Arc::clone(&window),
                Arc::clone(&stamps),
                Arc::clone(tally),
                progress.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut waits = Vec::new();
                for (index, change) in lane {
                    if rate > 0.0 {
                        let due = Duration::from_secs_f64(index as f64 / rate);
                        tokio::time::sleep_until(started + due).await;
                    }
                    let permit = Arc::clone(&window).acquire_owned().await;
                    Stamps::set(&stamps.sent[index], tally.now());
                    let pending = client
                        .send(Request::ChangeSubscription {
                            user: user_name(change.user),
                            youtuber: youtuber_name(change.youtuber),
                            subscribe: change.subscribe,
                        })
                        .await?;
                    let (client, stamps, tally, progress) = (
                        Arc::clone(&client),
                        Arc::clone(&stamps),
                        Arc::clone(&tally),
                        progress.clone(),
                    );
                    waits.push(tokio::spawn(async move {
                        let reply = client.wait(pending).await;
                        drop(permit);
                        match reply {
                            Ok(Reply::Done { .. }) => Stamps::set(&stamps.done[index], tally.now()),
                            Ok(other) => {
                                tracing::warn!(?other, "unexpected reply to a change");
                            }
                            Err(ytnotify::Error::Refused(reason)) => {
                                tracing::warn!(%reason, "a change was refused");
                                stamps.refused[index].store(true, Ordering::Release);
                                Stamps::set(&stamps.done[index], tally.now());
                            }
                            Err(err) => tracing::warn!(%err, "a change was not answered"),
                        }
                        progress.inc(1);
                    }));
                }
                for wait in waits {
                    wait.await.map_err(wait_failed)?;
                }
                Ok::<(), SimError>(())
            }));
        }
        for task in tasks {
            task.await.map_err(wait_failed)??;
        }
        Ok(changes
            .iter()
            .enumerate()
            .map(|(index, &change)| ChangeRecord {
                change,
                sent: Stamps::get(&stamps.sent[index]),
                done: Stamps::get(&stamps.done[index]),
                applied: !stamps.refused[index].load(Ordering::Acquire),
            })
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        started_at: String,
        setup: Setup,
        tally: &Tally,
        run_started: u64,
        uploads: &[UploadRecord],
        changes: &[ChangeRecord],
        expectations: &Expectations,
        [after_setup, before_run, after_run]: [Vec<Option<Usage>>; 3],
    ) -> Report {
        let s = self.scenario;
        let sent = uploads
            .iter()
            .filter_map(|u| u.sent)
            .chain(changes.iter().filter_map(|c| c.sent));
        let first_sent = sent.min().unwrap_or(run_started);
        let answered: Vec<u64> = uploads
            .iter()
            .filter_map(|u| u.done)
            .chain(changes.iter().filter_map(|c| c.done))
            .collect();
        let last_answer = answered.iter().copied().max().unwrap_or(first_sent);
        let seen = deliveries(tally, s.uploads);
        let changes_per_s = (!changes.is_empty()).then(|| {
            let first = changes.iter().filter_map(|c| c.sent).min().unwrap_or(0);
            let last = changes.iter().filter_map(|c| c.done).max().unwrap_or(first);
            let confirmed = changes
                .iter()
                .filter(|c| c.done.is_some() && c.applied)
                .count();
            per_second(confirmed as u64, last.saturating_sub(first))
        });
        let failed = uploads.iter().filter(|u| u.done.is_none()).count()
            + changes
                .iter()
                .filter(|c| c.done.is_none() || !c.applied)
                .count();
        let check = tally.with_counts(|counts| report::Check {
            redelivered: counts.redelivered,
            republished: counts.republished,
            ..check::check(expectations, &counts.per_pair)
        });
        let run_seconds = last_answer
            .max(tally.last_delivery())
            .saturating_sub(first_sent) as f64
            / 1e9;
        let run_wall = tally.now().saturating_sub(run_started) as f64 / 1e9;
        let cpu_of = |before: &Option<Usage>, after: &Option<Usage>| {
            before
                .zip(*after)
                .map(|(a, b)| b.cpu_seconds - a.cpu_seconds)
        };
        let each: Vec<OneServer> = if after_run.len() > 1 {
            before_run
                .iter()
                .zip(&after_run)
                .map(|(before, after)| {
                    let cpu = cpu_of(before, after);
                    OneServer {
                        rss_mb_end: after.map(|u| u.rss_mb),
                        peak_rss_mb: after.map(|u| u.peak_rss_mb),
                        cpu_seconds: cpu,
                        cpu_cores: cpu.map(|cpu| cpu / run_wall.max(1e-9)),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let (after_setup, before_run, after_run) = (
            harness::summed(&after_setup),
            harness::summed(&before_run),
            harness::summed(&after_run),
        );
        let cpu = cpu_of(&before_run, &after_run);
        Report {
            scenario: s.clone(),
            started_at,
            setup,
            run: Run {
                seconds: run_seconds,
                uploads: uploads.len() as u64,
                changes: changes.len() as u64,
                requests_per_s: per_second(
                    answered.len() as u64,
                    last_answer.saturating_sub(first_sent),
                ),
                deliveries: seen.received,
                streamed_deliveries: tally.streamed(),
                deliveries_per_s: seen.per_s,
                catch_up_deliveries: seen.catch_up,
                latency_ms: seen.latency_ms,
                fanout_ms: seen.fanout_ms,
                changes_per_s,
                failed_requests: failed as u64,
            },
            check,
            server: ServerUsage {
                mode: self.options.server.label().to_owned(),
                database: if self.options.postgres.is_some() {
                    "postgres"
                } else {
                    "sqlite"
                }
                .to_owned(),
                servers: self.options.servers,
                cluster: self.cluster,
                each,
                rss_mb_after_setup: after_setup.map(|u| u.rss_mb),
                rss_mb_end: after_run.map(|u| u.rss_mb),
                peak_rss_mb: after_run.map(|u| u.peak_rss_mb),
                cpu_seconds: cpu,
                cpu_cores: cpu.map(|cpu| cpu / run_wall.max(1e-9)),
            },
            ceiling: Ceiling {
                seconds: 0.0,
                publishes: 0,
                deliveries: 0,
                deliveries_per_s: 0.0,
                latency_ms: Latency::default(),
                fanout_ms: Latency::default(),
                changes_per_s: None,
                lost: 0,
                duplicates: 0,
            },
            ratios: Ratios {
                deliveries_per_s: None,
                latency_p50: None,
                latency_p99: None,
                changes_per_s: None,
            },
            browsers: None,
            interactions: None,
            broker: None,
        }
    }

    /// The same queues, bindings, bodies and upload pattern with plain lapin.
    async fn ceiling(&self, changes: &[ChangeRecord]) -> Result<Ceiling, SimError> {
        let s = self.scenario;
        let tally = Tally::new(s.uploads);
        let receivers = Arc::new(
            Receivers::connect(self.url, s.receivers, Arc::clone(&tally), "ceiling").await?,
        );
        receivers.open_all((0..s.users).collect(), true).await?;
        let connection = ytnotify::broker::connect(
            &ytnotify::broker::Endpoint::new(self.url),
            "simulate-ceiling",
        )
        .await?;
        let publishing = bar(self.options, "ceiling", u64::from(s.uploads));
        let started = std::time::Instant::now();
        ceiling::publish(&connection, s, &self.plan.uploads, &tally, &publishing).await?;
        publishing.finish();
        let mut audience: HashMap<u32, Vec<u32>> = HashMap::new();
        for (user, youtuber) in check::final_following(&self.plan.subscriptions, changes) {
            audience.entry(youtuber).or_default().push(user);
        }
        let expected: Vec<(u32, u32)> = self
            .plan
            .uploads
            .iter()
            .enumerate()
            .flat_map(|(seq, youtuber)| {
                audience
                    .get(youtuber)
                    .into_iter()
                    .flatten()
                    .map(move |&user| (user, seq as u32))
            })
            .collect();
        let draining = bar(self.options, "drain", 0);
        drain(&tally, &expected, s.drain_timeout, &draining).await;
        Arc::clone(&receivers).shut().await?;
        let seconds = started.elapsed().as_secs_f64();
        let found = Expectations {
            expected,
            ..Expectations::default()
        };
        let check = tally.with_counts(|counts| report::Check {
            redelivered: counts.redelivered,
            republished: counts.republished,
            ..check::check(&found, &counts.per_pair)
        });
        let seen = deliveries(&tally, s.uploads);
        let changes_per_s = if self.plan.churn.is_empty() {
            None
        } else {
            let binding = bar(self.options, "bindings", self.plan.churn.len() as u64);
            let rate =
                ceiling::binding_changes(&connection, &self.plan.churn, s.churn_window, &binding)
                    .await?;
            binding.finish();
            Some(rate)
        };
        let _ = connection.close(200, "ceiling done".into()).await;
        Ok(Ceiling {
            seconds,
            publishes: u64::from(s.uploads),
            deliveries: seen.received,
            deliveries_per_s: seen.per_s,
            latency_ms: seen.latency_ms,
            fanout_ms: seen.fanout_ms,
            changes_per_s,
            lost: check.lost,
            duplicates: check.duplicates,
        })
    }
}

/// Sends upload `seq` once the window has room, stamping when it went, and
/// waits for its reply in a task of its own, which stamps when it came and
/// gives the room back.
async fn send_upload(
    client: &Arc<Client>,
    window: &Arc<Semaphore>,
    seq: usize,
    youtuber: u32,
    stamps: &Arc<Stamps>,
    tally: &Arc<Tally>,
    progress: &ProgressBar,
) -> Result<tokio::task::JoinHandle<()>, SimError> {
    let seq32 = seq as u32;
    let permit = Arc::clone(window).acquire_owned().await;
    Stamps::set(&stamps.sent[seq], tally.mark_sent(seq32));
    let pending = client
        .send(Request::Upload {
            youtuber: youtuber_name(youtuber),
            video: title(seq32),
        })
        .await?;
    let (client, stamps, tally, progress) = (
        Arc::clone(client),
        Arc::clone(stamps),
        Arc::clone(tally),
        progress.clone(),
    );
    Ok(tokio::spawn(async move {
        let reply = client.wait(pending).await;
        drop(permit);
        match reply {
            Ok(_) => Stamps::set(&stamps.done[seq], tally.now()),
            Err(err) => tracing::warn!(%err, "an upload was not answered"),
        }
        progress.inc(1);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_shared_out_when_every_server_holds_its_share() {
        assert!(shares_out(&[8], 1));
        assert!(shares_out(&[4, 4], 2));
        assert!(shares_out(&[3, 3, 2], 3));
        assert!(shares_out(&[2, 2, 2, 2], 4));
        // A server still without partitions, one over its share, one unclaimed.
        assert!(!shares_out(&[8], 2));
        assert!(!shares_out(&[5, 3], 2));
        assert!(!shares_out(&[4, 3], 2));
        assert!(!shares_out(&[], 1));
    }
}
