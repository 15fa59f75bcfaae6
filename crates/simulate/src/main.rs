//! `simulate`: drives youtube_server with many simulated users and YouTubers,
//! checks that every notification arrives exactly once, and compares the
//! throughput with the broker's own ceiling for the same shape; and
//! `simulate proxy`, a TCP proxy that cuts connections, for chaos runs.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ytnotify::cli::{self, BrokerArgs};
use ytnotify_simulate::{
    self as simulate, Options, PRESETS, Scenario, Spread, WsAcks, bench,
    harness::ServerMode,
    proxy::{CutEvery, Proxy, ProxyConfig},
    report::Report,
};

/// Load simulator for youtube_server: many users and YouTubers over real
/// RabbitMQ connections, an exactly-once check, and the ratio to the broker's
/// own ceiling.
#[derive(Debug, Parser)]
#[command(name = "simulate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one scenario and print its report
    Run(Box<RunArgs>),
    /// Render saved JSON reports into BENCHMARKS.md and a plot
    Render(RenderArgs),
    /// Forward TCP connections to an upstream (RabbitMQ) and cut them all at
    /// random intervals, or now on SIGUSR1 (SIGUSR2 pauses or resumes the
    /// random cuts); one line per cut on stderr
    Proxy(ProxyArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Start from a benchmark scenario
    #[arg(long, value_parser = PRESETS)]
    preset: Option<String>,
    /// Start from a JSON scenario file (fields it omits keep their defaults)
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    scenario: Option<PathBuf>,
    /// Label of the run in reports
    #[arg(long)]
    name: Option<String>,
    /// Simulated users, each with a durable inbox
    #[arg(long)]
    users: Option<u32>,
    /// Simulated YouTubers
    #[arg(long)]
    youtubers: Option<u32>,
    /// Subscriptions made before the run, spread evenly over users
    #[arg(long)]
    subscriptions: Option<u64>,
    /// How subscriptions spread over YouTubers: uniform, zipf, zipf:<exponent>
    #[arg(long)]
    spread: Option<Spread>,
    /// Uploads during the run
    #[arg(long)]
    uploads: Option<u32>,
    /// Uploads per second (0: as fast as the window allows)
    #[arg(long, value_name = "PER_SECOND")]
    upload_rate: Option<f64>,
    /// Run length at --upload-rate (sets --uploads): 10s, 2m
    #[arg(long, value_parser = cli::parse_duration, value_name = "DURATION")]
    duration: Option<Duration>,
    /// Uploads in flight at most (1: one at a time)
    #[arg(long)]
    upload_window: Option<u32>,
    /// Tasks sending uploads at once, each a share of the YouTubers in order (1: one sender,
    /// which waits for each upload's confirm); more need no rate and no offline users
    #[arg(long, value_name = "N")]
    upload_senders: Option<u32>,
    /// The servers' --celebrities-from: uploads of a YouTuber with at least N subscribers go
    /// once to a stream that each subscriber reads, not into every inbox (0: never)
    #[arg(long, value_name = "N")]
    celebrities_from: Option<u32>,
    /// Share of users (0 to 1) that close their inbox for a while and come back
    #[arg(long)]
    offline_share: Option<f64>,
    /// Subscription changes (subscribe/unsubscribe) during the run
    #[arg(long)]
    churn: Option<u32>,
    /// How many users make those changes (0: all)
    #[arg(long)]
    churn_users: Option<u32>,
    /// Subscription changes in flight at most
    #[arg(long)]
    churn_window: Option<u32>,
    /// Subscription changes per second (0: as fast as the window allows)
    #[arg(long, value_name = "PER_SECOND")]
    churn_rate: Option<f64>,
    /// Connections that send requests
    #[arg(long)]
    clients: Option<u32>,
    /// Channels that receive notifications (four per connection)
    #[arg(long)]
    receivers: Option<u32>,
    /// How long one request may wait for the server's reply [default: 2m]
    #[arg(long, value_parser = cli::parse_duration, value_name = "DURATION")]
    request_timeout: Option<Duration>,
    /// How long to wait for the last notifications after the last reply
    #[arg(long, value_parser = cli::parse_duration, value_name = "DURATION")]
    drain_timeout: Option<Duration>,
    /// Seed of every random choice: the same seed, the same run
    #[arg(long)]
    seed: Option<u64>,
    /// Browser-like clients reading Server-Sent Events through gateways
    /// (user i gets clients i, i + users, ...)
    #[arg(long, value_name = "N")]
    sse_clients: Option<u32>,
    /// Browser-like clients on a WebSocket through gateways
    #[arg(long, value_name = "N")]
    ws_clients: Option<u32>,
    /// gateway processes started for the browser clients [default: 2]
    #[arg(long, value_name = "K")]
    gateways: Option<u32>,
    /// How WebSocket clients acknowledge: socket (an ack message) or http
    /// (POST /api/users/<name>/ack, as SSE clients do)
    #[arg(long, value_name = "HOW")]
    ws_acks: Option<WsAcks>,
    /// Share (0 to 1) of the notifications each user received whose video it
    /// likes, through the server, once every notification has arrived
    #[arg(long, value_name = "SHARE")]
    like_share: Option<f64>,
    /// Share (0 to 1) of them it comments on
    #[arg(long, value_name = "SHARE")]
    comment_share: Option<f64>,
    /// Which received videos a user likes or comments on, by place in its
    /// feed (newest first): uniform, zipf, zipf:<exponent> [default: zipf]
    #[arg(long)]
    interaction_spread: Option<Spread>,
    /// Likes and comments in flight at most [default: 256]
    #[arg(long)]
    interaction_window: Option<u32>,
    /// The gateway program to start [default: the one beside this program]
    #[arg(long, env = "YT_GATEWAY_BIN", value_name = "PATH")]
    gateway_bin: Option<PathBuf>,
    /// Drive a youtube_server already running on the URL's vhost
    #[arg(long, conflicts_with_all = ["in_process", "server_bin"])]
    external_server: bool,
    /// Run the server inside this process instead of as a child youtube_server
    /// (its memory and CPU are then not measured)
    #[arg(long)]
    in_process: bool,
    /// The youtube_server to start [default: the one beside this program]
    #[arg(long, env = "YT_SERVER_BIN", value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Use the URL's vhost as it is instead of a fresh one made with rabbitmqctl
    #[arg(long)]
    no_fresh_vhost: bool,
    /// Run the server on PostgreSQL: a database made for the run on this server (its role
    /// must be allowed to create databases), dropped after it [default: a SQLite file]
    #[arg(long, value_name = "URL", conflicts_with = "external_server")]
    postgres: Option<String>,
    /// youtube_server processes to start on the same vhost and database; more than one
    /// needs --postgres (the servers share the request queues' partitions)
    #[arg(long, value_name = "N", default_value_t = 1)]
    servers: u32,
    /// Run on a three-node RabbitMQ cluster started with scripts/cluster.sh (left up if it was
    /// up already), on quorum queues, instead of --amqp-url's broker; needs root
    #[arg(long, conflicts_with = "external_server")]
    cluster: bool,
    /// The cluster script [default: scripts/cluster.sh of the workspace]
    #[arg(long, env = "YT_CLUSTER_SCRIPT", value_name = "PATH")]
    cluster_script: Option<PathBuf>,
    /// Write the servers' logs (youtube_server-<i>.log) into this directory and keep them
    /// [default: a scratch directory, removed after the run]
    #[arg(long, value_name = "DIR")]
    server_logs: Option<PathBuf>,
    /// Report the memory and CPU of the broker's Erlang VM with this process id (once per
    /// node of a cluster on this machine), as in its pid file under /var/lib/rabbitmq/mnesia
    #[arg(long, value_name = "PID")]
    broker_pid: Vec<u32>,
    /// Keep the fresh vhost after the run, for inspection
    #[arg(long)]
    keep_vhost: bool,
    /// Skip the plain-lapin ceiling
    #[arg(long)]
    no_ceiling: bool,
    /// Print the report as JSON instead of text
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// No progress bars
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct ProxyArgs {
    /// Address to listen on (port 0: a free port, printed when listening)
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Address every connection is forwarded to
    #[arg(long, value_name = "ADDR")]
    upstream: SocketAddr,
    /// Cut every open connection at intervals drawn uniformly in MIN..MAX
    /// (0.5s..8s) [default: only on SIGUSR1]
    #[arg(long, value_name = "MIN..MAX")]
    cut_every: Option<CutEvery>,
    /// Start with the random cuts paused (SIGUSR2 resumes them)
    #[arg(long, requires = "cut_every")]
    paused: bool,
    /// Seed of the intervals: the same seed, the same intervals
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// JSON reports written by `simulate run --out`
    #[arg(required = true, value_name = "REPORT")]
    reports: Vec<PathBuf>,
    /// The Markdown file whose generated section to replace (created if missing)
    #[arg(long, default_value = "BENCHMARKS.md", value_name = "FILE")]
    markdown: PathBuf,
    /// A text file describing the machine and date, put above the tables
    #[arg(long, value_name = "FILE")]
    machine: Option<PathBuf>,
    /// Where to draw the ratio plot (SVG), linked from the Markdown as given
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_tracing("warn");
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::Render(args) => render(args),
        Command::Proxy(args) => run_proxy(args),
    };
    cli::exit("simulate", result)
}

impl RunArgs {
    fn scenario(&self) -> anyhow::Result<Scenario> {
        let mut scenario = match (&self.preset, &self.scenario) {
            (Some(preset), _) => Scenario::preset(preset).context("unknown preset")?,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Scenario::from_json(&text).map_err(anyhow::Error::msg)?
            }
            (None, None) => Scenario::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(value) = self.$field.clone() {
                    scenario.$field = value;
                }
            )*};
        }
        set!(
            name,
            users,
            youtubers,
            subscriptions,
            spread,
            uploads,
            upload_rate,
            upload_window,
            upload_senders,
            celebrities_from,
            offline_share,
            churn,
            churn_users,
            churn_window,
            churn_rate,
            clients,
            receivers,
            drain_timeout,
            seed,
            sse_clients,
            ws_clients,
            gateways,
            ws_acks,
            like_share,
            comment_share,
            interaction_spread,
            interaction_window
        );
        if let Some(duration) = self.duration {
            scenario
                .set_duration(duration)
                .map_err(anyhow::Error::msg)?;
        }
        scenario.validate().map_err(anyhow::Error::msg)?;
        Ok(scenario)
    }

    fn options(&self) -> anyhow::Result<Options> {
        let mut options = Options::new(self.broker.endpoint().url);
        options.server = if self.external_server {
            ServerMode::External
        } else if self.in_process {
            ServerMode::InProcess
        } else if let Some(path) = &self.server_bin {
            ServerMode::Spawn(path.clone())
        } else {
            ServerMode::beside_current_exe()
        };
        options.fresh_vhost = !self.no_fresh_vhost && !self.external_server;
        options.keep_vhost = self.keep_vhost;
        options.progress = !self.quiet;
        options.ceiling = !self.no_ceiling;
        options.gateway_bin = self.gateway_bin.clone();
        options.postgres = self.postgres.clone();
        options.servers = self.servers;
        options.cluster = self.cluster;
        options.cluster_script = self.cluster_script.clone();
        options.server_logs = self.server_logs.clone();
        options.broker_pids = self.broker_pid.clone();
        if let Some(timeout) = self.request_timeout {
            options.request_timeout = timeout;
        }
        options.check()?;
        Ok(options)
    }
}

#[tokio::main]
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let scenario = args.scenario()?;
    let options = args.options()?;
    // On SIGINT or SIGTERM the run is dropped: the servers it started are
    // stopped and its vhost deleted on the way out, not left running.
    let report = tokio::select! {
        report = simulate::run(&scenario, &options) => {
            report.with_context(|| format!("scenario {} did not run", scenario.name))?
        }
        () = cli::shutdown_signal() => {
            bail!("scenario {} stopped by a signal; its servers are stopped too", scenario.name)
        }
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{report}");
    }
    if !report.check.ok {
        bail!(
            "the check failed: {} lost, {} duplicates, {} unexpected",
            report.check.lost,
            report.check.duplicates,
            report.check.unexpected
        );
    }
    if let Some(interactions) = report.interactions.as_ref().filter(|i| !i.check.ok) {
        let c = &interactions.check;
        bail!(
            "the interactions' check failed: {} lost, {} duplicates, {} unexpected",
            c.lost,
            c.duplicates,
            c.unexpected
        );
    }
    if let Some(browsers) = report.browsers.as_ref().filter(|b| !b.check.ok) {
        let c = &browsers.check;
        bail!(
            "the browser clients' check failed: {} lost, {} duplicates, {} unexpected, {} never connected",
            c.lost,
            c.duplicates,
            c.unexpected,
            c.not_connected
        );
    }
    Ok(())
}

#[tokio::main]
async fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    use tokio::{
        signal::unix::{SignalKind, signal},
        sync::broadcast::error::RecvError,
    };
    let shutdown = cli::shutdown_signal();
    let mut cut_signal =
        signal(SignalKind::user_defined1()).context("cannot listen for SIGUSR1")?;
    let mut pause_signal =
        signal(SignalKind::user_defined2()).context("cannot listen for SIGUSR2")?;
    let proxy = Proxy::bind(ProxyConfig {
        listen: args.listen,
        upstream: args.upstream,
        cut_every: args.cut_every,
        paused: args.paused,
        seed: args.seed,
    })
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    let handle = proxy.handle();
    let mut cuts = handle.cuts();
    tokio::spawn(async move {
        loop {
            match cuts.recv().await {
                Ok(cut) => eprintln!("{cut}"),
                Err(RecvError::Lagged(missed)) => eprintln!("proxy: {missed} cuts not shown"),
                Err(RecvError::Closed) => break,
            }
        }
    });
    let cutter = handle.clone();
    tokio::spawn(async move {
        while cut_signal.recv().await.is_some() {
            cutter.cut_now();
        }
    });
    tokio::spawn(async move {
        while pause_signal.recv().await.is_some() {
            let on = !handle.random_cuts();
            handle.set_random_cuts(on);
            eprintln!(
                "proxy: random cuts {}",
                if on { "resumed" } else { "paused" }
            );
        }
    });
    eprintln!(
        "proxy: listening on {}, forwarding to {}, {}{}",
        proxy.local_addr()?,
        args.upstream,
        match args.cut_every {
            Some(every) => format!(
                "cutting every {}..{}, seed {}",
                humantime::format_duration(every.min),
                humantime::format_duration(every.max),
                args.seed
            ),
            None => "cutting only on SIGUSR1".to_owned(),
        },
        if args.paused {
            " (paused until SIGUSR2)"
        } else {
            ""
        }
    );
    let summary = proxy.serve(shutdown).await;
    eprintln!("{summary}");
    Ok(())
}

fn render(args: RenderArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a simulate report", path.display()))?;
        reports.push(report);
    }
    // The benchmark order, whatever order the files came in.
    reports.sort_by_key(|r| {
        PRESETS
            .iter()
            .position(|p| *p == r.scenario.name)
            .unwrap_or(PRESETS.len())
    });
    let machine = match &args.machine {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    if let Some(plot) = &args.plot {
        bench::plot(&reports, plot).map_err(anyhow::Error::msg)?;
    }
    let existing = std::fs::read_to_string(&args.markdown).unwrap_or_default();
    let plot_link = args.plot.as_ref().map(|p| p.display().to_string());
    let generated = bench::markdown(&reports, &machine, plot_link.as_deref());
    std::fs::write(&args.markdown, bench::splice(&existing, &generated))
        .with_context(|| format!("cannot write {}", args.markdown.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn flags_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_preset() {
        let cli = Cli::try_parse_from([
            "simulate",
            "run",
            "--preset",
            "classroom",
            "--users",
            "70",
            "--spread",
            "zipf:1.5",
            "--upload-rate",
            "10",
            "--duration",
            "3s",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        let scenario = args.scenario().unwrap();
        assert_eq!(scenario.name, "classroom");
        assert_eq!(scenario.users, 70);
        assert_eq!(scenario.spread, Spread::Zipf { exponent: 1.5 });
        assert_eq!(scenario.uploads, 30);
        assert_eq!(scenario.youtubers, 5);
    }

    #[test]
    fn interactions_are_off_unless_asked() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["simulate", "run", "--preset", "classroom"];
            args.extend_from_slice(extra);
            let Command::Run(args) = Cli::try_parse_from(args).unwrap().command else {
                panic!("run")
            };
            args.scenario()
        };
        let plain = parse(&[]).unwrap();
        assert!(!plain.has_interactions());
        let asked = parse(&[
            "--like-share",
            "0.5",
            "--comment-share",
            "0.2",
            "--interaction-spread",
            "uniform",
            "--interaction-window",
            "32",
        ])
        .unwrap();
        assert!(asked.has_interactions());
        assert_eq!((asked.like_share, asked.comment_share), (0.5, 0.2));
        assert_eq!(asked.interaction_spread, Spread::Uniform);
        assert_eq!(asked.interaction_window, 32);
        let err = parse(&["--like-share", "1.5"]).unwrap_err().to_string();
        assert!(err.contains("like_share"), "{err}");
    }

    #[test]
    fn several_servers_need_postgresql() {
        let options = |extra: &[&str]| {
            let mut args = vec!["simulate", "run", "--preset", "churn"];
            args.extend_from_slice(extra);
            let Command::Run(args) = Cli::try_parse_from(args).unwrap().command else {
                panic!("run")
            };
            args.options()
        };
        let err = options(&["--servers", "2"]).unwrap_err().to_string();
        assert!(err.contains("--postgres"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(options(&[]).unwrap().servers, 1);
        let shared = options(&["--servers", "4", "--postgres", "postgres://127.0.0.1/x"]).unwrap();
        assert_eq!(shared.servers, 4);
        assert!(options(&["--servers", "0"]).is_err());
    }

    #[test]
    fn the_proxy_takes_an_interval_range() {
        let cli = Cli::try_parse_from([
            "simulate",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:5672",
            "--cut-every",
            "0.5s..8s",
            "--seed",
            "9",
        ])
        .unwrap();
        let Command::Proxy(args) = cli.command else {
            panic!("proxy")
        };
        assert_eq!(
            args.cut_every,
            Some(CutEvery {
                min: Duration::from_millis(500),
                max: Duration::from_secs(8)
            })
        );
        assert_eq!(args.seed, 9);
        assert!(
            Cli::try_parse_from([
                "simulate",
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:5672",
                "--cut-every",
                "8s..1s"
            ])
            .is_err()
        );
    }
}
