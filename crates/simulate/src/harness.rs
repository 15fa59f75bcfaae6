//! What a run stands on: a vhost of its own, a scratch directory for the
//! database, and the server under test — a child `youtube_server` whose memory
//! and CPU can be read from `/proc`, the library's server in this process, or
//! one that is already running.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{sync::oneshot, task::JoinHandle};

use super::SimError;
use ytnotify::{
    broker_url,
    server::{ServerConfig, YoutubeServer},
    store::Database,
    topology::QueueType,
};

/// Which server the simulator drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMode {
    /// Start this `youtube_server` executable as a child process (measured).
    Spawn(PathBuf),
    /// Run the library's server inside the simulator (not measured apart).
    InProcess,
    /// A server already consumes the vhost's queues (not measured).
    External,
}

impl ServerMode {
    /// The `youtube_server` beside the running executable, if there is one
    /// (as in `target/release/`), else the in-process server.
    pub fn beside_current_exe() -> ServerMode {
        let found = std::env::current_exe().ok().and_then(|exe| {
            let dir = exe.parent()?;
            // Test binaries live one level down, in `deps/`.
            [dir.to_owned(), dir.parent()?.to_owned()]
                .into_iter()
                .map(|dir| dir.join("youtube_server"))
                .find(|candidate| candidate.is_file())
        });
        found.map_or(ServerMode::InProcess, ServerMode::Spawn)
    }

    pub fn label(&self) -> &'static str {
        match self {
            ServerMode::Spawn(_) => "process",
            ServerMode::InProcess => "in-process",
            ServerMode::External => "external",
        }
    }
}

/// The `rabbitmqctl` a run's vhost is made with: the machine's, which
/// talks to the broker of this machine, or one aimed at a node of a private
/// cluster (`-n`), as `scripts/cluster.sh` calls it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rabbitmqctl {
    /// `None`: the machine's broker.
    node: Option<String>,
}

impl Rabbitmqctl {
    /// Talks to the cluster through its node `node` (any node will do).
    pub fn on_node(node: impl Into<String>) -> Rabbitmqctl {
        Rabbitmqctl {
            node: Some(node.into()),
        }
    }

    fn run(&self, args: &[&str]) -> Result<(), SimError> {
        let mut command = match &self.node {
            Some(node) => {
                // The nodes run with root's Erlang cookie; the wrapper in
                // /usr/sbin would run the tool as the rabbitmq user.
                let direct = Path::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
                let mut command = Command::new(if direct.is_file() {
                    direct
                } else {
                    Path::new("rabbitmqctl")
                });
                command.args(["-n", node]);
                command
            }
            None => Command::new("rabbitmqctl"),
        };
        let output = command.args(args).output().map_err(|e| {
            SimError::Harness(format!(
                "cannot run rabbitmqctl ({e}); a fresh vhost per run needs it on this machine \
                 (or pass --no-fresh-vhost to use the URL's vhost as it is)"
            ))
        })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(SimError::Harness(format!(
                "rabbitmqctl {}{} failed: {}",
                self.node
                    .as_ref()
                    .map(|node| format!("-n {node} "))
                    .unwrap_or_default(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }
}

/// The vhost a run uses; a fresh one is deleted when dropped, unless kept.
/// A PostgreSQL database made for one run (`ytnotify_sim_<random>`),
/// dropped when the run ends, pass or fail.
pub struct ScratchDatabase {
    /// Its URL, for `--db`.
    pub url: String,
    admin_url: String,
    name: String,
}

impl ScratchDatabase {
    /// Makes the database on the server of `admin_url`.
    pub async fn create(admin_url: &str) -> Result<ScratchDatabase, SimError> {
        let name = format!(
            "ytnotify_sim_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let url = Database::postgres_sibling(admin_url, &name)
            .map_err(|err| SimError::Harness(format!("--postgres: {err}")))?;
        admin(admin_url, &format!("CREATE DATABASE {name}")).await?;
        tracing::info!("the run's database is {name}");
        Ok(ScratchDatabase {
            url,
            admin_url: admin_url.to_owned(),
            name,
        })
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Its own thread and runtime: the run's runtime may be the one this
        // drop would block.
        let (admin_url, sql) = (
            self.admin_url.clone(),
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(admin(&admin_url, &sql)).ok()
        })
        .join();
    }
}

/// Runs one statement on the PostgreSQL server of `admin_url`.
async fn admin(admin_url: &str, sql: &str) -> Result<(), SimError> {
    let failed = |err: tokio_postgres::Error| {
        let cause = std::error::Error::source(&err)
            .map(|cause| format!(": {cause}"))
            .unwrap_or_default();
        SimError::Harness(format!(
            "PostgreSQL at {} ({sql}): {err}{cause}; give --postgres the URL of a role that \
             may create databases",
            ytnotify::store::Database::Postgres(admin_url.to_owned()).shown()
        ))
    };
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .map_err(failed)?;
    let driver = tokio::spawn(connection);
    let outcome = client.batch_execute(sql).await.map_err(failed);
    drop(client);
    let _ = driver.await;
    outcome
}

pub struct Vhost {
    /// The run's URL, or the URLs of a cluster's nodes, comma-separated.
    pub url: String,
    name: Option<String>,
    ctl: Rabbitmqctl,
    pub keep: bool,
}

impl Vhost {
    /// Creates `ytnotify-sim-<random>` and gives `user` (from the URL) every
    /// permission. `base_url` may list a cluster's nodes: the vhost is the
    /// cluster's, and the run's URL lists every node on it.
    pub fn fresh(base_url: &str, ctl: &Rabbitmqctl) -> Result<Vhost, SimError> {
        let name = format!(
            "ytnotify-sim-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let nodes = broker_url::parse_list(base_url)?;
        ctl.run(&["add_vhost", &name])?;
        let vhost = Vhost {
            url: nodes
                .iter()
                .map(|node| node.with_vhost(&name).to_string())
                .collect::<Vec<_>>()
                .join(","),
            name: Some(name.clone()),
            ctl: ctl.clone(),
            keep: false,
        };
        // Every node of a list has the same user (`parse_list` checks it).
        ctl.run(&[
            "set_permissions",
            "-p",
            &name,
            nodes[0].user(),
            ".*",
            ".*",
            ".*",
        ])?;
        Ok(vhost)
    }

    /// The URL's own vhost, used as it is and never deleted.
    pub fn existing(url: &str) -> Vhost {
        Vhost {
            url: url.to_owned(),
            name: None,
            ctl: Rabbitmqctl::default(),
            keep: true,
        }
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        if let (Some(name), false) = (&self.name, self.keep) {
            // Best effort: a leftover vhost is harmless and easy to delete by hand.
            let _ = self.ctl.run(&["delete_vhost", name]);
        }
    }
}

/// A scratch directory, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new() -> Result<ScratchDir, SimError> {
        let dir =
            std::env::temp_dir().join(format!("ytnotify-sim-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| SimError::Harness(format!("cannot create {}: {e}", dir.display())))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Memory and CPU of a process, from `/proc/<pid>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    pub cpu_seconds: f64,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Usage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Usage::parse(&status, &stat, clock_ticks())
    }

    fn parse(status: &str, stat: &str, ticks_per_second: f64) -> Option<Usage> {
        let kilobytes = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
        };
        // Fields after "pid (comm) ": state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        Some(Usage {
            rss_mb: kilobytes("VmRSS:")? / 1024.0,
            peak_rss_mb: kilobytes("VmHWM:")? / 1024.0,
            cpu_seconds: (ticks(14)? + ticks(15)?) / ticks_per_second,
        })
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// What the servers under test are started with, beside the broker and
/// the database.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSettings {
    /// The type to declare the vhost's queues with; `None`: the server's own
    /// choice.
    pub queue_type: Option<QueueType>,
    /// `--celebrities-from` (0: never).
    pub celebrities_from: u32,
}

/// The server under test, running.
pub enum Server {
    Child(Child),
    InProcess {
        shutdown: oneshot::Sender<()>,
        handle: JoinHandle<ytnotify::Result<()>>,
    },
    External,
}

impl Server {
    /// Starts the server the mode asks for, on `url`, with its state in
    /// `database`, as `settings` say.
    pub async fn start(
        mode: &ServerMode,
        url: &str,
        database: &Database,
        settings: ServerSettings,
        log: &Path,
    ) -> Result<Server, SimError> {
        let db = match database {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => url.clone(),
        };
        match mode {
            ServerMode::Spawn(exe) => {
                let log = std::fs::File::create(log).map_err(|e| {
                    SimError::Harness(format!("cannot create {}: {e}", log.display()))
                })?;
                // The broker and the database by the environment: a
                // password on the command line would be on show to every
                // user of the machine.
                let mut command = Command::new(exe);
                command.env("AMQP_URL", url).env("YT_DB", &db);
                if let Some(queue_type) = settings.queue_type {
                    command.env("YT_QUEUE_TYPE", queue_type.name());
                }
                if settings.celebrities_from > 0 {
                    command.env("YT_CELEBRITIES_FROM", settings.celebrities_from.to_string());
                }
                let child = command
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| {
                        SimError::Harness(format!("cannot start {}: {e}", exe.display()))
                    })?;
                Ok(Server::Child(child))
            }
            ServerMode::InProcess => {
                let mut config =
                    ServerConfig::new(ytnotify::broker::Endpoint::new(url), database.clone());
                config.print_events = false;
                config.queue_type = settings.queue_type;
                config.celebrities_from =
                    (settings.celebrities_from > 0).then_some(u64::from(settings.celebrities_from));
                let server = YoutubeServer::start(config).await?;
                let (shutdown, stopped) = oneshot::channel::<()>();
                let handle = tokio::spawn(server.serve(async {
                    let _ = stopped.await;
                }));
                Ok(Server::InProcess { shutdown, handle })
            }
            ServerMode::External => Ok(Server::External),
        }
    }

    /// The process id of a child server.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Server::Child(child) => Some(child.id()),
            _ => None,
        }
    }

    /// The server's memory and CPU, when it is a child process.
    pub fn usage(&self) -> Option<Usage> {
        self.pid().and_then(Usage::of)
    }

    /// Whether a child server has already exited (with its status).
    pub fn exited(&mut self) -> Option<String> {
        match self {
            Server::Child(child) => child
                .try_wait()
                .ok()
                .flatten()
                .map(|status| status.to_string()),
            _ => None,
        }
    }

    /// Stops the server cleanly: SIGTERM for a child (SIGKILL after 10 s).
    pub async fn stop(self) {
        match self {
            Server::Child(mut child) => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            Server::InProcess { shutdown, handle } => {
                let _ = shutdown.send(());
                let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
            }
            Server::External => {}
        }
    }
}

/// The servers under test: one, or several on one PostgreSQL database,
/// which share the request queues' partitions.
pub struct Servers {
    running: Vec<Server>,
}

impl Servers {
    /// Starts `count` servers as `mode` says, all on `url` and `database`;
    /// server `i` logs to `youtube_server-<i>.log` in `logs`.
    pub async fn start(
        count: u32,
        mode: &ServerMode,
        url: &str,
        database: &Database,
        settings: ServerSettings,
        logs: &Path,
    ) -> Result<Servers, SimError> {
        let mut servers = Servers {
            running: Vec::new(),
        };
        for i in 0..count {
            let log = Servers::log(logs, i);
            match Server::start(mode, url, database, settings, &log).await {
                Ok(server) => servers.running.push(server),
                Err(err) => {
                    servers.stop().await;
                    return Err(err);
                }
            }
        }
        Ok(servers)
    }

    /// Where server `i` writes its log.
    pub fn log(logs: &Path, i: u32) -> PathBuf {
        logs.join(format!("youtube_server-{i}.log"))
    }

    pub fn count(&self) -> usize {
        self.running.len()
    }

    /// The process ids of the servers that are child processes.
    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().filter_map(Server::pid).collect()
    }

    /// Each server's memory and CPU, when they are child processes.
    pub fn usage(&self) -> Vec<Option<Usage>> {
        self.running.iter().map(Server::usage).collect()
    }

    /// The first server that has already exited, by index, with its status.
    pub fn exited(&mut self) -> Option<(usize, String)> {
        self.running
            .iter_mut()
            .enumerate()
            .find_map(|(i, server)| server.exited().map(|status| (i, status)))
    }

    /// Stops every server, all at once.
    pub async fn stop(mut self) {
        let running = std::mem::take(&mut self.running);
        futures::future::join_all(running.into_iter().map(Server::stop)).await;
    }
}

/// Servers left running when the run ends some other way (a panic, a
/// signal that drops the run) are killed: never left behind.
impl Drop for Servers {
    fn drop(&mut self) {
        for server in &mut self.running {
            if let Server::Child(child) = server {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Memory and CPU summed over servers: `None` unless every one was read (a
/// sum that misses a server would be taken for the whole).
pub fn summed(usage: &[Option<Usage>]) -> Option<Usage> {
    usage.iter().try_fold(
        Usage {
            rss_mb: 0.0,
            peak_rss_mb: 0.0,
            cpu_seconds: 0.0,
        },
        |sum, one| {
            let one = (*one)?;
            Some(Usage {
                rss_mb: sum.rss_mb + one.rss_mb,
                peak_rss_mb: sum.peak_rss_mb + one.peak_rss_mb,
                cpu_seconds: sum.cpu_seconds + one.cpu_seconds,
            })
        },
    )
}

/// A RabbitMQ cluster of three private nodes, from `scripts/cluster.sh up`;
/// stopped when dropped if this run started it.
pub struct Cluster {
    script: PathBuf,
    /// The nodes' AMQP URLs on vhost `/`, comma-separated.
    pub urls: String,
    /// A node's Erlang name, for `rabbitmqctl -n`.
    pub node: String,
    /// Whether this run started it (and so stops it).
    started: bool,
}

impl Cluster {
    /// The script: `explicit`, else `scripts/cluster.sh` of the workspace
    /// this program was built in, else of the current directory or one
    /// above it.
    pub fn find_script(explicit: Option<&Path>) -> Result<PathBuf, SimError> {
        if let Some(path) = explicit {
            return if path.is_file() {
                Ok(path.to_owned())
            } else {
                Err(SimError::Harness(format!(
                    "there is no cluster script at {}",
                    path.display()
                )))
            };
        }
        let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let here = std::env::current_dir().unwrap_or_default();
        std::iter::once(built_in.as_path())
            .chain(here.ancestors())
            .map(|dir| dir.join("scripts/cluster.sh"))
            .find(|candidate| candidate.is_file())
            .ok_or_else(|| {
                SimError::Harness(
                    "--cluster needs scripts/cluster.sh: run from the workspace, or give its \
                     path with --cluster-script"
                        .to_owned(),
                )
            })
    }

    /// Starts the cluster with `script up`, or joins the one already up
    /// (left running at the end). Blocks while the nodes boot (about 20 s).
    pub fn up(script: &Path) -> Result<Cluster, SimError> {
        if !is_root() {
            return Err(SimError::Harness(
                "--cluster needs root: the cluster's nodes run with root's Erlang cookie (run \
                 simulate with sudo)"
                    .to_owned(),
            ));
        }
        let state = cluster_dir();
        let already = state.join("ready").is_file();
        tracing::info!(
            "{} the RabbitMQ cluster with {} up",
            if already { "joining" } else { "starting" },
            script.display()
        );
        let output = Command::new(script)
            .arg("up")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| SimError::Harness(format!("cannot run {}: {e}", script.display())))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            let last = stderr.lines().last().unwrap_or_default();
            return Err(SimError::Harness(format!(
                "{} up failed ({}): {last}",
                script.display(),
                output.status
            )));
        }
        let mut cluster = Cluster {
            script: script.to_owned(),
            urls: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            node: String::new(),
            started: !already,
        };
        // Lines `n name amqp_port dist_port pid_file`, as the script writes them.
        let nodes = std::fs::read_to_string(state.join("nodes")).unwrap_or_default();
        cluster.node = nodes
            .lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| line.split_whitespace().nth(1))
            .map(str::to_owned)
            .ok_or_else(|| {
                SimError::Harness(format!(
                    "{} lists no node of the cluster",
                    state.join("nodes").display()
                ))
            })?;
        if cluster.urls.is_empty() {
            return Err(SimError::Harness(format!(
                "{} up printed no URL",
                script.display()
            )));
        }
        Ok(cluster)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.started {
            let stopped = Command::new(&self.script)
                .arg("down")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !stopped.is_ok_and(|status| status.success()) {
                tracing::warn!(
                    "could not stop the cluster: run {} down",
                    self.script.display()
                );
            }
        }
    }
}

/// The cluster script's state directory, as it finds it.
fn cluster_dir() -> PathBuf {
    std::env::var_os("YT_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/ytnotify-cluster"))
}

/// Whether this process runs as root (user id 0, from `/proc`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .map(|effective| effective == "0")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_summed_only_when_every_server_was_read() {
        let one = Usage {
            rss_mb: 10.0,
            peak_rss_mb: 12.0,
            cpu_seconds: 1.5,
        };
        let sum = summed(&[Some(one), Some(one)]).unwrap();
        assert_eq!(
            (sum.rss_mb, sum.peak_rss_mb, sum.cpu_seconds),
            (20.0, 24.0, 3.0)
        );
        assert_eq!(summed(&[Some(one), None]), None);
    }

    #[test]
    fn usage_reads_proc_files() {
        let status = "Name:\tyoutube_server\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        let stat = "1234 (youtube server) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4";
        let usage = Usage::parse(status, stat, 100.0).unwrap();
        assert_eq!(usage.rss_mb, 10.0);
        assert_eq!(usage.peak_rss_mb, 20.0);
        assert_eq!(usage.cpu_seconds, 3.0);
        // This very process has a /proc entry.
        assert!(Usage::of(std::process::id()).unwrap().rss_mb > 0.0);
    }
}
