//! Validation of user names, YouTuber names and video titles.
//!
//! Names become part of RabbitMQ queue names and routing keys, so they are
//! restricted to a small ASCII alphabet. Clients check before sending and the
//! server checks again, since anything may write to its queues.

use std::fmt;

/// Longest user or YouTuber name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest video title, in characters.
pub const MAX_VIDEO_CHARS: usize = 100;

/// What a checked string names, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    User,
    Youtuber,
    Video,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::User => "user name",
            NameKind::Youtuber => "YouTuber name",
            NameKind::Video => "video name",
        })
    }
}

/// A name or title that breaks the rules, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {problem}")]
pub struct InvalidName {
    pub kind: NameKind,
    pub value: String,
    pub problem: String,
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

fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_control() => format!("control character {:?}", c),
        c => format!("{c:?}"),
    }
}

/// Checks a user name: 1–64 ASCII letters, digits, `_`, `-`, `.`.
pub fn check_user(name: &str) -> Result<(), InvalidName> {
    check_name(NameKind::User, name)
}

/// Checks a YouTuber name: 1–64 ASCII letters, digits, `_`, `-`, `.`.
pub fn check_youtuber(name: &str) -> Result<(), InvalidName> {
    check_name(NameKind::Youtuber, name)
}

/// Checks a video title: 1–100 characters, none of them a control character.
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
    if let Some(bad) = title.chars().find(|c| c.is_control()) {
        return Err(fail(format!(
            "{} is not allowed; use printable characters only",
            describe(bad)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.to_string().contains("control character"), "{err}");
    }
}
