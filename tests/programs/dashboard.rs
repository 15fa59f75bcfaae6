//! The dashboards end to end: the real `user` and `youtuber` binaries in a
//! pseudo-terminal, driven by keys, against a real RabbitMQ and an in-process
//! server.
#![cfg(feature = "tui")]

use std::{
    io::{Read, Write},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use ytnotify::{client::youtuber::publish_video, protocol::Reaction};
use ytnotify_testkit::TestVhost;

const USER: &str = env!("CARGO_BIN_EXE_user");
const YOUTUBER: &str = env!("CARGO_BIN_EXE_youtuber");
/// How often a wait looks at the screen or the process again.
const POLL: Duration = Duration::from_millis(50);

/// The terminal as the user sees it, kept up to date from the pty's output.
struct Terminal {
    screen: Arc<Mutex<vt100::Parser>>,
    input: Box<dyn Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

impl Terminal {
    fn spawn(args: &[&str], vhost: &TestVhost) -> Terminal {
        Terminal::spawn_program(USER, args, vhost)
    }

    fn spawn_program(program: &str, args: &[&str], vhost: &TestVhost) -> Terminal {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 80,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pseudo-terminal");
        let mut command = CommandBuilder::new(program);
        command.args(args);
        command.env("AMQP_URL", &vhost.url);
        command.env("TERM", "xterm-256color");
        command.env("HOME", vhost.dir.as_os_str());
        let child = pty
            .slave
            .spawn_command(command)
            .expect("the program starts");
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(nonzero(24), nonzero(80), 0)));
        let mut output = pty.master.try_clone_reader().unwrap();
        let feed = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(read) = output.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buffer[..read]);
            }
        });
        let input = pty.master.take_writer().unwrap();
        // The master must outlive the child; leak it into the reader's lifetime.
        std::mem::forget(pty.master);
        Terminal {
            screen,
            input,
            child,
        }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Waits until the screen shows `text`, failing with the screen after
    /// [`WAIT`](ytnotify_testkit::WAIT).
    async fn wait_for(&self, text: &str) {
        self.wait_until(&format!("the screen to show {text:?}"), |screen| {
            screen.contents().contains(text)
        })
        .await;
    }

    /// Waits until the program has left the alternate screen, giving the
    /// terminal back as it was.
    async fn wait_for_the_terminal_back(&self) {
        self.wait_until(
            "the terminal given back (alternate screen left)",
            |screen| !screen.alternate_screen(),
        )
        .await;
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&vt100::Screen) -> bool) {
        let started = Instant::now();
        while !done(self.screen.lock().unwrap().screen()) {
            assert!(
                started.elapsed() < ytnotify_testkit::WAIT,
                "timed out waiting for {what}; the screen shows:\n{}",
                self.contents()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn keys(&mut self, keys: &str) {
        self.input.write_all(keys.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    async fn exit_code(&mut self) -> u32 {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.exit_code();
            }
            assert!(
                started.elapsed() < ytnotify_testkit::WAIT,
                "the program did not exit"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn subscribe_with_keys_see_a_live_upload_and_quit() {
    let vhost = TestVhost::new("dashboard");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    publish_video(&client, "mkbhd", "Before alice came")
        .await
        .unwrap();

    let mut terminal = Terminal::spawn(&["watch", "alice"], &vhost);
    terminal.wait_for("alice's notifications").await;
    terminal.wait_for("Subscriptions (0)").await;

    // A bad name is refused in the prompt, before anything is sent.
    terminal.keys("s");
    terminal.wait_for("YouTuber:").await;
    terminal.keys("mk bhd\r");
    terminal
        .wait_for("a space at position 3 is not allowed")
        .await;
    for _ in 0..6 {
        terminal.keys("\x7f");
    }
    terminal.keys("mkbhd\r");
    terminal.wait_for("subscribed to mkbhd").await;
    terminal.wait_for("Subscriptions (1)").await;
    assert!(server.store.is_subscribed("alice", "mkbhd").await.unwrap());

    publish_video(&client, "mkbhd", "Live from the test")
        .await
        .unwrap();
    terminal.wait_for("mkbhd uploaded Live from the test").await;
    terminal.wait_for("1 unread").await;

    // Like the selected (newest) video, and comment on it.
    terminal.keys("+");
    terminal.wait_for("liked \"Live from the test\"").await;
    terminal.wait_for("· liked").await;
    terminal.keys("c");
    terminal.wait_for("On \"Live from the test\":").await;
    terminal.keys("Great upload\r");
    terminal.wait_for("· commented").await;
    let stats = ytnotify::client::youtuber::stats(&client, "mkbhd")
        .await
        .unwrap();
    let live = &stats.videos[0];
    assert_eq!(
        (live.title.as_str(), live.likes, live.comments),
        ("Live from the test", 1, 1)
    );

    terminal.keys("q");
    assert_eq!(terminal.exit_code().await, 0);
    terminal.wait_for_the_terminal_back().await;
    server.stop().await;
}

#[tokio::test]
async fn a_burst_that_waited_is_marked_and_acknowledged_once_shown() {
    let vhost = TestVhost::new("dashboard-away");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    let change = ytnotify::client::user::SubscriptionChange::subscribe("mkbhd");
    ytnotify::client::user::login_and_update(&client, "alice", Some(&change))
        .await
        .unwrap();
    for n in 0..1000 {
        publish_video(&client, "mkbhd", &format!("Burst {n}"))
            .await
            .unwrap();
    }

    let mut terminal = Terminal::spawn(&["watch", "alice"], &vhost);
    terminal
        .wait_for("Notifications · 1000 · 1000 unread")
        .await;
    terminal.wait_for("Burst 999 while away").await;
    // SIGTERM (a kill) ends it cleanly too, and gives the terminal back.
    let pid = terminal.child.process_id().expect("running") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(terminal.exit_code().await, 0);
    terminal.wait_for_the_terminal_back().await;
    // Shown, so acknowledged: the next session starts with an empty feed.
    let terminal = Terminal::spawn(&["watch", "alice"], &vhost);
    terminal.wait_for("Notifications · 0 · 0 unread").await;
    drop(terminal);
    server.stop().await;
}

fn nonzero(n: u16) -> std::num::NonZero<u16> {
    std::num::NonZero::new(n).expect("a terminal has rows and columns")
}

#[tokio::test]
async fn the_creator_dashboard_shows_counts_and_likes_as_they_come() {
    let vhost = TestVhost::new("creator-dashboard");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    publish_video(&client, "mkbhd", "Studio tour")
        .await
        .unwrap();
    let video = ytnotify::client::user::videos(&client, "mkbhd")
        .await
        .unwrap()
        .videos[0]
        .id
        .to_string();

    let mut terminal = Terminal::spawn_program(YOUTUBER, &["watch", "mkbhd"], &vhost);
    terminal.wait_for("mkbhd's channel").await;
    terminal.wait_for("Videos · 1 · 0 subscribers").await;
    ytnotify::client::user::react(&client, "alice", &video, Some(Reaction::Like))
        .await
        .unwrap();
    terminal.wait_for("alice liked \"Studio tour\"").await;
    ytnotify::client::user::comment(&client, "carol", &video, "Love the lights")
        .await
        .unwrap();
    terminal
        .wait_for("carol commented on \"Studio tour\": Love the lights")
        .await;
    // The counts follow: one like, one comment.
    terminal
        .wait_for("Activity · 2 since you opened this")
        .await;
    terminal
        .wait_until("the counts of the video", |screen| {
            screen.contents().lines().any(|line| {
                line.contains("Studio tour")
                    && line.split_whitespace().rev().take(3).collect::<Vec<_>>() == ["1│", "0", "1"]
            })
        })
        .await;
    terminal.keys("q");
    assert_eq!(terminal.exit_code().await, 0);
    terminal.wait_for_the_terminal_back().await;
    server.stop().await;
}
