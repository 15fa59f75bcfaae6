//! The sample dashboard that the state and view tests share.

use chrono::FixedOffset;

use super::{Msg, ServerDashboard, Snapshot, UserRow};
use crate::{server::Event, store::YoutuberOverview};

pub(super) const T0: i64 = 1_795_437_000_000;

pub(super) fn sample() -> ServerDashboard {
    let utc = FixedOffset::east_opt(0).unwrap();
    let mut app = ServerDashboard::new(
        "amqp://guest:***@127.0.0.1:5672/%2f",
        "/var/lib/ytnotify/youtube_server.db",
        "/var/log/youtube_server.log",
        utc,
    )
    .in_secure_mode(true);
    app.update(Msg::Snapshot(Snapshot {
        users: vec![
            UserRow {
                name: "alice".into(),
                subscriptions: 2,
                online: true,
                waiting: 0,
            },
            UserRow {
                name: "bob".into(),
                subscriptions: 1,
                online: false,
                waiting: 3,
            },
            UserRow {
                name: "carol".into(),
                subscriptions: 1,
                online: true,
                waiting: 0,
            },
        ],
        youtubers: vec![
            YoutuberOverview {
                name: "mkbhd".into(),
                subscribers: 2,
                videos: 3,
                latest_video: Some("Unboxing the new phone".into()),
            },
            YoutuberOverview {
                name: "veritasium".into(),
                subscribers: 2,
                videos: 1,
                latest_video: Some("Why the sky is blue".into()),
            },
            YoutuberOverview {
                name: "newbie".into(),
                subscribers: 0,
                videos: 0,
                latest_video: None,
            },
        ],
    }));
    let events = [
        Event::LoggedIn {
            user: "alice".into(),
        },
        Event::Subscribed {
            user: "alice".into(),
            youtuber: "mkbhd".into(),
        },
        Event::Uploaded {
            youtuber: "mkbhd".into(),
            video: "Unboxing the new phone".into(),
        },
        Event::Reacted {
            user: "alice".into(),
            youtuber: "mkbhd".into(),
            video: "Unboxing the new phone".into(),
            reaction: crate::protocol::Reaction::Like,
        },
        Event::Commented {
            user: "alice".into(),
            youtuber: "mkbhd".into(),
            video: "Unboxing the new phone".into(),
        },
        Event::Unsubscribed {
            user: "bob".into(),
            youtuber: "newbie".into(),
        },
        Event::DeadLettered {
            queue: "ytnotify.user_requests".into(),
            reason: "not a JSON object: expected value at line 1 column 1".into(),
        },
    ];
    for (n, event) in events.into_iter().enumerate() {
        app.update(Msg::Event {
            at_ms: T0 + n as i64 * 1000,
            event,
        });
        app.update(Msg::Second);
    }
    app
}
