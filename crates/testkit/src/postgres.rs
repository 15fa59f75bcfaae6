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
        run_admin(format!("CREATE DATABASE {name}")).await;
        let admin: tokio_postgres::Config = admin_url().parse().expect("YT_TEST_POSTGRES_URL");
        let mut config = admin.clone();
        config.dbname(&name);
        TestDatabase {
            url: postgres_url(&config),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Its own thread and runtime: a test's runtime may be gone (or be
        // the one this drop blocks). FORCE ends the connections left open.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(run_admin(sql));
        })
        .join();
    }
}

/// Runs one statement on the admin database, failing the test with what to
/// do when PostgreSQL does not answer.
async fn run_admin(sql: String) {
    let url = admin_url();
    let connecting = tokio_postgres::connect(&url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(Duration::from_secs(10), connecting).await
    {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => panic!(
            "no PostgreSQL at {url} ({err}; CI={}): run the tests with scripts/test.sh, which \
             starts one, or start it with `sudo pg_ctlcluster 15 main start`",
            std::env::var("CI").unwrap_or_default()
        ),
        Err(_) => panic!("PostgreSQL at {url} did not answer within 10 s"),
    };
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
    drop(client);
    let _ = driver.await;
}

/// A URL for `config` (host, port, user, password, database).
fn postgres_url(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let password = config
        .get_password()
        .map(|password| format!(":{}", String::from_utf8_lossy(password)))
        .unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}{password}@{host}:{port}/{dbname}")
}
