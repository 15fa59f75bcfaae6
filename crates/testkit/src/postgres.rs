//! A PostgreSQL database of its own for each test that runs the store on
//! PostgreSQL: created on the machine's server, dropped when the test ends,
//! pass or fail.
//!
//! The server is `YT_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres` (a role that may create
//! databases). Tests never skip when it does not answer: they fail, saying
//! what to run.

use std::time::Duration;

use uuid::Uuid;

/// The PostgreSQL server the tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("YT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database for one test, dropped with it.
pub struct TestDatabase {
    /// Its URL, for `--db` or `Database::parse`.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name.
    pub async fn create() -> TestDatabase {
        let name = format!("ytnotify_test_{}", Uuid::new_v4().simple());
        let url = ytnotify::store::Database::postgres_sibling(&admin_url(), &name)
            .unwrap_or_else(|err| panic!("YT_TEST_POSTGRES_URL: {err}"));
        run_admin(format!("CREATE DATABASE {name}")).await;
        TestDatabase { url, name }
    }

    /// [`TestDatabase::create`], for code that is not async.
    pub fn create_blocking() -> TestDatabase {
        std::thread::spawn(|| current_thread_runtime().block_on(TestDatabase::create()))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Whether the tests run the server on PostgreSQL (`YT_TEST_DATABASE=postgres`)
/// rather than on a SQLite file.
pub fn selected() -> bool {
    std::env::var("YT_TEST_DATABASE").is_ok_and(|db| db == "postgres")
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Its own thread and runtime: a test's runtime may be gone (or be
        // the one this drop blocks). FORCE ends the connections left open.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ =
            std::thread::spawn(move || current_thread_runtime().block_on(run_admin(sql))).join();
    }
}

/// Runs one statement on the admin database, failing the test with what to
/// do when PostgreSQL does not answer.
async fn run_admin(sql: String) {
    let url = admin_url();
    let shown = ytnotify::store::Database::Postgres(url.clone()).shown();
    let connecting = tokio_postgres::connect(&url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(Duration::from_secs(10), connecting).await
    {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => panic!(
            "no PostgreSQL at {shown} ({err}; CI={}): run the tests with scripts/test.sh, which \
             starts one, or start it with `sudo service postgresql start`",
            std::env::var("CI").unwrap_or_default()
        ),
        Err(_) => panic!("PostgreSQL at {shown} did not answer within 10 s"),
    };
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
    drop(client);
    let _ = driver.await;
}

/// A private PostgreSQL server on a spare port, for tests that crash or
/// restart the database without touching the machine's shared one. It runs
/// as the `postgres` system user (PostgreSQL refuses to run as root) from
/// the machine's installation, on a data directory of its own.
pub struct PostgresServer {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Makes a new cluster and starts it.
    pub async fn start() -> PostgresServer {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port on loopback")
            .port();
        let server = PostgresServer {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            port,
            bin,
            dir,
        };
        run_checked(
            std::process::Command::new("chown")
                .args(["postgres:", &server.dir.path().display().to_string()]),
        );
        server.as_postgres(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        server.boot().await;
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Runs one of PostgreSQL's programs as the `postgres` user.
    fn as_postgres(&self, program: &str, args: &[&str]) {
        run_checked(
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(program))
                .args(args),
        );
    }

    /// Starts it on its data, and waits until it takes connections.
    pub async fn boot(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// A crash: every process stopped at once, without a checkpoint, so that
    /// the next start recovers from the write-ahead log.
    pub async fn crash(&self) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// The directory of the newest PostgreSQL installed (Debian's layout).
fn postgres_bin() -> std::path::PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    match versions.last() {
        Some(version) => format!("/usr/lib/postgresql/{version}/bin").into(),
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql): \
             sudo apt-get install -y postgresql, or run the tests with scripts/test.sh"
        ),
    }
}

fn run_checked(command: &mut std::process::Command) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
