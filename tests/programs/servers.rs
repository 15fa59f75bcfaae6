//! Several `youtube_server` processes on one PostgreSQL database, all
//! active: they share the partitions of the request queues, hand them over
//! when one comes, stops or is killed, and every user's and YouTuber's
//! requests are still applied in the order sent.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ytnotify::{
    broker::Endpoint,
    client::{Client, ClientConfig, notifications::Notifications, user},
    protocol::{Notification, Reply, Request},
    store::{Database, Store},
};
use ytnotify_testkit::{TestVhost, postgres::TestDatabase, within};

use crate::cli::{Running, SERVER};

/// Users whose subscription changes are sent all at once, and YouTubers
/// whose uploads are.
const USERS: usize = 16;
const YOUTUBERS: usize = 4;
/// Per round: each user's subscription changes, each YouTuber's uploads.
const CHANGES: usize = 20;
const UPLOADS: usize = 10;

/// How many partitions each server process holds now, by PostgreSQL's
/// session (one per server).
async fn claims(database: &str) -> Vec<i64> {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .expect("the test's database");
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT count(*) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 \
               AND classid = x'79746e32'::int::oid \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             GROUP BY pid ORDER BY 1",
            &[],
        )
        .await
        .expect("pg_locks");
    rows.iter().map(|row| row.get(0)).collect()
}

/// Waits until the servers hold `expected` partitions each (sorted).
async fn shared_out(database: &str, expected: &[i64]) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if claims(database).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!(
            "the partitions were not shared out as {expected:?} within 30 s: {:?}",
            claims(database).await
        );
    }
}

async fn start(vhost: &TestVhost, database: &TestDatabase) -> Running {
    let server = Running::spawn(SERVER, vhost, &["--db", &database.url]);
    server.ready().await;
    server
}

/// One round: every user's changes and every YouTuber's uploads, all sent
/// before any reply is awaited; then every reply.
async fn round(client: Arc<Client>, round: usize) -> Result<(), String> {
    let mut pending = Vec::new();
    for step in 0..CHANGES.max(UPLOADS) {
        for user in 0..USERS {
            if step < CHANGES {
                // Subscribe to the next channel, then leave the one before:
                // applied out of order, an unsubscribe comes before its
                // subscribe and leaves that channel followed.
                let change = |youtuber: usize, subscribe: bool| Request::ChangeSubscription {
                    user: format!("user{user}"),
                    youtuber: format!("channel{youtuber}"),
                    subscribe,
                };
                let next = round * CHANGES + step;
                pending.push(client.send(change(next, true)).await);
                if next > 0 {
                    pending.push(client.send(change(next - 1, false)).await);
                }
            }
        }
        if step < UPLOADS {
            for youtuber in 0..YOUTUBERS {
                pending.push(
                    client
                        .send(Request::Upload {
                            youtuber: format!("creator{youtuber}"),
                            video: format!("{round}.{step}"),
                        })
                        .await,
                );
            }
        }
    }
    for sent in pending {
        let sent = sent.map_err(|err| format!("sent: {err}"))?;
        match client.wait(sent).await {
            Ok(Reply::Refused { reason }) => return Err(format!("refused: {reason}")),
            Ok(_) => {}
            Err(err) => return Err(format!("answered: {err}")),
        }
    }
    Ok(())
}

#[tokio::test]
async fn servers_share_the_partitions_and_keep_each_users_and_youtubers_order() {
    let vhost = TestVhost::new("servers");
    let database = TestDatabase::create().await;
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(start(&vhost, &database).await);
    }
    shared_out(&database.url, &[2, 2, 2, 2]).await;

    let config = ClientConfig {
        broker: Endpoint::new(&vhost.url),
        // A server killed with requests in hand: they go to the next one
        // once PostgreSQL and RabbitMQ have seen it die.
        timeout: Duration::from_secs(30),
    };
    let client = Arc::new(Client::connect(&config, "test").await.unwrap());
    user::login(&client, "watcher").await.unwrap();
    for youtuber in 0..YOUTUBERS {
        user::update_subscription(
            &client,
            "watcher",
            &user::SubscriptionChange::subscribe(format!("creator{youtuber}")),
        )
        .await
        .unwrap();
    }
    let watcher = Client::connect(&config, "test: watcher").await.unwrap();
    let mut session = Notifications::open(watcher.link(), &watcher.requests(), "watcher", None)
        .await
        .unwrap();

    // Round 0 with four servers; round 1 while one is killed (-9) and
    // another starts; round 2 while one stops cleanly.
    for number in 0..3 {
        let sending = tokio::spawn(round(Arc::clone(&client), number));
        tokio::time::sleep(Duration::from_millis(300)).await;
        match number {
            1 => {
                servers.remove(0).kill9().await;
                servers.push(start(&vhost, &database).await);
            }
            2 => assert_eq!(servers.remove(0).interrupt().await, 0),
            _ => {}
        }
        within("a round's replies", sending)
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("round {number}: {err}"));
    }
    shared_out(&database.url, &[2, 3, 3]).await;

    // Each user follows only the last channel it subscribed to.
    let store = Store::connect(&Database::parse(&database.url))
        .await
        .unwrap();
    let last = format!("channel{}", 3 * CHANGES - 1);
    for user in 0..USERS {
        assert_eq!(
            store.subscriptions(&format!("user{user}")).await.unwrap(),
            [last.as_str()],
            "user{user}"
        );
    }
    // Each YouTuber's uploads reach the watcher once each, in order.
    let mut shown: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for _ in 0..3 * UPLOADS * YOUTUBERS {
        let next = within("a notification", session.next())
            .await
            .expect("the session is open");
        let Notification::VideoUploaded {
            id,
            youtuber,
            video,
            ..
        } = &next.notification;
        assert!(seen.insert(*id), "shown twice: {}", next.notification);
        shown
            .entry(youtuber.clone())
            .or_default()
            .push(video.clone());
        next.ack().await.unwrap();
    }
    let in_order: Vec<String> = (0..3)
        .flat_map(|round| (0..UPLOADS).map(move |step| format!("{round}.{step}")))
        .collect();
    for youtuber in 0..YOUTUBERS {
        assert_eq!(shown[&format!("creator{youtuber}")], in_order);
    }
    for server in servers {
        assert_eq!(server.interrupt().await, 0);
    }
}
