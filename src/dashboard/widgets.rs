//! Small pieces both dashboards draw with.

use chrono::{DateTime, FixedOffset};

use crate::link::LinkState;
use ratatui::{
    Frame,
    layout::{Constraint, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, BorderType, Clear, Paragraph, Wrap},
};

/// `HH:MM:SS` of a time in milliseconds since the epoch, at a fixed offset
/// (the local one in the programs, UTC in tests).
pub(crate) fn clock(ms: i64, offset: FixedOffset) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|time| time.with_timezone(&offset).format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "--:--:--".to_owned())
}

/// The local time zone's offset now.
pub(crate) fn local_offset() -> FixedOffset {
    *chrono::Local::now().offset()
}

/// The top line: the name of the toolkit, then what the dashboard shows.
pub(crate) fn title_bar(what: String) -> Line<'static> {
    Line::from(vec![
        Span::styled(
            " ytnotify ",
            Style::new()
                .add_modifier(Modifier::BOLD)
                .fg(Color::Black)
                .bg(Color::Cyan),
        ),
        Span::styled(
            format!(" {what}"),
            Style::new().add_modifier(Modifier::BOLD),
        ),
    ])
}

/// The state of the link to the broker, as the status line says it.
pub(crate) fn link_status(link: &LinkState) -> Span<'static> {
    match link {
        LinkState::Connected => Span::styled("● broker connected", Style::new().fg(Color::Green)),
        LinkState::Reconnecting(_) => Span::styled(
            "◌ broker lost: reconnecting…",
            Style::new().fg(Color::Yellow),
        ),
        LinkState::Blocked(why) => Span::styled(
            format!("■ broker blocks publishing ({why})"),
            Style::new().fg(Color::Red),
        ),
    }
}

/// A bordered panel, its title highlighted when it has the focus.
pub(crate) fn panel(title: Line<'_>, focused: bool) -> Block<'_> {
    let border = if focused {
        Style::new().fg(Color::Cyan)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(border)
        .title(title)
}

/// A panel with nothing to list: a dim line of text saying why, wrapped.
pub(crate) fn placeholder(frame: &mut Frame, area: Rect, block: Block<'_>, text: &str) {
    frame.render_widget(
        Paragraph::new(Line::from(text).style(Style::new().add_modifier(Modifier::DIM)))
            .block(block)
            .wrap(Wrap { trim: true }),
        area,
    );
}

/// The key hints at the bottom: `key` in bold, then what it does.
pub(crate) fn hints(pairs: &[(&str, &str)]) -> Line<'static> {
    let mut spans = Vec::new();
    for (key, what) in pairs {
        spans.push(Span::styled(
            format!(" {key}"),
            Style::new().add_modifier(Modifier::BOLD).fg(Color::Cyan),
        ));
        spans.push(Span::raw(format!(" {what} ")));
    }
    Line::from(spans)
}

/// The lines of a "Keys" pop-up: each key in bold, then what it does.
pub(crate) fn key_lines(keys: &[(&str, &'static str)]) -> Vec<Line<'static>> {
    keys.iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{key:<10} "),
                    Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect()
}

/// Draws a centred pop-up with a title and lines, clearing what is under it.
pub(crate) fn popup(frame: &mut Frame, title: &str, lines: Vec<Line<'_>>, width: u16) {
    let height = lines.len() as u16 + 2;
    let area = frame
        .area()
        .centered(Constraint::Length(width), Constraint::Length(height));
    frame.render_widget(Clear, area);
    let block = panel(Line::from(format!(" {title} ")).bold_title(), true);
    frame.render_widget(
        Paragraph::new(lines)
            .block(block)
            .wrap(Wrap { trim: false }),
        area,
    );
}

/// Bold titles.
pub(crate) trait BoldTitle<'a> {
    fn bold_title(self) -> Line<'a>;
}

impl<'a> BoldTitle<'a> for Line<'a> {
    fn bold_title(self) -> Line<'a> {
        self.style(Style::new().add_modifier(Modifier::BOLD))
    }
}

/// Cuts `text` to at most `width` characters, marking the cut with `…`.
pub(crate) fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else if width == 0 {
        String::new()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

/// The rectangle's height inside a border.
pub(crate) fn inner_height(area: Rect) -> usize {
    area.height.saturating_sub(2) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_at_the_given_offset() {
        let utc = FixedOffset::east_opt(0).unwrap();
        assert_eq!(clock(1_700_000_000_000, utc), "22:13:20");
        let paris = FixedOffset::east_opt(3600).unwrap();
        assert_eq!(clock(1_700_000_000_000, paris), "23:13:20");
    }

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a long title", 6), "a lon…");
        assert_eq!(truncate("x", 0), "");
    }
}
