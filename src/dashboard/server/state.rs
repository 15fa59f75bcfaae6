//! The dashboard's state and `update`: what a key, an event from the server,
//! a snapshot or a passing second changes.

use std::collections::VecDeque;

use chrono::FixedOffset;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use crate::{link::LinkState, server::Event, store::YoutuberOverview};

/// Seconds of history in the rate sparklines.
const HISTORY: usize = 120;
/// Events kept for the stream panel.
const MAX_EVENTS: usize = 1000;

/// What happened in the current second.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    notifications: u64,
    interactions: u64,
}

/// A user as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub name: String,
    pub subscriptions: i64,
    /// A `user` session reads the inbox now.
    pub online: bool,
    /// Notifications waiting in the inbox.
    pub waiting: u32,
}

/// What the refresh task reads from the database and the broker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub users: Vec<UserRow>,
    pub youtubers: Vec<YoutuberOverview>,
}

/// Everything that can happen to the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Key(KeyEvent),
    Event {
        at_ms: i64,
        event: Event,
    },
    /// Events were produced faster than the dashboard read them.
    Missed(u64),
    Snapshot(Snapshot),
    /// A second has passed: the rates move on.
    Second,
    Link(LinkState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Panel {
    Users,
    Youtubers,
    Events,
}

/// The state of the server's dashboard.
#[derive(Debug, Clone)]
pub struct ServerDashboard {
    pub(super) broker: String,
    /// Secure mode (accounts checked) or open mode (anyone acts as anyone).
    pub(super) secure: bool,
    pub(super) database: String,
    pub(super) log: String,
    pub(super) link: LinkState,
    pub(super) snapshot: Snapshot,
    /// Newest last.
    pub(super) events: VecDeque<(i64, Event)>,
    pub(super) missed: u64,
    pub(super) requests: VecDeque<u64>,
    pub(super) notifications: VecDeque<u64>,
    pub(super) interactions: VecDeque<u64>,
    this_second: Counts,
    pub(super) focus: Panel,
    pub(super) selected: [usize; 3],
    pub(super) help: bool,
    quit: bool,
    pub(super) offset: FixedOffset,
}

impl ServerDashboard {
    /// A dashboard naming its broker, database and log file.
    pub fn new(broker: &str, database: &str, log: &str, offset: FixedOffset) -> Self {
        ServerDashboard {
            broker: broker.to_owned(),
            secure: false,
            database: database.to_owned(),
            log: log.to_owned(),
            link: LinkState::Connected,
            snapshot: Snapshot::default(),
            events: VecDeque::new(),
            missed: 0,
            requests: VecDeque::from(vec![0; HISTORY]),
            notifications: VecDeque::from(vec![0; HISTORY]),
            interactions: VecDeque::from(vec![0; HISTORY]),
            this_second: Counts::default(),
            focus: Panel::Events,
            selected: [0; 3],
            help: false,
            quit: false,
            offset,
        }
    }

    /// The same dashboard, saying that the server runs in secure mode.
    pub fn in_secure_mode(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// Requests in the last complete second and the highest in the history.
    pub fn request_rate(&self) -> (u64, u64) {
        rate(&self.requests)
    }

    /// Notifications in the last complete second and the highest in the history.
    pub fn notification_rate(&self) -> (u64, u64) {
        rate(&self.notifications)
    }

    /// Likes, dislikes and comments in the last complete second and the
    /// highest in the history.
    pub fn interaction_rate(&self) -> (u64, u64) {
        rate(&self.interactions)
    }

    pub fn update(&mut self, msg: Msg) {
        match msg {
            Msg::Key(key) => self.on_key(key),
            Msg::Event { at_ms, event } => {
                self.this_second.requests += 1;
                match &event {
                    Event::Uploaded { youtuber, .. } => {
                        let subscribers = self
                            .snapshot
                            .youtubers
                            .iter()
                            .find(|y| &y.name == youtuber)
                            .map_or(0, |y| y.subscribers.max(0) as u64);
                        self.this_second.notifications += subscribers;
                    }
                    Event::Reacted { .. } | Event::Commented { .. } => {
                        self.this_second.interactions += 1;
                    }
                    _ => {}
                }
                self.events.push_back((at_ms, event));
                if self.events.len() > MAX_EVENTS {
                    self.events.pop_front();
                }
            }
            Msg::Missed(count) => self.missed += count,
            Msg::Link(state) => self.link = state,
            Msg::Snapshot(snapshot) => {
                self.snapshot = snapshot;
                self.selected[0] =
                    self.selected[0].min(self.snapshot.users.len().saturating_sub(1));
                self.selected[1] =
                    self.selected[1].min(self.snapshot.youtubers.len().saturating_sub(1));
            }
            Msg::Second => {
                let counts = std::mem::take(&mut self.this_second);
                push_rate(&mut self.requests, counts.requests);
                push_rate(&mut self.notifications, counts.notifications);
                push_rate(&mut self.interactions, counts.interactions);
            }
        }
    }

    fn on_key(&mut self, key: KeyEvent) {
        if self.help {
            self.help = false;
            return;
        }
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        let panel = self.focus as usize;
        let len = match self.focus {
            Panel::Users => self.snapshot.users.len(),
            Panel::Youtubers => self.snapshot.youtubers.len(),
            Panel::Events => self.events.len(),
        };
        match key.code {
            _ if ctrl_c => self.quit = true,
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab | KeyCode::Right | KeyCode::Char('l') => {
                self.focus = match self.focus {
                    Panel::Users => Panel::Youtubers,
                    Panel::Youtubers => Panel::Events,
                    Panel::Events => Panel::Users,
                }
            }
            KeyCode::BackTab | KeyCode::Left | KeyCode::Char('h') => {
                self.focus = match self.focus {
                    Panel::Users => Panel::Events,
                    Panel::Youtubers => Panel::Users,
                    Panel::Events => Panel::Youtubers,
                }
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected[panel] = (self.selected[panel] + 1).min(len.saturating_sub(1));
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected[panel] = self.selected[panel].saturating_sub(1);
            }
            KeyCode::Home | KeyCode::Char('g') => self.selected[panel] = 0,
            KeyCode::End | KeyCode::Char('G') => self.selected[panel] = len.saturating_sub(1),
            _ => {}
        }
    }
}

fn rate(history: &VecDeque<u64>) -> (u64, u64) {
    let now = history.back().copied().unwrap_or(0);
    let peak = history.iter().copied().max().unwrap_or(0);
    (now, peak)
}

fn push_rate(history: &mut VecDeque<u64>, value: u64) {
    history.push_back(value);
    while history.len() > HISTORY {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::server::fixtures::{T0, sample};

    #[test]
    fn rates_count_requests_and_fan_out_per_second() {
        let mut app = sample();
        for _ in 0..3 {
            app.update(Msg::Event {
                at_ms: T0,
                event: Event::Uploaded {
                    youtuber: "veritasium".into(),
                    video: "x".into(),
                },
            });
        }
        for _ in 0..4 {
            app.update(Msg::Event {
                at_ms: T0,
                event: Event::Reacted {
                    user: "alice".into(),
                    youtuber: "veritasium".into(),
                    video: "x".into(),
                    reaction: crate::protocol::Reaction::Like,
                },
            });
        }
        app.update(Msg::Second);
        // Three uploads to two subscribers each, and four likes.
        assert_eq!(app.request_rate(), (7, 7));
        assert_eq!(app.notification_rate(), (6, 6));
        assert_eq!(app.interaction_rate(), (4, 4));
        app.update(Msg::Second);
        assert_eq!(app.request_rate(), (0, 7));
        assert_eq!(app.interaction_rate(), (0, 4));
    }

    #[test]
    fn the_event_stream_is_bounded() {
        let mut app = sample();
        for _ in 0..(MAX_EVENTS + 10) {
            app.update(Msg::Event {
                at_ms: T0,
                event: Event::LoggedIn { user: "x".into() },
            });
        }
        assert_eq!(app.events.len(), MAX_EVENTS);
    }

    #[test]
    fn q_quits_and_tab_moves_between_panels() {
        let mut app = sample();
        app.update(Msg::Key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE)));
        assert_eq!(app.focus, Panel::Users);
        app.update(Msg::Key(KeyEvent::new(
            KeyCode::Char('j'),
            KeyModifiers::NONE,
        )));
        assert_eq!(app.selected[0], 1);
        app.update(Msg::Key(KeyEvent::new(
            KeyCode::Char('q'),
            KeyModifiers::NONE,
        )));
        assert!(app.should_quit());
    }
}
