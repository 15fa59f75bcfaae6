//! `youtube_server --tui`: the server's dashboard. Users and whether each is
//! online (a consumer on their inbox), YouTubers with subscriber counts and
//! latest video, the live event stream, and request and notification rates.

use std::{collections::VecDeque, future::Future, time::Duration};

use chrono::FixedOffset;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{List, ListItem, Paragraph, Sparkline},
};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    terminal::{Input, Screen},
    widgets::{self, BoldTitle},
};
use crate::{
    broker,
    error::{Error, Result},
    link::{Link, LinkState, SessionChannel},
    server::{Event, YoutubeServer},
    store::{Store, YoutuberOverview, now_ms},
    topology,
};

/// Seconds of history in the rate sparklines.
const HISTORY: usize = 120;
/// Events kept for the stream panel.
const MAX_EVENTS: usize = 1000;
/// Users whose inbox is probed for a consumer at each refresh.
const MAX_PROBED_USERS: usize = 500;

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
enum Panel {
    Users,
    Youtubers,
    Events,
}

/// The state of the server's dashboard.
#[derive(Debug, Clone)]
pub struct ServerDashboard {
    broker: String,
    database: String,
    log: String,
    link: LinkState,
    snapshot: Snapshot,
    /// Newest last.
    events: VecDeque<(i64, Event)>,
    missed: u64,
    requests: VecDeque<u64>,
    notifications: VecDeque<u64>,
    this_second: (u64, u64),
    focus: Panel,
    selected: [usize; 3],
    help: bool,
    quit: bool,
    offset: FixedOffset,
}

impl ServerDashboard {
    /// A dashboard naming its broker, database and log file.
    pub fn new(broker: &str, database: &str, log: &str, offset: FixedOffset) -> Self {
        ServerDashboard {
            broker: broker.to_owned(),
            database: database.to_owned(),
            log: log.to_owned(),
            link: LinkState::Connected,
            snapshot: Snapshot::default(),
            events: VecDeque::new(),
            missed: 0,
            requests: VecDeque::from(vec![0; HISTORY]),
            notifications: VecDeque::from(vec![0; HISTORY]),
            this_second: (0, 0),
            focus: Panel::Events,
            selected: [0; 3],
            help: false,
            quit: false,
            offset,
        }
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

    pub fn update(&mut self, msg: Msg) {
        match msg {
            Msg::Key(key) => self.on_key(key),
            Msg::Event { at_ms, event } => {
                self.this_second.0 += 1;
                if let Event::Uploaded { youtuber, .. } = &event {
                    let subscribers = self
                        .snapshot
                        .youtubers
                        .iter()
                        .find(|y| &y.name == youtuber)
                        .map_or(0, |y| y.subscribers.max(0) as u64);
                    self.this_second.1 += subscribers;
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
                let (requests, notifications) = std::mem::take(&mut self.this_second);
                push_rate(&mut self.requests, requests);
                push_rate(&mut self.notifications, notifications);
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

    /// Draws the whole screen. Reads the state only.
    pub fn render(&self, frame: &mut Frame) {
        let [title, tables, events, rates, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(5),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let [users, youtubers] =
            Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)])
                .areas(tables);
        let [requests, notifications] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(rates);

        frame.render_widget(
            Line::from(vec![
                Span::styled(" ytnotify ", Style::new().bold().black().on_cyan()),
                Span::raw(" youtube_server ").bold(),
                match &self.link {
                    LinkState::Connected => {
                        Span::styled("● connected ", Style::new().fg(Color::Green))
                    }
                    LinkState::Reconnecting(_) => {
                        Span::styled("◌ reconnecting… ", Style::new().fg(Color::Yellow))
                    }
                    LinkState::Blocked(_) => {
                        Span::styled("■ blocked by the broker ", Style::new().fg(Color::Red))
                    }
                },
                Span::raw(format!("· {} · {}", self.broker, self.database)).dim(),
            ]),
            title,
        );
        self.render_users(frame, users);
        self.render_youtubers(frame, youtubers);
        self.render_events(frame, events);
        let (now, peak) = self.request_rate();
        render_rate(
            frame,
            requests,
            "requests/s",
            now,
            peak,
            &self.requests,
            Color::Cyan,
        );
        let (now, peak) = self.notification_rate();
        render_rate(
            frame,
            notifications,
            "notifications/s",
            now,
            peak,
            &self.notifications,
            Color::Magenta,
        );
        frame.render_widget(
            widgets::hints(&[
                ("Tab", "panel"),
                ("↑↓", "scroll"),
                ("?", "keys"),
                ("q", "quit (stops the server)"),
            ]),
            keys,
        );
        if self.help {
            let mut lines = widgets::key_lines(&[
                ("Tab ← →", "switch panels"),
                ("↑ ↓  j k", "scroll the panel"),
                ("g G", "first / last"),
                ("q  Ctrl-C", "stop the server and quit"),
            ]);
            lines.push(Line::from(format!("log: {}", self.log)).dim());
            widgets::popup(frame, "Keys", lines, 64);
        }
    }

    fn render_users(&self, frame: &mut Frame, area: Rect) {
        let users = &self.snapshot.users;
        let online = users.iter().filter(|u| u.online).count();
        let title = Line::from(format!(" Users · {} · {online} online ", users.len())).bold_title();
        let block = widgets::panel(title, self.focus == Panel::Users);
        let width = area.width.saturating_sub(2) as usize;
        let rows = users.iter().map(|user| {
            let dot = if user.online {
                Span::styled("● ", Style::new().fg(Color::Green))
            } else {
                Span::styled("○ ", Style::new().fg(Color::DarkGray))
            };
            let detail = match user.waiting {
                0 => format!("{} subs", user.subscriptions),
                waiting => format!("{} subs · {waiting} waiting", user.subscriptions),
            };
            let name_width = width.saturating_sub(detail.len() + 3);
            Line::from(vec![
                dot,
                Span::raw(format!(
                    "{:<name_width$} ",
                    widgets::truncate(&user.name, name_width)
                )),
                Span::raw(detail).dim(),
            ])
        });
        self.render_list(
            frame,
            area,
            block,
            rows.collect(),
            Panel::Users,
            "No user has logged in yet.",
        );
    }

    fn render_youtubers(&self, frame: &mut Frame, area: Rect) {
        let youtubers = &self.snapshot.youtubers;
        let title = Line::from(format!(" YouTubers · {} ", youtubers.len())).bold_title();
        let block = widgets::panel(title, self.focus == Panel::Youtubers);
        let width = area.width.saturating_sub(2) as usize;
        let rows = youtubers.iter().map(|youtuber| {
            let counts = format!(
                "{:>4} subs {:>4} videos  ",
                youtuber.subscribers, youtuber.videos
            );
            let name = format!("{:<14}", widgets::truncate(&youtuber.name, 14));
            let latest_width = width.saturating_sub(name.chars().count() + counts.len() + 1);
            let latest = youtuber.latest_video.as_deref().map_or_else(
                || "no video yet".to_owned(),
                |v| widgets::truncate(v, latest_width),
            );
            Line::from(vec![
                Span::raw(format!("{name} ")).bold(),
                Span::raw(counts).dim(),
                Span::raw(latest),
            ])
        });
        self.render_list(
            frame,
            area,
            block,
            rows.collect(),
            Panel::Youtubers,
            "No YouTuber yet.",
        );
    }

    fn render_events(&self, frame: &mut Frame, area: Rect) {
        let mut title = format!(" Events · {} ", self.events.len());
        if self.missed > 0 {
            title.push_str(&format!("· {} not shown (too fast) ", self.missed));
        }
        let block = widgets::panel(Line::from(title).bold_title(), self.focus == Panel::Events);
        let rows = self.events.iter().rev().map(|(at_ms, event)| {
            let color = match event {
                Event::LoggedIn { .. } => Color::Blue,
                Event::Subscribed { .. } => Color::Green,
                Event::Unsubscribed { .. } => Color::Yellow,
                Event::Uploaded { .. } => Color::Magenta,
                Event::DeadLettered { .. } => Color::Red,
            };
            Line::from(vec![
                Span::styled(
                    format!("{} ", widgets::clock(*at_ms, self.offset)),
                    Style::new().fg(Color::DarkGray),
                ),
                Span::styled(event.to_string(), Style::new().fg(color)),
            ])
        });
        self.render_list(
            frame,
            area,
            block,
            rows.collect(),
            Panel::Events,
            "Waiting for requests: run `user alice s bob` or `youtuber bob Hello`.",
        );
    }

    fn render_list(
        &self,
        frame: &mut Frame,
        area: Rect,
        block: ratatui::widgets::Block<'_>,
        rows: Vec<Line<'_>>,
        panel: Panel,
        empty: &str,
    ) {
        if rows.is_empty() {
            frame.render_widget(
                Paragraph::new(Line::from(empty.to_owned()).dim())
                    .block(block)
                    .wrap(ratatui::widgets::Wrap { trim: true }),
                area,
            );
            return;
        }
        let height = widgets::inner_height(area);
        let selected = self.selected[panel as usize].min(rows.len() - 1);
        let first = selected.saturating_sub(height.saturating_sub(1));
        let focused = self.focus == panel;
        let items: Vec<ListItem> = rows
            .into_iter()
            .enumerate()
            .skip(first)
            .take(height)
            .map(|(at, line)| {
                let item = ListItem::new(line);
                if focused && at == selected {
                    item.style(Style::new().add_modifier(Modifier::REVERSED))
                } else {
                    item
                }
            })
            .collect();
        frame.render_widget(List::new(items).block(block), area);
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

fn render_rate(
    frame: &mut Frame,
    area: Rect,
    name: &str,
    now: u64,
    peak: u64,
    history: &VecDeque<u64>,
    color: Color,
) {
    let title = Line::from(format!(" {name} · now {now} · peak {peak} ")).bold_title();
    let width = area.width.saturating_sub(2) as usize;
    let data: Vec<u64> = history.iter().rev().take(width).rev().copied().collect();
    frame.render_widget(
        Sparkline::default()
            .block(widgets::panel(title, false))
            .data(data)
            .max(peak.max(1))
            .style(Style::new().fg(color)),
        area,
    );
}

/// Reads users, YouTubers and inbox consumers, for one refresh.
async fn snapshot(store: &Store, probe: &SessionChannel) -> Result<Snapshot> {
    let mut users = Vec::new();
    for (at, user) in store.users_overview().await?.into_iter().enumerate() {
        let (waiting, consumers) = if at < MAX_PROBED_USERS {
            let (_, channel) = probe.get().await?;
            // An inbox deleted on the broker shows as empty and offline
            // (the failed look closes the channel; the next one reopens it).
            topology::inspect(&channel, &topology::inbox(&user.name))
                .await
                .unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        users.push(UserRow {
            name: user.name,
            subscriptions: user.subscriptions,
            online: consumers > 0,
            waiting,
        });
    }
    Ok(Snapshot {
        users,
        youtubers: store.youtubers_overview().await?,
    })
}

/// Runs the server under its dashboard until `q`, Ctrl-C or `shutdown`, then
/// stops the server cleanly.
pub async fn run(
    server: YoutubeServer,
    amqp_url: &str,
    log: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let store = server.store().clone();
    let mut events = server.events();
    let mut link = server.link();
    let mut app = ServerDashboard::new(
        &broker::redact(amqp_url),
        &store.path().display().to_string(),
        log,
        widgets::local_offset(),
    );
    let probe_link = Link::connect(amqp_url, "youtube_server dashboard").await?;
    let probe = SessionChannel::new(&probe_link, false);
    let (stop, stopped) = oneshot::channel::<()>();
    let mut serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));

    let (snapshots, mut snapshot_rx) = mpsc::channel::<Result<Snapshot>>(1);
    let refresher = tokio::spawn(async move {
        loop {
            let taken = match snapshot(&store, &probe).await {
                // The broker is away: the next snapshot waits for the
                // reconnection.
                Err(Error::Broker(err)) => {
                    tracing::debug!(%err, "could not take a snapshot; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                taken => taken,
            };
            let failed = taken.is_err();
            if snapshots.send(taken).await.is_err() || failed {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let mut screen = Screen::enter().map_err(|e| Error::Terminal(e.to_string()))?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut outcome = Ok(());
    let mut server_done = false;
    loop {
        screen
            .terminal
            .draw(|frame| app.render(frame))
            .map_err(|e| Error::Terminal(e.to_string()))?;
        tokio::select! {
            input = screen.next() => match input {
                Input::Key(key) => app.update(Msg::Key(key)),
                Input::Resize => {}
                Input::Closed => break,
            },
            event = events.recv() => match event {
                Ok(event) => {
                    app.update(Msg::Event { at_ms: now_ms(), event });
                    // Take the rest of a burst before drawing.
                    while let Ok(event) = events.try_recv() {
                        app.update(Msg::Event { at_ms: now_ms(), event });
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => app.update(Msg::Missed(missed)),
                Err(broadcast::error::RecvError::Closed) => {}
            },
            Some(taken) = snapshot_rx.recv() => match taken {
                Ok(taken) => app.update(Msg::Snapshot(taken)),
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            },
            _ = second.tick() => app.update(Msg::Second),
            Ok(()) = link.changed() => {
                let state = link.borrow_and_update().clone();
                app.update(Msg::Link(state));
            },
            result = &mut serving => {
                server_done = true;
                outcome = result.unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
                break;
            }
            () = &mut shutdown => break,
        }
        if app.should_quit() {
            break;
        }
    }
    drop(screen);
    refresher.abort();
    probe_link.close().await;
    if !server_done {
        let _ = stop.send(());
        outcome = serving
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::{Terminal, backend::TestBackend};

    const T0: i64 = 1_795_437_000_000;

    fn sample() -> ServerDashboard {
        let utc = FixedOffset::east_opt(0).unwrap();
        let mut app = ServerDashboard::new(
            "amqp://guest:***@127.0.0.1:5672/%2f",
            "/var/lib/ytnotify/youtube_server.db",
            "/var/log/youtube_server.log",
            utc,
        );
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
        app.update(Msg::Second);
        // Three uploads to two subscribers each.
        assert_eq!(app.request_rate(), (3, 3));
        assert_eq!(app.notification_rate(), (6, 6));
        app.update(Msg::Second);
        assert_eq!(app.request_rate(), (0, 3));
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

    #[test]
    fn snapshot_at_80_by_24() {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|frame| sample().render(frame)).unwrap();
        insta::assert_snapshot!(terminal.backend());
    }

    #[test]
    fn snapshot_of_a_fresh_server_at_120_by_30() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let app = ServerDashboard::new(
            "amqp://guest:***@127.0.0.1:5672/%2f",
            "/tmp/db",
            "/tmp/log",
            utc,
        );
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal.draw(|frame| app.render(frame)).unwrap();
        insta::assert_snapshot!(terminal.backend());
    }
}
