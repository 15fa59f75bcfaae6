//! The sample dashboard and the helpers that the state and view tests share.

use std::time::Duration;

use chrono::FixedOffset;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{Terminal, backend::TestBackend};
use uuid::Uuid;

use super::{Command, Msg, Outcome, UserDashboard};
use crate::{client::user::SubscriptionChange, protocol::Notification};

pub(super) fn key(code: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

pub(super) fn typed(app: &mut UserDashboard, text: &str) -> Vec<Command> {
    let mut commands = Vec::new();
    for c in text.chars() {
        commands.extend(app.update(key(KeyCode::Char(c))));
    }
    commands
}

pub(super) fn upload(n: u128, youtuber: &str, video: &str, away: bool) -> Msg {
    Msg::Notification {
        notification: Notification::VideoUploaded {
            id: Uuid::from_u128(n),
            youtuber: youtuber.into(),
            video: video.into(),
            uploaded_at_ms: 1_795_437_000_000 + n as i64 * 61_000,
            seq: None,
            stream_after: false,
        },
        away,
    }
}

pub(super) fn utc() -> FixedOffset {
    FixedOffset::east_opt(0).unwrap()
}

/// alice follows bob and carol; two uploads waited while she was away,
/// two came live, and she has read one.
pub(super) fn sample() -> UserDashboard {
    let mut app = UserDashboard::new("alice", utc());
    app.update(Msg::Subscriptions(vec!["bob".into(), "carol".into()]));
    app.update(upload(1, "bob", "Rust in 100 seconds", true));
    app.update(upload(2, "carol", "Why the sky is blue", true));
    app.update(upload(3, "bob", "Async Rust, explained slowly", false));
    app.update(upload(4, "bob", "Ownership for the impatient", false));
    app.update(Msg::Changed {
        change: SubscriptionChange {
            youtuber: "carol".into(),
            subscribe: true,
        },
        outcome: Outcome::Applied { notice: None },
        elapsed: Duration::from_millis(3),
    });
    // Read the newest one (selected first), which moves the selection down.
    app.update(key(KeyCode::Enter));
    app
}

pub(super) fn draw(app: &UserDashboard, width: u16, height: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| app.render(frame)).unwrap();
    terminal
}
