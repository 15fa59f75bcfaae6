//! Drawing the dashboard: title, users, YouTubers, events and rates, read-only
//! over the state.

use std::collections::VecDeque;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{List, ListItem, Paragraph, Sparkline},
};

use super::{ServerDashboard, state::Panel};
use crate::{
    dashboard::widgets::{self, BoldTitle},
    link::LinkState,
    server::Event,
};

impl ServerDashboard {
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
        let [requests, notifications, interactions] = Layout::horizontal([
            Constraint::Ratio(1, 3),
            Constraint::Ratio(1, 3),
            Constraint::Ratio(1, 3),
        ])
        .areas(rates);

        frame.render_widget(
            Line::from(vec![
                Span::styled(" ytnotify ", Style::new().bold().black().on_cyan()),
                Span::raw(" youtube_server ").bold(),
                if self.secure {
                    Span::styled("secure mode ", Style::new().fg(Color::Green))
                } else {
                    Span::styled("open mode ", Style::new().fg(Color::Yellow))
                },
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
        let (now, peak) = self.interaction_rate();
        render_rate(
            frame,
            interactions,
            "interactions/s",
            now,
            peak,
            &self.interactions,
            Color::LightGreen,
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
                Event::Reacted { .. } | Event::Commented { .. } => Color::LightGreen,
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

fn render_rate(
    frame: &mut Frame,
    area: Rect,
    name: &str,
    now: u64,
    peak: u64,
    history: &VecDeque<u64>,
    color: Color,
) {
    let title = Line::from(format!(" {name} ")).bold_title();
    let figures = Line::from(format!(" now {now} · peak {peak} "));
    let width = area.width.saturating_sub(2) as usize;
    let data: Vec<u64> = history.iter().rev().take(width).rev().copied().collect();
    frame.render_widget(
        Sparkline::default()
            .block(widgets::panel(title, false).title_bottom(figures))
            .data(data)
            .max(peak.max(1))
            .style(Style::new().fg(color)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::server::fixtures::sample;
    use chrono::FixedOffset;
    use ratatui::{Terminal, backend::TestBackend};

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
