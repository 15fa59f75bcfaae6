//! The type of a vhost's queues: chosen once (`--queue-type`), kept, and
//! moved with `youtube_server migrate-queues`, which loses nothing even when
//! it is killed half-way.

use std::{collections::BTreeSet, time::Duration};

use futures::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions},
    types::FieldTable,
};
use ytnotify::{
    broker,
    protocol::{self, Request},
    store::DEFAULT_INBOX_BOUND,
    topology::{self, DurableQueue, QueueType},
};
use ytnotify_testkit::{TestVhost, within};

use crate::cli::{Running, SERVER, USER, assert_one_line_error, command, run};

async fn connection(vhost: &TestVhost) -> lapin::Connection {
    broker::connect(&broker::Endpoint::new(&vhost.url), "test: queue types")
        .await
        .expect("connect")
}

/// The type of alice's inbox and of the request queues, as the broker has them.
async fn types(vhost: &TestVhost) -> (Option<QueueType>, Option<QueueType>) {
    let connection = connection(vhost).await;
    let inbox = DurableQueue::inbox("alice", Some(DEFAULT_INBOX_BOUND))
        .queue_type(&connection)
        .await
        .unwrap();
    let requests = topology::vhost_queue_type(&connection).await.unwrap();
    (inbox, requests)
}

/// A server started with `extra` flags, once it has answered a login.
/// The server declares the queues first: a client that came first to a new
/// vhost would make them classic.
async fn server_with(vhost: &TestVhost, extra: &[&str]) -> Running {
    let mut server = Running::spawn(SERVER, vhost, extra);
    server.ready().await;
    let probe = run(USER, vhost, &["login", "alice", "--timeout", "15s"]).await;
    assert_eq!(probe.stdout, "SUCCESS\n", "{}", probe.stderr);
    // What waited in the request queues comes first.
    while server.line().await != "alice logged in" {}
    server
}

#[tokio::test]
async fn a_vhost_keeps_its_queue_type_and_a_server_asking_for_the_other_says_how_to_move() {
    let vhost = TestVhost::new("queue-type");
    let server = server_with(&vhost, &["--queue-type", "quorum"]).await;
    assert_eq!(
        types(&vhost).await,
        (Some(QueueType::Quorum), Some(QueueType::Quorum))
    );
    assert_eq!(server.interrupt().await, 0);

    let mut classic = command(SERVER, &vhost, &["--queue-type", "classic"]);
    let refused = within("a refused server to exit", classic.output())
        .await
        .unwrap();
    let refused = crate::cli::Output {
        code: refused.status.code().unwrap(),
        stdout: String::from_utf8(refused.stdout).unwrap(),
        stderr: String::from_utf8(refused.stderr)
            .unwrap()
            .lines()
            .filter(|line| !line.contains(" INFO ") && !line.contains(" WARN "))
            .map(|line| format!("{line}\n"))
            .collect(),
    };
    assert_one_line_error(
        &refused,
        1,
        "are quorum queues, and --queue-type asks for classic; move them with \
         `youtube_server migrate-queues --to classic`",
    );

    // Without the flag, a server follows the vhost: a new user's inbox is quorum too.
    let server = server_with(&vhost, &[]).await;
    let login = run(USER, &vhost, &["login", "bob", "--timeout", "15s"]).await;
    assert_eq!(login.stdout, "SUCCESS\n", "{}", login.stderr);
    let connection = connection(&vhost).await;
    let bob = DurableQueue::inbox("bob", Some(DEFAULT_INBOX_BOUND));
    assert_eq!(
        bob.queue_type(&connection).await.unwrap(),
        Some(QueueType::Quorum)
    );
    assert_eq!(server.interrupt().await, 0);
}

/// How many notifications wait in alice's inbox at the move.
const WAITING: usize = 3000;
/// How many requests wait in the request queues when the move is first asked for.
const QUEUED: usize = 40;

#[tokio::test]
async fn a_migration_killed_half_way_is_finished_by_running_it_again_and_loses_nothing() {
    let vhost = TestVhost::new("migrate");
    // From the type of the run to the other: both ways are tested.
    let (from, to) = match ytnotify_testkit::queue_type() {
        QueueType::Classic => (QueueType::Classic, QueueType::Quorum),
        QueueType::Quorum => (QueueType::Quorum, QueueType::Classic),
    };
    let server = server_with(&vhost, &["--queue-type", from.name()]).await;
    let client = vhost.client("test: uploads").await;
    client
        .call(Request::ChangeSubscription {
            user: "alice".into(),
            youtuber: "bob".into(),
            subscribe: true,
        })
        .await
        .unwrap();
    let titles: Vec<String> = (0..WAITING).map(|n| format!("Video {n}")).collect();
    futures::stream::iter(&titles)
        .for_each_concurrent(64, |title| {
            let client = &client;
            async move {
                ytnotify::client::youtuber::publish_video(client, "bob", title)
                    .await
                    .unwrap();
            }
        })
        .await;
    assert_eq!(server.interrupt().await, 0);
    // Requests that wait for a server, through the move.
    let mut queued = Vec::new();
    for n in 0..QUEUED {
        let title = format!("Queued {n}");
        // Sent and confirmed; no server answers now.
        let _unanswered = client
            .send(Request::Upload {
                youtuber: "bob".into(),
                video: title.clone(),
            })
            .await
            .unwrap();
        queued.push(title);
    }
    drop(client);

    // Requests that wait are applied before a move, not carried through it.
    let refused = run(SERVER, &vhost, &["migrate-queues", "--to", to.name()]).await;
    crate::cli::assert_one_line_error(
        &refused,
        1,
        &format!(
            "{} holds {QUEUED} requests not applied yet: start youtube_server until they are, \
             stop it, then run this again",
            ytnotify_testkit::youtuber_queue("bob")
        ),
    );
    let server = server_with(&vhost, &["--queue-type", from.name()]).await;
    assert_eq!(server.interrupt().await, 0);

    // Killed while it moves alice's inbox: the holding queue has some of it.
    let connection = connection(&vhost).await;
    let holding = DurableQueue::holding(&topology::inbox("alice"));
    let mut migration = command(SERVER, &vhost, &["migrate-queues", "--to", to.name()])
        .spawn()
        .unwrap();
    within("the move to begin", async {
        loop {
            let channel = connection.create_channel().await.unwrap();
            if let Ok((waiting, _)) = topology::inspect(&channel, &holding.name).await
                && waiting > 0
            {
                migration.start_kill().unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    let killed = within("the kill", migration.wait()).await.unwrap();
    assert_eq!(killed.code(), None, "killed half-way, not finished");
    let channel = connection.create_channel().await.unwrap();
    let (held, _) = topology::inspect(&channel, &holding.name).await.unwrap();
    assert!(held > 0, "the kill left a move half done");

    let finished = run(SERVER, &vhost, &["migrate-queues", "--to", to.name()]).await;
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    assert!(
        finished.stdout.contains(&format!("to {to}: ")),
        "{}",
        finished.stdout
    );
    let again = run(SERVER, &vhost, &["migrate-queues", "--to", to.name()]).await;
    assert!(
        again.stdout.contains("0 queues moved"),
        "nothing left to move: {}",
        again.stdout
    );
    assert_eq!(types(&vhost).await, (Some(to), Some(to)));
    // Each partition is bound as before: with its number (and partition 0
    // with the empty key too), before any server declares them again.
    let bindings = request_bindings(&vhost);
    let expected: BTreeSet<(String, String, String)> = topology::RequestQueue::all()
        .flat_map(|queue| {
            topology::bound_keys(queue).into_iter().map(move |key| {
                (
                    queue.kind.partition_exchange().to_owned(),
                    queue.name().to_owned(),
                    key.to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(bindings, expected);

    // Every notification is in the moved inbox (a copy taken just before
    // the kill may be there twice; the programs drop it by id).
    let server = server_with(&vhost, &["--queue-type", to.name()]).await;
    let expected: BTreeSet<String> = titles.iter().chain(&queued).cloned().collect();
    let shown = read_inbox(&connection, expected.len()).await;
    assert_eq!(shown, expected);
    assert_eq!(server.interrupt().await, 0);
}

/// The bindings of the vhost from the partition exchanges: (exchange,
/// queue, routing key), as `rabbitmqctl list_bindings` has them.
fn request_bindings(vhost: &TestVhost) -> BTreeSet<(String, String, String)> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_bindings",
            "-p",
            &vhost.name,
            "source_name",
            "destination_name",
            "routing_key",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl list_bindings");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let binding = (
                columns.next()?.to_owned(),
                columns.next()?.to_owned(),
                columns.next().unwrap_or_default().to_owned(),
            );
            binding
                .0
                .starts_with("ytnotify.partitions.")
                .then_some(binding)
        })
        .collect()
}

/// The distinct titles of the notifications in alice's inbox, read until
/// `count` distinct ones have come.
async fn read_inbox(connection: &lapin::Connection, count: usize) -> BTreeSet<String> {
    let channel = connection.create_channel().await.unwrap();
    let mut deliveries = channel
        .basic_consume(
            topology::inbox("alice").as_str().into(),
            "test: reader".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut titles = BTreeSet::new();
    within("every notification", async {
        while titles.len() < count {
            let delivery = deliveries.next().await.unwrap().unwrap();
            let protocol::Notification::VideoUploaded { video, .. } =
                protocol::decode_notification(&delivery.data).unwrap();
            titles.insert(video);
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    })
    .await;
    titles
}
