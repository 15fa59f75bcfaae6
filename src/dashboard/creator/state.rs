//! The creator dashboard's state and `update`: what a key, a window of the
//! feed or the server's counts change, and what the event loop is asked to do.

use std::collections::VecDeque;

use chrono::FixedOffset;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::{client::creator::FeedLine, client::user::Channel, link::LinkState};

/// The activity feed keeps at most this many lines; the oldest go first.
pub const MAX_ACTIVITY: usize = 10_000;

/// A line of the activity feed, with when it was shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    pub at_ms: i64,
    pub line: FeedLine,
}

/// Everything that can happen to the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Key(KeyEvent),
    /// A window of the feed, shown at `at_ms`.
    Window {
        at_ms: i64,
        lines: Vec<FeedLine>,
    },
    /// The server's counts.
    Stats(Channel),
    /// The counts could not be had; why.
    StatsFailed(String),
    Link(LinkState),
}

/// What the dashboard asks its event loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    RefreshStats,
    Quit,
}

/// The state of a creator's dashboard.
#[derive(Debug, Clone)]
pub struct CreatorDashboard {
    pub(super) youtuber: String,
    pub(super) channel: Option<Channel>,
    /// Oldest first; drawn newest first.
    pub(super) activity: VecDeque<Activity>,
    /// Events in the feed since the dashboard opened (a gathered line counts
    /// each of its likes).
    pub(super) events: usize,
    /// Lines from the newest that the feed is scrolled down by.
    pub(super) scroll: usize,
    pub(super) problem: Option<String>,
    /// A request for the counts is under way; `stale`: they moved since it
    /// was sent, so another follows it. One at a time, however fast the
    /// feed runs.
    refreshing: bool,
    stale: bool,
    pub(super) link: LinkState,
    pub(super) help: bool,
    pub(super) offset: FixedOffset,
    quit: bool,
}

impl CreatorDashboard {
    /// A dashboard for `youtuber`, drawing times at `offset`.
    pub fn new(youtuber: impl Into<String>, offset: FixedOffset) -> Self {
        CreatorDashboard {
            youtuber: youtuber.into(),
            channel: None,
            activity: VecDeque::new(),
            events: 0,
            scroll: 0,
            problem: None,
            refreshing: false,
            stale: false,
            link: LinkState::Connected,
            help: false,
            offset,
            quit: false,
        }
    }

    /// Whether the user asked to quit.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The feed, oldest first.
    pub fn activity(&self) -> &VecDeque<Activity> {
        &self.activity
    }

    /// Handles one event; returns what the event loop should do.
    pub fn update(&mut self, msg: Msg) -> Vec<Command> {
        match msg {
            Msg::Key(key) => return self.on_key(key),
            Msg::Window { at_ms, lines } => {
                if lines.is_empty() {
                    return Vec::new();
                }
                self.events += lines.iter().map(FeedLine::events).sum::<usize>();
                for line in lines {
                    self.activity.push_back(Activity { at_ms, line });
                }
                while self.activity.len() > MAX_ACTIVITY {
                    self.activity.pop_front();
                }
                // The counts moved: ask for them (the feed says what
                // happened, not what a like replaced).
                return self.refresh();
            }
            Msg::Stats(channel) => {
                self.channel = Some(channel);
                self.problem = None;
                return self.refreshed();
            }
            Msg::StatsFailed(why) => {
                self.problem = Some(why);
                return self.refreshed();
            }
            Msg::Link(link) => self.link = link,
        }
        Vec::new()
    }

    /// Asks for the counts, unless a request is under way: then once it is
    /// answered.
    pub fn refresh(&mut self) -> Vec<Command> {
        if self.refreshing {
            self.stale = true;
            return Vec::new();
        }
        self.refreshing = true;
        vec![Command::RefreshStats]
    }

    fn refreshed(&mut self) -> Vec<Command> {
        self.refreshing = false;
        if std::mem::take(&mut self.stale) {
            return self.refresh();
        }
        Vec::new()
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Command> {
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        if self.help && !ctrl_c {
            self.help = false;
            return Vec::new();
        }
        let last = self.activity.len().saturating_sub(1);
        match key.code {
            _ if ctrl_c => self.quit = true,
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Down | KeyCode::Char('j') => self.scroll = (self.scroll + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.scroll = last,
            KeyCode::Char('r') => return self.refresh(),
            _ => {}
        }
        if self.quit {
            vec![Command::Quit]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
pub(super) mod fixtures {
    use chrono::FixedOffset;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::{Terminal, backend::TestBackend};
    use uuid::Uuid;

    use super::{CreatorDashboard, Msg};
    use crate::{
        client::{creator::gather, user::Channel},
        protocol::{CreatorEvent, Reaction, VideoStats},
    };

    pub(crate) const T0: i64 = 1_795_437_000_000;

    pub(crate) fn key(code: KeyCode) -> Msg {
        Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    /// The ids of the sample's videos, 1 and 2.
    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x3f2a_9c1e_0000_4000_8000_0000_0000_0000 + (n << 112) + n)
    }

    fn video(n: u128, title: &str, likes: u64, dislikes: u64, comments: u64) -> VideoStats {
        VideoStats {
            id: id(n),
            title: title.into(),
            uploaded_at_ms: T0 - n as i64 * 86_400_000,
            likes,
            dislikes,
            comments,
        }
    }

    fn reacted(user: &str, n: u128, title: &str, reaction: Reaction) -> CreatorEvent {
        CreatorEvent::Reacted {
            id: Uuid::new_v4(),
            user: user.into(),
            video_id: id(n),
            video: title.into(),
            reaction,
            at_ms: T0,
        }
    }

    /// mkbhd with two videos; a subscriber, a comment, then a burst of likes.
    pub(crate) fn sample() -> CreatorDashboard {
        let mut app = CreatorDashboard::new("mkbhd", FixedOffset::east_opt(0).unwrap());
        app.update(Msg::Stats(Channel {
            youtuber: "mkbhd".into(),
            subscribers: 3,
            total: 2,
            videos: vec![
                video(1, "Unboxing the new phone", 14, 1, 1),
                video(2, "Studio tour", 2, 0, 0),
            ],
        }));
        let first = vec![
            CreatorEvent::Subscribed {
                id: Uuid::new_v4(),
                user: "alice".into(),
                at_ms: T0,
            },
            reacted("alice", 2, "Studio tour", Reaction::Like),
        ];
        app.update(Msg::Window {
            at_ms: T0,
            lines: gather(first),
        });
        let mut burst = vec![CreatorEvent::Commented {
            id: Uuid::new_v4(),
            user: "carol".into(),
            video_id: id(1),
            video: "Unboxing the new phone".into(),
            text: "Best review so far".into(),
            at_ms: T0,
        }];
        for n in 0..12 {
            burst.push(reacted(
                &format!("fan{n}"),
                1,
                "Unboxing the new phone",
                Reaction::Like,
            ));
        }
        app.update(Msg::Window {
            at_ms: T0 + 61_000,
            lines: gather(burst),
        });
        app
    }

    pub(crate) fn draw(app: &CreatorDashboard, width: u16, height: u16) -> Terminal<TestBackend> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| app.render(frame)).unwrap();
        terminal
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};
    use chrono::FixedOffset;

    #[test]
    fn a_window_adds_its_lines_and_asks_for_the_counts() {
        let mut app = sample();
        assert_eq!(app.activity().len(), 4);
        assert_eq!(app.events, 15);
        let commands = app.update(Msg::Window {
            at_ms: T0,
            lines: Vec::new(),
        });
        assert!(commands.is_empty(), "an empty window changes nothing");
    }

    #[test]
    fn one_request_for_the_counts_at_a_time_however_fast_the_feed() {
        let mut app = CreatorDashboard::new("mkbhd", FixedOffset::east_opt(0).unwrap());
        let like = sample().activity()[0].line.clone();
        let window = |app: &mut CreatorDashboard| {
            app.update(Msg::Window {
                at_ms: T0,
                lines: vec![like.clone()],
            })
        };
        assert_eq!(window(&mut app), [Command::RefreshStats]);
        for _ in 0..10 {
            assert!(window(&mut app).is_empty(), "one is under way");
        }
        let channel = sample().channel.unwrap();
        assert_eq!(
            app.update(Msg::Stats(channel.clone())),
            [Command::RefreshStats],
            "the counts moved meanwhile: once more"
        );
        assert!(app.update(Msg::Stats(channel)).is_empty());
    }

    #[test]
    fn the_feed_is_bounded_and_scrolls_within_it() {
        let mut app = sample();
        for _ in 0..MAX_ACTIVITY {
            let lines = vec![app.activity()[0].line.clone()];
            app.update(Msg::Window { at_ms: T0, lines });
        }
        assert_eq!(app.activity().len(), MAX_ACTIVITY);
        app.update(key(KeyCode::End));
        assert_eq!(app.scroll, MAX_ACTIVITY - 1);
        app.update(key(KeyCode::Char('j')));
        assert_eq!(app.scroll, MAX_ACTIVITY - 1);
        app.update(key(KeyCode::Home));
        assert_eq!(app.scroll, 0);
    }

    #[test]
    fn q_quits_and_a_key_closes_the_help() {
        let mut app = sample();
        app.update(key(KeyCode::Char('?')));
        assert!(app.help);
        assert!(app.update(key(KeyCode::Char('q'))).is_empty());
        assert!(!app.help && !app.should_quit());
        assert_eq!(app.update(key(KeyCode::Char('q'))), [Command::Quit]);
    }
}
