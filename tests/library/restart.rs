//! A crash of the broker itself: kill -9 of a private RabbitMQ node, then a
//! restart on the same data. Confirmed subscriptions and the notifications
//! waiting for an offline user must all be there afterwards.

use crate::log_in_following;
use ytnotify::{
    client::{Client, ClientConfig, inbox::Inbox, user, youtuber::publish_video},
    server::ServerConfig,
};
use ytnotify_testkit::{TestServer, broker_node::BrokerNode, within};

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
