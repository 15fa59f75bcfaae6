//! The server in-process, driven by the library's own clients, against a real
//! RabbitMQ (a vhost per test).

use std::time::Duration;

use crate::log_in_following;
use futures_lite::StreamExt;
use lapin::{
    BasicProperties, Channel,
    options::BasicGetOptions,
    types::{AMQPValue, FieldTable, ShortString},
};
use uuid::Uuid;
use ytnotify::{
    Error, broker,
    client::{
        Client, ClientConfig,
        creator::CreatorFeed,
        history::Cursor,
        inbox::Inbox,
        notifications::Notifications,
        user::{self, SubscriptionChange},
        youtuber::publish_video,
    },
    protocol::{self, Notification, Reaction, Request, RequestEnvelope},
    server::Event,
    store, topology,
};
use ytnotify_testkit::{TestServer, TestVhost, user_queue, within, youtuber_queue};

/// Reads the next notification from an inbox and acknowledges it.
async fn next_notification(inbox: &mut Inbox) -> Notification {
    let received = within("a notification", inbox.next())
        .await
        .expect("inbox readable");
    let notification = received.notification.clone();
    received.ack().await.expect("ack");
    notification
}

pub(crate) fn title(notification: &Notification) -> &str {
    match notification {
        Notification::VideoUploaded { video, .. } => video,
    }
}

/// How many messages wait in a queue now.
pub(crate) async fn depth(channel: &Channel, queue: &str) -> u32 {
    topology::inspect(channel, queue)
        .await
        .expect("queue exists")
        .0
}

/// Waits until `queue` holds `messages` ready messages.
async fn wait_for_depth(channel: &Channel, queue: &str, messages: u32) {
    within(&format!("{queue} to hold {messages} messages"), async {
        while depth(channel, queue).await != messages {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// Uploads a video as `youtuber` and returns its id, as `user videos` lists it.
async fn upload(client: &Client, youtuber: &str, title: &str) -> String {
    publish_video(client, youtuber, title).await.unwrap();
    user::videos(client, youtuber).await.unwrap().videos[0]
        .id
        .to_string()
}

/// Publishes raw bytes to a server queue, as a foreign client would.
async fn publish_raw(channel: &Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    broker::publish_confirmed(channel, "", queue, true, body, properties)
        .await
        .expect("raw publish confirmed");
}

/// Two servers on the vhost: the one that applies `name`'s requests, and
/// the one that takes over when it stops. On SQLite the second is a hot
/// standby for every partition; on PostgreSQL both are active, each on half
/// of them, and the second takes `name`'s when the first hands it over.
async fn active_and_standby(vhost: &TestVhost, name: &str) -> (TestServer, TestServer) {
    let mut active = vhost.start_server().await;
    let mut standby = vhost.start_server().await;
    if ytnotify_testkit::postgres::selected() {
        let half = usize::from(topology::PARTITIONS) / 2;
        active.serving(half).await;
        standby.serving(half).await;
        if !active
            .partitions
            .borrow()
            .contains(&topology::partition_of(name))
        {
            std::mem::swap(&mut active, &mut standby);
        }
    }
    (active, standby)
}

pub(crate) async fn raw_channel(vhost: &TestVhost) -> (lapin::Connection, Channel) {
    let connection = broker::connect(&broker::Endpoint::new(&vhost.url), "test raw")
        .await
        .expect("connect");
    let channel = broker::confirming_channel(&connection)
        .await
        .expect("channel");
    topology::declare(
        &connection,
        topology::Declaring::As(ytnotify_testkit::queue_type()),
    )
    .await
    .expect("declare");
    (connection, channel)
}

#[tokio::test]
async fn an_upload_reaches_subscribers_and_only_them() {
    let vhost = TestVhost::new("fanout");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;

    log_in_following(&client, "alice", "bob").await;
    log_in_following(&client, "carol", "dave").await;
    let mut alice = Inbox::open(client.link(), "alice").await.unwrap();
    let carol = Inbox::open(client.link(), "carol").await.unwrap();

    within(
        "the upload",
        publish_video(&client, "bob", "Rust in 100 seconds"),
    )
    .await
    .unwrap();
    let notification = next_notification(&mut alice).await;
    assert_eq!(
        notification.to_string(),
        "New Notification: bob uploaded Rust in 100 seconds"
    );
    // carol follows dave, not bob: her inbox stays empty.
    carol.close().await;
    let (_connection, channel) = raw_channel(&vhost).await;
    assert_eq!(depth(&channel, &topology::inbox("carol")).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn the_server_prints_the_exercise_lines() {
    let vhost = TestVhost::new("events");
    let mut server = vhost.start_server().await;
    let client = vhost.client("test").await;

    log_in_following(&client, "alice", "bob").await;
    publish_video(&client, "bob", "Hello world").await.unwrap();
    user::update_subscription(&client, "alice", &SubscriptionChange::unsubscribe("bob"))
        .await
        .unwrap();

    let mut lines = Vec::new();
    for _ in 0..4 {
        lines.push(server.next_event().await.to_string());
    }
    assert_eq!(
        lines,
        [
            "alice logged in",
            "alice subscribed to bob",
            "bob uploaded Hello world",
            "alice unsubscribed to bob",
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn notifications_wait_in_the_inbox_while_the_user_is_away() {
    let vhost = TestVhost::new("catchup");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;

    // alice is away: nobody reads her inbox while bob uploads.
    for n in 1..=3 {
        publish_video(&client, "bob", &format!("Episode {n}"))
            .await
            .unwrap();
    }
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    assert_eq!(inbox.waiting_at_open(), 3);
    let mut titles = Vec::new();
    for _ in 0..3 {
        titles.push(title(&next_notification(&mut inbox).await).to_owned());
    }
    assert_eq!(titles, ["Episode 1", "Episode 2", "Episode 3"]);
    server.stop().await;
}

#[tokio::test]
async fn a_notification_not_acknowledged_comes_back_next_session() {
    let vhost = TestVhost::new("unacked");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    publish_video(&client, "bob", "Shown but not acknowledged")
        .await
        .unwrap();

    // The first session receives it but ends before acknowledging (as a
    // client that crashes before printing would).
    let mut first = Inbox::open(client.link(), "alice").await.unwrap();
    let received = within("first delivery", first.next()).await.unwrap();
    drop(received);
    first.close().await;

    let mut second = Inbox::open(client.link(), "alice").await.unwrap();
    let again = next_notification(&mut second).await;
    assert_eq!(title(&again), "Shown but not acknowledged");
    second.close().await;
    let (_connection, channel) = raw_channel(&vhost).await;
    assert_eq!(
        depth(&channel, &topology::inbox("alice")).await,
        0,
        "acknowledged once shown"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_redelivered_notification_is_shown_once_per_session() {
    let vhost = TestVhost::new("dedup");
    let client = vhost.client("test").await;
    let (_connection, channel) = raw_channel(&vhost).await;
    topology::declare_inbox(
        &channel,
        "alice",
        Some(10_000),
        ytnotify_testkit::queue_type(),
    )
    .await
    .unwrap();
    // The same notification twice, as a server that crashed between the
    // broker's confirm and recording it would send it.
    let notification = Notification::VideoUploaded {
        id: Uuid::new_v4(),
        youtuber: "bob".into(),
        video: "Twice".into(),
        uploaded_at_ms: 0,
        seq: None,
        stream_after: false,
    };
    let unique = Notification::VideoUploaded {
        id: Uuid::new_v4(),
        youtuber: "bob".into(),
        video: "Once".into(),
        uploaded_at_ms: 0,
        seq: None,
        stream_after: false,
    };
    for message in [&notification, &notification, &unique] {
        publish_raw(
            &channel,
            &topology::inbox("alice"),
            &protocol::encode(message),
            broker::persistent_json(),
        )
        .await;
    }
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    assert_eq!(title(&next_notification(&mut inbox).await), "Twice");
    assert_eq!(title(&next_notification(&mut inbox).await), "Once");
    inbox.close().await;
    assert_eq!(
        depth(&channel, &topology::inbox("alice")).await,
        0,
        "the duplicate was acknowledged"
    );
}

#[tokio::test]
async fn a_redelivered_request_is_applied_once() {
    let vhost = TestVhost::new("idempotent");
    let mut server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    for _ in 0..2 {
        server.next_event().await;
    }
    let (_connection, channel) = raw_channel(&vhost).await;

    // The same upload request (same id) three times: one video, one notification.
    let upload = RequestEnvelope::new(Request::Upload {
        youtuber: "bob".into(),
        video: "Only once".into(),
    });
    for _ in 0..3 {
        publish_raw(
            &channel,
            youtuber_queue("bob"),
            &protocol::encode(&upload),
            broker::persistent_json(),
        )
        .await;
    }
    // A later upload proves the three copies were all processed before it.
    publish_video(&client, "bob", "Afterwards").await.unwrap();
    assert_eq!(
        server.next_event().await.to_string(),
        "bob uploaded Only once"
    );
    assert_eq!(
        server.next_event().await.to_string(),
        "bob uploaded Afterwards"
    );
    assert_eq!(server.store.videos_of("bob").await.unwrap().len(), 2);
    assert_eq!(depth(&channel, &topology::inbox("alice")).await, 2);

    // A replayed subscribe after an unsubscribe must not re-subscribe.
    let subscribe = RequestEnvelope::new(Request::ChangeSubscription {
        user: "alice".into(),
        youtuber: "bob".into(),
        subscribe: true,
    });
    publish_raw(
        &channel,
        user_queue("alice"),
        &protocol::encode(&subscribe),
        broker::persistent_json(),
    )
    .await;
    user::update_subscription(&client, "alice", &SubscriptionChange::unsubscribe("bob"))
        .await
        .unwrap();
    publish_raw(
        &channel,
        user_queue("alice"),
        &protocol::encode(&subscribe),
        broker::persistent_json(),
    )
    .await;
    assert!(
        user::subscriptions(&client, "alice")
            .await
            .unwrap()
            .is_empty()
    );
    publish_video(&client, "bob", "Not for alice")
        .await
        .unwrap();
    assert_eq!(
        depth(&channel, &topology::inbox("alice")).await,
        2,
        "the unbinding held"
    );
    server.stop().await;
}

#[tokio::test]
async fn one_users_requests_are_applied_in_the_order_sent() {
    let vhost = TestVhost::new("order");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    // 40 changes sent at once without waiting: subscribe, unsubscribe, … to
    // bob, then subscribe to carol. In order, every one succeeds and alice ends
    // following carol only; any reordering makes an unsubscribe come before
    // its subscribe, which the server refuses.
    let mut pending = Vec::new();
    for n in 0..40 {
        let change = Request::ChangeSubscription {
            user: "alice".into(),
            youtuber: "bob".into(),
            subscribe: n % 2 == 0,
        };
        pending.push(client.send(change).await.unwrap());
    }
    let carol = Request::ChangeSubscription {
        user: "alice".into(),
        youtuber: "carol".into(),
        subscribe: true,
    };
    pending.push(client.send(carol).await.unwrap());
    for (n, reply) in pending.into_iter().enumerate() {
        within("a reply", client.wait(reply))
            .await
            .unwrap_or_else(|err| panic!("change {n} failed: {err}"));
    }
    assert_eq!(
        user::subscriptions(&client, "alice").await.unwrap(),
        ["carol"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_subscription_confirmed_before_an_upload_is_honoured_by_it() {
    let vhost = TestVhost::new("happens-before");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    publish_video(&client, "bob", "Warm-up").await.unwrap();
    let (_connection, channel) = raw_channel(&vhost).await;
    // Subscribe, and right after SUCCESS upload: the upload must reach the new
    // subscriber every time, with no settling delay.
    for n in 0..25 {
        let user = format!("fan{n}");
        log_in_following(&client, &user, "bob").await;
        publish_video(&client, "bob", &format!("Video {n}"))
            .await
            .unwrap();
        assert_eq!(
            depth(&channel, &topology::inbox(&user)).await,
            1,
            "{user} got video {n}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn refusals_come_back_with_a_reason_and_change_nothing() {
    let vhost = TestVhost::new("refused");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;

    let err =
        user::update_subscription(&client, "alice", &SubscriptionChange::unsubscribe("carol"))
            .await
            .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "youtube_server refused the request: alice is not subscribed to carol (alice follows: bob)"
    );
    assert_eq!(
        user::subscriptions(&client, "alice").await.unwrap(),
        ["bob"]
    );

    // A client checks names before sending anything.
    let err = user::login(&client, "al ice").await.unwrap_err();
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn subscribing_to_a_youtuber_with_no_video_yet_works_with_a_notice() {
    let vhost = TestVhost::new("notice");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    let notices = log_in_following(&client, "alice", "newbie").await;
    assert_eq!(
        notices,
        ["newbie has not uploaded any video yet; alice will be notified of the first one"]
    );
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    publish_video(&client, "newbie", "My first video")
        .await
        .unwrap();
    assert_eq!(
        title(&next_notification(&mut inbox).await),
        "My first video"
    );
    server.stop().await;
}

#[tokio::test]
async fn unreadable_messages_are_dead_lettered_with_a_reason_and_the_server_carries_on() {
    let vhost = TestVhost::new("poison");
    let mut server = vhost.start_server().await;
    let client = vhost.client("test").await;
    let (connection, channel) = raw_channel(&vhost).await;

    let oversized = vec![b'x'; protocol::MAX_MESSAGE_BYTES + 1];
    let upload_on_user_queue = protocol::encode(&RequestEnvelope::new(Request::Upload {
        youtuber: "bob".into(),
        video: "misrouted".into(),
    }));
    let poison: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            user_queue("alice"),
            b"not json".to_vec(),
            "not a JSON object",
        ),
        (
            user_queue("alice"),
            br#"{"v":1,"type":"like","video":"x"}"#.to_vec(),
            "unknown message type \"like\"",
        ),
        (
            youtuber_queue("bob"),
            br#"{"v":9,"type":"upload"}"#.to_vec(),
            "unsupported protocol version 9",
        ),
        (youtuber_queue("bob"), oversized, "exceeds the limit"),
        (
            user_queue("alice"),
            upload_on_user_queue,
            "upload requests belong on ytnotify.youtuber_requests",
        ),
    ];
    // Headers of the sender's that claim to be the server's, and one so
    // large that a copy with the server's headers added would no longer
    // fit in a frame (131,072 bytes): the server copies none of them.
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(topology::SENDER_HEADER),
        AMQPValue::LongString("user.bob".into()),
    );
    headers.insert(
        ShortString::from("x-pad"),
        AMQPValue::LongString("p".repeat(130_872).into()),
    );
    for (queue, body, _) in &poison {
        let properties = broker::persistent_json().with_headers(headers.clone());
        publish_raw(&channel, queue, body, properties).await;
    }
    // The server keeps consuming: a valid request after the poison is applied.
    user::login(&client, "alice").await.unwrap();

    // The two queues are consumed concurrently: collect, then match by body.
    let mut events = Vec::new();
    for _ in 0..=poison.len() {
        events.push(server.next_event().await);
    }
    assert!(
        events.contains(&Event::LoggedIn {
            user: "alice".into()
        }),
        "{events:?}"
    );
    let mut dead_letters = Vec::new();
    for _ in 0..poison.len() {
        let message = within(
            "a dead letter",
            channel.basic_get(
                topology::DEAD_LETTERS.into(),
                BasicGetOptions { no_ack: true },
            ),
        )
        .await
        .unwrap()
        .expect("a dead letter is waiting");
        dead_letters.push(message.delivery);
    }
    for (queue, body, reason) in &poison {
        assert!(
            events.iter().any(|event| matches!(event,
                Event::DeadLettered { queue: from, reason: said } if from == queue && said.contains(reason))),
            "no dead-letter event from {queue} saying {reason:?} in {events:?}"
        );
        let letter = dead_letters
            .iter()
            .find(|letter| &letter.data == body)
            .expect("the original body is kept in the dead-letter queue");
        let headers = letter.properties.headers().clone().unwrap();
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(text)) => text.to_string(),
            other => panic!("header {name}: {other:?}"),
        };
        assert!(header(topology::REASON_HEADER).contains(reason));
        assert_eq!(header(topology::SOURCE_QUEUE_HEADER), *queue);
        // A quorum queue counts the deliveries of a message it gave again.
        let added: Vec<_> = headers
            .inner()
            .keys()
            .filter(|name| name.as_str() != "x-delivery-count")
            .collect();
        assert_eq!(added.len(), 2, "only the server's headers: {added:?}");
    }
    assert_eq!(
        depth(&channel, user_queue("alice")).await,
        0,
        "no stuck queue"
    );
    connection.close(200, "".into()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_request_from_a_foreign_client_without_reply_to_is_still_applied() {
    let vhost = TestVhost::new("foreign");
    let mut server = vhost.start_server().await;
    let (_connection, channel) = raw_channel(&vhost).await;
    // What a minimal client in another language would send: no reply-to, no confirms awaited.
    let body = br#"{"v":1,"id":"6a1f8e3c-8a45-4a43-9d5e-0e7d0f5b7a11","type":"login","user":"py_student"}"#;
    // To the users' exchange with no routing key: it lands on partition 0.
    let properties = BasicProperties::default().with_message_id(ShortString::from("x"));
    broker::publish_confirmed(
        &channel,
        topology::USER_REQUESTS_EXCHANGE,
        "",
        true,
        body,
        properties,
    )
    .await
    .expect("published");
    assert_eq!(
        server.next_event().await.to_string(),
        "py_student logged in"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_sent_while_no_server_runs_waits_and_is_applied_later() {
    let vhost = TestVhost::new("no-server");
    let config = ClientConfig {
        broker: ytnotify::broker::Endpoint::new(&vhost.url),
        timeout: Duration::from_millis(300),
    };
    let client = within("connect", Client::connect(&config, "test"))
        .await
        .unwrap();
    let err = user::login(&client, "alice").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ServerTimeout {
                server_running: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 3);
    assert_eq!(
        err.to_string(),
        "youtube_server did not answer within 300ms; the request is kept in the queue and will be \
         applied when youtube_server runs (no youtube_server is running now: start one with `youtube_server`)"
    );

    let mut server = vhost.start_server().await;
    assert_eq!(server.next_event().await.to_string(), "alice logged in");
    assert!(server.store.user_exists("alice").await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn state_survives_a_server_restart() {
    let vhost = TestVhost::new("restart");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    publish_video(&client, "bob", "Before").await.unwrap();
    server.stop().await;

    let server = vhost.start_server().await;
    assert_eq!(
        user::subscriptions(&client, "alice").await.unwrap(),
        ["bob"]
    );
    publish_video(&client, "bob", "After").await.unwrap();
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    assert_eq!(title(&next_notification(&mut inbox).await), "Before");
    assert_eq!(title(&next_notification(&mut inbox).await), "After");
    server.stop().await;
}

/// A vhost set up before request queues were partitioned: one queue per
/// kind, bound to its exchange, with requests waiting in it.
#[tokio::test]
async fn requests_left_in_the_older_unpartitioned_queue_are_applied_and_the_queue_goes() {
    let vhost = TestVhost::new("unpartitioned");
    let (connection, channel) = raw_channel(&vhost).await;
    let older = topology::RequestKind::Users.unpartitioned();
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(topology::DEAD_LETTER_EXCHANGE.into()),
    );
    arguments.insert(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    );
    if ytnotify_testkit::queue_type() == topology::QueueType::Quorum {
        arguments.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
    }
    channel
        .queue_declare(
            older.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            older.into(),
            topology::USER_REQUESTS_EXCHANGE.into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Users of several partitions, each a login then a subscription.
    let users: Vec<String> = (0..6).map(|n| format!("user{n}")).collect();
    for user in &users {
        for request in [
            Request::login(user.as_str()),
            Request::ChangeSubscription {
                user: user.clone(),
                youtuber: "bob".into(),
                subscribe: true,
            },
        ] {
            publish_raw(
                &channel,
                older,
                &protocol::encode(&RequestEnvelope::new(request)),
                broker::persistent_json(),
            )
            .await;
        }
    }

    let server = vhost.start_server().await;
    let store = server.store.clone();
    within("the older requests to be applied", async {
        loop {
            let mut applied = 0;
            for user in &users {
                if store.subscriptions(user).await.unwrap() == ["bob"] {
                    applied += 1;
                }
            }
            if applied == users.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let gone = topology::inspect(&connection.create_channel().await.unwrap(), older).await;
    assert!(
        gone.as_ref().is_err_and(broker::is_not_found),
        "the older queue is deleted: {gone:?}"
    );
    // The server goes on with the partitions alone.
    let client = vhost.client("test").await;
    user::login(&client, "carol").await.unwrap();
    connection.close(200, "".into()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_bound_by_an_older_version_are_moved_to_user_exchanges_once() {
    let vhost = TestVhost::new("layout");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    log_in_following(&client, "carol", "bob").await;
    server.stop().await;

    // What an older server left: no user exchanges, each inbox bound straight
    // to the notifications exchange, and a database that says so.
    let (connection, channel) = raw_channel(&vhost).await;
    for user in ["alice", "carol"] {
        channel
            .exchange_delete(
                topology::user_exchange(user).as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                topology::inbox(user).as_str().into(),
                topology::NOTIFICATIONS.into(),
                "bob".into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let store = vhost.store().await;
    store.set_broker_layout(1).await.unwrap();

    let server = vhost.start_server().await;
    assert_eq!(store.broker_layout().await.unwrap(), store::BROKER_LAYOUT);
    let bindings = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_bindings",
            "-p",
            &vhost.name,
            "--no-table-headers",
        ])
        .args(["source_name", "destination_name", "routing_key"])
        .output()
        .expect("rabbitmqctl runs");
    let bindings = String::from_utf8_lossy(&bindings.stdout);
    for user in ["alice", "carol"] {
        let bound = |source: &str, destination: &str, key: &str| {
            bindings
                .lines()
                .any(|line| line.split('\t').eq([source, destination, key]))
        };
        let (exchange, inbox) = (topology::user_exchange(user), topology::inbox(user));
        assert!(
            bound(topology::NOTIFICATIONS, &exchange, "bob"),
            "{bindings}"
        );
        assert!(bound(&exchange, &inbox, ""), "{bindings}");
        assert!(!bound(topology::NOTIFICATIONS, &inbox, "bob"), "{bindings}");
    }
    publish_video(&client, "bob", "Through the user exchange")
        .await
        .unwrap();
    // Once each: the old binding is gone, the new one in place.
    assert_eq!(depth(&channel, &topology::inbox("alice")).await, 1);
    assert_eq!(depth(&channel, &topology::inbox("carol")).await, 1);
    user::update_subscription(&client, "alice", &SubscriptionChange::unsubscribe("bob"))
        .await
        .unwrap();
    publish_video(&client, "bob", "After alice left")
        .await
        .unwrap();
    assert_eq!(depth(&channel, &topology::inbox("alice")).await, 1);
    assert_eq!(depth(&channel, &topology::inbox("carol")).await, 2);
    let mut inbox = Inbox::open(client.link(), "carol").await.unwrap();
    for expected in ["Through the user exchange", "After alice left"] {
        assert_eq!(title(&next_notification(&mut inbox).await), expected);
    }
    inbox.close().await;
    server.stop().await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_notification_left_unsent_by_a_crash_is_sent_at_startup() {
    let vhost = TestVhost::new("outbox");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    // Store an upload without notifying, as a server killed between its
    // commit and its publish leaves it.
    let store = server.store.clone();
    server.stop().await;
    let video = store
        .upload(Uuid::new_v4(), "bob", "Stored, not sent")
        .await
        .unwrap()
        .into_inner();
    assert!(!video.notified);
    drop(store);

    let server = vhost.start_server().await;
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    let notification = next_notification(&mut inbox).await;
    assert_eq!(notification.id(), video.id);
    assert!(server.store.videos_to_notify().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn two_stacks_on_two_vhosts_do_not_see_each_other() {
    let (red, blue) = (TestVhost::new("red"), TestVhost::new("blue"));
    let (red_server, blue_server) = (red.start_server().await, blue.start_server().await);
    let (red_client, blue_client) = (red.client("red").await, blue.client("blue").await);
    log_in_following(&red_client, "alice", "bob").await;
    log_in_following(&blue_client, "alice", "bob").await;
    publish_video(&red_client, "bob", "Red only").await.unwrap();
    let mut red_inbox = Inbox::open(red_client.link(), "alice").await.unwrap();
    assert_eq!(title(&next_notification(&mut red_inbox).await), "Red only");
    let (_connection, blue_channel) = raw_channel(&blue).await;
    assert_eq!(depth(&blue_channel, &topology::inbox("alice")).await, 0);
    red_server.stop().await;
    blue_server.stop().await;
}

#[tokio::test]
async fn receive_notifications_streams_until_shutdown() {
    let vhost = TestVhost::new("stream");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    publish_video(&client, "bob", "While away").await.unwrap();

    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let connection_client = vhost.client("watcher").await;
    let watcher = tokio::spawn(async move {
        ytnotify::client::notifications::receive_notifications(
            &connection_client,
            "alice",
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
    assert_eq!(
        within("the waiting one", lines.recv()).await.unwrap(),
        "New Notification: bob uploaded While away"
    );
    publish_video(&client, "bob", "Live").await.unwrap();
    assert_eq!(
        within("the live one", lines.recv()).await.unwrap(),
        "New Notification: bob uploaded Live"
    );
    stop.send(()).unwrap();
    within("the watcher to stop", watcher)
        .await
        .unwrap()
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn many_subscribers_each_get_every_upload_exactly_once() {
    let vhost = TestVhost::new("many");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    let users: Vec<String> = (0..30).map(|n| format!("viewer{n}")).collect();
    for user in &users {
        log_in_following(&client, user, "bob").await;
    }
    for n in 0..5 {
        publish_video(&client, "bob", &format!("Clip {n}"))
            .await
            .unwrap();
    }
    let (_connection, channel) = raw_channel(&vhost).await;
    for user in &users {
        let mut ids = Vec::new();
        let (_consumer_connection, consumer_channel) = raw_channel(&vhost).await;
        let mut consumer = consumer_channel
            .basic_consume(
                topology::inbox(user).as_str().into(),
                "count".into(),
                lapin::options::BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        for _ in 0..5 {
            let delivery = within("a delivery", consumer.next())
                .await
                .unwrap()
                .unwrap();
            ids.push(protocol::decode_notification(&delivery.data).unwrap().id());
        }
        ids.dedup();
        assert_eq!(ids.len(), 5, "{user} got five distinct uploads");
        consumer_channel.close(200, "".into()).await.unwrap();
        assert_eq!(
            depth(&channel, &topology::inbox(user)).await,
            0,
            "{user} got no extra copy"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn two_sessions_of_the_same_user_each_see_every_notification_once() {
    let vhost = TestVhost::new("two-sessions");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    user::login_and_update(
        &client,
        "alice",
        Some(&SubscriptionChange::subscribe("bob")),
    )
    .await
    .unwrap();
    publish_video(&client, "bob", "While away").await.unwrap();
    // Older than what a session takes from the history: the inbox alone has it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let other = vhost.client("other").await;
    let mut first = within(
        "a session",
        Notifications::open(client.link(), &client.requests(), "alice", None),
    )
    .await
    .unwrap();
    let away = within("what waited", first.next()).await.unwrap();
    assert!(away.away && away.cursor.is_none(), "from the inbox");
    assert_eq!(title(&away.notification), "While away");
    away.ack().await.unwrap();
    let mut second = within(
        "a session",
        Notifications::open(other.link(), &other.requests(), "alice", None),
    )
    .await
    .unwrap();
    for n in 0..10 {
        publish_video(&client, "bob", &format!("Live {n}"))
            .await
            .unwrap();
    }
    for session in [&mut first, &mut second] {
        for n in 0..10 {
            let received = within("a notification", session.next()).await.unwrap();
            assert_eq!(title(&received.notification), format!("Live {n}"));
            assert!(
                !received.away && received.cursor.is_some(),
                "from the history"
            );
            received.ack().await.unwrap();
        }
    }
    first.close().await;
    second.close().await;
    // Shown, so gone from the inbox: a new session starts with nothing.
    let mut third = within(
        "a session",
        Notifications::open(other.link(), &other.requests(), "alice", None),
    )
    .await
    .unwrap();
    publish_video(&client, "bob", "After").await.unwrap();
    let received = within("a notification", third.next()).await.unwrap();
    assert_eq!(title(&received.notification), "After");
    third.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_session_that_comes_back_never_shows_again_what_its_client_had_from_the_history() {
    let vhost = TestVhost::new("come-back");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    let start = Cursor::now();
    for video in ["One", "Two", "Three"] {
        publish_video(&client, "bob", video).await.unwrap();
    }
    // A client reads all three with their positions, and goes before any
    // copy leaves the inbox: the acknowledgements its going cut.
    let mut first = within(
        "a session",
        Notifications::open(client.link(), &client.requests(), "alice", Some(start)),
    )
    .await
    .unwrap();
    let mut position = None;
    for video in ["One", "Two", "Three"] {
        let received = within("a notification", first.next()).await.unwrap();
        assert_eq!(title(&received.notification), video);
        position = Some(received.cursor.expect("from the history"));
    }
    first.close().await;
    let (_connection, channel) = raw_channel(&vhost).await;
    assert_eq!(depth(&channel, &topology::inbox("alice")).await, 3);

    // It comes back after "Three": the inbox's copies of all three are the
    // client's already, never handed out again, and they leave the inbox.
    let reader = vhost.client("reader").await;
    let mut again = within(
        "a session",
        Notifications::open(reader.link(), &reader.requests(), "alice", position),
    )
    .await
    .unwrap()
    .resumable();
    assert!(again.recovered());
    if let Ok(shown) = tokio::time::timeout(Duration::from_secs(1), again.next()).await {
        panic!(
            "shown again: {:?}",
            shown.map(|received| title(&received.notification).to_owned())
        );
    }
    publish_video(&client, "bob", "Four").await.unwrap();
    let received = within("a notification", again.next()).await.unwrap();
    assert_eq!(title(&received.notification), "Four");
    assert!(!received.away && received.cursor.is_some());
    wait_for_depth(&channel, &topology::inbox("alice"), 0).await;
    again.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_session_that_comes_back_still_shows_what_waited_and_was_not_shown() {
    let vhost = TestVhost::new("come-back-waiting");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    for video in ["Waited 1", "Waited 2"] {
        publish_video(&client, "bob", video).await.unwrap();
    }
    // Older than the next session: they come to it from the inbox alone.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut first = within(
        "a session",
        Notifications::open(client.link(), &client.requests(), "alice", None),
    )
    .await
    .unwrap()
    .resumable();
    for _ in 0..2 {
        let received = within("what waited", first.next()).await.unwrap();
        assert!(received.away && received.cursor.is_none());
        // Handed to the client, which goes before saying it showed them.
    }
    publish_video(&client, "bob", "Live").await.unwrap();
    let live = within("the live one", first.next()).await.unwrap();
    assert_eq!(title(&live.notification), "Live");
    let position = live.cursor;
    first.close().await;

    // The client comes back after "Live": what waited before it is still
    // the inbox's to show, since the client never said it showed it.
    let reader = vhost.client("reader").await;
    let mut again = within(
        "a session",
        Notifications::open(reader.link(), &reader.requests(), "alice", position),
    )
    .await
    .unwrap()
    .resumable();
    let mut shown = Vec::new();
    for _ in 0..2 {
        let received = within("what waited, again", again.next()).await.unwrap();
        assert!(received.away && received.cursor.is_none());
        shown.push(title(&received.notification).to_owned());
        received.ack().await.unwrap();
    }
    shown.sort();
    assert_eq!(shown, ["Waited 1", "Waited 2"]);
    publish_video(&client, "bob", "After").await.unwrap();
    let after = within("the next one", again.next()).await.unwrap();
    assert_eq!(title(&after.notification), "After");
    let (_connection, channel) = raw_channel(&vhost).await;
    wait_for_depth(&channel, &topology::inbox("alice"), 0).await;
    again.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_notification_taken_but_not_shown_stays_in_the_inbox_through_a_reconnection() {
    let vhost = TestVhost::new("unshown");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    publish_video(&client, "bob", "Not shown yet")
        .await
        .unwrap();
    // Older than what a session takes from the history: the inbox alone has it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let reader = vhost.client("reader").await;
    let mut session = within(
        "a session",
        Notifications::open(reader.link(), &reader.requests(), "alice", None),
    )
    .await
    .unwrap();
    let received = within("what waited", session.next()).await.unwrap();
    assert_eq!(title(&received.notification), "Not shown yet");
    // The connection breaks before it is shown; the broker delivers the copy
    // again, and the session must not take that for "shown".
    vhost.cut_connections();
    reconnected(&reader).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    session.close().await;
    let (_connection, channel) = raw_channel(&vhost).await;
    wait_for_depth(&channel, &topology::inbox("alice"), 1).await;
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_is_a_hot_standby_that_takes_over() {
    let vhost = TestVhost::new("standby");
    let (mut active, mut standby) = active_and_standby(&vhost, "alice").await;
    let client = vhost.client("test").await;

    user::login(&client, "alice").await.unwrap();
    assert_eq!(active.next_event().await.to_string(), "alice logged in");
    active.stop().await;
    // The standby shares the database and now receives the requests.
    log_in_following(&client, "bob", "carol").await;
    assert_eq!(standby.next_event().await.to_string(), "bob logged in");
    assert_eq!(
        standby.next_event().await.to_string(),
        "bob subscribed to carol"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), standby.events.recv())
            .await
            .is_err(),
        "nothing else happened"
    );
    standby.stop().await;
}

/// The whole database locked by another client, as an operator's long
/// transaction would.
enum DatabaseLock {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl DatabaseLock {
    async fn take(vhost: &TestVhost) -> DatabaseLock {
        match vhost.database() {
            store::Database::Sqlite(path) => {
                let lock = rusqlite::Connection::open(path).unwrap();
                lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
                DatabaseLock::Sqlite(lock)
            }
            store::Database::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute(
                        "BEGIN; LOCK TABLE users, subscriptions, applied_requests \
                         IN ACCESS EXCLUSIVE MODE",
                    )
                    .await
                    .unwrap();
                DatabaseLock::Postgres(client)
            }
        }
    }

    async fn release(self) {
        match self {
            DatabaseLock::Sqlite(lock) => lock.execute_batch("ROLLBACK").unwrap(),
            DatabaseLock::Postgres(lock) => lock.batch_execute("ROLLBACK").await.unwrap(),
        }
    }
}

#[tokio::test]
async fn requests_wait_while_the_database_is_locked_and_are_applied_in_order_after() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("db-locked");
    let server = vhost.start_server().await;
    // Another process holds the database's write lock for longer than the
    // server waits for it: the server's transactions fail (SQLite) or wait
    // (PostgreSQL) meanwhile. The client waits for the lock and then for the
    // server.
    let held_for = store::BUSY_TIMEOUT + Duration::from_secs(2);
    let config = ClientConfig {
        timeout: held_for + ytnotify_testkit::WAIT,
        ..vhost.client_config()
    };
    let client = std::sync::Arc::new(Client::connect(&config, "test").await.unwrap());
    log_in_following(&client, "alice", "bob").await;

    let lock = DatabaseLock::take(&vhost).await;
    let mut answers = Vec::new();
    for request in [
        Request::ChangeSubscription {
            user: "alice".into(),
            youtuber: "carol".into(),
            subscribe: true,
        },
        Request::ChangeSubscription {
            user: "alice".into(),
            youtuber: "bob".into(),
            subscribe: false,
        },
    ] {
        let pending = client.send(request).await.unwrap();
        let client = std::sync::Arc::clone(&client);
        answers.push(tokio::spawn(async move { client.wait(pending).await }));
    }
    // What must not happen, watched for as long as the lock is held.
    tokio::time::sleep(held_for).await;
    assert!(
        answers.iter().all(|answer| !answer.is_finished()),
        "no request is answered while the database is locked"
    );
    lock.release().await;

    for answer in answers {
        within("the answer once the database is free", answer)
            .await
            .unwrap()
            .expect("applied once the database is free");
    }
    assert_eq!(
        user::subscriptions(&client, "alice").await.unwrap(),
        ["carol"]
    );
    publish_video(&client, "bob", "Not for alice")
        .await
        .unwrap();
    publish_video(&client, "carol", "For alice").await.unwrap();
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    assert_eq!(title(&next_notification(&mut inbox).await), "For alice");
    inbox.close().await;
    let (_connection, channel) = raw_channel(&vhost).await;
    assert_eq!(depth(&channel, &topology::inbox("alice")).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn an_inbox_deleted_on_the_broker_is_declared_and_bound_again() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("inbox-lost");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    let (_connection, channel) = raw_channel(&vhost).await;
    channel
        .queue_delete(
            topology::inbox("alice").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();

    // Binding to the missing inbox fails; the server tries the request again,
    // declaring the inbox this time.
    within(
        "the subscription",
        user::update_subscription(&client, "alice", &SubscriptionChange::subscribe("carol")),
    )
    .await
    .unwrap();
    // A login binds the inbox to every YouTuber the database says she follows.
    user::login(&client, "alice").await.unwrap();
    publish_video(&client, "bob", "From bob").await.unwrap();
    publish_video(&client, "carol", "From carol").await.unwrap();
    assert_eq!(depth(&channel, &topology::inbox("alice")).await, 2);
    server.stop().await;
}

/// The lines of the next window of a creator's feed, acknowledged.
async fn next_lines(feed: &mut CreatorFeed) -> Vec<String> {
    let window = within(
        "a window of the creator's feed",
        feed.next_window(Duration::from_millis(200)),
    )
    .await
    .expect("the feed is readable");
    let lines = window.lines.iter().map(ToString::to_string).collect();
    window.ack().await;
    lines
}

#[tokio::test]
async fn a_like_stored_but_not_sent_before_the_server_stopped_reaches_the_creator_later() {
    let vhost = TestVhost::new("creator-outbox");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    let video = upload(&client, "bob", "Hello").await;
    server.stop().await;
    // The server's first step for a like, and no more: as if it crashed
    // between its commit and the send.
    let store = vhost.store().await;
    let like = Request::React {
        user: "alice".into(),
        video,
        reaction: Some(Reaction::Like),
    };
    store.apply(vec![(Uuid::new_v4(), like)]).await.unwrap();
    drop(store);

    let server = vhost.start_server().await;
    let mut feed = CreatorFeed::open(client.link(), "bob").await.unwrap();
    assert_eq!(next_lines(&mut feed).await, ["alice liked \"Hello\""]);
    feed.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_pile_of_junk_and_copies_in_a_creator_inbox_never_holds_up_the_real_events() {
    let vhost = TestVhost::new("creator-junk");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    let video = upload(&client, "bob", "Hello").await;
    user::react(&client, "alice", &video, Some(Reaction::Like))
        .await
        .unwrap();
    let (_connection, channel) = raw_channel(&vhost).await;
    let inbox = topology::creator_inbox("bob");
    // The like's message, taken out to be put back as it was, many times.
    let copy = within("the like's message", async {
        loop {
            if let Some(message) = channel
                .basic_get(inbox.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return message.delivery.data;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    publish_raw(&channel, &inbox, &copy, BasicProperties::default()).await;
    let mut feed = CreatorFeed::open(client.link(), "bob").await.unwrap();
    assert_eq!(next_lines(&mut feed).await, ["alice liked \"Hello\""]);
    // Then more than the feed's prefetch of messages with nothing new.
    for n in 0..150 {
        let junk = if n % 2 == 0 {
            b"not json".to_vec()
        } else {
            copy.clone()
        };
        publish_raw(&channel, &inbox, &junk, BasicProperties::default()).await;
    }
    user::comment(&client, "carol", &video, "Still here")
        .await
        .unwrap();
    assert_eq!(
        next_lines(&mut feed).await,
        ["carol commented on \"Hello\": Still here"],
        "the copies shown once, the junk skipped"
    );
    wait_for_depth(&channel, &inbox, 0).await;
    feed.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_full_creator_inbox_keeps_its_events_waiting_until_the_creator_reads() {
    let vhost = TestVhost::new("creator-full");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    let video = upload(&client, "bob", "Hello").await;
    // Fill bob's inbox to its 16 MB with junk, until the broker refuses more.
    let (_connection, channel) = raw_channel(&vhost).await;
    let inbox = topology::creator_inbox("bob");
    let junk = vec![b'x'; 64 * 1024];
    let mut refused = false;
    for _ in 0..400 {
        let sent = broker::publish_confirmed(
            &channel,
            "",
            &inbox,
            false,
            &junk,
            BasicProperties::default(),
        )
        .await;
        if sent.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the creator's inbox has a bound");
    let (_connection, channel) = raw_channel(&vhost).await;
    let full = depth(&channel, &inbox).await;

    // The like is stored and answered; its event waits in the database.
    within(
        "a like while bob's inbox is full",
        user::react(&client, "alice", &video, Some(Reaction::Like)),
    )
    .await
    .unwrap();
    assert_eq!(depth(&channel, &inbox).await, full);
    // Bob reads: the junk goes, and the like follows when the server sends
    // what waits again (after 5 s, then 10 s, 20 s… while the inbox is full).
    let mut feed = CreatorFeed::open(client.link(), "bob").await.unwrap();
    let window = tokio::time::timeout(
        Duration::from_secs(60),
        feed.next_window(Duration::from_millis(200)),
    )
    .await
    .expect("the like within a minute")
    .unwrap();
    let lines: Vec<String> = window.lines.iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["alice liked \"Hello\""]);
    window.ack().await;
    feed.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_creator_inbox_squatted_by_another_client_blocks_no_like_and_is_served_once_freed() {
    let vhost = TestVhost::new("creator-squat");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    // Someone declares bob's creator inbox first, with other settings.
    let (_connection, channel) = raw_channel(&vhost).await;
    channel
        .queue_declare(
            topology::creator_inbox("bob").as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let bobs = upload(&client, "bob", "Hello").await;
    let carols = upload(&client, "carol", "Other").await;
    // Likes of bob's video are stored and answered all the same; carol's
    // feed is served meanwhile.
    within(
        "a like of bob's video",
        user::react(&client, "alice", &bobs, Some(Reaction::Like)),
    )
    .await
    .unwrap();
    within(
        "a like of carol's video",
        user::react(&client, "alice", &carols, Some(Reaction::Like)),
    )
    .await
    .unwrap();
    let mut carols_feed = CreatorFeed::open(client.link(), "carol").await.unwrap();
    assert_eq!(
        next_lines(&mut carols_feed).await,
        ["alice liked \"Other\""]
    );
    assert_eq!(depth(&channel, &topology::creator_inbox("bob")).await, 0);

    // Once an administrator deletes the squatted queue, the server declares
    // bob's inbox and sends what waited.
    channel
        .queue_delete(
            topology::creator_inbox("bob").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let mut bobs_feed = within("bob's inbox declared again", async {
        loop {
            match CreatorFeed::open(client.link(), "bob").await {
                Ok(feed) => return feed,
                Err(ytnotify::Error::NoCreatorInbox(_)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(err) => panic!("{err}"),
            }
        }
    })
    .await;
    assert_eq!(next_lines(&mut bobs_feed).await, ["alice liked \"Hello\""]);
    bobs_feed.close().await;
    carols_feed.close().await;
    server.stop().await;
}

// A shared broker: careless or hostile clients, and lost connections. None of
// them may stall, stop or mislead the service for anyone else.

/// The reason header of the next dead-lettered message.
async fn next_dead_letter_reason(channel: &Channel) -> String {
    let message = within("a dead-lettered message", async {
        loop {
            if let Some(message) = channel
                .basic_get(
                    topology::DEAD_LETTERS.into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let headers = message.delivery.properties.headers().clone().unwrap();
    match headers.inner().get(topology::REASON_HEADER) {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("no reason header: {other:?}"),
    }
}

#[tokio::test]
async fn an_inbox_declared_first_by_another_client_is_refused_with_the_fix_and_others_are_served() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("hostile-inbox");
    let server = vhost.start_server().await;
    let (_connection, channel) = raw_channel(&vhost).await;
    // Any client with the demo credentials can declare victim's inbox first,
    // with other settings.
    channel
        .queue_declare(
            topology::inbox("victim").as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let client = vhost.client("test").await;
    let victim = client.send(Request::login("victim")).await.unwrap();
    let other = client.send(Request::login("alice")).await.unwrap();
    within("alice's login, behind victim's", client.wait(other))
        .await
        .expect("alice is served");
    let refusal = within("victim's answer", client.wait(victim)).await;
    let Err(Error::Refused(reason)) = refusal else {
        panic!("victim's login should be refused, got {refusal:?}");
    };
    assert!(
        reason.contains("exists on the broker with other settings")
            && reason.contains(&format!(
                "rabbitmqctl delete_queue -p {} ytnotify.inbox.victim",
                vhost.name
            )),
        "{reason}"
    );
    assert_eq!(next_dead_letter_reason(&channel).await, reason);

    // Once an administrator deletes it, victim logs in like anyone.
    channel
        .queue_delete(
            topology::inbox("victim").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    within("victim's login", user::login(&client, "victim"))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_request_that_keeps_failing_is_refused_after_five_attempts_and_others_go_on() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("keeps-failing");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "carol").await;
    // A queue bound to bob's uploads that refuses every message: the broker
    // answers each notification of bob with a negative confirm.
    let (_connection, channel) = raw_channel(&vhost).await;
    let mut refusing = FieldTable::default();
    refusing.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    refusing.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            "sink".into(),
            lapin::options::QueueDeclareOptions::default(),
            refusing,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            "sink".into(),
            topology::NOTIFICATIONS.into(),
            "bob".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let blocked = client
        .send(Request::Upload {
            youtuber: "bob".into(),
            video: "Refused by a queue".into(),
        })
        .await
        .unwrap();
    let fine = client
        .send(Request::Upload {
            youtuber: "carol".into(),
            video: "Behind it".into(),
        })
        .await
        .unwrap();
    within("carol's upload", client.wait(fine))
        .await
        .expect("carol's upload goes on while bob's is retried");
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    assert_eq!(title(&next_notification(&mut inbox).await), "Behind it");
    let refusal = within("bob's answer", client.wait(blocked)).await;
    let Err(Error::Refused(reason)) = refusal else {
        panic!("bob's upload should be refused, got {refusal:?}");
    };
    assert!(
        reason.contains("negative publisher confirm") && reason.contains("after 5 attempts"),
        "{reason}"
    );
    assert_eq!(next_dead_letter_reason(&channel).await, reason);
    inbox.close().await;
    server.stop().await;
}

/// A client that waits up to `timeout` for each reply: for a server that
/// must first find out that its consumer is gone.
async fn patient_client(vhost: &TestVhost, timeout: Duration) -> Client {
    Client::connect(
        &ClientConfig {
            broker: ytnotify::broker::Endpoint::new(&vhost.url),
            timeout,
        },
        "patient",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_request_queue_deleted_while_the_server_runs_is_declared_and_consumed_again() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("queue-deleted");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    publish_video(&client, "bob", "Before").await.unwrap();
    let (_connection, channel) = raw_channel(&vhost).await;
    for queue in [youtuber_queue("bob"), user_queue("alice")] {
        channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    // What must hold is that both queues are consumed again without anyone
    // restarting anything. The server's consumer of one queue declares that
    // queue alone: declaring the other while it is deleted can leave a
    // consumer the broker never feeds (see the next test).
    let patient = patient_client(&vhost, Duration::from_secs(45)).await;
    let after = async {
        // The client that saw its queue vanish declares it again itself.
        publish_video(&client, "bob", "After").await?;
        user::login(&patient, "alice").await
    };
    let answered = tokio::time::timeout(Duration::from_secs(60), after).await;
    if !matches!(answered, Ok(Ok(_))) {
        // What the broker says of the queues' consumers, for the next look
        // at this failure (RELIABILITY.md).
        panic!(
            "both queues not consumed again: {answered:?}; the broker's consumers:\n{}",
            vhost.consumers()
        );
    }
    for queue in [youtuber_queue("bob"), user_queue("alice")] {
        let (_, consumers) = topology::inspect(&channel, queue).await.unwrap();
        assert_eq!(
            consumers, 1,
            "the server consumes {queue} again, with one consumer"
        );
    }
    assert_eq!(server.store.videos_of("bob").await.unwrap().len(), 2);
    server.stop().await;
}

/// RabbitMQ 3.10 sometimes keeps a consumer registered, and never cancelled,
/// when its queue is deleted while another connection declares it: the
/// consumer is listed on the queue declared again, takes its messages as
/// unacknowledged, and delivers none of them (`ARCHITECTURE.md`). A server
/// left with such a consumer answers no one. This test makes the broker do
/// it, and checks that the server notices and consumes again on its own.
// Two worker threads: rabbitmqctl blocks the thread that runs it, and the
// server runs in this test's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_broker_keeps_but_never_feeds_is_set_up_again() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("ghost-consumer");
    let server = vhost.start_server().await;
    let (_deleting, deleter) = raw_channel(&vhost).await;
    // Three connections that declare the queue while it is deleted: with
    // one, the broker keeps the consumer in a few tries of a hundred here;
    // with three, in about four of ten.
    let mut declaring = Vec::new();
    for _ in 0..3 {
        declaring.push(raw_channel(&vhost).await.0);
    }
    let queue = user_queue("alice");
    let server_consumer = || async {
        let waiting = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if let [channel] = vhost.consumer_channels(queue).as_slice() {
                    return channel.clone();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        waiting.await.unwrap_or_else(|_| {
            panic!(
                "the server does not consume {queue} alone; the broker's consumers:\n{}",
                vhost.consumers()
            )
        })
    };
    // 100 tries all missing it would almost never happen, on a broker that
    // has the fault at all.
    let mut kept = None;
    for attempt in 0..100 {
        let before = server_consumer().await;
        eprintln!("attempt {attempt}: the server consumes on {before}");
        let declare = futures::future::join_all(declaring.iter().map(|connection| async move {
            let channel = connection.create_channel().await.unwrap();
            let until = tokio::time::Instant::now() + Duration::from_millis(50);
            while tokio::time::Instant::now() < until {
                if topology::declare_for_consumer(&channel, queue, ytnotify_testkit::queue_type())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));
        let delete = async {
            deleter
                .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
                .await
                .unwrap();
        };
        tokio::join!(declare, delete);
        // A consumer the broker cancelled is gone from the list at once; one
        // still listed on the same channel is the one it kept.
        if vhost.consumer_channels(queue).contains(&before) {
            kept = Some(before);
            break;
        }
    }
    if kept.is_none() {
        // A RabbitMQ without the fault: what is left to show is that the
        // server consumes after 100 such deletions.
        eprintln!("the broker cancelled the consumer each of 100 times");
    }
    // A login now goes to the consumer the broker kept; the server must find
    // out and take it again.
    let patient = patient_client(&vhost, Duration::from_secs(30)).await;
    let answered = user::login(&patient, "alice").await;
    assert!(
        answered.is_ok(),
        "the login is answered: {answered:?}; the broker's consumers:\n{}",
        vhost.consumers()
    );
    let now = server_consumer().await;
    if let Some(kept) = kept {
        assert_ne!(now, kept, "the server consumes on a new channel");
    }
    server.stop().await;
}

/// Waits until the client has lost its connection and has it back.
async fn reconnected(client: &Client) {
    let mut state = client.state();
    within("the client to notice the cut", async {
        state
            .wait_for(|state| *state != ytnotify::link::LinkState::Connected)
            .await
            .map(|_| ())
    })
    .await
    .unwrap();
    within("the client to connect again", async {
        state
            .wait_for(|state| *state == ytnotify::link::LinkState::Connected)
            .await
            .map(|_| ())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn cut_connections_are_ridden_out_and_a_confirmed_unsubscribe_holds() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("cuts");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    user::update_subscription(&client, "alice", &SubscriptionChange::subscribe("carol"))
        .await
        .unwrap();
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    user::update_subscription(&client, "alice", &SubscriptionChange::unsubscribe("bob"))
        .await
        .unwrap();
    for _ in 0..3 {
        vhost.cut_connections();
        reconnected(&client).await;
    }
    // The server, the client's replies and the inbox reader all came back,
    // and nothing brought the old binding back.
    within("an upload after the cuts", async {
        publish_video(&client, "bob", "Not for alice").await?;
        publish_video(&client, "carol", "For alice").await
    })
    .await
    .unwrap();
    assert_eq!(title(&next_notification(&mut inbox).await), "For alice");
    publish_video(&client, "carol", "Again").await.unwrap();
    assert_eq!(title(&next_notification(&mut inbox).await), "Again");
    assert_eq!(
        user::subscriptions(&client, "alice").await.unwrap(),
        ["carol"]
    );
    inbox.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_stopping_server_hands_over_to_the_standby_without_reordering() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("handover");
    let (mut active, mut standby) = active_and_standby(&vhost, "alice").await;
    let client = std::sync::Arc::new(vhost.client("test").await);
    user::login(&client, "alice").await.unwrap();
    // 300 changes of one pair that are each valid only in the order sent:
    // an unsubscribe applied before its subscribe would be refused.
    const CHANGES: usize = 300;
    let sender = {
        let client = std::sync::Arc::clone(&client);
        tokio::spawn(async move {
            let mut pending = Vec::new();
            for n in 0..CHANGES {
                let change = Request::ChangeSubscription {
                    user: "alice".into(),
                    youtuber: "bob".into(),
                    subscribe: n % 2 == 0,
                };
                pending.push(client.send(change).await.unwrap());
            }
            pending
        })
    };
    let mut seen_by_active = vec![active.next_event().await, active.next_event().await];
    for _ in 0..20 {
        seen_by_active.push(active.next_event().await);
    }
    let mut rest = active.events.resubscribe();
    std::mem::swap(&mut rest, &mut active.events);
    active.stop().await;
    while let Ok(event) = rest.try_recv() {
        seen_by_active.push(event);
    }
    let pending = within("every change sent", sender).await.unwrap();
    for reply in pending {
        within("a reply", client.wait(reply))
            .await
            .expect("every change is valid in the order sent");
    }
    let mut events: Vec<Event> = seen_by_active;
    while events.len() < CHANGES + 1 {
        events.push(standby.next_event().await);
    }
    let changes: Vec<String> = events
        .iter()
        .filter(|event| !matches!(event, Event::LoggedIn { .. }))
        .map(ToString::to_string)
        .collect();
    let expected: Vec<String> = (0..CHANGES)
        .map(|n| {
            if n % 2 == 0 {
                "alice subscribed to bob".to_owned()
            } else {
                "alice unsubscribed to bob".to_owned()
            }
        })
        .collect();
    assert_eq!(changes, expected);
    standby.stop().await;
}

#[tokio::test]
async fn a_standby_does_not_send_what_the_active_server_has_in_flight() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("standby-outbox");
    let (active, standby) = active_and_standby(&vhost, "bob").await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    // An upload stored and not yet notified: what the active server has in
    // flight between its commit and the broker's confirm.
    let in_flight = active
        .store
        .upload(Uuid::new_v4(), "bob", "In flight")
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_connection, channel) = raw_channel(&vhost).await;
    assert_eq!(
        depth(&channel, &topology::inbox("alice")).await,
        0,
        "the standby sent nothing at start"
    );
    // Left unsent by the active server (as if it crashed): the standby
    // sends it once it takes over, before anything else, without waiting
    // for the partition's next upload.
    active.stop().await;
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    assert_eq!(next_notification(&mut inbox).await.id(), in_flight.id);
    publish_video(&client, "bob", "Next").await.unwrap();
    assert_eq!(title(&next_notification(&mut inbox).await), "Next");
    inbox.close().await;
    standby.stop().await;
}

#[tokio::test]
async fn a_full_inbox_drops_the_oldest_and_the_user_is_told_at_the_next_login() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("inbox-bound");
    let mut config = vhost.server_config();
    config.inbox_bound = Some(3);
    let server = ytnotify_testkit::TestServer::start(config).await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    // A notification that its user rejects leaves the inbox the same way,
    // but no full inbox dropped it: it is not counted.
    publish_video(&client, "bob", "Rejected").await.unwrap();
    let (_connection, channel) = raw_channel(&vhost).await;
    let rejected = channel
        .basic_get(
            topology::inbox("alice").as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("the notification waits");
    broker::nack(
        &rejected.delivery,
        lapin::options::BasicNackOptions {
            requeue: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for n in 1..=5 {
        publish_video(&client, "bob", &format!("Clip {n}"))
            .await
            .unwrap();
    }
    assert_eq!(depth(&channel, &topology::inbox("alice")).await, 3);
    // The server counts the drops as they come, and a login takes the count
    // so far: a login between two drops is told of the first, the next login
    // of the second. Every drop is told once in all.
    let told = within("the drops to be counted and told", async {
        let mut told = 0;
        while told < 2 {
            if let Some(notice) = user::login(&client, "alice").await.unwrap() {
                let expected = [
                    "1 notification for alice was dropped while alice was away: the inbox keeps only the latest 3",
                    "2 notifications for alice were dropped while alice was away: the inbox keeps only the latest 3",
                ];
                let count = expected
                    .iter()
                    .position(|text| *text == notice)
                    .unwrap_or_else(|| panic!("unexpected notice: {notice}"));
                told += count + 1;
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        told
    })
    .await;
    assert_eq!(told, 2, "each drop told once");
    assert_eq!(
        user::login(&client, "alice").await.unwrap(),
        None,
        "told once"
    );
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    for n in 3..=5 {
        assert_eq!(
            title(&next_notification(&mut inbox).await),
            format!("Clip {n}")
        );
    }
    inbox.close().await;
    server.stop().await;
}

#[tokio::test]
async fn an_inbox_deleted_while_its_user_watches_comes_back_by_itself() {
    ytnotify_testkit::logs();
    let vhost = TestVhost::new("inbox-deleted-watching");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    log_in_following(&client, "alice", "bob").await;
    let mut inbox = Inbox::open(client.link(), "alice").await.unwrap();
    let (_connection, channel) = raw_channel(&vhost).await;
    channel
        .queue_delete(
            topology::inbox("alice").as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    // The consumer is cancelled; the inbox asks the server for a login,
    // which declares the inbox and binds it again from the database. What
    // bob uploads before then reaches no inbox of alice's.
    let client = std::sync::Arc::new(client);
    let uploads = {
        let client = std::sync::Arc::clone(&client);
        tokio::spawn(async move {
            for n in 0..50 {
                publish_video(&client, "bob", &format!("After {n}"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let first = title(&next_notification(&mut inbox).await).to_owned();
    assert!(first.starts_with("After "), "{first}");
    uploads.abort();
    inbox.close().await;
    server.stop().await;
}
