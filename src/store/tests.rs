//! The store's tests. Those that do not depend on SQLite's file run twice,
//! on SQLite and on PostgreSQL ([`on_both`]), each on a database of its own.

use super::apply::dropped_notice;
use super::db::{Fault, postgres_fault, sqlite_error_is_the_requests};
use super::*;
use crate::protocol::{CreatorEvent, Reaction};

/// Runs each named test (an `async fn(Store)`) on a new SQLite file and on a
/// new PostgreSQL database.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::Store::open(&dir.path().join("nested/dir/test.db")).unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = ytnotify_testkit::postgres::TestDatabase::create().await;
                    let store = super::Store::connect(&super::Database::parse(&db.url))
                        .await
                        .unwrap();
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_both!(
    a_replayed_request_changes_nothing_and_gets_the_same_reply,
    unsubscribing_from_someone_not_followed_is_refused_with_the_list,
    subscribing_to_a_youtuber_without_videos_carries_a_notice,
    uploads_are_an_outbox_until_marked_notified,
    state_survives_reopening,
    overviews_count_subscriptions_videos_and_the_latest,
    effects_carry_the_bound_recorded_for_the_user_not_the_current_one,
    dropped_notifications_are_reported_once_at_the_next_login,
    pruning_forgets_only_old_requests_which_then_apply_again,
    a_large_prune_runs_in_chunks_to_the_end,
    a_request_whose_recorded_reply_is_corrupt_is_refused_alone,
    a_refused_request_is_undone_and_its_refusal_recorded,
    a_login_that_asks_for_the_history_says_so_even_when_replayed,
    a_database_records_its_broker_layout_and_lists_every_inbox,
    likes_change_once_and_tell_the_creator_of_each_change,
    a_video_is_named_by_an_unambiguous_start_of_its_id,
    videos_are_listed_newest_first_with_their_counts,
    a_creator_hears_of_subscribers_from_its_first_upload_on,
    a_comment_sent_again_after_its_id_was_forgotten_is_refused_alone,
);

/// The same database, opened again: a restarted server.
async fn reopen(store: &Store) -> Store {
    Store::connect(store.database()).await.unwrap()
}

fn is_postgres(store: &Store) -> bool {
    matches!(store.database(), Database::Postgres(_))
}

async fn a_replayed_request_changes_nothing_and_gets_the_same_reply(store: Store) {
    let id = Uuid::new_v4();
    let first = store
        .change_subscription(id, "alice", "bob", true)
        .await
        .unwrap();
    assert!(first.is_new());
    // Unsubscribe in between; replaying the subscribe must not re-subscribe.
    store
        .change_subscription(Uuid::new_v4(), "alice", "bob", false)
        .await
        .unwrap();
    let again = store
        .change_subscription(id, "alice", "bob", true)
        .await
        .unwrap();
    assert_eq!(again, Applied::Replayed(first.into_inner()));
    assert!(!store.is_subscribed("alice", "bob").await.unwrap());
}

async fn unsubscribing_from_someone_not_followed_is_refused_with_the_list(store: Store) {
    store
        .change_subscription(Uuid::new_v4(), "alice", "bob", true)
        .await
        .unwrap();
    let reply = store
        .change_subscription(Uuid::new_v4(), "alice", "carol", false)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply,
        Reply::Refused {
            reason: "alice is not subscribed to carol (alice follows: bob)".into()
        }
    );
}

async fn subscribing_to_a_youtuber_without_videos_carries_a_notice(store: Store) {
    let reply = store
        .change_subscription(Uuid::new_v4(), "alice", "bob", true)
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(reply, Reply::Done { notice: Some(ref n) } if n.contains("bob has not uploaded"))
    );
    store.upload(Uuid::new_v4(), "bob", "First").await.unwrap();
    let reply = store
        .change_subscription(Uuid::new_v4(), "carol", "bob", true)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply, Reply::Done { notice: None });
}

async fn uploads_are_an_outbox_until_marked_notified(store: Store) {
    let request = Uuid::new_v4();
    let video = store
        .upload(request, "bob", "Hello")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(store.videos_to_notify().await.unwrap(), vec![video.clone()]);
    // A redelivered upload returns the same video and stores no second one.
    let replayed = store.upload(request, "bob", "Hello").await.unwrap();
    assert_eq!(replayed, Applied::Replayed(video.clone()));
    assert_eq!(store.videos_of("bob").await.unwrap().len(), 1);
    assert!(!store.is_notified(video.id).await.unwrap());
    store.mark_notified(vec![video.id]).await.unwrap();
    assert!(store.videos_to_notify().await.unwrap().is_empty());
    assert!(store.is_notified(video.id).await.unwrap());
    assert!(
        !store.is_notified(Uuid::new_v4()).await.unwrap(),
        "no such video"
    );
}

async fn state_survives_reopening(store: Store) {
    store.login(Uuid::new_v4(), "alice").await.unwrap();
    store
        .change_subscription(Uuid::new_v4(), "alice", "bob", true)
        .await
        .unwrap();
    let store = reopen(&store).await;
    assert!(store.user_exists("alice").await.unwrap());
    assert_eq!(store.subscriptions("alice").await.unwrap(), vec!["bob"]);
}

async fn overviews_count_subscriptions_videos_and_the_latest(store: Store) {
    store
        .change_subscription(Uuid::new_v4(), "alice", "bob", true)
        .await
        .unwrap();
    store
        .change_subscription(Uuid::new_v4(), "alice", "newbie", true)
        .await
        .unwrap();
    store
        .change_subscription(Uuid::new_v4(), "carol", "bob", true)
        .await
        .unwrap();
    store.upload(Uuid::new_v4(), "bob", "First").await.unwrap();
    store.upload(Uuid::new_v4(), "bob", "Second").await.unwrap();
    store.upload(Uuid::new_v4(), "dave", "Alone").await.unwrap();
    let users = store.users_overview().await.unwrap();
    let counts: Vec<(&str, i64)> = users
        .iter()
        .map(|u| (u.name.as_str(), u.subscriptions))
        .collect();
    assert_eq!(counts, [("alice", 2), ("carol", 1)]);
    let youtubers = store.youtubers_overview().await.unwrap();
    let rows: Vec<(&str, i64, i64, Option<&str>)> = youtubers
        .iter()
        .map(|y| {
            (
                y.name.as_str(),
                y.subscribers,
                y.videos,
                y.latest_video.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("bob", 2, 2, Some("Second")),
            ("dave", 0, 1, Some("Alone")),
            ("newbie", 1, 0, None),
        ]
    );
}

#[test]
fn an_unwritable_path_says_which_file_and_what_to_do() {
    let err = Store::open(Path::new("/proc/ytnotify/db.sqlite"))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.starts_with("cannot open the database /proc/ytnotify/db.sqlite"),
        "{text}"
    );
    assert!(text.ends_with("choose another file"), "{text}");
    // The program adds its own flag for it.
    assert_eq!(err.setting(), Some(crate::error::Setting::Database));
}

/// The schema before inboxes were bounded, as the first servers created it.
const SCHEMA_BEFORE_BOUNDS: &str = "
    CREATE TABLE users (
        name          TEXT PRIMARY KEY,
        created_at_ms INTEGER NOT NULL,
        last_login_ms INTEGER
    );
    CREATE TABLE youtubers (
        name          TEXT PRIMARY KEY,
        created_at_ms INTEGER NOT NULL
    );
    CREATE TABLE subscriptions (
        user     TEXT NOT NULL REFERENCES users(name),
        youtuber TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        PRIMARY KEY (user, youtuber)
    );
    CREATE TABLE videos (
        id             TEXT PRIMARY KEY,
        youtuber       TEXT NOT NULL REFERENCES youtubers(name),
        title          TEXT NOT NULL,
        uploaded_at_ms INTEGER NOT NULL,
        notified       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX subscriptions_by_youtuber ON subscriptions(youtuber);
    CREATE INDEX videos_by_youtuber ON videos(youtuber, uploaded_at_ms);
    CREATE INDEX videos_to_notify ON videos(uploaded_at_ms) WHERE notified = 0;
    CREATE TABLE applied_requests (
        id            TEXT PRIMARY KEY,
        reply         TEXT NOT NULL,
        video_id      TEXT,
        applied_at_ms INTEGER NOT NULL
    );
";

/// Runs SQL on the store's database, as an operator (or a fault) would.
async fn execute(store: &Store, sql: &str) {
    let sql = sql.to_owned();
    store
        .db
        .transact(Mode::Write, async move |tx: &mut Tx<'_>| {
            tx.batch(&sql).await
        })
        .await
        .unwrap();
}

/// The first column of a query's first row.
async fn query_value<T: db::FromValue + Send + 'static>(store: &Store, sql: &str) -> T {
    let sql = sql.to_owned();
    store
        .db
        .transact(Mode::Read, async move |tx: &mut Tx<'_>| {
            tx.query_value(&sql, &[]).await
        })
        .await
        .unwrap()
}

fn login(user: &str) -> Request {
    Request::login(user)
}

fn subscribe(user: &str, youtuber: &str) -> Request {
    Request::ChangeSubscription {
        user: user.into(),
        youtuber: youtuber.into(),
        subscribe: true,
    }
}

fn upload(youtuber: &str, video: &str) -> Request {
    Request::Upload {
        youtuber: youtuber.into(),
        video: video.into(),
    }
}

fn inbox(user: &str, bound: Option<u32>) -> InboxSpec {
    InboxSpec {
        user: user.into(),
        bound,
    }
}

#[tokio::test]
async fn an_old_database_gains_the_new_columns_and_its_users_stay_unbounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA_BEFORE_BOUNDS).unwrap();
        old.execute_batch(
            "INSERT INTO users VALUES ('alice', 1, 1);
             INSERT INTO subscriptions VALUES ('alice', 'bob', 1);",
        )
        .unwrap();
    }
    // Opening twice: the migration runs once, then finds nothing to do.
    drop(Store::open(&path).unwrap());
    let store = Store::open(&path).unwrap().with_inbox_bound(Some(500));
    let alice = store
        .apply(vec![(Uuid::new_v4(), login("alice"))])
        .await
        .unwrap();
    assert_eq!(
        alice[0].effect,
        Effect::Inbox {
            inbox: inbox("alice", None),
            subscriptions: vec!["bob".into()],
            history: false,
        }
    );
    let carol = store
        .apply(vec![(Uuid::new_v4(), login("carol"))])
        .await
        .unwrap();
    assert_eq!(
        carol[0].effect,
        Effect::Inbox {
            inbox: inbox("carol", Some(500)),
            subscriptions: vec![],
            history: false,
        }
    );
    let indexed: bool = query_value(
        &store,
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'applied_requests_by_time')",
    )
    .await;
    assert!(indexed, "prune_applied would scan the whole table");
    // An old video gains its counts, from 0, and can be liked.
    execute(
        &store,
        "INSERT INTO youtubers (name, created_at_ms) VALUES ('bob', 1);
         INSERT INTO videos (id, youtuber, title, uploaded_at_ms, notified)
         VALUES ('0123abcd-0000-4000-8000-000000000000', 'bob', 'Old one', 1, 1);",
    )
    .await;
    apply_one(
        &store,
        Uuid::new_v4(),
        react("alice", "0123abcd", Some(Reaction::Like)),
    )
    .await;
    let listed = apply_one(
        &store,
        Uuid::new_v4(),
        Request::Stats {
            youtuber: "bob".into(),
        },
    )
    .await;
    assert!(matches!(
        listed.reply.into_inner(),
        Reply::Videos { ref videos, .. } if (videos[0].likes, videos[0].comments) == (1, 0)
    ));
    // The old user's dropped count starts at 0 and counts from there.
    store
        .record_dropped(vec![("alice".into(), 2)])
        .await
        .unwrap();
    let reply = store
        .login(Uuid::new_v4(), "alice")
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply,
        Reply::Done {
            notice: Some(
                "2 notifications for alice were dropped while alice was away: \
                 the inbox was full"
                    .into()
            )
        }
    );
}

async fn effects_carry_the_bound_recorded_for_the_user_not_the_current_one(store: Store) {
    let subscribed = Uuid::new_v4();
    {
        let store = store.clone().with_inbox_bound(Some(100));
        let outcomes = store
            .apply(vec![(subscribed, subscribe("alice", "bob"))])
            .await
            .unwrap();
        assert_eq!(
            outcomes[0].effect,
            Effect::Binding {
                user: "alice".into(),
                youtuber: "bob".into(),
                subscribed: true,
                declare: Some(inbox("alice", Some(100))),
            }
        );
    }
    let store = reopen(&store).await.with_inbox_bound(None);
    let outcomes = store
        .apply(vec![
            (Uuid::new_v4(), login("alice")),
            (subscribed, subscribe("alice", "bob")),
            (Uuid::new_v4(), subscribe("alice", "carol")),
            (Uuid::new_v4(), subscribe("dave", "bob")),
        ])
        .await
        .unwrap();
    let effects: Vec<Effect> = outcomes.into_iter().map(|o| o.effect).collect();
    assert_eq!(
        effects,
        [
            Effect::Inbox {
                inbox: inbox("alice", Some(100)),
                subscriptions: vec!["bob".into()],
                history: false,
            },
            // A replay declares the inbox again, as first declared.
            Effect::Binding {
                user: "alice".into(),
                youtuber: "bob".into(),
                subscribed: true,
                declare: Some(inbox("alice", Some(100))),
            },
            // A known user's inbox exists already.
            Effect::Binding {
                user: "alice".into(),
                youtuber: "carol".into(),
                subscribed: true,
                declare: None,
            },
            Effect::Binding {
                user: "dave".into(),
                youtuber: "bob".into(),
                subscribed: true,
                declare: Some(inbox("dave", None)),
            },
        ]
    );
}

async fn dropped_notifications_are_reported_once_at_the_next_login(store: Store) {
    store.login(Uuid::new_v4(), "alice").await.unwrap();
    store
        .record_dropped(vec![("alice".into(), 2), ("ghost".into(), 5)])
        .await
        .unwrap();
    store
        .record_dropped(vec![("alice".into(), 1)])
        .await
        .unwrap();
    assert!(!store.user_exists("ghost").await.unwrap());
    let id = Uuid::new_v4();
    let first = store.login(id, "alice").await.unwrap();
    let expected = Reply::Done {
        notice: Some(
            "3 notifications for alice were dropped while alice was away: \
             the inbox keeps only the latest 10000"
                .into(),
        ),
    };
    assert_eq!(first, Applied::New(expected.clone()));
    assert_eq!(
        store.login(id, "alice").await.unwrap(),
        Applied::Replayed(expected)
    );
    assert_eq!(
        store.login(Uuid::new_v4(), "alice").await.unwrap(),
        Applied::New(Reply::Done { notice: None })
    );
}

#[test]
fn the_dropped_notice_counts_in_words() {
    assert_eq!(
        dropped_notice(&inbox("alice", Some(1)), 1),
        "1 notification for alice was dropped while alice was away: \
         the inbox keeps only the latest one"
    );
    assert_eq!(
        dropped_notice(&inbox("bob", Some(50)), 7),
        "7 notifications for bob were dropped while bob was away: \
         the inbox keeps only the latest 50"
    );
}

async fn pruning_forgets_only_old_requests_which_then_apply_again(store: Store) {
    let old_upload = Uuid::new_v4();
    store.upload(old_upload, "bob", "Hello").await.unwrap();
    store.login(Uuid::new_v4(), "alice").await.unwrap();
    let recent = Uuid::new_v4();
    store.login(recent, "carol").await.unwrap();
    execute(
        &store,
        &format!("UPDATE applied_requests SET applied_at_ms = 1000 WHERE id != '{recent}'"),
    )
    .await;
    assert_eq!(store.applied_count().await.unwrap(), 3);
    assert_eq!(store.prune_applied(1000).await.unwrap(), 0);
    assert_eq!(store.prune_applied(1001).await.unwrap(), 2);
    assert_eq!(store.applied_count().await.unwrap(), 1);
    assert!(!store.login(recent, "carol").await.unwrap().is_new());
    // Past the horizon, a redelivery is a new request: a second video.
    assert!(
        store
            .upload(old_upload, "bob", "Hello")
            .await
            .unwrap()
            .is_new()
    );
    assert_eq!(store.videos_of("bob").await.unwrap().len(), 2);
}

async fn a_large_prune_runs_in_chunks_to_the_end(store: Store) {
    execute(
        &store,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25000)
         INSERT INTO applied_requests (id, reply, applied_at_ms)
         SELECT 'old-' || i, '{}', i FROM n;",
    )
    .await;
    assert_eq!(store.prune_applied(i64::MAX).await.unwrap(), 25_000);
    assert_eq!(store.applied_count().await.unwrap(), 0);
}

async fn a_request_whose_recorded_reply_is_corrupt_is_refused_alone(store: Store) {
    let corrupt = Uuid::new_v4();
    store.login(corrupt, "alice").await.unwrap();
    execute(
        &store,
        &format!("UPDATE applied_requests SET reply = 'not json' WHERE id = '{corrupt}'"),
    )
    .await;
    let batch = vec![
        (corrupt, login("alice")),
        (Uuid::new_v4(), subscribe("carol", "bob")),
        (Uuid::new_v4(), upload("bob", "Hello")),
    ];
    let outcomes = store.apply(batch.clone()).await.unwrap();
    let Applied::New(Reply::Refused { reason }) = &outcomes[0].reply else {
        panic!("the corrupt request is not refused: {:?}", outcomes[0]);
    };
    assert!(
        reason.starts_with("the server's database cannot handle this request (")
            && reason.ends_with("); it changed nothing now and is refused for good: the server's log has the details"),
        "{reason}"
    );
    assert_eq!(outcomes[0].effect, Effect::None);
    assert!(outcomes[1].reply.is_new() && outcomes[2].reply.is_new());
    assert!(store.is_subscribed("carol", "bob").await.unwrap());
    assert_eq!(store.videos_of("bob").await.unwrap().len(), 1);
    // Redelivered, the corrupt one is refused the same way, the others replayed.
    let again = store.apply(batch).await.unwrap();
    assert_eq!(again[0], outcomes[0]);
    assert!(!again[1].reply.is_new() && !again[2].reply.is_new());
}

async fn a_refused_request_is_undone_and_its_refusal_recorded(store: Store) {
    // A constraint that only this title breaks, after the request has
    // already added its YouTuber.
    let (poison, cure) = if is_postgres(&store) {
        (
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN
                 IF NEW.title = 'Poison' THEN
                     RAISE EXCEPTION 'poisoned title' USING ERRCODE = 'check_violation';
                 END IF;
                 RETURN NEW;
             END $$ LANGUAGE plpgsql;
             CREATE TRIGGER poison BEFORE INSERT ON videos FOR EACH ROW EXECUTE FUNCTION poison();",
            "DROP TRIGGER poison ON videos;",
        )
    } else {
        (
            "CREATE TRIGGER poison BEFORE INSERT ON videos WHEN NEW.title = 'Poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned title'); END;",
            "DROP TRIGGER poison;",
        )
    };
    execute(&store, poison).await;
    let poisoned = Uuid::new_v4();
    let outcomes = store
        .apply(vec![
            (poisoned, upload("mallory", "Poison")),
            (Uuid::new_v4(), upload("bob", "Fine")),
        ])
        .await
        .unwrap();
    let cause = if is_postgres(&store) {
        "PostgreSQL: poisoned title"
    } else {
        "poisoned title"
    };
    let refusal = Reply::Refused {
        reason: format!(
            "the server's database cannot handle this request ({cause}); \
             it changed nothing now and is refused for good: the server's log has the details"
        ),
    };
    assert_eq!(
        outcomes[0],
        Decision {
            reply: Applied::New(refusal.clone()),
            effect: Effect::None,
            tell: None,
        }
    );
    assert!(matches!(outcomes[1].effect, Effect::Notify(_)));
    let youtubers = store.youtubers_overview().await.unwrap();
    assert_eq!(
        youtubers
            .iter()
            .map(|y| y.name.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    // Once the cause is gone, a redelivery still gets the recorded answer.
    execute(&store, cure).await;
    let again = store
        .apply(vec![(poisoned, upload("mallory", "Poison"))])
        .await
        .unwrap();
    assert_eq!(
        again[0],
        Decision {
            reply: Applied::Replayed(refusal.clone()),
            effect: Effect::None,
            tell: None,
        }
    );
    let err = store
        .upload(poisoned, "mallory", "Poison")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused(ref reason) if reason.contains("poisoned")));
}

#[test]
fn only_errors_of_the_whole_database_fail_a_batch() {
    use rusqlite::ffi;
    let sqlite = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
    for code in [
        ffi::SQLITE_BUSY,
        ffi::SQLITE_LOCKED,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_FULL,
        ffi::SQLITE_CANTOPEN,
        ffi::SQLITE_READONLY,
        ffi::SQLITE_CORRUPT,
        ffi::SQLITE_NOMEM,
    ] {
        assert!(!sqlite_error_is_the_requests(&sqlite(code)), "{code}");
    }
    for code in [
        ffi::SQLITE_CONSTRAINT,
        ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
        ffi::SQLITE_MISMATCH,
        ffi::SQLITE_TOOBIG,
    ] {
        assert!(sqlite_error_is_the_requests(&sqlite(code)), "{code}");
    }
    assert!(sqlite_error_is_the_requests(
        &rusqlite::Error::QueryReturnedNoRows
    ));
    assert!(sqlite_error_is_the_requests(
        &rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            "not json".into(),
        )
    ));
    use tokio_postgres::error::SqlState;
    for code in [
        SqlState::CHECK_VIOLATION,
        SqlState::FOREIGN_KEY_VIOLATION,
        SqlState::NOT_NULL_VIOLATION,
        SqlState::STRING_DATA_RIGHT_TRUNCATION,
        SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        SqlState::CHARACTER_NOT_IN_REPERTOIRE,
    ] {
        assert_eq!(postgres_fault(Some(&code)), Fault::Request, "{code:?}");
    }
    // Another server stored the same request first, or it is the request's
    // own: apply_isolated looks.
    assert_eq!(
        postgres_fault(Some(&SqlState::UNIQUE_VIOLATION)),
        Fault::Duplicate
    );
    for code in [
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::LOCK_NOT_AVAILABLE,
        SqlState::QUERY_CANCELED,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CONNECTION_FAILURE,
        SqlState::DISK_FULL,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::READ_ONLY_SQL_TRANSACTION,
    ] {
        assert_eq!(postgres_fault(Some(&code)), Fault::Database, "{code:?}");
    }
    assert_eq!(
        postgres_fault(None),
        Fault::Database,
        "no SQLSTATE: the connection"
    );
}

async fn a_login_that_asks_for_the_history_says_so_even_when_replayed(store: Store) {
    let id = Uuid::new_v4();
    let live = Request::Login {
        user: "alice".into(),
        history: true,
    };
    for _ in 0..2 {
        let decided = store.apply(vec![(id, live.clone())]).await.unwrap();
        assert!(
            matches!(decided[0].effect, Effect::Inbox { history: true, .. }),
            "{:?}",
            decided[0].effect
        );
    }
}

async fn a_database_records_its_broker_layout_and_lists_every_inbox(store: Store) {
    assert_eq!(
        store.broker_layout().await.unwrap(),
        1,
        "unknown: the older layout"
    );
    store
        .apply(vec![
            (Uuid::new_v4(), subscribe("carol", "bob")),
            (Uuid::new_v4(), login("alice")),
            (Uuid::new_v4(), subscribe("carol", "amy")),
        ])
        .await
        .unwrap();
    let every = store.every_inbox().await.unwrap();
    let users: Vec<(&str, &[String])> = every
        .iter()
        .map(|(inbox, youtubers)| (inbox.user.as_str(), youtubers.as_slice()))
        .collect();
    assert_eq!(
        users,
        [
            ("alice", &[][..]),
            ("carol", &["amy".to_owned(), "bob".to_owned()][..])
        ]
    );
    store.set_broker_layout(BROKER_LAYOUT).await.unwrap();
    store.set_broker_layout(BROKER_LAYOUT).await.unwrap();
    assert_eq!(store.broker_layout().await.unwrap(), BROKER_LAYOUT);
}

fn react(user: &str, video: &str, reaction: Option<Reaction>) -> Request {
    Request::React {
        user: user.into(),
        video: video.into(),
        reaction,
    }
}

async fn apply_one(store: &Store, id: Uuid, request: Request) -> Decision {
    store.apply(vec![(id, request)]).await.unwrap().remove(0)
}

fn reacted(decision: &Decision) -> Option<Reaction> {
    match decision.tell.as_ref().map(|note| &note.event) {
        Some(CreatorEvent::Reacted { reaction, .. }) => Some(*reaction),
        _ => None,
    }
}

async fn likes_change_once_and_tell_the_creator_of_each_change(store: Store) {
    let video = store
        .upload(Uuid::new_v4(), "bob", "Hello")
        .await
        .unwrap()
        .into_inner();
    let prefix = &video.id.to_string()[..6];

    let like = Uuid::new_v4();
    let first = apply_one(&store, like, react("alice", prefix, Some(Reaction::Like))).await;
    assert_eq!(first.reply, Applied::New(Reply::Done { notice: None }));
    assert_eq!(reacted(&first), Some(Reaction::Like));
    assert_eq!(first.tell.as_ref().unwrap().youtuber, "bob");
    // A redelivery: the same answer, and the event again while it is unsent.
    let replayed = apply_one(&store, like, react("alice", prefix, Some(Reaction::Like))).await;
    assert_eq!(
        replayed.reply,
        Applied::Replayed(Reply::Done { notice: None })
    );
    assert_eq!(replayed.tell, first.tell);
    store.mark_told(vec![like]).await.unwrap();
    let replayed = apply_one(&store, like, react("alice", prefix, Some(Reaction::Like))).await;
    assert_eq!(replayed.tell, None, "sent: not sent again");

    // The same like sent anew changes nothing and tells no one.
    let again = apply_one(
        &store,
        Uuid::new_v4(),
        react("alice", prefix, Some(Reaction::Like)),
    )
    .await;
    assert_eq!(
        again.reply,
        Applied::New(Reply::Done {
            notice: Some("alice already likes \"Hello\"".into())
        })
    );
    assert_eq!(again.tell, None);
    // A dislike replaces the like; taking it back tells no one.
    let dislike = apply_one(
        &store,
        Uuid::new_v4(),
        react("alice", prefix, Some(Reaction::Dislike)),
    )
    .await;
    assert_eq!(reacted(&dislike), Some(Reaction::Dislike));
    let counts = |reply: Reply| match reply {
        Reply::Videos { videos, .. } => (videos[0].likes, videos[0].dislikes),
        other => panic!("{other:?}"),
    };
    let stats = Request::Stats {
        youtuber: "bob".into(),
    };
    let listed = apply_one(&store, Uuid::new_v4(), stats.clone()).await;
    assert_eq!(counts(listed.reply.into_inner()), (0, 1));
    let unlike = apply_one(&store, Uuid::new_v4(), react("alice", prefix, None)).await;
    assert_eq!(unlike.reply, Applied::New(Reply::Done { notice: None }));
    assert_eq!(unlike.tell, None);
    let listed = apply_one(&store, Uuid::new_v4(), stats.clone()).await;
    assert_eq!(counts(listed.reply.into_inner()), (0, 0));
    // Liked again after taking it back: counted, but bob heard of it once.
    let relike = apply_one(
        &store,
        Uuid::new_v4(),
        react("alice", prefix, Some(Reaction::Like)),
    )
    .await;
    assert_eq!(relike.reply, Applied::New(Reply::Done { notice: None }));
    assert_eq!(relike.tell, None);
    let listed = apply_one(&store, Uuid::new_v4(), stats).await;
    assert_eq!(counts(listed.reply.into_inner()), (1, 0));
    // Unsent events older than a moment are there to send later, in order.
    let unsent = store
        .creator_events_to_send("bob", now_ms() + 1, 100)
        .await
        .unwrap();
    assert_eq!(unsent.len(), 1, "the dislike; the like was marked sent");
    assert_eq!(
        store.creators_with_unsent(now_ms() + 1).await.unwrap(),
        ["bob"]
    );
    assert_eq!(unsent[0].event.id(), dislike.tell.unwrap().event.id());
}

async fn a_video_is_named_by_an_unambiguous_start_of_its_id(store: Store) {
    store.upload(Uuid::new_v4(), "bob", "Hello").await.unwrap();
    // Two videos whose ids share their first four characters.
    execute(
        &store,
        "INSERT INTO videos (id, youtuber, title, uploaded_at_ms, notified) VALUES
         ('abcd0000-0000-4000-8000-000000000000', 'bob', 'One', 1, 1),
         ('abcd1111-0000-4000-8000-000000000000', 'bob', 'Two', 2, 1)",
    )
    .await;
    let refusal = |decision: Decision| match decision.reply.into_inner() {
        Reply::Refused { reason } => reason,
        other => panic!("{other:?}"),
    };
    let ambiguous = apply_one(
        &store,
        Uuid::new_v4(),
        react("alice", "abcd", Some(Reaction::Like)),
    )
    .await;
    assert_eq!(ambiguous.tell, None);
    let reason = refusal(ambiguous);
    assert!(reason.starts_with("abcd starts the ids of several videos (abcd0000-0000-4000-8000-000000000000 \"One\" by bob, abcd1111"), "{reason}");
    assert!(reason.ends_with("give more of the id"), "{reason}");
    let unknown = apply_one(
        &store,
        Uuid::new_v4(),
        react("alice", "ffff", Some(Reaction::Like)),
    )
    .await;
    assert!(refusal(unknown).starts_with("no video has an id that starts with ffff"));
    let comment = Request::Comment {
        user: "alice".into(),
        video: "abcd1".into(),
        text: "Nice!".into(),
    };
    let commented = apply_one(&store, Uuid::new_v4(), comment).await;
    assert_eq!(commented.reply, Applied::New(Reply::Done { notice: None }));
    match commented.tell.map(|note| note.event) {
        Some(CreatorEvent::Commented { video, text, .. }) => {
            assert_eq!((video.as_str(), text.as_str()), ("Two", "Nice!"))
        }
        other => panic!("{other:?}"),
    }
    // The whole id names it too.
    let whole = apply_one(
        &store,
        Uuid::new_v4(),
        react(
            "alice",
            "abcd0000-0000-4000-8000-000000000000",
            Some(Reaction::Dislike),
        ),
    )
    .await;
    assert_eq!(reacted(&whole), Some(Reaction::Dislike));
}

async fn videos_are_listed_newest_first_with_their_counts(store: Store) {
    let listing = Request::ListVideos {
        youtuber: "bob".into(),
    };
    let refused = apply_one(&store, Uuid::new_v4(), listing.clone()).await;
    assert_eq!(
        refused.reply.into_inner(),
        Reply::Refused {
            reason: "bob has not uploaded any video".into()
        }
    );
    for (user, youtuber) in [("alice", "bob"), ("carol", "bob"), ("alice", "dave")] {
        store
            .change_subscription(Uuid::new_v4(), user, youtuber, true)
            .await
            .unwrap();
    }
    let old = store
        .upload(Uuid::new_v4(), "bob", "Old")
        .await
        .unwrap()
        .into_inner();
    let new = store
        .upload(Uuid::new_v4(), "bob", "New")
        .await
        .unwrap()
        .into_inner();
    for user in ["alice", "carol", "erin"] {
        apply_one(
            &store,
            Uuid::new_v4(),
            react(user, &new.id.to_string(), Some(Reaction::Like)),
        )
        .await;
    }
    let comment = Request::Comment {
        user: "alice".into(),
        video: old.id.to_string(),
        text: "First!".into(),
    };
    apply_one(&store, Uuid::new_v4(), comment).await;
    let Reply::Videos {
        youtuber,
        subscribers,
        total,
        videos,
    } = apply_one(&store, Uuid::new_v4(), listing)
        .await
        .reply
        .into_inner()
    else {
        panic!("a listing");
    };
    assert_eq!((youtuber.as_str(), subscribers, total), ("bob", 2, 2));
    let rows: Vec<(&str, u64, u64, u64)> = videos
        .iter()
        .map(|v| (v.title.as_str(), v.likes, v.dislikes, v.comments))
        .collect();
    assert_eq!(rows, [("New", 3, 0, 0), ("Old", 0, 0, 1)]);
    // A YouTuber without videos has stats all the same.
    let stats = apply_one(
        &store,
        Uuid::new_v4(),
        Request::Stats {
            youtuber: "dave".into(),
        },
    )
    .await;
    assert!(matches!(
        stats.reply.into_inner(),
        Reply::Videos {
            subscribers: 1,
            total: 0,
            ..
        }
    ));
}

async fn a_creator_hears_of_subscribers_from_its_first_upload_on(store: Store) {
    let before = store
        .apply(vec![(Uuid::new_v4(), subscribe("alice", "bob"))])
        .await
        .unwrap();
    assert_eq!(before[0].tell, None, "bob has no feed before uploading");
    store.upload(Uuid::new_v4(), "bob", "Hello").await.unwrap();
    let subscribed = apply_one(&store, Uuid::new_v4(), subscribe("carol", "bob")).await;
    assert!(matches!(
        subscribed.tell.map(|note| note.event),
        Some(CreatorEvent::Subscribed { ref user, .. }) if user == "carol"
    ));
    // Subscribing again changes nothing, and tells no one.
    let again = apply_one(&store, Uuid::new_v4(), subscribe("carol", "bob")).await;
    assert_eq!(again.tell, None);
    let unsubscribe = Request::ChangeSubscription {
        user: "carol".into(),
        youtuber: "bob".into(),
        subscribe: false,
    };
    let gone = apply_one(&store, Uuid::new_v4(), unsubscribe.clone()).await;
    assert!(matches!(
        gone.tell.map(|note| note.event),
        Some(CreatorEvent::Unsubscribed { .. })
    ));
    let refused = apply_one(&store, Uuid::new_v4(), unsubscribe).await;
    assert_eq!(refused.tell, None);
}

/// A SQLite file with something of everything, copied to PostgreSQL and on
/// to a second SQLite file: each copy answers every question as the
/// original does, and remembers every request applied.
#[tokio::test]
async fn the_state_copies_from_sqlite_to_postgresql_and_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let original = Store::open(&dir.path().join("original.db")).unwrap();
    let login = Uuid::new_v4();
    let subscribed = Uuid::new_v4();
    let uploaded = Uuid::new_v4();
    let liked = Uuid::new_v4();
    original.login(login, "alice").await.unwrap();
    apply_one(&original, subscribed, subscribe("alice", "bob")).await;
    apply_one(&original, Uuid::new_v4(), subscribe("carol", "bob")).await;
    let video = original
        .upload(uploaded, "bob", "Hello")
        .await
        .unwrap()
        .into_inner();
    original
        .upload(Uuid::new_v4(), "bob", "Again")
        .await
        .unwrap();
    original.mark_notified(vec![video.id]).await.unwrap();
    let id = video.id.to_string();
    apply_one(&original, liked, react("alice", &id, Some(Reaction::Like))).await;
    let comment = Request::Comment {
        user: "carol".into(),
        video: id.clone(),
        text: "Nice".into(),
    };
    apply_one(&original, Uuid::new_v4(), comment).await;
    original
        .record_dropped(vec![("carol".into(), 2)])
        .await
        .unwrap();
    original.set_broker_layout(BROKER_LAYOUT).await.unwrap();

    let database = ytnotify_testkit::postgres::TestDatabase::create().await;
    let postgres = Store::connect(&Database::parse(&database.url))
        .await
        .unwrap();
    let copied = original.copy_to(&postgres).await.unwrap();
    assert_eq!(
        copied.to_string(),
        "users 2, youtubers 1, subscriptions 2, videos 2, applied_requests 7, reactions 1, \
         reactions_told 1, comments 1, creator_events 2, settings 1"
    );
    let back = Store::open(&dir.path().join("back.db")).unwrap();
    postgres.copy_to(&back).await.unwrap();

    let stats = Request::Stats {
        youtuber: "bob".into(),
    };
    let expected_stats = apply_one(&original, Uuid::new_v4(), stats.clone())
        .await
        .reply;
    for copy in [&postgres, &back] {
        assert_eq!(
            copy.users_overview().await.unwrap(),
            original.users_overview().await.unwrap()
        );
        assert_eq!(
            copy.youtubers_overview().await.unwrap(),
            original.youtubers_overview().await.unwrap()
        );
        assert_eq!(
            copy.every_inbox().await.unwrap(),
            original.every_inbox().await.unwrap()
        );
        assert_eq!(
            copy.videos_of("bob").await.unwrap(),
            original.videos_of("bob").await.unwrap()
        );
        assert_eq!(
            copy.videos_to_notify().await.unwrap(),
            original.videos_to_notify().await.unwrap()
        );
        assert_eq!(copy.broker_layout().await.unwrap(), BROKER_LAYOUT);
        assert_eq!(
            apply_one(copy, Uuid::new_v4(), stats.clone()).await.reply,
            expected_stats
        );
        assert_eq!(
            copy.creator_events_to_send("bob", now_ms() + 1, 100)
                .await
                .unwrap(),
            original
                .creator_events_to_send("bob", now_ms() + 1, 100)
                .await
                .unwrap()
        );
        // Every request applied before is recognised: replayed, not applied again.
        for (id, request) in [
            (subscribed, subscribe("alice", "bob")),
            (uploaded, upload("bob", "Hello")),
            (liked, react("alice", &id, Some(Reaction::Like))),
        ] {
            assert!(!apply_one(copy, id, request).await.reply.is_new());
        }
        // carol's dropped notifications are still to be reported.
        assert!(matches!(
            copy.login(Uuid::new_v4(), "carol").await.unwrap().into_inner(),
            Reply::Done { notice: Some(ref notice) } if notice.starts_with("2 notifications")
        ));
    }
    // A database in use is not copied into: nothing is mixed.
    let err = original.copy_to(&postgres).await.unwrap_err().to_string();
    assert!(
        err.starts_with("nothing was copied: ")
            && err.contains("is not empty (its table users has rows)"),
        "{err}"
    );
}

async fn a_comment_sent_again_after_its_id_was_forgotten_is_refused_alone(store: Store) {
    let video = store
        .upload(Uuid::new_v4(), "bob", "Hello")
        .await
        .unwrap()
        .into_inner();
    let id = Uuid::new_v4();
    let comment = Request::Comment {
        user: "alice".into(),
        video: video.id.to_string(),
        text: "First!".into(),
    };
    apply_one(&store, id, comment.clone()).await;
    // Past the horizon of idempotency, the comment comes back: its id is a
    // key of the comments already (a key no other server holds).
    store.prune_applied(now_ms() + 1).await.unwrap();
    let outcomes = store
        .apply(vec![(id, comment), (Uuid::new_v4(), login("carol"))])
        .await
        .unwrap();
    assert!(
        matches!(outcomes[0].reply, Applied::New(Reply::Refused { .. })),
        "{:?}",
        outcomes[0]
    );
    assert!(outcomes[1].reply.is_new(), "the login beside it is stored");
    assert!(store.user_exists("carol").await.unwrap());
}
