//! The dashboard's state and `update`: what a key, a notification or an
//! answer from the server changes, and what the event loop is asked to do.

use std::time::Duration;

use chrono::FixedOffset;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use uuid::Uuid;

use crate::{
    client::user::SubscriptionChange,
    error::{Error, Result},
    link::LinkState,
    names,
    protocol::{Notification, Reaction},
};

/// The feed keeps at most this many notifications; the oldest go first.
pub const MAX_FEED: usize = 10_000;

/// One notification in the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    pub id: Uuid,
    pub youtuber: String,
    pub video: String,
    pub uploaded_at_ms: i64,
    /// It arrived while the user was away (it was waiting in the inbox).
    pub away: bool,
    pub read: bool,
    /// What the user said of it from this dashboard, once the server applied it.
    pub reaction: Option<Reaction>,
    /// Comments the user made on it from this dashboard.
    pub comments: usize,
}

/// Whether the server answers, as far as the last request tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerHealth {
    Unknown,
    Answered(Duration),
    Silent,
}

/// How a subscription change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied {
        notice: Option<String>,
    },
    Refused(String),
    /// The server did not answer in time; the request waits in its queue.
    Queued,
    Failed(String),
}

impl Outcome {
    pub(super) fn from_result(result: Result<Option<String>>) -> Outcome {
        match result {
            Ok(notice) => Outcome::Applied { notice },
            Err(Error::Refused(reason)) => Outcome::Refused(reason),
            Err(Error::ServerTimeout { .. }) => Outcome::Queued,
            Err(other) => Outcome::Failed(other.to_string()),
        }
    }
}

/// Which panel the arrow keys move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Subscriptions,
    Feed,
}

/// What the keyboard is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Subscribe {
        input: String,
        error: Option<String>,
    },
    ConfirmUnsubscribe(String),
    Comment {
        video_id: Uuid,
        video: String,
        input: String,
        error: Option<String>,
    },
    Filter,
    Help,
}

/// What the user did about a video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// A like or a dislike, or either taken back (`None`).
    React(Option<Reaction>),
    Comment(String),
}

/// Everything that can happen to the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Key(KeyEvent),
    Notification {
        notification: Notification,
        away: bool,
    },
    Subscriptions(Vec<String>),
    SubscriptionsFailed(Outcome),
    Changed {
        change: SubscriptionChange,
        outcome: Outcome,
        elapsed: Duration,
    },
    Interacted {
        video_id: Uuid,
        video: String,
        interaction: Interaction,
        outcome: Outcome,
        elapsed: Duration,
    },
    Link(LinkState),
}

/// What the dashboard asks its event loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Change(SubscriptionChange),
    Interact {
        video_id: Uuid,
        video: String,
        interaction: Interaction,
    },
    RefreshSubscriptions,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Status {
    pub(super) text: String,
    pub(super) error: bool,
}

/// The state of a user's dashboard.
#[derive(Debug, Clone)]
pub struct UserDashboard {
    pub(super) user: String,
    pub(super) subscriptions: Vec<String>,
    /// Oldest first; drawn newest first.
    pub(super) feed: Vec<FeedItem>,
    pub(super) focus: Focus,
    pub(super) mode: Mode,
    pub(super) selected_subscription: usize,
    /// The selected feed item, by id, so that it stays put as new ones arrive.
    selected_item: Option<Uuid>,
    pub(super) filter: String,
    pub(super) status: Option<Status>,
    pub(super) link: LinkState,
    pub(super) server: ServerHealth,
    pub(super) in_flight: usize,
    pub(super) offset: FixedOffset,
    quit: bool,
}

impl UserDashboard {
    /// A dashboard for `user`, drawing times at `offset`.
    pub fn new(user: impl Into<String>, offset: FixedOffset) -> Self {
        UserDashboard {
            user: user.into(),
            subscriptions: Vec::new(),
            feed: Vec::new(),
            focus: Focus::Feed,
            mode: Mode::Normal,
            selected_subscription: 0,
            selected_item: None,
            filter: String::new(),
            status: None,
            link: LinkState::Connected,
            server: ServerHealth::Unknown,
            in_flight: 0,
            offset,
            quit: false,
        }
    }

    /// Shows a message in the status line.
    pub fn say(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: false,
        });
    }

    fn complain(&mut self, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            error: true,
        });
    }

    /// Whether the user asked to quit.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn feed(&self) -> &[FeedItem] {
        &self.feed
    }

    pub fn subscriptions(&self) -> &[String] {
        &self.subscriptions
    }

    /// Unread notifications from `youtuber`.
    pub fn unread_from(&self, youtuber: &str) -> usize {
        self.feed
            .iter()
            .filter(|item| !item.read && item.youtuber == youtuber)
            .count()
    }

    pub(super) fn unread(&self) -> usize {
        self.feed.iter().filter(|item| !item.read).count()
    }

    /// The feed as shown: newest first, filtered.
    pub fn visible(&self) -> Vec<&FeedItem> {
        let needle = self.filter.to_lowercase();
        self.feed
            .iter()
            .rev()
            .filter(|item| {
                needle.is_empty()
                    || item.youtuber.to_lowercase().contains(&needle)
                    || item.video.to_lowercase().contains(&needle)
            })
            .collect()
    }

    pub(super) fn selected_position(&self, visible: &[&FeedItem]) -> Option<usize> {
        match self.selected_item {
            Some(id) => visible.iter().position(|item| item.id == id),
            None => None,
        }
        .or(if visible.is_empty() { None } else { Some(0) })
    }

    /// Handles one event; returns what the event loop should do.
    pub fn update(&mut self, msg: Msg) -> Vec<Command> {
        match msg {
            Msg::Key(key) => return self.on_key(key),
            Msg::Notification { notification, away } => self.receive(notification, away),
            Msg::Subscriptions(list) => {
                self.subscriptions = list;
                let last = self.subscriptions.len().saturating_sub(1);
                self.selected_subscription = self.selected_subscription.min(last);
            }
            Msg::SubscriptionsFailed(outcome) => match outcome {
                Outcome::Queued => {
                    self.server = ServerHealth::Silent;
                    self.complain(
                        "youtube_server is not answering; subscriptions will show once it runs",
                    );
                }
                other => self.complain(format!("could not load the subscriptions: {other:?}")),
            },
            Msg::Changed {
                change,
                outcome,
                elapsed,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                return self.on_changed(change, outcome, elapsed);
            }
            Msg::Interacted {
                video_id,
                video,
                interaction,
                outcome,
                elapsed,
            } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.on_interacted(video_id, &video, interaction, outcome, elapsed);
            }
            Msg::Link(link) => self.link = link,
        }
        Vec::new()
    }

    fn on_interacted(
        &mut self,
        video_id: Uuid,
        video: &str,
        interaction: Interaction,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        let done = match &interaction {
            Interaction::React(Some(reaction)) => format!("{} \"{video}\"", reaction.past_tense()),
            Interaction::React(None) => format!("took back what you said of \"{video}\""),
            Interaction::Comment(_) => format!("commented on \"{video}\""),
        };
        match outcome {
            Outcome::Applied { notice } => {
                self.server = ServerHealth::Answered(elapsed);
                if let Some(item) = self.feed.iter_mut().find(|item| item.id == video_id) {
                    match interaction {
                        Interaction::React(reaction) => item.reaction = reaction,
                        Interaction::Comment(_) => item.comments += 1,
                    }
                }
                match notice {
                    Some(notice) => self.say(notice),
                    None => self.say(done),
                }
            }
            Outcome::Refused(reason) => {
                self.server = ServerHealth::Answered(elapsed);
                self.complain(format!("refused: {reason}"));
            }
            Outcome::Queued => {
                self.server = ServerHealth::Silent;
                self.complain(format!(
                    "youtube_server did not answer; it will have {done} when it runs"
                ));
            }
            Outcome::Failed(error) => self.complain(error),
        }
    }

    fn receive(&mut self, notification: Notification, away: bool) {
        let Notification::VideoUploaded {
            id,
            youtuber,
            video,
            uploaded_at_ms,
            ..
        } = notification;
        if self.feed.iter().any(|item| item.id == id) {
            return;
        }
        self.feed.push(FeedItem {
            id,
            youtuber,
            video,
            uploaded_at_ms,
            away,
            read: false,
            reaction: None,
            comments: 0,
        });
        if self.feed.len() > MAX_FEED {
            let excess = self.feed.len() - MAX_FEED;
            self.feed.drain(..excess);
        }
    }

    fn on_changed(
        &mut self,
        change: SubscriptionChange,
        outcome: Outcome,
        elapsed: Duration,
    ) -> Vec<Command> {
        let verb = if change.subscribe {
            "subscribed to"
        } else {
            "unsubscribed from"
        };
        match outcome {
            Outcome::Applied { notice } => {
                self.server = ServerHealth::Answered(elapsed);
                match notice {
                    Some(notice) => self.say(format!("{verb} {}: {notice}", change.youtuber)),
                    None => self.say(format!("{verb} {}", change.youtuber)),
                }
                vec![Command::RefreshSubscriptions]
            }
            Outcome::Refused(reason) => {
                self.server = ServerHealth::Answered(elapsed);
                self.complain(format!("refused: {reason}"));
                Vec::new()
            }
            Outcome::Queued => {
                self.server = ServerHealth::Silent;
                self.complain(format!(
                    "youtube_server did not answer; {} {} will be applied when it runs",
                    if change.subscribe {
                        "subscribing to"
                    } else {
                        "unsubscribing from"
                    },
                    change.youtuber
                ));
                Vec::new()
            }
            Outcome::Failed(error) => {
                self.complain(error);
                Vec::new()
            }
        }
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Command> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return vec![Command::Quit];
        }
        match self.mode.clone() {
            Mode::Normal => self.on_normal_key(key),
            Mode::Help => {
                self.mode = Mode::Normal;
                Vec::new()
            }
            Mode::Subscribe { mut input, .. } => match key.code {
                KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    Vec::new()
                }
                KeyCode::Enter => self.submit_subscription(input),
                KeyCode::Backspace => {
                    input.pop();
                    self.mode = Mode::Subscribe { input, error: None };
                    Vec::new()
                }
                KeyCode::Char(c) => {
                    if input.chars().count() < names::MAX_NAME_CHARS {
                        input.push(c);
                    }
                    self.mode = Mode::Subscribe { input, error: None };
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Mode::ConfirmUnsubscribe(youtuber) => {
                self.mode = Mode::Normal;
                match key.code {
                    KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => {
                        self.in_flight += 1;
                        self.say(format!("unsubscribing from {youtuber}…"));
                        vec![Command::Change(SubscriptionChange {
                            youtuber,
                            subscribe: false,
                        })]
                    }
                    _ => {
                        self.say("kept the subscription");
                        Vec::new()
                    }
                }
            }
            Mode::Comment {
                video_id,
                video,
                mut input,
                ..
            } => match key.code {
                KeyCode::Esc => {
                    self.mode = Mode::Normal;
                    Vec::new()
                }
                KeyCode::Enter => self.submit_comment(video_id, video, input),
                KeyCode::Backspace => {
                    input.pop();
                    self.mode = Mode::Comment {
                        video_id,
                        video,
                        input,
                        error: None,
                    };
                    Vec::new()
                }
                KeyCode::Char(c) => {
                    if input.chars().count() < names::MAX_COMMENT_CHARS {
                        input.push(c);
                    }
                    self.mode = Mode::Comment {
                        video_id,
                        video,
                        input,
                        error: None,
                    };
                    Vec::new()
                }
                _ => Vec::new(),
            },
            Mode::Filter => {
                match key.code {
                    KeyCode::Esc => {
                        self.filter.clear();
                        self.mode = Mode::Normal;
                    }
                    KeyCode::Enter => self.mode = Mode::Normal,
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) => self.filter.push(c),
                    _ => {}
                }
                self.selected_item = None;
                Vec::new()
            }
        }
    }

    fn submit_subscription(&mut self, input: String) -> Vec<Command> {
        let youtuber = input.trim().to_owned();
        if let Err(invalid) = names::check_youtuber(&youtuber) {
            self.mode = Mode::Subscribe {
                input,
                error: Some(invalid.problem),
            };
            return Vec::new();
        }
        self.mode = Mode::Normal;
        if self.subscriptions.contains(&youtuber) {
            self.say(format!("already subscribed to {youtuber}"));
            return Vec::new();
        }
        self.in_flight += 1;
        self.say(format!("subscribing to {youtuber}…"));
        vec![Command::Change(SubscriptionChange {
            youtuber,
            subscribe: true,
        })]
    }

    fn submit_comment(&mut self, video_id: Uuid, video: String, input: String) -> Vec<Command> {
        let text = input.trim().to_owned();
        if let Err(invalid) = names::check_comment(&text) {
            self.mode = Mode::Comment {
                video_id,
                video,
                input,
                error: Some(invalid.problem),
            };
            return Vec::new();
        }
        self.mode = Mode::Normal;
        self.in_flight += 1;
        self.say(format!("commenting on \"{video}\"…"));
        vec![Command::Interact {
            video_id,
            video,
            interaction: Interaction::Comment(text),
        }]
    }

    /// The notification selected in the feed, if the feed has the focus.
    fn selected_feed_item(&self) -> Option<&FeedItem> {
        if self.focus != Focus::Feed {
            return None;
        }
        let visible = self.visible();
        self.selected_position(&visible).map(|at| visible[at])
    }

    /// Likes (or dislikes) the selected video, or takes it back if the user
    /// already did, as YouTube's buttons do.
    fn react(&mut self, pressed: Reaction) -> Vec<Command> {
        let Some(item) = self.selected_feed_item() else {
            self.complain("select a notification first (Tab switches panels)");
            return Vec::new();
        };
        let reaction = (item.reaction != Some(pressed)).then_some(pressed);
        let (video_id, video) = (item.id, item.video.clone());
        self.in_flight += 1;
        vec![Command::Interact {
            video_id,
            video,
            interaction: Interaction::React(reaction),
        }]
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Vec<Command> {
        match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return vec![Command::Quit];
            }
            KeyCode::Char('+') => return self.react(Reaction::Like),
            KeyCode::Char('-') => return self.react(Reaction::Dislike),
            KeyCode::Char('c') => match self.selected_feed_item() {
                Some(item) => {
                    self.mode = Mode::Comment {
                        video_id: item.id,
                        video: item.video.clone(),
                        input: String::new(),
                        error: None,
                    }
                }
                None => self.complain("select a notification first (Tab switches panels)"),
            },
            KeyCode::Tab
            | KeyCode::BackTab
            | KeyCode::Left
            | KeyCode::Right
            | KeyCode::Char('h')
            | KeyCode::Char('l') => {
                self.focus = match self.focus {
                    Focus::Subscriptions => Focus::Feed,
                    Focus::Feed => Focus::Subscriptions,
                };
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX),
            KeyCode::Enter => match self.focus {
                Focus::Feed => self.mark_selected_read(),
                Focus::Subscriptions => {
                    if let Some(youtuber) = self.subscriptions.get(self.selected_subscription) {
                        self.filter = youtuber.clone();
                        self.selected_item = None;
                        self.focus = Focus::Feed;
                    }
                }
            },
            KeyCode::Char('a') => {
                let ids: Vec<Uuid> = self.visible().iter().map(|item| item.id).collect();
                for item in self.feed.iter_mut().filter(|item| ids.contains(&item.id)) {
                    item.read = true;
                }
                self.say(format!("marked {} read", ids.len()));
            }
            KeyCode::Char('s') => {
                self.mode = Mode::Subscribe {
                    input: String::new(),
                    error: None,
                }
            }
            KeyCode::Char('u') => self.ask_unsubscribe(),
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Esc => {
                self.filter.clear();
                self.selected_item = None;
            }
            KeyCode::Char('?') => self.mode = Mode::Help,
            _ => {}
        }
        Vec::new()
    }

    fn ask_unsubscribe(&mut self) {
        let youtuber = match self.focus {
            Focus::Subscriptions => self.subscriptions.get(self.selected_subscription).cloned(),
            Focus::Feed => {
                let visible = self.visible();
                self.selected_position(&visible)
                    .map(|at| visible[at].youtuber.clone())
                    .filter(|youtuber| self.subscriptions.contains(youtuber))
            }
        };
        match youtuber {
            Some(youtuber) => self.mode = Mode::ConfirmUnsubscribe(youtuber),
            None => self.complain("select a subscription first (Tab switches panels)"),
        }
    }

    fn mark_selected_read(&mut self) {
        let visible = self.visible();
        let Some(at) = self.selected_position(&visible) else {
            return;
        };
        let id = visible[at].id;
        if let Some(item) = self.feed.iter_mut().find(|item| item.id == id) {
            item.read = true;
        }
        // Move on to the next one, as a mail reader does.
        self.move_selection(1);
    }

    fn move_selection(&mut self, by: isize) {
        match self.focus {
            Focus::Subscriptions => {
                let len = self.subscriptions.len();
                self.selected_subscription = step(self.selected_subscription, by, len);
            }
            Focus::Feed => {
                let visible = self.visible();
                if let Some(at) = self.selected_position(&visible) {
                    let next = step(at, by, visible.len());
                    self.selected_item = Some(visible[next].id);
                }
            }
        }
    }
}

fn step(at: usize, by: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let last = len - 1;
    match by {
        isize::MIN => 0,
        isize::MAX => last,
        by if by < 0 => at.saturating_sub(by.unsigned_abs()),
        by => (at + by as usize).min(last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::user::fixtures::{draw, key, sample, typed, upload, utc};

    #[test]
    fn unread_counts_follow_reading() {
        let mut app = sample();
        assert_eq!(app.unread_from("bob"), 2);
        assert_eq!(app.unread_from("carol"), 1);
        app.update(key(KeyCode::Char('a')));
        assert_eq!(app.unread_from("bob"), 0);
    }

    #[test]
    fn the_feed_is_newest_first_and_a_duplicate_is_dropped() {
        let mut app = sample();
        app.update(upload(4, "bob", "Ownership for the impatient", false));
        let titles: Vec<&str> = app
            .visible()
            .iter()
            .map(|item| item.video.as_str())
            .collect();
        assert_eq!(
            titles,
            [
                "Ownership for the impatient",
                "Async Rust, explained slowly",
                "Why the sky is blue",
                "Rust in 100 seconds"
            ]
        );
    }

    #[test]
    fn subscribing_validates_then_asks_the_server() {
        let mut app = sample();
        app.update(key(KeyCode::Char('s')));
        typed(&mut app, "bad name");
        assert!(app.update(key(KeyCode::Enter)).is_empty());
        let Mode::Subscribe {
            error: Some(error), ..
        } = app.mode()
        else {
            panic!("the prompt stays open with the problem: {:?}", app.mode());
        };
        assert!(error.contains("a space at position 4"), "{error}");
        for _ in 0.."bad name".len() {
            app.update(key(KeyCode::Backspace));
        }
        typed(&mut app, "dave");
        let commands = app.update(key(KeyCode::Enter));
        assert_eq!(
            commands,
            [Command::Change(SubscriptionChange {
                youtuber: "dave".into(),
                subscribe: true
            })]
        );
        let follow_up = app.update(Msg::Changed {
            change: SubscriptionChange {
                youtuber: "dave".into(),
                subscribe: true,
            },
            outcome: Outcome::Applied { notice: None },
            elapsed: Duration::from_millis(2),
        });
        assert_eq!(follow_up, [Command::RefreshSubscriptions]);
    }

    #[test]
    fn unsubscribing_asks_for_confirmation() {
        let mut app = sample();
        app.update(key(KeyCode::Tab));
        app.update(key(KeyCode::Char('j')));
        app.update(key(KeyCode::Char('u')));
        assert_eq!(app.mode(), &Mode::ConfirmUnsubscribe("carol".into()));
        assert!(app.update(key(KeyCode::Char('n'))).is_empty());
        app.update(key(KeyCode::Char('u')));
        assert_eq!(
            app.update(key(KeyCode::Char('y'))),
            [Command::Change(SubscriptionChange {
                youtuber: "carol".into(),
                subscribe: false
            })]
        );
        app.update(Msg::Changed {
            change: SubscriptionChange {
                youtuber: "carol".into(),
                subscribe: false,
            },
            outcome: Outcome::Refused("alice is not subscribed to carol".into()),
            elapsed: Duration::from_millis(2),
        });
        let terminal = draw(&app, 100, 10);
        let screen = terminal.backend().to_string();
        assert!(
            screen.contains("refused: alice is not subscribed to carol"),
            "{screen}"
        );
    }

    #[test]
    fn plus_likes_the_selected_video_and_again_takes_it_back() {
        let mut app = sample();
        let selected = app.visible()[1].clone();
        let like = app.update(key(KeyCode::Char('+')));
        assert_eq!(
            like,
            [Command::Interact {
                video_id: selected.id,
                video: selected.video.clone(),
                interaction: Interaction::React(Some(Reaction::Like)),
            }]
        );
        app.update(Msg::Interacted {
            video_id: selected.id,
            video: selected.video.clone(),
            interaction: Interaction::React(Some(Reaction::Like)),
            outcome: Outcome::Applied { notice: None },
            elapsed: Duration::from_millis(2),
        });
        assert_eq!(app.visible()[1].reaction, Some(Reaction::Like));
        // Pressed again: taken back. Minus instead: a dislike.
        let again = app.update(key(KeyCode::Char('+')));
        assert!(matches!(
            &again[..],
            [Command::Interact {
                interaction: Interaction::React(None),
                ..
            }]
        ));
        let dislike = app.update(key(KeyCode::Char('-')));
        assert!(matches!(
            &dislike[..],
            [Command::Interact {
                interaction: Interaction::React(Some(Reaction::Dislike)),
                ..
            }]
        ));
        // From the subscriptions panel there is nothing to like.
        app.update(key(KeyCode::Tab));
        assert!(app.update(key(KeyCode::Char('+'))).is_empty());
    }

    #[test]
    fn a_comment_is_checked_then_sent_and_a_refusal_shows() {
        let mut app = sample();
        let selected = app.visible()[1].clone();
        app.update(key(KeyCode::Char('c')));
        assert!(
            app.update(key(KeyCode::Enter)).is_empty(),
            "empty: not sent"
        );
        assert!(matches!(app.mode(), Mode::Comment { error: Some(_), .. }));
        typed(&mut app, "Nice one");
        let sent = app.update(key(KeyCode::Enter));
        assert_eq!(
            sent,
            [Command::Interact {
                video_id: selected.id,
                video: selected.video.clone(),
                interaction: Interaction::Comment("Nice one".into()),
            }]
        );
        assert_eq!(app.mode(), &Mode::Normal);
        app.update(Msg::Interacted {
            video_id: selected.id,
            video: selected.video.clone(),
            interaction: Interaction::Comment("Nice one".into()),
            outcome: Outcome::Refused("no video has an id that starts with 00".into()),
            elapsed: Duration::from_millis(2),
        });
        assert_eq!(app.visible()[1].comments, 0);
        let screen = draw(&app, 100, 10).backend().to_string();
        assert!(screen.contains("refused: no video has an id"), "{screen}");
    }

    #[test]
    fn the_filter_narrows_the_feed_and_esc_clears_it() {
        let mut app = sample();
        app.update(key(KeyCode::Char('/')));
        typed(&mut app, "SKY");
        assert_eq!(app.visible().len(), 1);
        app.update(key(KeyCode::Esc));
        assert_eq!(app.visible().len(), 4);
    }

    #[test]
    fn quitting_with_q_or_ctrl_c() {
        let mut app = sample();
        assert_eq!(app.update(key(KeyCode::Char('q'))), [Command::Quit]);
        let mut app = sample();
        let ctrl_c = Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert_eq!(app.update(ctrl_c), [Command::Quit]);
        assert!(app.should_quit());
    }

    #[test]
    fn a_burst_of_notifications_is_bounded() {
        let mut app = UserDashboard::new("alice", utc());
        for n in 0..(MAX_FEED as u128 + 500) {
            app.update(upload(n, "bob", "burst", false));
        }
        assert_eq!(app.feed().len(), MAX_FEED);
        // Drawing the full feed still renders only what fits.
        let terminal = draw(&app, 80, 24);
        assert!(terminal.backend().to_string().contains("10000 unread"));
    }
}
