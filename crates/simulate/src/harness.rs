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
    broker_url::BrokerUrl,
    server::{ServerConfig, YoutubeServer},
    store::Database,
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

fn rabbitmqctl(args: &[&str]) -> Result<(), SimError> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| {
            SimError::Harness(format!(
                "cannot run rabbitmqctl ({e}); a fresh vhost per run needs it on this machine \
             (or pass --no-fresh-vhost to use the URL's vhost as it is)"
            ))
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SimError::Harness(format!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
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
    pub url: String,
    name: Option<String>,
    pub keep: bool,
}

impl Vhost {
    /// Creates `ytnotify-sim-<random>` and gives `user` (from the URL) every permission.
    pub fn fresh(base_url: &str) -> Result<Vhost, SimError> {
        let name = format!(
            "ytnotify-sim-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let base: BrokerUrl = base_url.parse()?;
        rabbitmqctl(&["add_vhost", &name])?;
        let vhost = Vhost {
            url: base.with_vhost(&name).to_string(),
            name: Some(name.clone()),
            keep: false,
        };
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &name,
            base.user(),
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
            let _ = rabbitmqctl(&["delete_vhost", name]);
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
    /// Starts the server the mode asks for, on `url`, with its state in `database`.
    pub async fn start(
        mode: &ServerMode,
        url: &str,
        database: &Database,
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
                let child = Command::new(exe)
                    .env("AMQP_URL", url)
                    .env("YT_DB", &db)
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

    /// The server's memory and CPU, when it is a child process.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Server::Child(child) => Usage::of(child.id()),
            _ => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
