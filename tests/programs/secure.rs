//! Secure mode and TLS as a user meets them: `youtube_server account`, the
//! clients with an account's URL or its saved file, their refusals on one
//! line, and the three programs over `amqps://` with a private CA.

use std::{path::Path, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};
use ytnotify::accounts::Account;
use ytnotify_testkit::{
    TestServer, TestVhost, broker_node::BrokerNode, tls::TestCa, unique, within,
};

use crate::cli::{Running, SERVER, USER, YOUTUBER, assert_one_line_error, command, run};

/// Runs a program with `AMQP_URL` set to an account's URL.
async fn run_as(url: &str, program: &str, vhost: &TestVhost, args: &[&str]) -> crate::cli::Output {
    let output = within(
        &format!("{program} {args:?} to exit"),
        command(program, vhost, args).env("AMQP_URL", url).output(),
    )
    .await
    .expect("the program starts");
    crate::cli::Output {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `youtube_server account add <role> <name>`: the account's URL, alone on stdout.
async fn add_account(vhost: &TestVhost, account: &Account) -> String {
    vhost.remove_at_end(account);
    let role = account.role.to_string();
    let added = run(SERVER, vhost, &["account", "add", &role, &account.name]).await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    assert_eq!(added.stdout.lines().count(), 1, "{:?}", added.stdout);
    let url = added.stdout.trim_end().to_owned();
    assert!(
        url.starts_with(&format!("amqp://{}:", account.login())),
        "{url}"
    );
    url
}

#[tokio::test]
async fn accounts_are_added_saved_listed_and_removed_and_each_acts_as_itself_only() {
    let vhost = TestVhost::new("secure-cli");
    let server = TestServer::start(vhost.secure_server_config()).await;
    let (alice, bob, tom) = (unique("alice"), unique("bob"), unique("Tom"));

    // alice's URL is saved for `user alice` on this machine, not printed.
    let account = Account::user(&alice);
    vhost.remove_at_end(&account);
    let saved = run(
        SERVER,
        &vhost,
        &["account", "add", "user", &alice, "--save"],
    )
    .await;
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    assert_eq!(
        saved.stdout, "",
        "the password never reaches stdout with --save"
    );
    let file = vhost
        .dir
        .join("config")
        .join("ytnotify")
        .join(format!("user.{alice}.toml"));
    assert!(
        saved.stderr.contains(&file.display().to_string()),
        "{}",
        saved.stderr
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only its owner reads the password");
    }
    let bob_url = add_account(&vhost, &Account::user(&bob)).await;
    let tom_url = add_account(&vhost, &Account::youtuber(&tom)).await;
    // What the broker holds: the account's limits, and bounds on the
    // queues that accounts can fill.
    let ctl = |args: &[&str]| {
        let output = std::process::Command::new("rabbitmqctl")
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let limits = ctl(&["-q", "list_user_limits", "--user", &format!("user.{bob}")]);
    assert!(
        limits.contains("\"max-connections\":16") && limits.contains("\"max-channels\":64"),
        "{limits}"
    );
    let policies = ctl(&["-q", "list_operator_policies", "--vhost", &vhost.name]);
    assert!(
        policies.contains("ytnotify-reply-queues") && policies.contains("ytnotify-dead-letters"),
        "{policies}"
    );
    let again = run(SERVER, &vhost, &["account", "add", "user", &bob]).await;
    assert_one_line_error(&again, 1, "exists already");

    // The broker's flags may come before the subcommand, as after it.
    let listed = run(
        SERVER,
        &vhost,
        &["--amqp-url", &vhost.url, "account", "list"],
    )
    .await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert_eq!(
        listed.stdout,
        format!("user     {alice}\nuser     {bob}\nyoutuber {tom}\n")
    );

    // `user alice` with no URL logs in with the saved account.
    let mut as_saved = command(USER, &vhost, &["subscribe", &alice, &tom]);
    as_saved.env_remove("AMQP_URL");
    let output = within("user subscribe to exit", as_saved.output())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "SUCCESS\n",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // bob's account acting as alice: refused by the server, one line, exit 1.
    let spoof = run_as(&bob_url, USER, &vhost, &["subscribe", &alice, &tom]).await;
    assert_one_line_error(
        &spoof,
        1,
        &format!("the account user.{bob} may not act as user {alice}"),
    );
    // bob's account uploading: refused by the broker.
    let upload = run_as(&bob_url, YOUTUBER, &vhost, &[&tom, "not", "mine"]).await;
    assert_one_line_error(&upload, 1, "refused access");
    let upload = run_as(&tom_url, YOUTUBER, &vhost, &[&tom, "Secure", "hello"]).await;
    assert_eq!(upload.stdout, "SUCCESS\n", "{}", upload.stderr);

    // A removed account logs in no more.
    let removed = run(SERVER, &vhost, &["account", "remove", "user", &bob]).await;
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let gone = run_as(&bob_url, USER, &vhost, &["login", &bob]).await;
    assert_one_line_error(&gone, 1, "refused the connection");
    let twice = run(SERVER, &vhost, &["account", "remove", "user", &bob]).await;
    assert_one_line_error(&twice, 1, "there is no account");
    server.stop().await;
}

#[tokio::test]
async fn account_management_without_the_api_is_one_clear_line() {
    let vhost = TestVhost::new("secure-noapi");
    let output = run(
        SERVER,
        &vhost,
        &["account", "list", "--management-url", "http://127.0.0.1:1"],
    )
    .await;
    assert_one_line_error(&output, 1, "rabbitmq-plugins enable rabbitmq_management");
    assert!(
        output.stderr.contains("--management-url"),
        "{}",
        output.stderr
    );
    let bad = run(SERVER, &vhost, &["account", "add", "user", "bad name"]).await;
    assert_one_line_error(&bad, 1, "invalid user name");
}

#[tokio::test]
async fn the_server_says_its_mode_first_and_open_mode_warns_once() {
    for (flags, mode, warnings) in [(&[][..], "open", 1), (&["--secure"][..], "secure", 0)] {
        let vhost = TestVhost::new("mode");
        let server = Running::spawn(SERVER, &vhost, flags);
        // A login proves the server consumes, so its start-up lines are written.
        let probe = run(USER, &vhost, &["login", "probe", "--timeout", "15s"]).await;
        if mode == "open" {
            assert_eq!(probe.stdout, "SUCCESS\n", "{}", probe.stderr);
        } else {
            // guest is no account of probe's: refused, and said so.
            assert_one_line_error(&probe, 1, "the account guest may not act as user probe");
        }
        let log = std::fs::read_to_string(&server.stderr).unwrap();
        let first = log.lines().next().unwrap_or_default();
        assert!(
            first.contains(&format!("youtube_server starting in {mode} mode")),
            "{log}"
        );
        assert_eq!(
            log.matches("open mode: any client can act as any user")
                .count(),
            warnings,
            "{log}"
        );
        assert_eq!(server.interrupt().await, 0);
    }
}

/// A program against the TLS node, with `AMQP_URL` and the CA as given.
fn tls_command(program: &str, dir: &Path, url: &str, ca: Option<&Path>, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("AMQP_URL", url)
        .env("YT_DB", dir.join("server.db"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("AMQP_CA_CERT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(ca) = ca {
        command.env("AMQP_CA_CERT", ca);
    }
    command
}

async fn output_of(mut command: Command) -> (i32, String, String) {
    let output = within("a program to exit", command.output()).await.unwrap();
    (
        output.status.code().expect("exited"),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn the_three_programs_work_over_amqps_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let node = BrokerNode::start_with_tls(&ca).await;
    let url = node.tls_url.clone().expect("a TLS listener");
    let ca_cert = Some(ca.ca_cert.as_path());

    let mut server = tls_command(SERVER, dir.path(), &url, ca_cert, &[]);
    let mut server = server
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut events = BufReader::new(server.stdout.take().unwrap()).lines();

    let (code, stdout, stderr) = output_of(tls_command(
        USER,
        dir.path(),
        &url,
        ca_cert,
        &["subscribe", "alice", "TomScott", "--timeout", "15s"],
    ))
    .await;
    assert_eq!((code, stdout.as_str()), (0, "SUCCESS\n"), "{stderr}");
    let (code, stdout, stderr) = output_of(tls_command(
        YOUTUBER,
        dir.path(),
        &url,
        ca_cert,
        &["TomScott", "Over", "TLS"],
    ))
    .await;
    assert_eq!((code, stdout.as_str()), (0, "SUCCESS\n"), "{stderr}");
    let mut watch = tls_command(
        USER,
        dir.path(),
        &url,
        ca_cert,
        &["watch", "alice", "--plain"],
    );
    let mut watch = watch
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut shown = BufReader::new(watch.stdout.take().unwrap()).lines();
    let line = within("the notification over TLS", shown.next_line()).await;
    assert_eq!(
        line.unwrap().as_deref(),
        Some("New Notification: TomScott uploaded Over TLS")
    );
    let mut lines = Vec::new();
    while lines.len() < 3 {
        let line = within("the server's events", events.next_line()).await;
        lines.push(line.unwrap().expect("the server runs"));
    }
    assert_eq!(
        lines,
        [
            "alice logged in",
            "alice subscribed to TomScott",
            "TomScott uploaded Over TLS"
        ]
    );

    // Without the CA: the broker's certificate is not trusted; one line.
    let (code, stdout, stderr) = output_of(tls_command(
        USER,
        dir.path(),
        &url,
        None,
        &["login", "alice"],
    ))
    .await;
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("TLS handshake"), "{stderr}");
    assert!(stderr.contains("--ca-cert or AMQP_CA_CERT"), "{stderr}");
    // A CA file that is no certificate: one line too.
    let (code, _, stderr) = output_of(tls_command(
        YOUTUBER,
        dir.path(),
        &url,
        Some(&ca.broker_key),
        &["TomScott", "x"],
    ))
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("cannot use the CA certificate"), "{stderr}");
    // amqps:// to the plain AMQP port: one line that says which port to use.
    let plain = node.url.replacen("amqp://", "amqps://", 1);
    let (code, _, stderr) = output_of(tls_command(
        USER,
        dir.path(),
        &plain,
        ca_cert,
        &["login", "alice"],
    ))
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("the broker's TLS port"), "{stderr}");
    let _ = watch.kill().await;
    let _ = server.kill().await;
}
