//! `user watch` in a terminal: the user's subscriptions with unread counts, the
//! notification feed (newest first), and keys to subscribe, unsubscribe, mark
//! read and filter. Subscription changes go through the server like any other
//! request; its answer shows in the status line.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::FixedOffset;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{List, ListItem, Paragraph},
};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    terminal::{Input, Screen},
    widgets::{self, BoldTitle},
};
use crate::{
    client::{
        Client,
        inbox::{Inbox, Received},
        user::{self, SubscriptionChange},
    },
    error::{Error, Result},
    link::LinkState,
    names,
    protocol::Notification,
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
    fn from_result(result: Result<Option<String>>) -> Outcome {
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
    Filter,
    Help,
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
    Link(LinkState),
}

/// What the dashboard asks its event loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Change(SubscriptionChange),
    RefreshSubscriptions,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    text: String,
    error: bool,
}

/// The state of a user's dashboard.
#[derive(Debug, Clone)]
pub struct UserDashboard {
    user: String,
    subscriptions: Vec<String>,
    /// Oldest first; drawn newest first.
    feed: Vec<FeedItem>,
    focus: Focus,
    mode: Mode,
    selected_subscription: usize,
    /// The selected feed item, by id, so that it stays put as new ones arrive.
    selected_item: Option<Uuid>,
    filter: String,
    status: Option<Status>,
    link: LinkState,
    server: ServerHealth,
    in_flight: usize,
    offset: FixedOffset,
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

    fn unread(&self) -> usize {
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

    fn selected_position(&self, visible: &[&FeedItem]) -> Option<usize> {
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
            Msg::Link(link) => self.link = link,
        }
        Vec::new()
    }

    fn receive(&mut self, notification: Notification, away: bool) {
        let Notification::VideoUploaded {
            id,
            youtuber,
            video,
            uploaded_at_ms,
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

    fn on_normal_key(&mut self, key: KeyEvent) -> Vec<Command> {
        match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return vec![Command::Quit];
            }
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

    /// Draws the whole screen. Reads the state only.
    pub fn render(&self, frame: &mut Frame) {
        let [title, main, status, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(30), Constraint::Percentage(70)])
                .areas(main);

        frame.render_widget(
            Line::from(vec![
                Span::styled(" ytnotify ", Style::new().bold().black().on_cyan()),
                Span::raw(format!(" {}'s notifications", self.user)).bold(),
            ]),
            title,
        );
        self.render_subscriptions(frame, left);
        self.render_feed(frame, right);
        self.render_status(frame, status);
        self.render_keys(frame, keys);
        self.render_popup(frame);
    }

    fn render_subscriptions(&self, frame: &mut Frame, area: Rect) {
        let focused = self.focus == Focus::Subscriptions;
        let title =
            Line::from(format!(" Subscriptions ({}) ", self.subscriptions.len())).bold_title();
        let block = widgets::panel(title, focused);
        if self.subscriptions.is_empty() {
            let text = vec![
                Line::from("None yet.").dim(),
                Line::from(vec![
                    Span::raw("Press "),
                    Span::raw("s").bold(),
                    Span::raw(" to subscribe."),
                ])
                .dim(),
            ];
            frame.render_widget(Paragraph::new(text).block(block), area);
            return;
        }
        let width = area.width.saturating_sub(2) as usize;
        let height = widgets::inner_height(area);
        let first = self
            .selected_subscription
            .saturating_sub(height.saturating_sub(1));
        let items: Vec<ListItem> = self
            .subscriptions
            .iter()
            .enumerate()
            .skip(first)
            .take(height)
            .map(|(at, youtuber)| {
                let unread = self.unread_from(youtuber);
                let count = if unread > 0 {
                    unread.to_string()
                } else {
                    String::new()
                };
                let name_width = width.saturating_sub(count.len() + 3);
                let text = format!(
                    " {:<name_width$} {count} ",
                    widgets::truncate(youtuber, name_width)
                );
                let mut style = Style::new();
                if unread > 0 {
                    style = style.add_modifier(Modifier::BOLD);
                }
                if at == self.selected_subscription && focused {
                    style = style.add_modifier(Modifier::REVERSED);
                }
                ListItem::new(Line::from(text).style(style))
            })
            .collect();
        frame.render_widget(List::new(items).block(block), area);
    }

    fn render_feed(&self, frame: &mut Frame, area: Rect) {
        let focused = self.focus == Focus::Feed;
        let visible = self.visible();
        let mut title = vec![
            Span::raw(format!(
                " Notifications · {} · {} unread ",
                self.feed.len(),
                self.unread()
            ))
            .bold(),
        ];
        if !self.filter.is_empty() {
            title.push(Span::styled(
                format!("· filter: {} ({} shown) ", self.filter, visible.len()),
                Style::new().fg(Color::Yellow),
            ));
        }
        let block = widgets::panel(Line::from(title), focused);
        if visible.is_empty() {
            let text = if self.feed.is_empty() {
                "Nothing yet: uploads of the YouTubers you follow appear here as they happen."
            } else {
                "Nothing matches the filter (Esc clears it)."
            };
            frame.render_widget(
                Paragraph::new(Line::from(text).dim())
                    .block(block)
                    .wrap(ratatui::widgets::Wrap { trim: true }),
                area,
            );
            return;
        }
        let width = area.width.saturating_sub(2) as usize;
        let height = widgets::inner_height(area);
        let selected = self.selected_position(&visible).unwrap_or(0);
        let first = selected.saturating_sub(height.saturating_sub(1));
        let items: Vec<ListItem> = visible
            .iter()
            .enumerate()
            .skip(first)
            .take(height)
            .map(|(at, item)| self.feed_row(item, width, at == selected && focused))
            .collect();
        frame.render_widget(List::new(items).block(block), area);
    }

    fn feed_row(&self, item: &FeedItem, width: usize, selected: bool) -> ListItem<'static> {
        let marker = if item.read {
            Span::raw("  ")
        } else {
            Span::styled("● ", Style::new().fg(Color::Cyan))
        };
        let time = Span::styled(
            format!("{} ", widgets::clock(item.uploaded_at_ms, self.offset)),
            Style::new().fg(Color::DarkGray),
        );
        let away = if item.away { " while away" } else { "" };
        let used = 2 + 9 + item.youtuber.chars().count() + " uploaded ".len() + away.len();
        let title = widgets::truncate(&item.video, width.saturating_sub(used));
        let mut text = Style::new();
        if !item.read {
            text = text.add_modifier(Modifier::BOLD);
        }
        let mut spans = vec![
            marker,
            time,
            Span::styled(item.youtuber.clone(), text.fg(Color::Cyan)),
            Span::styled(" uploaded ", text),
            Span::styled(title, text),
        ];
        if item.away {
            spans.push(Span::styled(away, Style::new().fg(Color::Yellow)));
        }
        let mut line = Line::from(spans);
        if selected {
            line = line.style(Style::new().add_modifier(Modifier::REVERSED));
        }
        ListItem::new(line)
    }

    fn render_status(&self, frame: &mut Frame, area: Rect) {
        let mut spans = Vec::new();
        spans.push(match &self.link {
            LinkState::Connected => {
                Span::styled("● broker connected", Style::new().fg(Color::Green))
            }
            LinkState::Reconnecting(_) => Span::styled(
                "◌ broker lost: reconnecting…",
                Style::new().fg(Color::Yellow),
            ),
            LinkState::Blocked(why) => Span::styled(
                format!("■ broker blocks publishing ({why})"),
                Style::new().fg(Color::Red),
            ),
        });
        spans.push(Span::raw(" · "));
        spans.push(match self.server {
            ServerHealth::Unknown => Span::raw("server: no request yet").dim(),
            ServerHealth::Answered(took) => Span::styled(
                format!("server answered in {} ms", took.as_millis()),
                Style::new().fg(Color::Green),
            ),
            ServerHealth::Silent => {
                Span::styled("server not answering", Style::new().fg(Color::Yellow))
            }
        });
        if self.in_flight > 0 {
            spans.push(Span::raw(format!(" · {} pending", self.in_flight)));
        }
        if let Some(status) = &self.status {
            spans.push(Span::raw(" · "));
            let style = if status.error {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            spans.push(Span::styled(status.text.clone(), style));
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
    }

    fn render_keys(&self, frame: &mut Frame, area: Rect) {
        let line = match self.mode {
            Mode::Filter => Line::from(vec![
                Span::styled(" filter: ", Style::new().fg(Color::Yellow).bold()),
                Span::raw(self.filter.clone()),
                Span::raw("▏"),
                Span::raw("   Enter keep · Esc clear").dim(),
            ]),
            _ => widgets::hints(&[
                ("s", "subscribe"),
                ("u", "unsubscribe"),
                ("⏎", "read"),
                ("/", "filter"),
                ("?", "keys"),
                ("q", "quit"),
            ]),
        };
        frame.render_widget(line, area);
    }

    fn render_popup(&self, frame: &mut Frame) {
        match &self.mode {
            Mode::Subscribe { input, error } => {
                let mut lines = vec![Line::from(vec![
                    Span::raw("YouTuber: "),
                    Span::raw(input.clone()).bold(),
                    Span::raw("▏"),
                ])];
                match error {
                    Some(error) => lines.push(Line::from(error.clone()).red()),
                    None => lines.push(Line::from("letters, digits, '_', '-' or '.'").dim()),
                }
                lines.push(Line::from("Enter subscribe · Esc cancel").dim());
                widgets::popup(frame, "Subscribe", lines, 60);
            }
            Mode::ConfirmUnsubscribe(youtuber) => {
                let lines = vec![
                    Line::from(format!("Unsubscribe {} from {youtuber}?", self.user)),
                    Line::from("y yes · n no").dim(),
                ];
                widgets::popup(frame, "Unsubscribe", lines, 50);
            }
            Mode::Help => {
                let lines = widgets::key_lines(&[
                    ("↑ ↓  j k", "move in the list"),
                    ("Tab ← →", "switch panels"),
                    ("Enter", "mark read (feed) / show only this YouTuber"),
                    ("a", "mark everything shown read"),
                    ("s", "subscribe to a YouTuber"),
                    ("u", "unsubscribe from the selected YouTuber"),
                    ("/", "filter the feed; Esc clears"),
                    ("q  Ctrl-C", "quit"),
                ]);
                widgets::popup(frame, "Keys", lines, 62);
            }
            Mode::Normal | Mode::Filter => {}
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

/// From the broker task to the event loop.
enum Delivered {
    Received(Received, bool),
    Ended(String),
}

/// Runs the dashboard for `user` until `q`, Ctrl-C or `shutdown`. Each
/// notification is acknowledged once a frame showing it has been drawn.
pub async fn run(
    client: Client,
    user: &str,
    greeting: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Open the inbox before taking the screen, so that an error (another
    // session already open) prints as a plain line.
    let mut inbox = Inbox::open(client.link(), user).await?;
    let client = Arc::new(client);
    let mut app = UserDashboard::new(user, widgets::local_offset());
    if let Some(greeting) = greeting {
        app.say(greeting);
    }

    let (delivered, mut deliveries) = mpsc::channel::<Delivered>(4096);
    let away = inbox.waiting_at_open();
    let reader = tokio::spawn(async move {
        let mut count = 0u32;
        loop {
            // The inbox rides out every loss by itself; it fails only once
            // the connection is closed.
            match inbox.next().await {
                Ok(received) => {
                    count += 1;
                    if delivered
                        .send(Delivered::Received(received, count <= away))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(err) => {
                    let _ = delivered.send(Delivered::Ended(err.to_string())).await;
                    break;
                }
            }
        }
        inbox.close().await;
    });

    let (replies, mut answers) = mpsc::unbounded_channel::<Msg>();
    execute(&client, user, Command::RefreshSubscriptions, &replies);

    let mut screen = Screen::enter().map_err(|e| Error::Terminal(e.to_string()))?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut link = client.state();
    let mut unacked: Vec<Received> = Vec::new();
    let mut acking: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        // One frame per event (a burst counts as one): nothing is drawn while idle.
        {
            screen
                .terminal
                .draw(|frame| app.render(frame))
                .map_err(|e| Error::Terminal(e.to_string()))?;
            // Drawn, so shown: now they may leave the inbox.
            if !unacked.is_empty() {
                let batch = std::mem::take(&mut unacked);
                acking.retain(|task| !task.is_finished());
                acking.push(tokio::spawn(async move {
                    for received in batch {
                        let _ = received.ack().await;
                    }
                }));
            }
        }
        let mut commands = Vec::new();
        tokio::select! {
            input = screen.next() => match input {
                Input::Key(key) => commands = app.update(Msg::Key(key)),
                Input::Resize => {}
                Input::Closed => break,
            },
            Some(first) = deliveries.recv() => {
                // Take the whole burst before drawing once.
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(delivery) = next {
                    match delivery {
                        Delivered::Received(received, away) => {
                            app.update(Msg::Notification { notification: received.notification.clone(), away });
                            unacked.push(received);
                        }
                        Delivered::Ended(why) => {
                            app.update(Msg::Link(LinkState::Reconnecting(why)));
                        }
                    }
                    taken += 1;
                    next = if taken < 5000 { deliveries.try_recv().ok() } else { None };
                }
            },
            Some(msg) = answers.recv() => commands = app.update(msg),
            Ok(()) = link.changed() => {
                let state = link.borrow_and_update().clone();
                app.update(Msg::Link(state));
            },
            () = &mut shutdown => break,
        }
        for command in commands {
            execute(&client, user, command, &replies);
        }
        if app.should_quit() {
            break;
        }
    }
    drop(screen);
    // Notifications not drawn yet stay unacknowledged, in the inbox for next
    // time; those drawn are acknowledged before the connection closes.
    drop(unacked);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for task in acking {
            let _ = task.await;
        }
    })
    .await;
    reader.abort();
    Ok(())
}

fn execute(
    client: &Arc<Client>,
    user: &str,
    command: Command,
    replies: &mpsc::UnboundedSender<Msg>,
) {
    let (client, user, replies) = (Arc::clone(client), user.to_owned(), replies.clone());
    match command {
        Command::Quit => {}
        Command::RefreshSubscriptions => {
            tokio::spawn(async move {
                let msg = match user::subscriptions(&client, &user).await {
                    Ok(list) => Msg::Subscriptions(list),
                    Err(err) => Msg::SubscriptionsFailed(Outcome::from_result(Err(err))),
                };
                let _ = replies.send(msg);
            });
        }
        Command::Change(change) => {
            tokio::spawn(async move {
                let started = Instant::now();
                let result = user::update_subscription(&client, &user, &change).await;
                let _ = replies.send(Msg::Changed {
                    change,
                    outcome: Outcome::from_result(result),
                    elapsed: started.elapsed(),
                });
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::{Terminal, backend::TestBackend};

    fn key(code: KeyCode) -> Msg {
        Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn typed(app: &mut UserDashboard, text: &str) -> Vec<Command> {
        let mut commands = Vec::new();
        for c in text.chars() {
            commands.extend(app.update(key(KeyCode::Char(c))));
        }
        commands
    }

    fn upload(n: u128, youtuber: &str, video: &str, away: bool) -> Msg {
        Msg::Notification {
            notification: Notification::VideoUploaded {
                id: Uuid::from_u128(n),
                youtuber: youtuber.into(),
                video: video.into(),
                uploaded_at_ms: 1_795_437_000_000 + n as i64 * 61_000,
            },
            away,
        }
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    /// alice follows bob and carol; two uploads waited while she was away,
    /// two came live, and she has read one.
    fn sample() -> UserDashboard {
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

    fn draw(app: &UserDashboard, width: u16, height: u16) -> Terminal<TestBackend> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| app.render(frame)).unwrap();
        terminal
    }

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

    #[test]
    fn snapshot_at_80_by_24() {
        insta::assert_snapshot!(draw(&sample(), 80, 24).backend());
    }

    #[test]
    fn snapshot_of_the_subscribe_prompt() {
        let mut app = sample();
        app.update(key(KeyCode::Char('s')));
        typed(&mut app, "dave");
        insta::assert_snapshot!(draw(&app, 80, 24).backend());
    }

    #[test]
    fn snapshot_of_an_empty_dashboard_with_a_silent_server() {
        let mut app = UserDashboard::new("newcomer", utc());
        app.update(Msg::SubscriptionsFailed(Outcome::Queued));
        insta::assert_snapshot!(draw(&app, 80, 12).backend());
    }

    #[test]
    fn snapshot_of_the_help() {
        let mut app = sample();
        app.update(key(KeyCode::Char('?')));
        insta::assert_snapshot!(draw(&app, 80, 24).backend());
    }
}
