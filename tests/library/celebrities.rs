//! Celebrities: past `celebrities_from` subscribers, a YouTuber's uploads
//! are appended once to its stream instead of copied into every inbox, and
//! each subscriber's sessions read them there, still once each and in order.

use std::time::Duration;

use ytnotify::{
    client::{
        Client,
        notifications::{Notifications, Received},
        user::{self, SubscriptionChange},
        youtuber::publish_video,
    },
    protocol::{self, Notification},
    topology,
};
use ytnotify_testkit::{TestServer, TestVhost, within};

use crate::{
    log_in_following,
    server::{depth, raw_channel, title},
};

/// A server that makes a YouTuber a celebrity at its first upload with
/// three subscribers.
async fn server_with_celebrities(vhost: &TestVhost) -> TestServer {
    let mut config = vhost.server_config();
    config.celebrities_from = Some(3);
    TestServer::start(config).await
}

async fn session(client: &Client, user: &str) -> Notifications {
    within(
        "a session",
        Notifications::open(client.link(), &client.requests(), user, None),
    )
    .await
    .unwrap_or_else(|err| panic!("a session of {user}: {err}"))
}

/// The titles of the next `count` notifications of a session, each shown.
async fn show(session: &mut Notifications, count: usize) -> Vec<String> {
    let mut titles = Vec::with_capacity(count);
    for _ in 0..count {
        let what = format!("the notification after {titles:?}");
        let received: Received = within(&what, session.next())
            .await
            .expect("the session reads");
        titles.push(title(&received.notification).to_owned());
        received.ack().await.expect("shown");
    }
    titles
}

/// Fails if the session hands out anything within a second and a half.
async fn nothing_more(session: &mut Notifications, user: &str) {
    if let Ok(received) = tokio::time::timeout(Duration::from_millis(1_500), session.next()).await {
        let received = received.expect("the session reads");
        panic!(
            "{user} was shown {:?} again, or one never uploaded",
            title(&received.notification)
        );
    }
}

#[tokio::test]
async fn a_celebritys_uploads_reach_each_subscriber_once_in_order_without_an_inbox_copy() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("celebrity");
    let server = server_with_celebrities(&vhost).await;
    let client = vhost.client("test").await;
    for user in ["alice", "carol"] {
        log_in_following(&client, user, "bob").await;
    }
    // Two subscribers: copied into each inbox, as always.
    publish_video(&client, "bob", "One").await.unwrap();
    log_in_following(&client, "erin", "bob").await;
    // Older than what a session takes from the history: the inbox alone has it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // Alice is online when bob becomes a celebrity; "One" waits in her inbox.
    let mut alice = session(&client, "alice").await;
    for video in ["Two", "Three"] {
        publish_video(&client, "bob", video).await.unwrap();
    }
    assert_eq!(show(&mut alice, 3).await, ["One", "Two", "Three"]);

    // "Two", which made bob a celebrity, was the last copied into the
    // inboxes; "Three" was appended once to the stream: carol's inbox holds
    // "One" and "Two", erin's (who came after "One") "Two".
    let (_connection, channel) = raw_channel(&vhost).await;
    assert_eq!(depth(&channel, &topology::inbox("carol")).await, 2);
    assert_eq!(depth(&channel, &topology::inbox("erin")).await, 1);

    // Carol was away: "One" from her inbox, what she missed from the
    // server, in upload order.
    let mut carol = session(&client, "carol").await;
    assert_eq!(show(&mut carol, 3).await, ["One", "Two", "Three"]);
    publish_video(&client, "bob", "Four").await.unwrap();
    assert_eq!(show(&mut carol, 1).await, ["Four"]);
    carol.close().await;
    // Shown, so never again: the server remembers how far she was shown.
    let mut carol = session(&client, "carol").await;
    nothing_more(&mut carol, "carol").await;
    publish_video(&client, "bob", "Five").await.unwrap();
    assert_eq!(show(&mut carol, 1).await, ["Five"]);
    carol.close().await;

    // Alice's session goes on reading the stream.
    assert_eq!(show(&mut alice, 2).await, ["Four", "Five"]);
    alice.close().await;

    // A new subscriber gets what comes after it subscribed, nothing before.
    log_in_following(&client, "dave", "bob").await;
    let mut dave = session(&client, "dave").await;
    publish_video(&client, "bob", "Six").await.unwrap();
    assert_eq!(show(&mut dave, 1).await, ["Six"]);
    dave.close().await;

    // Erin, away all along, has everything since she subscribed, in order.
    let mut erin = session(&client, "erin").await;
    assert_eq!(
        show(&mut erin, 5).await,
        ["Two", "Three", "Four", "Five", "Six"]
    );
    nothing_more(&mut erin, "erin").await;
    erin.close().await;

    // An unsubscribed user is shown nothing of it.
    user::update_subscription(&client, "erin", &SubscriptionChange::unsubscribe("bob"))
        .await
        .unwrap();
    publish_video(&client, "bob", "Seven").await.unwrap();
    let mut erin = session(&client, "erin").await;
    nothing_more(&mut erin, "erin").await;
    erin.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_celebritys_upload_not_shown_comes_again_at_the_next_session() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("celebrity-unshown");
    let server = server_with_celebrities(&vhost).await;
    let client = vhost.client("test").await;
    for user in ["alice", "carol", "erin"] {
        log_in_following(&client, user, "bob").await;
    }
    for video in ["One", "Two", "Three"] {
        publish_video(&client, "bob", video).await.unwrap();
    }
    // Alice's client takes "One" (the last copied into the inboxes) and
    // "Two" (from the stream), shows only "Two", and goes: "One" comes again
    // from the inbox, "Two" never, "Three" once.
    let mut alice = session(&client, "alice").await;
    let one = within("a notification", alice.next()).await.unwrap();
    assert_eq!(title(&one.notification), "One");
    let two = within("a notification", alice.next()).await.unwrap();
    assert_eq!(title(&two.notification), "Two");
    two.ack().await.unwrap();
    alice.close().await;
    let mut alice = session(&client, "alice").await;
    assert_eq!(show(&mut alice, 2).await, ["One", "Three"]);
    nothing_more(&mut alice, "alice").await;
    alice.close().await;
    let mut alice = session(&client, "alice").await;
    nothing_more(&mut alice, "alice").await;
    alice.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_forged_upload_in_a_celebritys_stream_is_skipped_and_the_next_real_one_shown() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("celebrity-forged");
    let server = server_with_celebrities(&vhost).await;
    let client = vhost.client("test").await;
    for user in ["alice", "carol", "erin"] {
        log_in_following(&client, user, "bob").await;
    }
    publish_video(&client, "bob", "One").await.unwrap();
    publish_video(&client, "bob", "Two").await.unwrap();
    let mut alice = session(&client, "alice").await;
    assert_eq!(show(&mut alice, 2).await, ["One", "Two"]);
    // Anyone may publish into the stream in open mode: a valid-looking
    // upload numbered far past bob's latest, and one of another YouTuber.
    let (_connection, channel) = raw_channel(&vhost).await;
    let forged = |youtuber: &str, seq: u64| Notification::VideoUploaded {
        id: uuid::Uuid::new_v4(),
        youtuber: youtuber.into(),
        video: "Forged".into(),
        uploaded_at_ms: 0,
        seq: Some(seq),
        stream_after: false,
    };
    for notification in [forged("bob", 1_000), forged("mallory", 3)] {
        channel
            .basic_publish(
                "".into(),
                topology::celebrity_stream("bob").as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                &protocol::encode(&notification),
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    publish_video(&client, "bob", "Three").await.unwrap();
    assert_eq!(show(&mut alice, 1).await, ["Three"]);
    nothing_more(&mut alice, "alice").await;
    alice.close().await;
    server.stop().await;
}
