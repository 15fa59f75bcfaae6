//! A list of broker URLs: the programs connect to the first node that
//! answers, and say which nodes did not when none does.

use std::process::Stdio;

use tokio::process::Command;
use ytnotify_testkit::{TestVhost, within};

const USER: &str = env!("CARGO_BIN_EXE_user");
const SERVER: &str = env!("CARGO_BIN_EXE_youtube_server");

/// A port on loopback that nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

async fn run(
    program: &str,
    amqp_url: &str,
    vhost: &TestVhost,
    args: &[&str],
) -> (i32, String, String) {
    let output = within(
        "a program to exit",
        Command::new(program)
            .args(args)
            .env("AMQP_URL", amqp_url)
            .env("YT_DB", &vhost.db)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    (
        output.status.code().expect("exited"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_passed_over_for_the_next() {
    let vhost = TestVhost::new("urls");
    let dead = ytnotify_testkit::with_vhost(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port()),
        &vhost.name,
    );
    let urls = format!("{dead},{}", vhost.url);
    let mut server = Command::new(SERVER)
        .env("AMQP_URL", &urls)
        .env("YT_DB", &vhost.db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (code, stdout, stderr) =
        run(USER, &urls, &vhost, &["login", "alice", "--timeout", "15s"]).await;
    assert_eq!((code, stdout.as_str()), (0, "SUCCESS\n"), "{stderr}");
    let _ = server.kill().await;
}

#[tokio::test]
async fn when_no_node_answers_the_error_names_each() {
    let vhost = TestVhost::new("urls-down");
    let (first, second) = (closed_port(), closed_port());
    let urls = format!(
        "amqp://guest:s3cret@127.0.0.1:{first}/%2f,amqp://guest:s3cret@127.0.0.1:{second}/%2f"
    );
    let (code, stdout, stderr) = run(USER, &urls, &vhost, &["login", "alice"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(
        stderr.contains("cannot reach RabbitMQ at any of its 2 nodes"),
        "{stderr}"
    );
    for port in [first, second] {
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}/%2F: connection refused")),
            "{stderr}"
        );
    }
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // URLs of two vhosts are not one cluster.
    let mixed = format!(
        "{},{}",
        vhost.url,
        ytnotify_testkit::with_vhost(&vhost.url, "other")
    );
    let (code, _, stderr) = run(USER, &mixed, &vhost, &["login", "alice"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("same user and vhost"), "{stderr}");
}
