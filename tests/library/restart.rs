//! Crashes of what the server relies on. The broker: kill -9 of a private
//! RabbitMQ node, then a restart on the same data; confirmed subscriptions
//! and the notifications waiting for an offline user must all be there
//! afterwards. The database: a private PostgreSQL stopped at once under
//! load, then started again; every upload must be applied and notified once.

use std::{collections::HashSet, sync::Arc, time::Duration};

use crate::log_in_following;
use ytnotify::{
    client::{Client, ClientConfig, inbox::Inbox, user, youtuber::publish_video},
    protocol::{Notification, Request},
    server::{Event, ServerConfig},
    store::Database,
    topology,
};
use ytnotify_testkit::{
    TestServer, TestVhost, broker_node::BrokerNode, postgres::PostgresServer, within,
};

#[tokio::test]
async fn a_broker_crash_loses_no_subscription_and_no_waiting_notification() {
    ytnotify_testkit::require_broker();
    let node = BrokerNode::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(
        ytnotify::broker::Endpoint::new(&node.url),
        dir.path().join("server.db"),
    );
    config.print_events = false;
    let client_config = ClientConfig {
        broker: ytnotify::broker::Endpoint::new(&node.url),
        ..ClientConfig::default()
    };

    let server = TestServer::start(config.clone()).await;
    let client = within("connect", Client::connect(&client_config, "test"))
        .await
        .unwrap();
    for user in ["alice", "carol"] {
        log_in_following(&client, user, "bob").await;
    }
    // alice and carol are offline: every confirmed upload waits in their inboxes.
    let titles: Vec<String> = (1..=20).map(|n| format!("Before the crash {n}")).collect();
    for title in &titles {
        publish_video(&client, "bob", title).await.unwrap();
    }
    server.stop().await;
    drop(client);

    node.kill9().await;
    node.boot().await;

    let server = TestServer::start(config).await;
    let client = within("reconnect", Client::connect(&client_config, "test"))
        .await
        .unwrap();
    // The subscriptions (bindings) survived: an upload after the restart arrives.
    publish_video(&client, "bob", "After the restart")
        .await
        .unwrap();
    for user in ["alice", "carol"] {
        let mut inbox = Inbox::open(client.link(), user).await.unwrap();
        assert_eq!(
            inbox.waiting_at_open(),
            21,
            "{user}'s inbox after the crash"
        );
        let mut received = Vec::new();
        for _ in 0..21 {
            let next = within("a notification", inbox.next()).await.unwrap();
            received.push(next.notification.to_string());
            next.ack().await.unwrap();
        }
        let mut expected: Vec<String> = titles
            .iter()
            .map(|title| format!("New Notification: bob uploaded {title}"))
            .collect();
        expected.push("New Notification: bob uploaded After the restart".into());
        assert_eq!(received, expected, "{user} got every upload once, in order");
        inbox.close().await;
    }
    assert_eq!(
        user::subscriptions(&client, "alice").await.unwrap(),
        ["bob"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_database_crash_under_load_loses_no_upload_and_applies_none_twice() {
    ytnotify_testkit::logs();
    let postgres = PostgresServer::start().await;
    let vhost = TestVhost::new("postgres-crash");
    let mut config = vhost.server_config();
    config.database = Database::parse(&postgres.url);
    let mut server = TestServer::start(config).await;
    let client_config = ClientConfig {
        // Long enough for the database to come back and the requests to be
        // tried again.
        timeout: Duration::from_secs(60),
        ..vhost.client_config()
    };
    let client = Arc::new(Client::connect(&client_config, "test").await.unwrap());
    log_in_following(&client, "alice", "bob").await;

    let titles: Vec<String> = (0..40).map(|n| format!("Upload {n}")).collect();
    let uploads: Vec<_> = titles
        .iter()
        .map(|title| {
            let (client, title) = (Arc::clone(&client), title.clone());
            tokio::spawn(async move { publish_video(&client, "bob", &title).await })
        })
        .collect();
    // The crash comes once a few are stored, with the rest in flight or queued.
    let mut stored = 0;
    while stored < 3 {
        if let Event::Uploaded { .. } = server.next_event().await {
            stored += 1;
        }
    }
    postgres.crash().await;
    // What was not answered when PostgreSQL went down rode through the crash.
    let in_flight = uploads
        .iter()
        .filter(|upload| !upload.is_finished())
        .count();
    assert!(in_flight > 0, "every upload was answered before the crash");
    eprintln!("{in_flight} of 40 uploads were not answered yet when PostgreSQL crashed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    postgres.boot().await;

    for upload in uploads {
        within("an upload to be answered", upload)
            .await
            .unwrap()
            .expect("every upload succeeds once the database is back");
    }
    // alice has each upload once: none lost in the crash, none applied twice.
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..titles.len() {
        let next = within("a notification", inbox.next()).await.unwrap();
        let shown = next.notification.to_string();
        assert!(seen.insert(shown.clone()), "shown twice: {shown}");
        next.ack().await.unwrap();
    }
    let expected: HashSet<String> = titles
        .iter()
        .map(|title| format!("New Notification: bob uploaded {title}"))
        .collect();
    assert_eq!(seen, expected);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), inbox.next())
            .await
            .is_err(),
        "nothing more"
    );
    inbox.close().await;
    assert_eq!(server.store.videos_of("bob").await.unwrap().len(), 40);
    server.stop().await;
}

/// Two servers share the partitions of one PostgreSQL, which crashes under
/// a stream of uploads from two YouTubers, one in a partition of each
/// server: both lose their claims with their connections, stop, and share
/// the partitions out again when it is back; every upload is answered,
/// shown once, and in each YouTuber's order.
#[tokio::test]
async fn two_servers_ride_out_a_database_crash_and_share_the_partitions_again() {
    ytnotify_testkit::logs();
    let postgres = PostgresServer::start().await;
    let vhost = TestVhost::new("postgres-crash-two");
    let mut config = vhost.server_config();
    config.database = Database::parse(&postgres.url);
    let mut first = TestServer::start(config.clone()).await;
    let mut second = TestServer::start(config).await;
    let half = usize::from(topology::PARTITIONS) / 2;
    first.serving(half).await;
    second.serving(half).await;
    // A YouTuber in a partition of each server.
    let held_by = |server: &TestServer| {
        let held = server.partitions.borrow().clone();
        (0..)
            .map(|n| format!("creator{n}"))
            .find(|name| held.contains(&topology::partition_of(name)))
            .expect("a name in one of its partitions")
    };
    let youtubers = [held_by(&first), held_by(&second)];

    let client_config = ClientConfig {
        timeout: Duration::from_secs(60),
        ..vhost.client_config()
    };
    let client = Arc::new(Client::connect(&client_config, "test").await.unwrap());
    for youtuber in &youtubers {
        log_in_following(&client, "alice", youtuber).await;
    }
    const UPLOADS: usize = 30;
    let sending = {
        let (client, youtubers) = (Arc::clone(&client), youtubers.clone());
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for n in 0..UPLOADS {
                for youtuber in &youtubers {
                    let upload = Request::Upload {
                        youtuber: youtuber.clone(),
                        video: format!("Upload {n}"),
                    };
                    pending.push(client.send(upload).await?);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            for reply in pending {
                client.wait(reply).await?;
            }
            Ok::<_, ytnotify::Error>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sending.is_finished(), "the crash comes under the uploads");
    postgres.crash().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    postgres.boot().await;
    within("every upload to be answered", sending)
        .await
        .unwrap()
        .expect("every upload succeeds once the database is back");
    first.serving(half).await;
    second.serving(half).await;

    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    let mut shown: Vec<(String, String)> = Vec::new();
    for _ in 0..2 * UPLOADS {
        let next = within("a notification", inbox.next()).await.unwrap();
        let Notification::VideoUploaded {
            youtuber, video, ..
        } = &next.notification;
        shown.push((youtuber.clone(), video.clone()));
        next.ack().await.unwrap();
    }
    for youtuber in &youtubers {
        let titles: Vec<&str> = shown
            .iter()
            .filter(|(by, _)| by == youtuber)
            .map(|(_, title)| title.as_str())
            .collect();
        let expected: Vec<String> = (0..UPLOADS).map(|n| format!("Upload {n}")).collect();
        assert_eq!(
            titles, expected,
            "{youtuber}'s uploads, once each, in order"
        );
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), inbox.next())
            .await
            .is_err(),
        "nothing more"
    );
    inbox.close().await;
    first.stop().await;
    second.stop().await;
}
