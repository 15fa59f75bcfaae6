//! Validation of user names, YouTuber names and video titles, and the
//! escaping of any text before it reaches a terminal.
//!
//! Names become part of RabbitMQ queue names and routing keys, so they are
//! restricted to a small ASCII alphabet. Clients check before sending and the
//! server checks again, since anything may write to its queues.
//!
//! Video titles may hold any visible character, but no control character
//! (which a terminal obeys: escape sequences move the cursor, clear the
//! screen, open links) and no invisible format character (which reorders or
//! hides text: a right-to-left override before `3pm.exe` shows it as
//! `exe.mp3`). [`escape_for_terminal`] is the same rule applied to text about
//! to be printed: whatever slipped past a check is shown, not obeyed.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

/// Longest user or YouTuber name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest video title, in characters.
pub const MAX_VIDEO_CHARS: usize = 100;
/// Longest comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 500;
/// Longest reference to a video: a whole id, `3f2a9c1e-…`, 36 characters.
pub const MAX_VIDEO_REF_CHARS: usize = 36;

/// What a checked string names, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    User,
    Youtuber,
    Video,
    VideoId,
    Comment,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::User => "user name",
            NameKind::Youtuber => "YouTuber name",
            NameKind::Video => "video name",
            NameKind::VideoId => "video id",
            NameKind::Comment => "comment",
        })
    }
}

/// A name or title that breaks the rules, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {}: {problem}", quoted(.value))]
pub struct InvalidName {
    pub kind: NameKind,
    pub value: String,
    pub problem: String,
}

/// Most characters of the offending value an error message quotes.
///
/// A refused request's error becomes the `reason` of the server's reply, and
/// clients refuse a reason longer than
/// [`MAX_REPLY_TEXT_CHARS`](crate::protocol::MAX_REPLY_TEXT_CHARS); a name can
/// be as long as a whole message. Even if every quoted character is escaped as
/// `\u{10ffff}`, 100 of them keep the message well under that.
const MAX_QUOTED_CHARS: usize = 100;

/// The value in quotes, escaped (Debug escapes control and format characters)
/// and cut after [`MAX_QUOTED_CHARS`] characters.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}…", &value[..end]),
        None => format!("{value:?}"),
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn check_name(kind: NameKind, value: &str) -> Result<(), InvalidName> {
    let fail = |problem: String| InvalidName {
        kind,
        value: value.to_owned(),
        problem,
    };
    let rule = format!("use 1-{MAX_NAME_CHARS} ASCII letters, digits, '_', '-' or '.'");
    if value.is_empty() {
        return Err(fail(format!("it is empty; {rule}")));
    }
    let count = value.chars().count();
    if count > MAX_NAME_CHARS {
        return Err(fail(format!("it has {count} characters; {rule}")));
    }
    if let Some((at, bad)) = value.char_indices().find(|&(_, c)| !is_name_char(c)) {
        let position = value[..at].chars().count() + 1;
        return Err(fail(format!(
            "{} at position {position} is not allowed; {rule}",
            describe(bad)
        )));
    }
    Ok(())
}

/// Names a character for an error message, so that a person can tell which
/// one it is even when it is invisible.
fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_control() => format!("control character {c:?}"),
        c if is_format(c) => format!("invisible formatting character U+{:04X}", u32::from(c)),
        c => format!("{c:?}"),
    }
}

/// Unicode general category Cf (format characters), as of Unicode 16.0, in
/// order. They are invisible by design and change how the text around them
/// is shown: the bidi embeddings, overrides, isolates and marks reorder it,
/// the zero-width characters and tags hide text in plain sight.
const FORMAT_CHARS: [(char, char); 21] = [
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

fn is_format(c: char) -> bool {
    FORMAT_CHARS
        .binary_search_by(|&(first, last)| {
            if last < c {
                Ordering::Less
            } else if first > c {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
        .is_ok()
}

/// Whether a terminal may obey `c` or use it to rearrange or hide text,
/// instead of showing it: a control character (Cc: C0, DEL, C1) or a
/// format character (Cf).
pub(crate) fn is_unprintable(c: char) -> bool {
    c.is_control() || is_format(c)
}

/// The first character of `text` that [`is_unprintable`], with its position
/// (counted in characters, from 1), described for an error message.
pub(crate) fn first_unprintable(text: &str) -> Option<String> {
    let (at, bad) = text.char_indices().find(|&(_, c)| is_unprintable(c))?;
    let position = text[..at].chars().count() + 1;
    Some(format!("{} at position {position}", describe(bad)))
}

/// Makes `text` safe to print: every control and format character becomes a
/// visible escape such as `\u{1b}`, newline and tab included, so the result
/// is always one line. Text without such characters comes back unchanged.
pub fn escape_for_terminal(text: &str) -> Cow<'_, str> {
    let Some(start) = text.find(is_unprintable) else {
        return Cow::Borrowed(text);
    };
    let mut escaped = String::with_capacity(text.len() + 16);
    escaped.push_str(&text[..start]);
    for c in text[start..].chars() {
        if is_unprintable(c) {
            escaped.extend(c.escape_unicode());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// Checks a user name: 1–64 ASCII letters, digits, `_`, `-`, `.`.
pub fn check_user(name: &str) -> Result<(), InvalidName> {
    check_name(NameKind::User, name)
}

/// Checks a YouTuber name: 1–64 ASCII letters, digits, `_`, `-`, `.`.
pub fn check_youtuber(name: &str) -> Result<(), InvalidName> {
    check_name(NameKind::Youtuber, name)
}

/// Checks a video title: 1–100 characters, not only whitespace, none of them
/// a control or invisible format character.
pub fn check_video(title: &str) -> Result<(), InvalidName> {
    let fail = |problem: String| InvalidName {
        kind: NameKind::Video,
        value: title.to_owned(),
        problem,
    };
    if title.trim().is_empty() {
        return Err(fail("it is empty; give the video a title".to_owned()));
    }
    let count = title.chars().count();
    if count > MAX_VIDEO_CHARS {
        return Err(fail(format!(
            "it has {count} characters; use at most {MAX_VIDEO_CHARS}"
        )));
    }
    // Format characters include U+200D ZERO WIDTH JOINER, which glues emoji
    // into one (👩‍💻) and is harmless alone. It is refused all the same, so
    // that one rule, "no Cc, no Cf", holds for titles and for what
    // `escape_for_terminal` lets through: a valid title always prints as
    // typed. A title can still carry the emoji as its parts (👩💻).
    if let Some(bad) = first_unprintable(title) {
        return Err(fail(format!(
            "{bad} is not allowed; use printable characters only"
        )));
    }
    Ok(())
}

/// Checks a reference to a video: its id (`user videos` lists them) or the
/// start of it, 1–36 hexadecimal digits (either case) and `-`.
pub fn check_video_ref(reference: &str) -> Result<(), InvalidName> {
    let fail = |problem: String| InvalidName {
        kind: NameKind::VideoId,
        value: reference.to_owned(),
        problem,
    };
    let rule = "give the id `user videos <youtuber>` shows, or its first characters";
    if reference.is_empty() {
        return Err(fail(format!("it is empty; {rule}")));
    }
    let count = reference.chars().count();
    if count > MAX_VIDEO_REF_CHARS {
        return Err(fail(format!(
            "it has {count} characters, and an id {MAX_VIDEO_REF_CHARS}; {rule}"
        )));
    }
    if let Some((at, bad)) = reference
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_hexdigit() && *c != '-')
    {
        return Err(fail(format!(
            "{} at position {} is not in an id (digits, a-f and '-'); {rule}",
            describe(bad),
            at + 1
        )));
    }
    Ok(())
}

/// Checks a comment: 1–500 characters, not only whitespace, none of them a
/// control or invisible format character (so, one line).
pub fn check_comment(text: &str) -> Result<(), InvalidName> {
    let fail = |problem: String| InvalidName {
        kind: NameKind::Comment,
        value: text.to_owned(),
        problem,
    };
    if text.trim().is_empty() {
        return Err(fail("it is empty; write something".to_owned()));
    }
    let count = text.chars().count();
    if count > MAX_COMMENT_CHARS {
        return Err(fail(format!(
            "it has {count} characters; use at most {MAX_COMMENT_CHARS}"
        )));
    }
    if let Some(bad) = first_unprintable(text) {
        return Err(fail(format!(
            "{bad} is not allowed; write one line of printable characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_video_is_named_by_its_id_or_the_start_of_it_in_either_case() {
        for good in [
            "3",
            "3f2a9c1e",
            "3F2A-9C",
            "3f2a9c1e-0000-4000-8000-000000000000",
        ] {
            assert!(check_video_ref(good).is_ok(), "{good}");
        }
        let err = check_video_ref("Video").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid video id \"Video\": 'V' at position 1 is not in an id (digits, a-f and '-'); \
             give the id `user videos <youtuber>` shows, or its first characters"
        );
        assert!(check_video_ref("").is_err());
        assert!(check_video_ref(&"a".repeat(37)).is_err());
    }

    #[test]
    fn a_comment_is_one_line_of_500_characters_at_most() {
        assert!(check_comment("Nice video, really 👍").is_ok());
        assert!(check_comment(&"é".repeat(MAX_COMMENT_CHARS)).is_ok());
        let err = check_comment(&"x".repeat(MAX_COMMENT_CHARS + 1)).unwrap_err();
        assert_eq!(err.problem, "it has 501 characters; use at most 500");
        assert!(check_comment("  ").is_err());
        let err = check_comment("two\nlines").unwrap_err();
        assert!(err.problem.contains("write one line"), "{err}");
    }

    #[test]
    fn accepts_the_allowed_alphabet() {
        assert!(check_user("alice").is_ok());
        assert!(check_youtuber("Bob_the-Builder.42").is_ok());
        assert!(check_user(&"a".repeat(MAX_NAME_CHARS)).is_ok());
    }

    #[test]
    fn refuses_empty_long_and_odd_names() {
        let err = check_user("").unwrap_err();
        assert_eq!(err.kind, NameKind::User);
        assert!(err.to_string().contains("it is empty"), "{err}");

        let err = check_youtuber(&"b".repeat(MAX_NAME_CHARS + 1)).unwrap_err();
        assert!(err.to_string().contains("65 characters"), "{err}");

        let err = check_user("al ice").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid user name \"al ice\": a space at position 3 is not allowed; \
             use 1-64 ASCII letters, digits, '_', '-' or '.'"
        );
        assert!(check_user("élodie").is_err());
        assert!(check_user("a/b").is_err());
        assert!(check_youtuber("tab\there").is_err());
    }

    #[test]
    fn video_titles_allow_spaces_and_unicode_but_not_control_characters() {
        assert!(check_video("My first video: café ☕").is_ok());
        assert!(check_video(&"é".repeat(MAX_VIDEO_CHARS)).is_ok());
        assert!(check_video(&"x".repeat(MAX_VIDEO_CHARS + 1)).is_err());
        assert!(check_video("   ").is_err());
        let err = check_video("line\nbreak").unwrap_err();
        assert_eq!(
            err.problem,
            "control character '\\n' at position 5 is not allowed; use printable characters only"
        );
    }

    #[test]
    fn video_titles_refuse_invisible_characters_that_reorder_or_hide_text() {
        let err = check_video("\u{202e}3pm.exe").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid video name \"\\u{202e}3pm.exe\": invisible formatting character U+202E \
             at position 1 is not allowed; use printable characters only"
        );
        for (title, code, position) in [
            ("a\u{2066}b", "U+2066", 2),
            ("ab\u{200e}", "U+200E", 3),
            ("\u{61c}x", "U+061C", 1),
            ("zero\u{200b}width", "U+200B", 5),
            ("👩\u{200d}💻", "U+200D", 2),
            ("\u{feff}bom", "U+FEFF", 1),
            ("tag\u{e0041}", "U+E0041", 4),
        ] {
            let problem = check_video(title).unwrap_err().problem;
            assert!(
                problem.starts_with(&format!(
                    "invisible formatting character {code} at position {position} "
                )),
                "{title:?}: {problem}"
            );
        }
        assert!(check_video("👩💻 RTL: שלום, عربي").is_ok());
    }

    #[test]
    fn the_format_table_is_sorted_and_disjoint() {
        // `is_format` searches it by halves.
        for pair in FORMAT_CHARS.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
        for (first, last) in FORMAT_CHARS {
            assert!(is_format(first) && is_format(last));
            assert!(!is_format(char::from_u32(u32::from(first) - 1).unwrap()));
            assert!(!is_format(char::from_u32(u32::from(last) + 1).unwrap()));
        }
    }

    #[test]
    fn escaping_leaves_printable_text_alone() {
        for text in ["", "Hello", "café ☕ 🦀", "שלום", "a\u{2028}b", "\\u{1b}"] {
            assert!(
                matches!(escape_for_terminal(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn escaping_shows_every_control_and_format_character() {
        let cases = [
            ("\u{1b}[2J", r"\u{1b}[2J"),
            ("a\nb\tc\r", r"a\u{a}b\u{9}c\u{d}"),
            ("\u{7f}\u{9b}31m", r"\u{7f}\u{9b}31m"),
            ("\u{202e}3pm.exe", r"\u{202e}3pm.exe"),
            ("é\u{2066}x\u{2069}\u{feff}", r"é\u{2066}x\u{2069}\u{feff}"),
            ("\u{e0041}\u{0}", r"\u{e0041}\u{0}"),
        ];
        for (text, expected) in cases {
            assert_eq!(escape_for_terminal(text), expected, "{text:?}");
        }
    }

    #[test]
    fn error_messages_quote_at_most_a_hundred_characters() {
        let err = check_youtuber(&"b".repeat(5000)).unwrap_err();
        assert_eq!(err.value.len(), 5000);
        assert_eq!(
            err.to_string(),
            format!(
                "invalid YouTuber name \"{}\"…: it has 5000 characters; \
                 use 1-64 ASCII letters, digits, '_', '-' or '.'",
                "b".repeat(100)
            )
        );
        let err = check_video(&"\u{202e}".repeat(5000)).unwrap_err();
        assert!(err.to_string().chars().count() < 1200, "{err}");
    }
}
