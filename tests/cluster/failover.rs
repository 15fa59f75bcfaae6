//! A node of the cluster killed under load: the one every program is
//! connected to, and the leader of every quorum queue, since each was
//! declared through it.

use std::{collections::HashSet, sync::Arc, time::Duration};

use ytnotify::{
    broker::Endpoint,
    client::{
        Client, ClientConfig,
        notifications::Notifications,
        user::{self, SubscriptionChange},
        youtuber::publish_video,
    },
    server::ServerConfig,
    topology::{self, QueueType},
};
use ytnotify_testkit::{TestServer, cluster::Cluster, unique, within};

/// How many uploads are sent, one after another, through the kill.
const UPLOADS: usize = 60;

/// The members of a quorum queue, as `rabbitmq-queues quorum_status` lists them.
fn members(cluster: &Cluster, vhost: &str, queue: &str) -> usize {
    let status = cluster.queues(
        1,
        &[
            "quorum_status",
            queue,
            "--vhost",
            vhost,
            "--formatter",
            "json",
        ],
    );
    let members: serde_json::Value = serde_json::from_str(&status)
        .unwrap_or_else(|err| panic!("quorum_status of {queue}: {err}: {status}"));
    members.as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn a_killed_node_loses_no_upload_and_shows_none_twice() {
    ytnotify_testkit::logs();
    let cluster = Cluster::start().await;
    let vhost = unique("failover");
    cluster.add_vhost(&vhost);
    let urls = cluster.urls_on(&vhost);
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new(Endpoint::new(&urls), dir.path().join("server.db"));
    config.print_events = false;
    config.queue_type = Some(QueueType::Quorum);
    let server = TestServer::start(config).await;
    let client_config = ClientConfig {
        broker: Endpoint::new(&urls),
        // Long enough to ride out the kill and the election that follows.
        timeout: Duration::from_secs(60),
    };
    let client = Arc::new(Client::connect(&client_config, "test").await.unwrap());
    user::login_and_update(
        &client,
        "alice",
        Some(&SubscriptionChange::subscribe("bob")),
    )
    .await
    .unwrap();
    // Every queue has its three replicas: losing one leaves a majority.
    let upload_queue = topology::RequestQueue::of(&ytnotify::protocol::Request::Stats {
        youtuber: "bob".into(),
    });
    for queue in [upload_queue.name(), &topology::inbox("alice")] {
        assert_eq!(members(&cluster, &vhost, queue), 3, "{queue}");
    }

    let watcher = Client::connect(&client_config, "test: alice")
        .await
        .unwrap();
    let mut session = Notifications::open(watcher.link(), &watcher.requests(), "alice", None)
        .await
        .unwrap();
    let titles: Vec<String> = (0..UPLOADS).map(|n| format!("Upload {n}")).collect();
    let uploads = {
        let (client, titles) = (Arc::clone(&client), titles.clone());
        tokio::spawn(async move {
            for title in &titles {
                publish_video(&client, "bob", title).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, ytnotify::error::Error>(())
        })
    };

    let mut shown = Vec::new();
    let mut seen = HashSet::new();
    while shown.len() < UPLOADS {
        if shown.len() == UPLOADS / 4 {
            cluster.kill(0);
        }
        if shown.len() == UPLOADS * 3 / 4 {
            cluster.restart(0).await;
        }
        let next = match tokio::time::timeout(Duration::from_secs(15), session.next()).await {
            Ok(next) => next.unwrap(),
            Err(_) => {
                for node in [1, 2] {
                    for queue in [upload_queue.name(), &topology::inbox("alice")] {
                        eprintln!(
                            "node {node}: {queue}: {}",
                            cluster.queues(
                                node,
                                &[
                                    "quorum_status",
                                    queue,
                                    "--vhost",
                                    &vhost,
                                    "--formatter",
                                    "json"
                                ]
                            )
                        );
                    }
                    eprintln!(
                        "node {node}: {}",
                        cluster.ctl(
                            node,
                            &[
                                "list_queues",
                                "-p",
                                &vhost,
                                "name",
                                "type",
                                "messages",
                                "messages_unacknowledged",
                                "consumers",
                                "leader",
                                "members",
                                "online"
                            ]
                        )
                    );
                    eprintln!(
                        "node {node}: {}",
                        cluster.ctl(
                            node,
                            &[
                                "list_consumers",
                                "-p",
                                &vhost,
                                "queue_name",
                                "channel_pid",
                                "consumer_tag",
                                "active",
                                "activity_status"
                            ]
                        )
                    );
                }
                let late = tokio::time::timeout(Duration::from_secs(60), session.next()).await;
                panic!(
                    "no notification within 15 s after {} shown; 60 s later: {}",
                    shown.len(),
                    if late.is_ok() {
                        "it came"
                    } else {
                        "still nothing"
                    }
                );
            }
        };
        let id = next.notification.id();
        assert!(seen.insert(id), "shown twice: {}", next.notification);
        let ytnotify::protocol::Notification::VideoUploaded { video, .. } = &next.notification;
        shown.push(video.clone());
        next.ack().await.unwrap();
    }
    within("every upload to be answered", uploads)
        .await
        .unwrap()
        .expect("every upload succeeds through the kill");
    // Each upload once, in the order bob sent them.
    assert_eq!(shown, titles);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), session.next())
            .await
            .is_err(),
        "nothing more"
    );
    server.stop().await;
}
