//! End to end: the real binaries, their exact output and exit codes, against a
//! real RabbitMQ (a vhost per test).

use std::{collections::HashSet, path::Path, process::Stdio};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use ytnotify_testkit::{TestVhost, within};

pub(crate) const SERVER: &str = env!("CARGO_BIN_EXE_youtube_server");
pub(crate) const YOUTUBER: &str = env!("CARGO_BIN_EXE_youtuber");
pub(crate) const USER: &str = env!("CARGO_BIN_EXE_user");

pub(crate) fn command(program: &str, vhost: &TestVhost, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env("AMQP_URL", &vhost.url)
        .env("YT_DB", &vhost.db)
        // Accounts saved by one test are not found by another, nor by you.
        .env("XDG_CONFIG_HOME", vhost.dir.join("config"))
        .env_remove("YT_TIMEOUT")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

pub(crate) struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a program to completion, failing the test if it takes too long.
pub(crate) async fn run(program: &str, vhost: &TestVhost, args: &[&str]) -> Output {
    let output = within(
        &format!("{program} {args:?} to exit"),
        command(program, vhost, args).output(),
    )
    .await
    .expect("the program starts");
    Output {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Asserts a failure printed exactly one line on stderr, with no panic.
pub(crate) fn assert_one_line_error(output: &Output, code: i32, expected: &str) {
    assert_eq!(output.code, code, "exit code; stderr: {}", output.stderr);
    assert_eq!(output.stdout, "", "nothing on stdout");
    assert_eq!(
        output.stderr.lines().count(),
        1,
        "one line: {:?}",
        output.stderr
    );
    assert!(!output.stderr.contains("panicked"), "{}", output.stderr);
    assert!(
        output.stderr.contains(expected),
        "{:?} should contain {expected:?}",
        output.stderr
    );
}

/// A program running in the background, read line by line; its stderr goes
/// to a file, shown when it does not exit as it should.
pub(crate) struct Running {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    pub stderr: std::path::PathBuf,
}

impl Running {
    pub fn spawn(program: &str, vhost: &TestVhost, args: &[&str]) -> Running {
        let stderr = vhost.dir.join(format!(
            "{}-{}.stderr",
            Path::new(program).file_name().unwrap().to_string_lossy(),
            uuid::Uuid::new_v4().simple()
        ));
        let mut child = command(program, vhost, args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("a file for stderr"))
            .spawn()
            .expect("the program starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (sender, stdout) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            stdout,
            stderr,
        }
    }

    pub async fn line(&mut self) -> String {
        within("a line of output", self.stdout.recv())
            .await
            .expect("the program is still printing")
    }

    /// The next line if one comes within `wait`.
    pub async fn line_within(&mut self, wait: std::time::Duration) -> Option<String> {
        tokio::time::timeout(wait, self.stdout.recv())
            .await
            .ok()
            .flatten()
    }

    pub async fn expect(&mut self, expected: &str) {
        assert_eq!(self.line().await, expected);
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.child.id().expect("running") as i32);
        kill(pid, signal).expect("the signal is delivered");
    }

    /// Waits until a `youtube_server` says it is ready: it has installed
    /// its Ctrl-C handler and declared its queues.
    pub async fn ready(&self) {
        within("the server to be ready", async {
            while !std::fs::read_to_string(&self.stderr)
                .unwrap_or_default()
                .contains("youtube_server ready")
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Ctrl-C, then the exit code.
    pub async fn interrupt(mut self) -> i32 {
        self.signal(Signal::SIGINT);
        match tokio::time::timeout(ytnotify_testkit::WAIT, self.child.wait()).await {
            Ok(status) => {
                let status = status.unwrap();
                status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    panic!(
                        "the program was killed by signal {:?} after Ctrl-C; its stderr:\n{}",
                        status.signal(),
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    )
                })
            }
            Err(_) => panic!(
                "the program did not exit within {:?} after Ctrl-C; its stderr:\n{}",
                ytnotify_testkit::WAIT,
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            ),
        }
    }

    /// kill -9: no clean shutdown of any kind.
    pub async fn kill9(mut self) {
        self.signal(Signal::SIGKILL);
        within("the program to die", self.child.wait())
            .await
            .unwrap();
    }
}

/// Starts `youtube_server` and waits until it consumes (its log says ready).
pub(crate) async fn start_server(vhost: &TestVhost) -> Running {
    let server = Running::spawn(SERVER, vhost, &[]);
    // The server declares its queues before consuming; a login proves both.
    let probe = run(USER, vhost, &["login", "probe", "--timeout", "15s"]).await;
    assert_eq!(probe.stdout, "SUCCESS\n", "{}", probe.stderr);
    let mut server = server;
    server.expect("probe logged in").await;
    server
}

#[tokio::test]
async fn the_exercise_end_to_end() {
    let vhost = TestVhost::new("e2e");
    let mut server = start_server(&vhost).await;

    let upload = run(YOUTUBER, &vhost, &["bob", "Hello", "world"]).await;
    assert_eq!(
        (upload.code, upload.stdout.as_str(), upload.stderr.as_str()),
        (0, "SUCCESS\n", "")
    );
    server.expect("bob uploaded Hello world").await;

    let mut alice = Running::spawn(USER, &vhost, &["alice", "s", "bob"]);
    alice.expect("SUCCESS").await;
    server.expect("alice logged in").await;
    server.expect("alice subscribed to bob").await;

    let upload = run(YOUTUBER, &vhost, &["publish", "bob", "Second", "video"]).await;
    assert_eq!(upload.stdout, "SUCCESS\n");
    server.expect("bob uploaded Second video").await;
    alice
        .expect("New Notification: bob uploaded Second video")
        .await;

    let bob_list = run(USER, &vhost, &["subscriptions", "alice"]).await;
    assert_eq!((bob_list.code, bob_list.stdout.as_str()), (0, "bob\n"));

    let unsubscribe = run(USER, &vhost, &["unsubscribe", "alice", "bob"]).await;
    assert_eq!(
        (unsubscribe.code, unsubscribe.stdout.as_str()),
        (0, "SUCCESS\n")
    );
    server.expect("alice logged in").await;
    server.expect("alice unsubscribed to bob").await;

    assert_eq!(alice.interrupt().await, 0);
    assert_eq!(server.interrupt().await, 0);
}

#[tokio::test]
async fn a_user_who_logs_in_late_gets_what_was_uploaded_while_away() {
    let vhost = TestVhost::new("late");
    let server = start_server(&vhost).await;
    let subscribe = run(USER, &vhost, &["subscribe", "carol", "bob"]).await;
    assert_eq!(subscribe.stdout, "SUCCESS\n", "{}", subscribe.stderr);
    assert!(
        subscribe
            .stderr
            .contains("note: bob has not uploaded any video yet"),
        "{}",
        subscribe.stderr
    );

    for title in ["First while away", "Second while away"] {
        assert_eq!(
            run(YOUTUBER, &vhost, &["bob", title]).await.stdout,
            "SUCCESS\n"
        );
    }
    let mut carol = Running::spawn(USER, &vhost, &["carol"]);
    carol.expect("SUCCESS").await;
    carol
        .expect("New Notification: bob uploaded First while away")
        .await;
    carol
        .expect("New Notification: bob uploaded Second while away")
        .await;
    // Then live ones.
    run(YOUTUBER, &vhost, &["bob", "Live"]).await;
    carol.expect("New Notification: bob uploaded Live").await;
    assert_eq!(carol.interrupt().await, 0);

    // Shown and acknowledged: the next session starts empty and shows only new ones.
    run(YOUTUBER, &vhost, &["bob", "Next", "day"]).await;
    let mut carol = Running::spawn(USER, &vhost, &["watch", "carol"]);
    carol
        .expect("New Notification: bob uploaded Next day")
        .await;
    assert_eq!(carol.interrupt().await, 0);
    server.interrupt().await;
}

#[tokio::test]
async fn kill_9_of_the_server_under_load_loses_nothing_and_applies_nothing_twice() {
    let vhost = TestVhost::new("kill9");
    let mut server = start_server(&vhost).await;
    assert_eq!(
        run(USER, &vhost, &["subscribe", "alice", "bob"])
            .await
            .stdout,
        "SUCCESS\n"
    );
    server.expect("alice logged in").await;
    server.expect("alice subscribed to bob").await;

    // 30 uploads at once, each waiting up to 60 s for its SUCCESS.
    let uploads: Vec<_> = (0..30)
        .map(|n| {
            let title = format!("Upload {n}");
            let mut command = command(YOUTUBER, &vhost, &["bob", &title, "--timeout", "60s"]);
            tokio::spawn(async move { command.output().await })
        })
        .collect();
    // Kill it mid-load: once it has applied a few, with the rest in flight or queued.
    for _ in 0..3 {
        assert!(server.line().await.starts_with("bob uploaded"));
    }
    server.kill9().await;

    // A request sent while no server runs waits in the queue: exit 3.
    let waiting = run(
        USER,
        &vhost,
        &["subscribe", "dave", "bob", "--timeout", "500ms"],
    )
    .await;
    assert_one_line_error(
        &waiting,
        3,
        "the request is kept in the queue and will be applied when youtube_server runs",
    );
    assert!(
        waiting.stderr.contains("no youtube_server is running now"),
        "{}",
        waiting.stderr
    );

    let server = Running::spawn(SERVER, &vhost, &[]);
    // Ready before the Ctrl-C at the end: it would find no handler before.
    server.ready().await;
    for upload in uploads {
        let output = within("an upload to finish", upload)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(output.stdout, b"SUCCESS\n");
    }
    // Every confirmed upload reached alice exactly once, and dave's queued
    // subscription was applied after the restart.
    let mut alice = Running::spawn(USER, &vhost, &["watch", "alice"]);
    let mut seen = HashSet::new();
    for _ in 0..30 {
        let line = alice.line().await;
        assert!(seen.insert(line.clone()), "shown twice: {line}");
    }
    let expected: HashSet<String> = (0..30)
        .map(|n| format!("New Notification: bob uploaded Upload {n}"))
        .collect();
    assert_eq!(seen, expected);
    let list = run(USER, &vhost, &["subscriptions", "dave"]).await;
    assert_eq!(list.stdout, "bob\n");

    // Ask the store itself: exactly 30 videos, whatever crashed when.
    assert_eq!(alice.interrupt().await, 0);
    assert_eq!(server.interrupt().await, 0);
    let store = vhost.store().await;
    assert_eq!(store.videos_of("bob").await.unwrap().len(), 30);
}

#[tokio::test]
async fn bad_names_get_one_clear_line_and_exit_1() {
    let vhost = TestVhost::new("bad-names");
    let output = run(USER, &vhost, &["al ice"]).await;
    assert_one_line_error(
        &output,
        1,
        "user: invalid user name \"al ice\": a space at position 3 is not allowed; use 1-64 ASCII letters, digits, '_', '-' or '.'",
    );
    let output = run(USER, &vhost, &["alice", "s", &"x".repeat(65)]).await;
    assert_one_line_error(&output, 1, "invalid YouTuber name");
    let output = run(YOUTUBER, &vhost, &["bob", "bell\u{7}"]).await;
    assert_one_line_error(
        &output,
        1,
        "invalid video name \"bell\\u{7}\": control character",
    );
    let output = run(YOUTUBER, &vhost, &["bob"]).await;
    assert_eq!(output.code, 2, "a usage error: {}", output.stderr);
    assert!(
        output
            .stderr
            .contains("give a name and a video: youtuber <name> <video words...>"),
        "{}",
        output.stderr
    );
    let output = run(USER, &vhost, &["alice", "x", "bob"]).await;
    assert_eq!(output.code, 2, "a usage error: {}", output.stderr);
    assert!(
        output.stderr.contains("invalid value 'x'"),
        "{}",
        output.stderr
    );
}

#[tokio::test]
async fn a_refusal_is_printed_with_its_reason() {
    let vhost = TestVhost::new("refusal");
    let server = start_server(&vhost).await;
    let output = run(USER, &vhost, &["unsubscribe", "alice", "nobody"]).await;
    assert_one_line_error(
        &output,
        1,
        "user: youtube_server refused the request: alice is not subscribed to nobody (and follows nobody)",
    );
    server.interrupt().await;
}

#[tokio::test]
async fn a_missing_broker_is_one_line_that_says_how_to_start_one() {
    let vhost = TestVhost::new("no-broker");
    // Port 1 on loopback: nothing listens there.
    let dead = "amqp://guest:secret@127.0.0.1:1/%2f";
    for (program, args) in [
        (USER, vec!["alice"]),
        (YOUTUBER, vec!["bob", "video"]),
        (SERVER, vec![]),
    ] {
        let mut args: Vec<&str> = args;
        args.extend(["--amqp-url", dead]);
        let output = run(program, &vhost, &args).await;
        assert_one_line_error(
            &output,
            1,
            "cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/%2F (connection refused); \
             start it with `sudo rabbitmq-server -detached`",
        );
        assert!(
            !output.stderr.contains("secret"),
            "the password is never printed"
        );
        assert!(
            output
                .stderr
                .trim_end()
                .ends_with("or give the URL of a running broker (--amqp-url or AMQP_URL)"),
            "the line ends with the setting to change: {}",
            output.stderr
        );
    }
    let wrong_vhost = ytnotify_testkit::with_vhost(&vhost.url, "no-such-vhost");
    let output = run(USER, &vhost, &["alice", "--amqp-url", &wrong_vhost]).await;
    assert_one_line_error(&output, 1, "refused the connection");
    assert!(
        output.stderr.contains("check the user, password and vhost"),
        "{}",
        output.stderr
    );
}

#[tokio::test]
async fn a_server_that_cannot_open_its_database_says_so() {
    let vhost = TestVhost::new("bad-db");
    let mut command = command(SERVER, &vhost, &[]);
    command.env("YT_DB", Path::new("/proc/no/such/dir/db.sqlite"));
    let output = within("the server to fail", command.output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot open the database /proc/no/such/dir/db.sqlite"),
        "{stderr}"
    );
    assert!(
        stderr
            .trim_end()
            .ends_with("choose another file (--db or YT_DB)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn ctrl_c_under_load_finishes_what_is_in_hand_and_loses_nothing() {
    let vhost = TestVhost::new("sigint");
    let mut server = start_server(&vhost).await;
    let uploads: Vec<_> = (0..30)
        .map(|n| {
            let title = format!("Clip {n}");
            let mut command = command(YOUTUBER, &vhost, &["carol", &title, "--timeout", "60s"]);
            tokio::spawn(async move { command.output().await })
        })
        .collect();
    for _ in 0..3 {
        assert!(server.line().await.starts_with("carol uploaded"));
    }
    // Ctrl-C: stop consuming, finish the request in hand, close; exit 0.
    let started = std::time::Instant::now();
    assert_eq!(server.interrupt().await, 0);
    eprintln!(
        "graceful shutdown under load took {:.2} s",
        started.elapsed().as_secs_f64()
    );

    let server = Running::spawn(SERVER, &vhost, &[]);
    // The first server may have finished every upload in the batch it had
    // in hand: a Ctrl-C before this one is ready would find no handler.
    server.ready().await;
    for upload in uploads {
        let output = within("an upload to finish", upload)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            output.stdout,
            b"SUCCESS\n",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(server.interrupt().await, 0);
    let store = vhost.store().await;
    assert_eq!(
        store.videos_of("carol").await.unwrap().len(),
        30,
        "each applied once"
    );
}

#[tokio::test]
async fn a_forged_notification_never_reaches_the_terminal() {
    let vhost = TestVhost::new("forged");
    let server = start_server(&vhost).await;
    assert_eq!(
        run(USER, &vhost, &["login", "alice"]).await.stdout,
        "SUCCESS\n"
    );
    // Anyone on the broker can publish straight into an inbox.
    let connection =
        ytnotify::broker::connect(&ytnotify::broker::Endpoint::new(&vhost.url), "forger")
            .await
            .unwrap();
    let channel = ytnotify::broker::confirming_channel(&connection)
        .await
        .unwrap();
    let forged = |youtuber: &str, video: &str| {
        format!(
            r#"{{"v":1,"type":"video_uploaded","id":"{}","youtuber":{},"video":{},"uploaded_at_ms":0}}"#,
            uuid::Uuid::new_v4(),
            serde_json::Value::from(youtuber),
            serde_json::Value::from(video)
        )
    };
    for body in [
        forged(
            "bob",
            "Hello\u{1b}[2J\u{1b}]8;;http://evil\u{7}click\u{1b}]8;;\u{7}",
        ),
        forged("\u{202e}bob", "Reversed"),
        forged("bob", "\u{202e}3pm.exe"),
        forged("bob", "Fine"),
    ] {
        ytnotify::broker::publish_confirmed(
            &channel,
            "",
            &ytnotify::topology::inbox("alice"),
            true,
            body.as_bytes(),
            ytnotify::broker::persistent_json(),
        )
        .await
        .unwrap();
    }
    let mut alice = Running::spawn(USER, &vhost, &["watch", "alice"]);
    alice.expect("New Notification: bob uploaded Fine").await;
    assert_eq!(alice.interrupt().await, 0);
    // The forged ones were read and dropped, not left to come back.
    let (waiting, _) = ytnotify::topology::inspect(&channel, &ytnotify::topology::inbox("alice"))
        .await
        .unwrap();
    assert_eq!(waiting, 0);
    server.interrupt().await;
}
