//! Drawing the dashboard: layout, panels, status line and pop-ups, read-only
//! over the state.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{List, ListItem, Paragraph},
};

use super::{FeedItem, Focus, Mode, ServerHealth, UserDashboard};
use crate::{
    dashboard::widgets::{self, BoldTitle},
    protocol::Reaction,
};

impl UserDashboard {
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
            widgets::title_bar(format!("{}'s notifications", self.user)),
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
        let mut block = widgets::panel(Line::from(title), focused);
        let selected = self.selected_position(&visible).unwrap_or(0);
        if let Some(item) = visible.get(selected) {
            // The id that `user like` and `user comment` take.
            block = block.title_bottom(Line::from(format!(" id {} ", item.id)).dim());
        }
        if visible.is_empty() {
            let text = if self.feed.is_empty() {
                "Nothing yet: uploads of the YouTubers you follow appear here as they happen."
            } else {
                "Nothing matches the filter (Esc clears it)."
            };
            widgets::placeholder(frame, area, block, text);
            return;
        }
        let width = area.width.saturating_sub(2) as usize;
        let height = widgets::inner_height(area);
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
        let said = match item.reaction {
            Some(Reaction::Like) => Some((" · liked", Color::Green)),
            Some(Reaction::Dislike) => Some((" · disliked", Color::Red)),
            None => None,
        };
        let commented = match item.comments {
            0 => String::new(),
            1 => " · commented".to_owned(),
            n => format!(" · commented ×{n}"),
        };
        let used = 2
            + 9
            + item.youtuber.chars().count()
            + " uploaded ".len()
            + away.len()
            + said.map_or(0, |(text, _)| text.chars().count())
            + commented.chars().count();
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
        if let Some((text, color)) = said {
            spans.push(Span::styled(text, Style::new().fg(color)));
        }
        if !commented.is_empty() {
            spans.push(Span::styled(commented, Style::new().fg(Color::Cyan)));
        }
        let mut line = Line::from(spans);
        if selected {
            line = line.style(Style::new().add_modifier(Modifier::REVERSED));
        }
        ListItem::new(line)
    }

    fn render_status(&self, frame: &mut Frame, area: Rect) {
        let mut spans = Vec::new();
        spans.push(widgets::link_status(&self.link));
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
                ("+-", "like"),
                ("c", "comment"),
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
            Mode::Comment {
                video,
                input,
                error,
                ..
            } => {
                const WIDTH: usize = 70;
                // The end of what is typed, as much as fits on the line.
                let count = input.chars().count();
                let shown: String = input
                    .chars()
                    .skip(count.saturating_sub(WIDTH - 6))
                    .collect();
                let mut lines = vec![
                    Line::from(format!("On \"{}\":", widgets::truncate(video, WIDTH - 10))),
                    Line::from(vec![Span::raw(shown).bold(), Span::raw("▏")]),
                ];
                match error {
                    Some(error) => lines.push(Line::from(error.clone()).red()),
                    None => lines.push(
                        Line::from(format!(
                            "{count} of {} characters, one line",
                            crate::names::MAX_COMMENT_CHARS
                        ))
                        .dim(),
                    ),
                }
                lines.push(Line::from("Enter send · Esc cancel").dim());
                widgets::popup(frame, "Comment", lines, WIDTH as u16);
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
                    ("+  -", "like / dislike it (again: take it back)"),
                    ("c", "comment on the selected video"),
                    ("/", "filter the feed; Esc clears"),
                    ("q  Ctrl-C", "quit"),
                ]);
                widgets::popup(frame, "Keys", lines, 62);
            }
            Mode::Normal | Mode::Filter => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::user::{
        Interaction, Msg, Outcome,
        fixtures::{draw, key, sample, typed, utc},
    };
    use crossterm::event::KeyCode;

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
    fn snapshot_of_a_liked_and_commented_video_and_the_comment_prompt() {
        let mut app = sample();
        let item = app.visible()[1].clone();
        for interaction in [
            Interaction::React(Some(Reaction::Like)),
            Interaction::Comment("Nice!".into()),
        ] {
            app.update(Msg::Interacted {
                video_id: item.id,
                video: item.video.clone(),
                interaction,
                outcome: Outcome::Applied { notice: None },
                elapsed: std::time::Duration::from_millis(4),
            });
        }
        app.update(key(KeyCode::Char('c')));
        typed(&mut app, "Great one");
        insta::assert_snapshot!(draw(&app, 80, 24).backend());
    }

    #[test]
    fn snapshot_of_the_help() {
        let mut app = sample();
        app.update(key(KeyCode::Char('?')));
        insta::assert_snapshot!(draw(&app, 80, 24).backend());
    }
}
