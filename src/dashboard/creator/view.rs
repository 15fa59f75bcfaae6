//! Drawing the creator dashboard: the videos with their counts, the
//! activity feed and the status line, read-only over the state.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{List, ListItem, Paragraph},
};

use super::CreatorDashboard;
use crate::{
    client::{creator::FeedLine, user::SHORT_ID},
    dashboard::widgets::{self, BoldTitle},
    protocol::{CreatorEvent, Reaction},
};

impl CreatorDashboard {
    /// Draws the whole screen. Reads the state only.
    pub fn render(&self, frame: &mut Frame) {
        let videos = self.channel.as_ref().map_or(0, |c| c.videos.len()) as u16;
        // The header, each video and the borders, in at most 40 % of the
        // screen: the activity keeps the rest.
        let table_height = (videos + 3).min(frame.area().height * 2 / 5).max(4);
        let [title, table, feed, status, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(table_height),
            Constraint::Fill(1),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(
            widgets::title_bar(format!("{}'s channel", self.youtuber)),
            title,
        );
        self.render_videos(frame, table);
        self.render_activity(frame, feed);
        self.render_status(frame, status);
        frame.render_widget(
            widgets::hints(&[
                ("↑↓", "scroll"),
                ("r", "refresh"),
                ("?", "keys"),
                ("q", "quit"),
            ]),
            keys,
        );
        if self.help {
            let lines = widgets::key_lines(&[
                ("↑ ↓  j k", "scroll the activity"),
                ("g  G", "newest / oldest"),
                ("r", "ask the server for the counts again"),
                ("q  Ctrl-C", "quit"),
            ]);
            widgets::popup(frame, "Keys", lines, 56);
        }
    }

    fn render_videos(&self, frame: &mut Frame, area: Rect) {
        let Some(channel) = &self.channel else {
            let block = widgets::panel(Line::from(" Videos ").bold_title(), false);
            frame.render_widget(
                Paragraph::new(Line::from("Asking the server…").dim()).block(block),
                area,
            );
            return;
        };
        let title = Line::from(format!(
            " Videos · {} · {} subscriber{} ",
            channel.total,
            channel.subscribers,
            if channel.subscribers == 1 { "" } else { "s" }
        ))
        .bold_title();
        let block = widgets::panel(title, false);
        let width = area.width.saturating_sub(2) as usize;
        // id, two spaces, the title, then three counts of 8 characters.
        let title_width = width.saturating_sub(SHORT_ID + 2 + 3 * 10);
        let mut items = vec![ListItem::new(
            Line::from(format!(
                "{:<SHORT_ID$}  {:<title_width$}  {:>8}  {:>8}  {:>8}",
                "ID", "TITLE", "LIKES", "DISLIKES", "COMMENTS"
            ))
            .dim(),
        )];
        items.extend(channel.videos.iter().map(|video| {
            ListItem::new(Line::from(vec![
                Span::raw(format!("{}  ", &video.id.to_string()[..SHORT_ID])).dim(),
                Span::raw(format!(
                    "{:<title_width$}",
                    widgets::truncate(&video.title, title_width)
                )),
                Span::styled(
                    format!("  {:>8}", video.likes),
                    Style::new().fg(Color::Green),
                ),
                Span::styled(
                    format!("  {:>8}", video.dislikes),
                    Style::new().fg(Color::Red),
                ),
                Span::styled(
                    format!("  {:>8}", video.comments),
                    Style::new().fg(Color::Cyan),
                ),
            ]))
        }));
        if channel.videos.is_empty() {
            items.push(ListItem::new(
                Line::from("No video yet: upload one with youtuber <name> <video>").dim(),
            ));
        }
        frame.render_widget(List::new(items).block(block), area);
    }

    fn render_activity(&self, frame: &mut Frame, area: Rect) {
        let title = Line::from(format!(
            " Activity · {} since you opened this ",
            self.events
        ))
        .bold_title();
        let block = widgets::panel(title, true);
        if self.activity.is_empty() {
            let text = "Nothing yet: likes, comments and subscribers appear here as they happen.";
            widgets::placeholder(frame, area, block, text);
            return;
        }
        let width = area.width.saturating_sub(2) as usize;
        let items: Vec<ListItem> = self
            .activity
            .iter()
            .rev()
            .skip(self.scroll)
            .take(widgets::inner_height(area))
            .map(|activity| {
                let (color, bold) = match &activity.line {
                    FeedLine::Gathered {
                        reaction: Reaction::Like,
                        ..
                    } => (Color::Green, true),
                    FeedLine::Gathered {
                        reaction: Reaction::Dislike,
                        ..
                    } => (Color::Red, true),
                    FeedLine::Event(event) => match event {
                        CreatorEvent::Reacted {
                            reaction: Reaction::Like,
                            ..
                        } => (Color::Green, false),
                        CreatorEvent::Reacted {
                            reaction: Reaction::Dislike,
                            ..
                        } => (Color::Red, false),
                        CreatorEvent::Commented { .. } => (Color::Cyan, false),
                        CreatorEvent::Subscribed { .. } => (Color::Blue, false),
                        CreatorEvent::Unsubscribed { .. } => (Color::Yellow, false),
                    },
                };
                let mut style = Style::new().fg(color);
                if bold {
                    style = style.add_modifier(Modifier::BOLD);
                }
                let text = widgets::truncate(&activity.line.to_string(), width.saturating_sub(9));
                ListItem::new(Line::from(vec![
                    Span::styled(
                        format!("{} ", widgets::clock(activity.at_ms, self.offset)),
                        Style::new().fg(Color::DarkGray),
                    ),
                    Span::styled(text, style),
                ]))
            })
            .collect();
        frame.render_widget(List::new(items).block(block), area);
    }

    fn render_status(&self, frame: &mut Frame, area: Rect) {
        let mut spans = vec![widgets::link_status(&self.link)];
        if self.scroll > 0 {
            spans.push(Span::raw(format!(
                " · {} newer lines above (g: newest)",
                self.scroll
            )));
        }
        if let Some(problem) = &self.problem {
            spans.push(Span::raw(" · "));
            spans.push(Span::styled(problem.clone(), Style::new().fg(Color::Red)));
        }
        frame.render_widget(Paragraph::new(Line::from(spans)), area);
    }
}

#[cfg(test)]
mod tests {
    use crossterm::event::KeyCode;

    use super::super::state::fixtures::{draw, key, sample};

    #[test]
    fn snapshot_at_80_by_24() {
        insta::assert_snapshot!(draw(&sample(), 80, 24).backend());
    }

    #[test]
    fn snapshot_of_the_help_at_100_by_20() {
        let mut app = sample();
        app.update(key(KeyCode::Char('?')));
        insta::assert_snapshot!(draw(&app, 100, 20).backend());
    }
}
