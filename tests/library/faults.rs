//! Faults injected on purpose against a private RabbitMQ node: the broker
//! restarts, stalls, or blocks publishers, and every program carries on with
//! nothing lost and nothing shown twice.

use std::{collections::HashMap, time::Duration};

use crate::log_in_following;
use tokio::sync::{mpsc, oneshot};
use ytnotify::{
    broker,
    client::{Client, ClientConfig, user, youtuber::publish_video},
    link::{CONFIRM_PATIENCE, Link, LinkState, SessionChannel},
    server::ServerConfig,
    topology::QueueType,
};
use ytnotify_testkit::{TestServer, broker_node::BrokerNode, within};

/// How long a watcher may wait for its next notification after a fault:
/// what the suite allows any wait. Once the node is back, a connection comes
/// back within one reconnection pause (at most 4 s with jitter) and every
/// consumer with it; `scripts/faults.sh` records how long it took.
const AFTER_A_FAULT: Duration = ytnotify_testkit::WAIT;

/// A private node, a server on it, and a client: what every fault test needs.
struct Stack {
    node: BrokerNode,
    server: TestServer,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn stack() -> Stack {
    ytnotify_testkit::logs();
    ytnotify_testkit::require_broker();
    let node = BrokerNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(
        ytnotify::broker::Endpoint::new(&node.url),
        dir.path().join("server.db"),
    );
    config.print_events = false;
    let server = TestServer::start(config).await;
    let client = connect(&node).await;
    Stack {
        node,
        server,
        client,
        _dir: dir,
    }
}

async fn connect(node: &BrokerNode) -> Client {
    let config = ClientConfig {
        broker: ytnotify::broker::Endpoint::new(&node.url),
        // Long enough to ride out a restart of the broker.
        timeout: Duration::from_secs(60),
    };
    within("connect", Client::connect(&config, "test"))
        .await
        .unwrap()
}

/// Follows `user`'s notifications on its own connection, as `user watch` does.
struct Watcher {
    lines: mpsc::UnboundedReceiver<String>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ytnotify::Result<()>>,
}

impl Watcher {
    async fn start(node: &BrokerNode, user: &str) -> Watcher {
        let client = connect(node).await;
        let (lines_tx, lines) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let user = user.to_owned();
        let task = tokio::spawn(async move {
            ytnotify::client::notifications::receive_notifications(
                &client,
                &user,
                |n| {
                    let _ = lines_tx.send(n.to_string());
                    Ok(())
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        Watcher { lines, stop, task }
    }

    /// Collects lines until `expected` distinct ones came, then a little more
    /// to catch any duplicate; returns how often each was shown.
    async fn collect(&mut self, expected: usize) -> HashMap<String, usize> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        while seen.len() < expected {
            match tokio::time::timeout(AFTER_A_FAULT, self.lines.recv()).await {
                Ok(Some(line)) => *seen.entry(line).or_default() += 1,
                Ok(None) => panic!(
                    "the watcher stopped after {} of {expected}: {seen:?}",
                    seen.len()
                ),
                Err(_) => panic!(
                    "timed out after {AFTER_A_FAULT:?} with {} of {expected} notifications: {seen:?}",
                    seen.len()
                ),
            }
        }
        while let Ok(Some(line)) =
            tokio::time::timeout(Duration::from_millis(500), self.lines.recv()).await
        {
            *seen.entry(line).or_default() += 1;
        }
        seen
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within("the watcher to stop", self.task)
            .await
            .unwrap()
            .expect("the watcher ends cleanly");
    }
}

fn expect_once(seen: &HashMap<String, usize>, titles: &[String]) {
    for title in titles {
        let line = format!("New Notification: bob uploaded {title}");
        assert_eq!(seen.get(&line), Some(&1), "{line} shown once in {seen:?}");
    }
    assert_eq!(seen.len(), titles.len(), "nothing else shown: {seen:?}");
}

#[tokio::test]
async fn server_clients_and_watchers_ride_out_a_broker_crash() {
    let Stack {
        node,
        server,
        client,
        _dir,
    } = stack().await;
    log_in_following(&client, "alice", "bob").await;
    let mut watcher = Watcher::start(&node, "alice").await;
    let mut link = client.state();

    let mut titles: Vec<String> = (0..10).map(|n| format!("Before {n}")).collect();
    for title in &titles {
        publish_video(&client, "bob", title).await.unwrap();
    }

    let killed = std::time::Instant::now();
    node.kill9().await;
    // Uploads sent while the broker is down wait for it and then succeed.
    let during: Vec<String> = (0..5).map(|n| format!("During {n}")).collect();
    let uploads = {
        let during = during.clone();
        let config = ClientConfig {
            broker: ytnotify::broker::Endpoint::new(&node.url),
            timeout: Duration::from_secs(60),
        };
        tokio::spawn(async move {
            let client = Client::connect(&config, "during").await;
            (client.is_err(), during)
        })
    };
    within(
        "the client to see the outage",
        link.wait_for(|state| matches!(state, LinkState::Reconnecting(_))),
    )
    .await
    .unwrap();
    let (refused_while_down, _) = uploads.await.unwrap();
    assert!(
        refused_while_down,
        "a new connection fails fast while the broker is down"
    );
    let uploading = async {
        let mut results = Vec::new();
        for title in &during {
            results.push(publish_video(&client, "bob", title).await);
        }
        results
    };
    let restart = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        node.boot().await;
        std::time::Instant::now()
    };
    let (results, booted) = tokio::join!(uploading, restart);
    eprintln!(
        "broker crash: down {:.1} s; the uploads sent meanwhile were confirmed {:.1} s after the node accepted connections",
        (booted - killed).as_secs_f64(),
        booted.elapsed().as_secs_f64()
    );
    for result in results {
        result.expect("an upload sent during the outage succeeds after it");
    }
    titles.extend(during);
    titles.extend((0..10).map(|n| format!("After {n}")));
    for title in &titles[15..] {
        publish_video(&client, "bob", title).await.unwrap();
    }
    expect_once(&watcher.collect(titles.len()).await, &titles);
    assert_eq!(
        user::subscriptions(&client, "alice").await.unwrap(),
        ["bob"]
    );
    watcher.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_broker_is_noticed_by_heartbeats_and_nothing_is_lost() {
    let Stack {
        node,
        server,
        client,
        _dir,
    } = stack().await;
    log_in_following(&client, "alice", "bob").await;
    let mut watcher = Watcher::start(&node, "alice").await;
    let mut link = client.state();
    let mut titles: Vec<String> = (0..5).map(|n| format!("Before the stall {n}")).collect();
    for title in &titles {
        publish_video(&client, "bob", title).await.unwrap();
    }

    // SIGSTOP: sockets stay open but nothing answers, as with a dead network.
    node.freeze();
    let frozen = std::time::Instant::now();
    // Two missed heartbeats end the connection; then the usual wait.
    let limit = 2 * Duration::from_secs(broker::HEARTBEAT_SECS.into()) + ytnotify_testkit::WAIT;
    let noticed = tokio::time::timeout(
        limit,
        link.wait_for(|state| matches!(state, LinkState::Reconnecting(_))),
    )
    .await
    .map(|seen| seen.is_ok());
    let detected = frozen.elapsed();
    node.thaw();
    assert_eq!(
        noticed,
        Ok(true),
        "the heartbeat noticed the stalled broker within {limit:?}"
    );
    within(
        "the reconnection",
        link.wait_for(|state| *state == LinkState::Connected),
    )
    .await
    .unwrap();
    eprintln!(
        "stalled broker: noticed after {:.1} s; connected again {:.1} s after SIGCONT",
        detected.as_secs_f64(),
        (frozen.elapsed() - detected).as_secs_f64()
    );
    titles.extend((0..5).map(|n| format!("After the stall {n}")));
    for title in &titles[5..] {
        publish_video(&client, "bob", title).await.unwrap();
    }
    expect_once(&watcher.collect(titles.len()).await, &titles);
    watcher.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn publishers_wait_through_a_memory_alarm_and_say_so() {
    let Stack {
        node,
        server,
        client,
        _dir,
    } = stack().await;
    log_in_following(&client, "alice", "bob").await;
    let link = client.state();

    // A watermark below what the node uses: the memory alarm goes off and
    // RabbitMQ blocks every publishing connection.
    node.ctl(&["set_vm_memory_high_watermark", "0.000001"]);
    let blocked = connect(&node).await;
    let mut blocked_link = blocked.state();
    let upload =
        tokio::spawn(async move { publish_video(&blocked, "bob", "Sent during the alarm").await });
    // The publishing connection is told, and says so (the CLI on stderr, the
    // dashboards in their status line).
    within(
        "the blocked notice",
        blocked_link.wait_for(|state| matches!(state, LinkState::Blocked(_))),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !upload.is_finished(),
        "the upload waits while publishing is blocked"
    );
    node.ctl(&["set_vm_memory_high_watermark", "0.4"]);
    within("the upload after the alarm", upload)
        .await
        .unwrap()
        .expect("the upload succeeds once the alarm clears");
    assert_eq!(*link.borrow(), LinkState::Connected);
    let mut watcher = Watcher::start(&node, "alice").await;
    expect_once(
        &watcher.collect(1).await,
        &["Sent during the alarm".to_owned()],
    );
    watcher.stop().await;
    server.stop().await;
}

/// A confirm that comes later than the patience for a stuck one: a server on
/// a vhost of classic queues waits for it, and the message is in its queue
/// once; a client's link, which cannot tell where its messages go, sends it
/// again on a new channel after the patience (a copy of a request is dropped
/// by its id). The broker is frozen between the publish and its confirm.
#[tokio::test]
async fn a_late_confirm_is_waited_for_on_classic_queues_and_never_sent_twice() {
    ytnotify_testkit::logs();
    ytnotify_testkit::require_broker();
    let node = BrokerNode::start().await;
    let endpoint = broker::Endpoint::new(&node.url);
    let server = within(
        "the server's link",
        Link::connect_server(&endpoint, "test-publisher", Some(QueueType::Classic)),
    )
    .await
    .unwrap();
    assert!(!server.confirms_may_stick());
    let client = within("the client's link", Link::connect(&endpoint, "test-client"))
        .await
        .unwrap();
    assert!(client.confirms_may_stick());
    let late = CONFIRM_PATIENCE + Duration::from_secs(3);
    assert!(
        late < 2 * Duration::from_secs(broker::HEARTBEAT_SECS.into()),
        "the freeze ends before heartbeats notice it"
    );

    for (link, queue) in [
        (&server, "late-confirms.server"),
        (&client, "late-confirms.client"),
    ] {
        let publisher = SessionChannel::new(link, true);
        let (_, channel) = within("a channel", publisher.get()).await.unwrap();
        channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        node.freeze();
        // Written to the socket; the frozen broker reads it once thawed.
        let unconfirmed =
            broker::publish(&channel, "", queue, true, b"{}", broker::persistent_json())
                .await
                .unwrap();
        let started = std::time::Instant::now();
        let waiting = tokio::spawn(async move {
            let confirmed = publisher.confirmed(unconfirmed).await;
            (confirmed, started.elapsed())
        });
        tokio::time::sleep(late).await;
        node.thaw();
        let (confirmed, waited) = within("the confirm", waiting).await.unwrap();
        let (_, channel) = within("a channel", SessionChannel::new(link, false).get())
            .await
            .unwrap();
        if link.confirms_may_stick() {
            assert!(
                matches!(confirmed, Err(ytnotify::Error::Unconfirmed(_))),
                "{confirmed:?}"
            );
            assert!(waited >= CONFIRM_PATIENCE && waited < late, "{waited:?}");
        } else {
            assert!(confirmed.is_ok(), "{confirmed:?}");
            assert!(waited >= late, "waited {waited:?} for the thaw");
            assert_eq!(crate::server::depth(&channel, queue).await, 1);
        }
    }
}
