//! What ytnotify's tests share: a private vhost per test, an in-process
//! server, a private RabbitMQ node for the tests that crash one, a private
//! PostgreSQL database per test, and waits with a timeout.
//!
//! Every test gets its own RabbitMQ vhost (created with `rabbitmqctl`, deleted
//! when the test ends, pass or fail), so tests run in parallel with each other
//! and beside a running demo without seeing each other's queues.

pub mod broker_node;
pub mod cluster;
pub mod postgres;
pub mod tls;

use std::{
    future::Future,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::{sync::oneshot, task::JoinHandle};
use ytnotify::{
    accounts::{self, Account, Management, ManagementConfig},
    broker_url::BrokerUrl,
    client::{Client, ClientConfig},
    server::{Event, ServerConfig, YoutubeServer},
};

/// The longest any single wait on the broker may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `future`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The broker the tests use: `YT_TEST_AMQP_URL`, else `AMQP_URL`, else the local default.
pub fn base_url() -> String {
    std::env::var("YT_TEST_AMQP_URL")
        .or_else(|_| std::env::var("AMQP_URL"))
        .unwrap_or_else(|_| ytnotify::broker::DEFAULT_AMQP_URL.to_owned())
}

/// Replaces the vhost of an AMQP URL.
pub fn with_vhost(url: &str, vhost: &str) -> String {
    broker_url(url).with_vhost(vhost).to_string()
}

fn broker_url(url: &str) -> BrokerUrl {
    url.parse()
        .unwrap_or_else(|err| panic!("the tests' broker URL: {err}"))
}

/// How long one `rabbitmqctl` call may take (a busy broker answers slowly).
const CTL_WAIT: Duration = Duration::from_secs(90);

/// One `rabbitmqctl` at a time per test binary: each starts an Erlang VM
/// that takes one of only eleven CLI distribution ports.
static CTL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rabbitmqctl(args: &[&str]) {
    if let Err(stderr) = try_rabbitmqctl(args) {
        panic!(
            "rabbitmqctl {} failed: {stderr}\nIs RabbitMQ running? Start it with scripts/test.sh.",
            args.join(" "),
        );
    }
}

/// Runs `rabbitmqctl`; its stderr if it fails.
fn try_rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let _one_at_a_time = CTL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut child = Command::new("rabbitmqctl")
        .args(args)
        // Its own process group, so that a timeout kills the Erlang VM too,
        // not only the shell wrapper.
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run rabbitmqctl ({e}); the tests create a vhost each with it: \
                 run them with scripts/test.sh on the broker's machine"
            )
        });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("rabbitmqctl runs") {
            break status;
        }
        if started.elapsed() > CTL_WAIT {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", child.id())])
                .status();
            panic!(
                "rabbitmqctl {} did not finish within {CTL_WAIT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    if status.success() {
        Ok(())
    } else {
        Err(stderr)
    }
}

/// A vhost of its own for one test, deleted on drop with the accounts the
/// test added.
pub struct TestVhost {
    pub name: String,
    pub url: String,
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    /// The server's database, as `--db` takes it: a SQLite file in `dir`,
    /// or, when [`postgres::selected`], a PostgreSQL database of its own.
    pub db: String,
    _postgres: Option<postgres::TestDatabase>,
    /// Broker users are not per vhost: the ones to delete at the end.
    accounts: std::sync::Mutex<Vec<String>>,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique name for this test run: `prefix-<random>`.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{n}-{}", &random[..8])
}

/// The type of the queues that the tests' servers declare: `YT_QUEUE_TYPE`
/// (`classic` or `quorum`, which the built `youtube_server` reads too),
/// classic if unset. `scripts/test.sh` runs the server's tests once with
/// quorum queues.
pub fn queue_type() -> ytnotify::topology::QueueType {
    use ytnotify::topology::QueueType;
    match std::env::var("YT_QUEUE_TYPE").as_deref() {
        Ok("quorum") => QueueType::Quorum,
        Ok("classic") | Err(_) => QueueType::Classic,
        Ok(other) => panic!("YT_QUEUE_TYPE={other}: give classic or quorum"),
    }
}

/// Declares a new vhost's queues as quorum queues, as a server started
/// first with `--queue-type quorum` does: a client that came first would
/// make them classic. On a thread of its own, since a test's runtime may
/// not block.
fn declare_quorum_queues(url: &str) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(within("the quorum queues to be declared", async {
            let endpoint = ytnotify::broker::Endpoint::new(&url);
            let connection = ytnotify::broker::connect(&endpoint, "test: quorum queues")
                .await
                .expect("connect");
            ytnotify::topology::declare(
                &connection,
                ytnotify::topology::Declaring::As(ytnotify::topology::QueueType::Quorum),
            )
            .await
            .expect("quorum queues");
            let _ = connection.close(200, "declared".into()).await;
        }));
    })
    .join()
    .expect("the quorum queues are declared");
}

impl TestVhost {
    /// Creates a fresh vhost named after the test, with a temp dir for databases.
    pub fn new(test: &str) -> TestVhost {
        require_broker();
        let name = unique(&format!("ytnotify-test-{test}"));
        rabbitmqctl(&["add_vhost", &name]);
        rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let dir = tempfile::tempdir().expect("a temp dir");
        let postgres = postgres::selected().then(postgres::TestDatabase::create_blocking);
        let url = with_vhost(&base_url(), &name);
        if queue_type() == ytnotify::topology::QueueType::Quorum {
            declare_quorum_queues(&url);
        }
        TestVhost {
            url,
            name,
            db: match &postgres {
                Some(database) => database.url.clone(),
                None => dir.path().join("server.db").display().to_string(),
            },
            _postgres: postgres,
            dir: dir.path().to_owned(),
            _dir: dir,
            accounts: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The server configuration for this vhost in secure mode.
    pub fn secure_server_config(&self) -> ServerConfig {
        let mut config = self.server_config();
        config.secure = true;
        config
    }

    /// Adds `account` on this vhost through RabbitMQ's management API, as
    /// `youtube_server account add` does, and returns its client's URL.
    /// Account names are global on a broker: give each test its own
    /// ([`unique`]).
    pub async fn add_account(&self, account: &Account) -> String {
        require_management();
        let url = broker_url(&self.url);
        let management = Management::new(&ManagementConfig {
            url: accounts::default_management_url(&url),
            broker: url.clone(),
            ca_cert: None,
        })
        .expect("a management client");
        let password = within("an account to be added", management.add(account))
            .await
            .unwrap_or_else(|err| panic!("adding {account}: {err}"));
        self.accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(account.login());
        url.with_login(&account.login(), &password).to_string()
    }

    /// What the broker lists of this vhost's consumers (queue, channel, tag,
    /// whether active), channels, queues and connections, for a failure
    /// message.
    pub fn consumers(&self) -> String {
        // Channels and connections cannot be listed by vhost: every line of
        // those is kept only if it names this vhost.
        let list = |what: &str, by_vhost: bool, columns: &[&str]| {
            let mut args = vec!["-q", what];
            if by_vhost {
                args.extend(["-p", &self.name]);
            } else {
                args.push("vhost");
            }
            args.extend_from_slice(columns);
            let listed = match Command::new("rabbitmqctl").args(&args).output() {
                Ok(output) => String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter(|line| by_vhost || line.starts_with(&format!("{}\t", self.name)))
                    .map(|line| format!("{line}\n"))
                    .collect(),
                Err(err) => format!("{err}\n"),
            };
            format!("rabbitmqctl {what}:\n{listed}")
        };
        [
            list(
                "list_consumers",
                true,
                &[
                    "queue_name",
                    "channel_pid",
                    "consumer_tag",
                    "active",
                    "activity_status",
                    "prefetch_count",
                ],
            ),
            list(
                "list_channels",
                false,
                &[
                    "pid",
                    "connection",
                    "number",
                    "consumer_count",
                    "messages_unacknowledged",
                    "prefetch_count",
                ],
            ),
            list(
                "list_queues",
                true,
                &[
                    "name",
                    "pid",
                    "messages_ready",
                    "messages_unacknowledged",
                    "consumers",
                    "state",
                ],
            ),
            list("list_connections", false, &["pid", "name", "state"]),
        ]
        .concat()
    }

    /// The channel (its Erlang pid) of each consumer the broker lists on
    /// `queue` in this vhost.
    pub fn consumer_channels(&self, queue: &str) -> Vec<String> {
        let output = Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_consumers",
                "-p",
                &self.name,
                "queue_name",
                "channel_pid",
                "--no-table-headers",
            ])
            .output()
            .unwrap_or_else(|err| panic!("rabbitmqctl list_consumers: {err}"));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .filter(|(name, _)| *name == queue)
            .map(|(_, channel)| channel.to_owned())
            .collect()
    }

    /// Deletes `account` with the vhost: for an account that a program added.
    pub fn remove_at_end(&self, account: &Account) {
        self.accounts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(account.login());
    }

    /// A client logged in with an account's URL (from [`TestVhost::add_account`]).
    pub async fn client_as(&self, url: &str, name: &str) -> Client {
        let config = ClientConfig {
            broker: ytnotify::broker::Endpoint::new(url),
            timeout: Duration::from_secs(10),
        };
        within("a client to connect", Client::connect(&config, name))
            .await
            .unwrap_or_else(|err| panic!("{name} connects: {err}"))
    }

    /// The server configuration for this vhost, with a database in the temp dir.
    pub fn server_config(&self) -> ServerConfig {
        let mut config =
            ServerConfig::new(ytnotify::broker::Endpoint::new(&self.url), self.database());
        config.print_events = false;
        config.queue_type = Some(queue_type());
        config
    }

    /// The server's database.
    pub fn database(&self) -> ytnotify::store::Database {
        ytnotify::store::Database::parse(&self.db)
    }

    /// The server's store, opened beside the server (or after it).
    pub async fn store(&self) -> ytnotify::store::Store {
        ytnotify::store::Store::connect(&self.database())
            .await
            .expect("the test's database")
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            broker: ytnotify::broker::Endpoint::new(&self.url),
            timeout: Duration::from_secs(10),
        }
    }

    pub async fn client(&self, name: &str) -> Client {
        within(
            "a client to connect",
            Client::connect(&self.client_config(), name),
        )
        .await
        .expect("client connects")
    }

    /// Starts a server in-process on this vhost.
    pub async fn start_server(&self) -> TestServer {
        TestServer::start(self.server_config()).await
    }
}

impl TestVhost {
    /// Closes every client connection of this vhost from the broker's side,
    /// as a network cut would: every program must connect again.
    pub fn cut_connections(&self) {
        rabbitmqctl(&[
            "close_all_connections",
            "-p",
            &self.name,
            "ytnotify test: a cut connection",
        ]);
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        // Best effort: a leftover vhost is harmless, a panic in drop is not.
        let name = self.name.clone();
        let accounts = std::mem::take(
            &mut *self
                .accounts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        // An account that the test removed itself is missing: no matter.
        for account in accounts {
            let _ = std::panic::catch_unwind(move || try_rabbitmqctl(&["delete_user", &account]));
        }
        let _ = std::panic::catch_unwind(move || rabbitmqctl(&["delete_vhost", &name]));
    }
}

/// Fails fast, with the command to run, when no broker answers. Never skips:
/// a test that silently does nothing would hide a broken suite.
pub fn require_broker() {
    let url = broker_url(&base_url());
    let (host, port) = url.host_port();
    let host_port = format!("{host}:{port}");
    assert!(
        answers(&host_port),
        "no RabbitMQ at {host_port} (CI={}): run the tests with scripts/test.sh, which starts one, \
         or start it with `sudo rabbitmq-server -detached`",
        std::env::var("CI").unwrap_or_default()
    );
}

/// Whether something accepts a TCP connection at `host:port` within 2 s.
fn answers(host_port: &str) -> bool {
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
        })
}

/// Fails fast, with the command to run, when RabbitMQ's management API (which
/// accounts are added through) does not answer. Never skips.
pub fn require_management() {
    let url = broker_url(&base_url());
    let (host, _) = url.host_port();
    let address = format!("{host}:15672");
    assert!(
        answers(&address),
        "RabbitMQ's management API does not answer at {address}: run the tests with \
         scripts/test.sh, which enables it, or run `sudo rabbitmq-plugins enable rabbitmq_management`"
    );
}

/// A server running in-process, stopped on [`TestServer::stop`].
pub struct TestServer {
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<ytnotify::Result<()>>>,
    pub events: tokio::sync::broadcast::Receiver<Event>,
    pub store: ytnotify::store::Store,
    /// The partitions of the request queues it consumes now.
    pub partitions: tokio::sync::watch::Receiver<Vec<u16>>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> TestServer {
        let server = within("the server to start", YoutubeServer::start(config))
            .await
            .expect("server starts");
        let events = server.events();
        let partitions = server.partitions();
        let store = server.store().clone();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        TestServer {
            shutdown: Some(shutdown),
            handle: Some(handle),
            events,
            store,
            partitions,
        }
    }

    /// Waits until it consumes `count` partitions: on PostgreSQL, until
    /// the servers sharing them have shared them out.
    pub async fn serving(&mut self, count: usize) {
        within(
            "the partitions to be shared out",
            self.partitions.wait_for(|held| held.len() == count),
        )
        .await
        .expect("the server is running");
    }

    /// Waits for the next event other than a dead-letter, failing after [`WAIT`].
    pub async fn next_event(&mut self) -> Event {
        within("a server event", self.events.recv())
            .await
            .expect("the server is running")
    }

    /// Shuts the server down cleanly and checks it ended without error.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            within("the server to stop", handle)
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

/// A program of the workspace, built beside the test executable
/// (`target/<profile>/<name>`): `cargo test --workspace` (and
/// `scripts/test.sh`) builds every program before any test runs. A package's
/// own tests use `env!("CARGO_BIN_EXE_<name>")` instead.
pub fn program(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash>
    let path = test
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("a test runs from target/<profile>/deps");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build --workspace` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Shows the library's log in a test's output (on failure, or with
/// `--nocapture`), filtered by `RUST_LOG` (default: warnings).
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The request queue that a user's logins and subscription changes travel
/// on (the partition of the name).
pub fn user_queue(user: &str) -> &'static str {
    ytnotify::topology::RequestQueue::of(&ytnotify::protocol::Request::login(user)).name()
}

/// The request queue that a YouTuber's uploads travel on.
pub fn youtuber_queue(youtuber: &str) -> &'static str {
    ytnotify::topology::RequestQueue::of(&ytnotify::protocol::Request::Stats {
        youtuber: youtuber.into(),
    })
    .name()
}
