//! Secure mode against a real RabbitMQ, with real accounts on a vhost per
//! test: what each account may do is enforced by the broker, and the server
//! applies a request only from the account of the user or YouTuber it names.

use lapin::{
    BasicProperties, Channel, Connection, ExchangeKind,
    options::{
        BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions, QueuePurgeOptions,
    },
    types::{FieldTable, ShortString},
};
use ytnotify::{
    Error,
    accounts::Account,
    broker,
    client::{
        creator::CreatorFeed,
        inbox::Inbox,
        user::{self, SubscriptionChange},
        youtuber::{self, publish_video},
    },
    protocol::{self, Notification, Reaction, Request, RequestEnvelope},
    server::Event,
    topology,
};
use ytnotify_testkit::{TestServer, TestVhost, unique, user_queue, within, youtuber_queue};

/// A user, a second user and a YouTuber, each with an account, on a vhost
/// with a secure server.
struct Class {
    vhost: TestVhost,
    server: TestServer,
    alice: String,
    alice_url: String,
    bob: String,
    bob_url: String,
    tom: String,
    tom_url: String,
}

async fn class(test: &str) -> Class {
    let vhost = TestVhost::new(test);
    // The server first: it declares the exchanges the accounts publish to.
    let server = TestServer::start(vhost.secure_server_config()).await;
    let (alice, bob, tom) = (unique("alice"), unique("bob"), unique("Tom"));
    let alice_url = vhost.add_account(&Account::user(&alice)).await;
    let bob_url = vhost.add_account(&Account::user(&bob)).await;
    let tom_url = vhost.add_account(&Account::youtuber(&tom)).await;
    Class {
        vhost,
        server,
        alice,
        alice_url,
        bob,
        bob_url,
        tom,
        tom_url,
    }
}

/// A connection with an account's URL, as any AMQP client would open one,
/// without declaring anything.
async fn raw_connection(url: &str) -> Connection {
    within(
        "a raw connection",
        broker::connect(&broker::Endpoint::new(url), "raw"),
    )
    .await
    .expect("the account logs in")
}

async fn confirming(connection: &Connection) -> Channel {
    broker::confirming_channel(connection)
        .await
        .expect("a channel")
}

/// Asserts that RabbitMQ refused an operation for lack of permission.
fn assert_refused<T>(what: &str, result: Result<T, lapin::Error>) {
    match result {
        Ok(_) => panic!("{what} was allowed"),
        Err(err) => assert!(broker::is_access_refused(&err), "{what}: {err}"),
    }
}

/// Asserts that a publish was refused for lack of permission.
fn assert_publish_refused(what: &str, result: ytnotify::Result<()>) {
    match result {
        Err(Error::Broker(err)) => assert!(broker::is_access_refused(&err), "{what}: {err}"),
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test]
async fn an_account_acts_as_its_own_user_and_as_no_one_else() {
    let Class {
        vhost,
        mut server,
        alice,
        alice_url,
        bob,
        tom,
        tom_url,
        ..
    } = class("secure-acts").await;
    let as_alice = vhost.client_as(&alice_url, "alice").await;

    // Her own login, subscribe, unsubscribe, listing.
    within(
        "her login and subscription",
        user::login_and_update(
            &as_alice,
            &alice,
            Some(&SubscriptionChange::subscribe(&tom)),
        ),
    )
    .await
    .expect("alice acts as alice");
    let listed = within("her subscriptions", user::subscriptions(&as_alice, &alice)).await;
    assert_eq!(listed.unwrap(), std::slice::from_ref(&tom));
    within(
        "her unsubscribe",
        user::update_subscription(&as_alice, &alice, &SubscriptionChange::unsubscribe(&tom)),
    )
    .await
    .expect("alice unsubscribes");
    within(
        "her subscribe again",
        user::update_subscription(&as_alice, &alice, &SubscriptionChange::subscribe(&tom)),
    )
    .await
    .expect("alice subscribes again");

    // As bob: refused by the server, with the reason.
    for attempt in [
        user::login(&as_alice, &bob).await.map(|_| ()),
        user::update_subscription(&as_alice, &bob, &SubscriptionChange::subscribe(&tom))
            .await
            .map(|_| ()),
    ] {
        match attempt {
            Err(Error::Refused(reason)) => assert!(
                reason.contains(&format!("user.{alice} may not act as user {bob}")),
                "{reason}"
            ),
            other => panic!("alice acting as bob: {other:?}"),
        }
    }
    // An upload: refused by the broker, as her account may not publish there.
    match publish_video(&as_alice, &tom, "not mine").await {
        Err(Error::AccessRefused(reason)) => {
            assert!(reason.contains("ytnotify.requests.youtuber"), "{reason}")
        }
        other => panic!("alice uploading as a YouTuber: {other:?}"),
    }

    // Tom uploads as himself; she receives it in her inbox, through her account.
    let as_tom = vhost.client_as(&tom_url, "tom").await;
    within("tom's upload", publish_video(&as_tom, &tom, "Hello class"))
        .await
        .expect("tom uploads as tom");
    let mut inbox = within("her inbox", Inbox::open(as_alice.link(), &alice))
        .await
        .expect("alice reads her inbox");
    let received = within("the notification", inbox.next()).await.unwrap();
    match &received.notification {
        Notification::VideoUploaded {
            youtuber, video, ..
        } => {
            assert_eq!(
                (youtuber.as_str(), video.as_str()),
                (tom.as_str(), "Hello class")
            )
        }
    }
    received.ack().await.unwrap();
    // Tom as another YouTuber: refused.
    let other = unique("Eve");
    match publish_video(&as_tom, &other, "not mine either").await {
        Err(Error::Refused(reason)) => assert!(
            reason.contains(&format!("youtuber.{tom} may not act as youtuber {other}")),
            "{reason}"
        ),
        other => panic!("tom uploading as someone else: {other:?}"),
    }

    // The server applied only what each account was allowed, and
    // dead-lettered each refusal (after answering it).
    let mut events = Vec::new();
    let refusals = |events: &[Event]| {
        events
            .iter()
            .filter(|event| matches!(event, Event::DeadLettered { reason, .. } if reason.contains("may not act as")))
            .count()
    };
    while refusals(&events) < 3 {
        events.push(server.next_event().await);
    }
    assert!(
        !events.iter().any(|event| matches!(event,
            Event::LoggedIn { user } | Event::Subscribed { user, .. } if *user == bob)),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|event| matches!(event,
            Event::Uploaded { youtuber, .. } if *youtuber == other)),
        "{events:?}"
    );
    inbox.close().await;
    as_alice.close().await.unwrap();
    as_tom.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_user_likes_as_itself_and_only_the_creator_reads_its_feed() {
    let Class {
        vhost,
        server,
        alice,
        alice_url,
        bob,
        tom,
        tom_url,
        ..
    } = class("secure-likes").await;
    let as_tom = vhost.client_as(&tom_url, "tom").await;
    within("tom's upload", publish_video(&as_tom, &tom, "Hello class"))
        .await
        .expect("tom uploads as tom");
    let as_alice = vhost.client_as(&alice_url, "alice").await;
    // Anyone may list a channel's videos.
    let listed = within("tom's videos", user::videos(&as_alice, &tom))
        .await
        .expect("alice lists tom's videos");
    let video = listed.videos[0].id.to_string();
    within(
        "her like",
        user::react(&as_alice, &alice, &video[..8], Some(Reaction::Like)),
    )
    .await
    .expect("alice likes as alice");
    match user::comment(&as_alice, &bob, &video, "in bob's name").await {
        Err(Error::Refused(reason)) => assert!(
            reason.contains(&format!("user.{alice} may not act as user {bob}")),
            "{reason}"
        ),
        other => panic!("alice commenting as bob: {other:?}"),
    }
    // Tom's feed: his account reads it, hers may not.
    let mut feed = within("tom's feed", CreatorFeed::open(as_tom.link(), &tom))
        .await
        .expect("tom reads his feed");
    let window = within(
        "the like",
        feed.next_window(std::time::Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let lines: Vec<String> = window.lines.iter().map(ToString::to_string).collect();
    assert_eq!(lines, [format!("{alice} liked \"Hello class\"")]);
    window.ack().await;
    match CreatorFeed::open(as_alice.link(), &tom).await {
        Err(Error::AccessRefused(reason)) => {
            assert!(reason.contains(&topology::creator_inbox(&tom)), "{reason}")
        }
        Err(err) => panic!("alice reading tom's feed: {err}"),
        Ok(_) => panic!("alice reads tom's feed"),
    }
    // His counts are his to ask for, through the YouTubers' exchange.
    let stats = within("tom's stats", youtuber::stats(&as_tom, &tom))
        .await
        .expect("tom asks for his stats");
    assert_eq!(stats.videos[0].likes, 1);
    match youtuber::stats(&as_alice, &tom).await {
        Err(Error::AccessRefused(reason)) => {
            assert!(reason.contains("ytnotify.requests.youtuber"), "{reason}")
        }
        other => panic!("alice asking for tom's stats: {other:?}"),
    }
    feed.close().await;
    as_alice.close().await.unwrap();
    as_tom.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_account_may_not_touch_what_is_not_its_own() {
    let Class {
        vhost,
        server,
        alice,
        alice_url,
        bob,
        bob_url,
        tom,
        ..
    } = class("secure-touch").await;
    // Bob logs in with his own account, so that his inbox exists.
    let as_bob = vhost.client_as(&bob_url, "bob").await;
    crate::log_in_following(&as_bob, &bob, &tom).await;
    let as_alice = vhost.client_as(&alice_url, "alice").await;
    within("her login", user::login(&as_alice, &alice))
        .await
        .unwrap();

    let connection = raw_connection(&alice_url).await;
    let bobs_inbox = topology::inbox(&bob);
    let channel = confirming(&connection).await;
    assert_refused(
        "consuming bob's inbox",
        channel
            .basic_consume(
                bobs_inbox.as_str().into(),
                "thief".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    let channel = confirming(&connection).await;
    assert_refused(
        "purging bob's inbox",
        channel
            .queue_purge(bobs_inbox.as_str().into(), QueuePurgeOptions::default())
            .await,
    );
    let fake = protocol::encode(&serde_json::json!({"type": "video_uploaded"}));
    let channel = confirming(&connection).await;
    assert_publish_refused(
        "publishing to the notifications exchange",
        broker::publish_confirmed(
            &channel,
            topology::NOTIFICATIONS,
            &tom,
            false,
            &fake,
            BasicProperties::default(),
        )
        .await,
    );
    let channel = confirming(&connection).await;
    assert_publish_refused(
        "publishing into bob's inbox through the default exchange",
        broker::publish_confirmed(
            &channel,
            "",
            &bobs_inbox,
            false,
            &fake,
            BasicProperties::default(),
        )
        .await,
    );
    let channel = confirming(&connection).await;
    assert_publish_refused(
        "publishing to the YouTubers' request exchange",
        broker::publish_confirmed(
            &channel,
            topology::YOUTUBER_REQUESTS_EXCHANGE,
            "",
            false,
            &fake,
            BasicProperties::default().with_user_id(ShortString::from(format!("user.{alice}"))),
        )
        .await,
    );
    for inbox in [topology::inbox(&alice), topology::inbox(&unique("mallory"))] {
        let channel = confirming(&connection).await;
        assert_refused(
            &format!("declaring {inbox}"),
            channel
                .queue_declare(
                    inbox.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await,
        );
    }
    for queue in [user_queue("alice"), youtuber_queue("bob")] {
        let channel = confirming(&connection).await;
        assert_refused(
            &format!("consuming {queue}"),
            channel
                .basic_consume(
                    queue.into(),
                    "impostor".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await,
        );
        let channel = confirming(&connection).await;
        assert_refused(
            &format!("deleting {queue}"),
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await,
        );
    }
    let channel = confirming(&connection).await;
    assert_refused(
        "declaring a reply queue of bob's",
        topology::declare_reply_queue(&channel, &topology::reply_queue(&format!("user.{bob}")))
            .await,
    );
    let channel = confirming(&connection).await;
    assert_refused(
        "declaring an exchange",
        channel
            .exchange_declare(
                "ytnotify.mine".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    // Her own reply queue she may declare, but not bind to tom's uploads.
    let channel = confirming(&connection).await;
    let mine = topology::reply_queue(&format!("user.{alice}"));
    topology::declare_reply_queue(&channel, &mine)
        .await
        .expect("alice declares her own reply queue");
    assert_refused(
        "binding her reply queue to the notifications exchange",
        channel
            .queue_bind(
                mine.as_str().into(),
                topology::NOTIFICATIONS.into(),
                tom.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    // Watching bob through the library says that the account may not.
    match Inbox::open(as_alice.link(), &bob).await {
        Err(Error::AccessRefused(reason)) => assert!(reason.contains(&bobs_inbox), "{reason}"),
        Err(err) => panic!("watching bob: {err}"),
        Ok(_) => panic!("alice watches bob's inbox"),
    }
    let _ = connection.close(200, "done".into()).await;
    as_alice.close().await.unwrap();
    as_bob.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_forged_sender_never_reaches_the_server_and_an_unsigned_request_is_refused() {
    let Class {
        vhost,
        mut server,
        alice,
        alice_url,
        bob,
        ..
    } = class("secure-forged").await;
    let connection = raw_connection(&alice_url).await;
    let login_as = |user: &str| protocol::encode(&RequestEnvelope::new(Request::login(user)));

    // Her connection claiming to be bob's account: the broker refuses it.
    let channel = confirming(&connection).await;
    let forged = broker::publish_confirmed(
        &channel,
        topology::USER_REQUESTS_EXCHANGE,
        "",
        true,
        &login_as(&bob),
        broker::persistent_json().with_user_id(ShortString::from(format!("user.{bob}"))),
    )
    .await;
    match forged {
        Err(Error::Broker(err)) => {
            assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}")
        }
        other => panic!("a forged user_id was taken: {other:?}"),
    }

    // No user_id at all: taken by the broker, refused by the server.
    let channel = confirming(&connection).await;
    broker::publish_confirmed(
        &channel,
        topology::USER_REQUESTS_EXCHANGE,
        "",
        true,
        &login_as(&alice),
        broker::persistent_json(),
    )
    .await
    .expect("the broker takes a request without user_id");
    let reason = within("the unsigned request to be dead-lettered", async {
        loop {
            if let Event::DeadLettered { reason, .. } = server.next_event().await {
                return reason;
            }
        }
    })
    .await;
    assert!(reason.contains("names no sender"), "{reason}");

    // Her own account, but the answer asked for in bob's inbox: refused,
    // and nothing lands there.
    let channel = confirming(&connection).await;
    broker::publish_confirmed(
        &channel,
        topology::USER_REQUESTS_EXCHANGE,
        "",
        true,
        &login_as(&alice),
        broker::persistent_json()
            .with_user_id(ShortString::from(format!("user.{alice}")))
            .with_reply_to(ShortString::from(topology::inbox(&bob))),
    )
    .await
    .expect("the broker takes it");
    let reason = within("the misdirected request to be dead-lettered", async {
        loop {
            if let Event::DeadLettered { reason, .. } = server.next_event().await {
                return reason;
            }
        }
    })
    .await;
    assert!(reason.contains("its own reply queues"), "{reason}");

    // Her real login goes through; bob never logged in.
    let as_alice = vhost.client_as(&alice_url, "alice").await;
    within("her login", user::login(&as_alice, &alice))
        .await
        .expect("alice logs in");
    loop {
        match server.next_event().await {
            Event::LoggedIn { user } if user == alice => break,
            Event::LoggedIn { user } => panic!("{user} logged in"),
            _ => {}
        }
    }
    let bobs_inbox = topology::inbox(&bob);
    let probe = confirming(&raw_connection(&vhost.url).await).await;
    assert!(
        topology::inspect(&probe, &bobs_inbox).await.is_err(),
        "bob has no inbox: no request of his was applied"
    );
    let _ = connection.close(200, "done".into()).await;
    as_alice.close().await.unwrap();
    server.stop().await;
}
