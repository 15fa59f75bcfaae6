//! Property tests of the wire format (`ytnotify::protocol`) and of the name
//! rules (`ytnotify::names`), including what may reach a terminal. Pure: no
//! broker, no database.
//!
//! Each property runs `PROPTEST_CASES` cases (256 by default); for a deeper
//! run:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test --release --test properties
//! ```
//!
//! The coverage-guided counterpart is the fuzz target in `fuzz/`
//! (`scripts/fuzz.sh`); a crash it finds becomes a test at the end of this
//! file.

use std::borrow::Cow;
use std::fmt::Display;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value};
use uuid::Uuid;
use ytnotify::names::{
    self, InvalidName, MAX_COMMENT_CHARS, MAX_NAME_CHARS, MAX_VIDEO_CHARS, NameKind,
    escape_for_terminal,
};
use ytnotify::protocol::{
    self, Celebrity, DecodeError, MAX_MESSAGE_BYTES, MAX_REPLY_TEXT_CHARS, Notification, Reaction,
    Reply, Request, RequestEnvelope, VideoStats, decode_notification, decode_reply, decode_request,
    encode,
};

/// Every type tag of the protocol, requests, replies and notifications alike.
const KNOWN_TYPES: [&str; 15] = [
    "login",
    "subscription",
    "subscriptions",
    "upload",
    "reaction",
    "comment",
    "videos",
    "stats",
    "done",
    "refused",
    "video_uploaded",
    "creator_events",
    "reacted",
    "commented",
    "subscribed",
];

/// Every field name the protocol uses, in any message.
const KNOWN_FIELDS: [&str; 20] = [
    "v",
    "type",
    "id",
    "user",
    "youtuber",
    "subscribe",
    "video",
    "notice",
    "youtubers",
    "reason",
    "uploaded_at_ms",
    "reaction",
    "text",
    "videos",
    "subscribers",
    "total",
    "events",
    "video_id",
    "at_ms",
    "likes",
];

fn config() -> ProptestConfig {
    // `default()` reads PROPTEST_CASES (256 when unset). Failures are not
    // written to a regressions file: a failure worth keeping becomes an
    // explicit test at the end of this file.
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Checks shared by the properties
// ---------------------------------------------------------------------------

fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() > 300 {
        let end = (0..=300)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        format!("{:?}… ({} bytes)", &text[..end], bytes.len())
    } else {
        format!("{text:?}")
    }
}

/// An error's text must be a reason a person can read on one line: it is the
/// `x-ytnotify-reason` header of a dead-lettered message and one line of log.
fn check_reason(decoder: &str, input: &[u8], error: &impl Display) -> Result<(), TestCaseError> {
    let reason = error.to_string();
    prop_assert!(
        !reason.trim().is_empty(),
        "{decoder} gave an empty reason for {}",
        shown(input)
    );
    prop_assert!(
        !reason.contains(['\n', '\r']),
        "{decoder} gave a reason on more than one line for {}: {reason:?}",
        shown(input)
    );
    Ok(())
}

/// Feeds `bytes` to every decoder; whatever decodes must validate without
/// panicking and survive `encode` and a second decode unchanged, and whatever
/// fails must say why on one line.
fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode_request(bytes) {
        Ok(envelope) => {
            if let Err(invalid) = envelope.request.validate() {
                check_reason("Request::validate", bytes, &invalid)?;
            }
            let again = decode_request(&encode(&envelope));
            prop_assert_eq!(again, Ok(envelope), "re-decoding {}", shown(bytes));
        }
        Err(error) => check_reason("decode_request", bytes, &error)?,
    }
    match decode_reply(bytes) {
        Ok(reply) => {
            let again = decode_reply(&encode(&reply));
            prop_assert_eq!(again, Ok(reply), "re-decoding {}", shown(bytes));
        }
        Err(error) => check_reason("decode_reply", bytes, &error)?,
    }
    match decode_notification(bytes) {
        Ok(notification) => {
            if let Err(invalid) = notification.validate() {
                check_reason("Notification::validate", bytes, &invalid)?;
            }
            check_printable(&notification.to_string())?;
            let again = decode_notification(&encode(&notification));
            prop_assert_eq!(again, Ok(notification), "re-decoding {}", shown(bytes));
        }
        Err(error) => check_reason("decode_notification", bytes, &error)?,
    }
    Ok(())
}

/// A line about to be printed must hold nothing a terminal would obey or
/// use to rearrange the line.
fn check_printable(line: &str) -> Result<(), TestCaseError> {
    let bad = line.chars().find(|&c| reference_unprintable(c));
    prop_assert!(bad.is_none(), "{:?} in {:?}", bad, line);
    Ok(())
}

/// The characters a terminal must never receive raw, written independently
/// of `src/names.rs`: Unicode categories Cc (C0, DEL, C1) and Cf (format
/// characters, as of Unicode 16.0).
fn reference_unprintable(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    )
}

/// What `escape_for_terminal` must write: each unprintable character as
/// Rust's `\u{...}` escape, everything else as it is.
fn reference_escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if reference_unprintable(c) {
                format!("\\u{{{:x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Strategies: valid names and messages
// ---------------------------------------------------------------------------

/// A valid user or YouTuber name: 1–64 of `[A-Za-z0-9_.-]`.
fn valid_name() -> impl Strategy<Value = String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.";
    let name = |lengths: std::ops::RangeInclusive<usize>| {
        prop::collection::vec(prop::sample::select(ALPHABET), lengths)
            .prop_map(|bytes| bytes.into_iter().map(char::from).collect::<String>())
    };
    prop_oneof![
        3 => name(1..=MAX_NAME_CHARS),
        1 => "[a-z]{1,8}",
        1 => name(MAX_NAME_CHARS - 2..=MAX_NAME_CHARS),
    ]
}

/// A character that is neither a control nor a format character, biased
/// towards the unusual.
fn title_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => any::<char>().prop_map(|c| {
            // A control character becomes its visible picture (U+2400 "␀"
            // onwards) or a Latin letter, a format character a Latin letter:
            // no rejections, no bias.
            match c {
                '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + u32::from(c)).unwrap_or('?'),
                '\u{7f}' => '\u{2421}',
                '\u{80}'..='\u{9f}' => char::from_u32(u32::from(c) + 0x80).unwrap_or('?'),
                c if reference_unprintable(c) => char::from(b'a' + (u32::from(c) % 26) as u8),
                c => c,
            }
        }),
        1 => prop::char::range(' ', '~'),
        1 => prop::sample::select(vec![
            'é', '☕', '🦀', '\u{a0}', '\u{2028}', '\u{2029}', '\u{301}', '\u{fe0f}', '\u{1f1eb}',
            '\u{fffd}', '"', '\\', '/', '{', '}', '\u{10ffff}',
        ]),
    ]
}

/// A valid video title: 1–100 characters, none a control or format
/// character, not all whitespace.
fn valid_video() -> impl Strategy<Value = String> {
    prop::collection::vec(title_char(), 1..=MAX_VIDEO_CHARS).prop_map(|mut chars| {
        if chars.iter().all(|c| c.is_whitespace()) {
            chars[0] = 'x';
        }
        chars.into_iter().collect::<String>()
    })
}

fn any_uuid() -> impl Strategy<Value = Uuid> {
    prop_oneof![
        Just(Uuid::nil()),
        Just(Uuid::max()),
        any::<u128>().prop_map(Uuid::from_u128),
    ]
}

/// A request whose names all pass validation.
fn valid_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (valid_name(), any::<bool>()).prop_map(|(user, history)| Request::Login { user, history }),
        (valid_name(), valid_name(), any::<bool>()).prop_map(|(user, youtuber, subscribe)| {
            Request::ChangeSubscription {
                user,
                youtuber,
                subscribe,
            }
        }),
        valid_name().prop_map(|user| Request::ListSubscriptions { user }),
        (valid_name(), valid_video())
            .prop_map(|(youtuber, video)| Request::Upload { youtuber, video }),
        (valid_name(), valid_video_ref(), any_reaction()).prop_map(|(user, video, reaction)| {
            Request::React {
                user,
                video,
                reaction,
            }
        }),
        (valid_name(), valid_video_ref(), valid_comment())
            .prop_map(|(user, video, text)| Request::Comment { user, video, text }),
        valid_name().prop_map(|youtuber| Request::ListVideos { youtuber }),
        valid_name().prop_map(|youtuber| Request::Stats { youtuber }),
    ]
}

fn any_reaction() -> impl Strategy<Value = Option<Reaction>> {
    prop::option::of(prop::sample::select(vec![
        Reaction::Like,
        Reaction::Dislike,
    ]))
}

/// A video's id, or the start of one.
fn valid_video_ref() -> impl Strategy<Value = String> {
    (any::<u128>(), 1..=36_usize)
        .prop_map(|(id, len)| Uuid::from_u128(id).to_string()[..len].to_owned())
}

/// A comment as a user may write it.
fn valid_comment() -> impl Strategy<Value = String> {
    prop::collection::vec(title_char(), 1..=MAX_COMMENT_CHARS).prop_map(|mut chars| {
        if chars.iter().all(|c| c.is_whitespace()) {
            chars[0] = 'x';
        }
        chars.into_iter().collect::<String>()
    })
}

/// Any string at all: the protocol carries names without judging them.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any_string(),
        1 => valid_video(),
        1 => hostile_text(),
        1 => Just(String::new()),
    ]
}

/// Something a terminal would obey or that rearranges a line: an escape
/// sequence, another control character, a bidi control or an invisible
/// character.
fn unprintable_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "\u{1b}[2J",                            // clear the screen
            "\u{1b}[1A\u{1b}[2K",                   // up a line and erase it
            "\u{1b}]8;;http://evil\u{7}",           // start a hyperlink
            "\u{1b}]8;;\u{1b}\\",                   // end it, with ST
            "\u{1b}]0;title\u{7}",                  // set the window title
            "\u{9b}31m",                             // C1 CSI: red
            "\u{1b}",
            "\r",
            "\n",
            "\t",
            "\u{0}",
            "\u{7f}",
        ])
        .prop_map(str::to_owned),
        2 => bidi_control().prop_map(String::from),
        1 => prop::sample::select(vec!['\u{200b}', '\u{200d}', '\u{2060}', '\u{feff}', '\u{ad}', '\u{e0041}'])
            .prop_map(String::from),
        1 => format_char().prop_map(String::from),
        1 => prop::char::range('\u{0}', '\u{9f}')
            .prop_filter("a control character", |c| c.is_control())
            .prop_map(String::from),
    ]
}

/// One of the Unicode bidi controls: embeddings, overrides, isolates, marks.
fn bidi_control() -> impl Strategy<Value = char> {
    prop::sample::select(vec![
        '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}',
    ])
}

/// Any character of Unicode category Cf, from the tables of `regex-syntax`
/// (which proptest uses for its regex strategies): a source independent of
/// both `src/names.rs` and `reference_unprintable`.
fn format_char() -> impl Strategy<Value = char> {
    proptest::string::string_regex(r"\p{Cf}")
        .expect("a valid regex")
        .prop_map(|s| s.chars().next().unwrap_or('\u{ad}'))
}

/// Printable text with unprintable pieces mixed in, as a hostile client
/// would write it.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        2 => prop::collection::vec(title_char(), 0..6).prop_map(String::from_iter),
        1 => unprintable_piece(),
    ];
    prop::collection::vec(piece, 1..8).prop_map(|pieces| pieces.concat())
}

/// Text a reply may carry: printable, at most 2,000 characters.
fn reply_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(title_char(), 0..60).prop_map(String::from_iter),
        1 => (title_char(), MAX_REPLY_TEXT_CHARS - 2..=MAX_REPLY_TEXT_CHARS)
            .prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

/// Any string, controls and unusual code points included (cheaper to
/// generate than `any::<String>()`, which goes through a regex).
fn any_string() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter)
}

/// A request with any strings in it, valid or not.
fn any_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        any_text().prop_map(Request::login),
        (any_text(), any_text(), any::<bool>()).prop_map(|(user, youtuber, subscribe)| {
            Request::ChangeSubscription {
                user,
                youtuber,
                subscribe,
            }
        }),
        any_text().prop_map(|user| Request::ListSubscriptions { user }),
        (any_text(), any_text()).prop_map(|(youtuber, video)| Request::Upload { youtuber, video }),
        (any_text(), any_text(), any_reaction()).prop_map(|(user, video, reaction)| {
            Request::React {
                user,
                video,
                reaction,
            }
        }),
        (any_text(), any_text(), any_text()).prop_map(|(user, video, text)| Request::Comment {
            user,
            video,
            text
        }),
        any_text().prop_map(|youtuber| Request::ListVideos { youtuber }),
        any_text().prop_map(|youtuber| Request::Stats { youtuber }),
        any_text().prop_map(|user| Request::Celebrities { user }),
        (any_text(), any_text(), any::<u64>()).prop_map(|(user, youtuber, seq)| Request::Seen {
            user,
            youtuber,
            seq
        }),
    ]
}

fn envelope(request: impl Strategy<Value = Request>) -> impl Strategy<Value = RequestEnvelope> {
    (any_uuid(), request).prop_map(|(id, request)| RequestEnvelope { id, request })
}

/// A reply as the server writes it: printable texts, valid names.
fn valid_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        prop::option::of(reply_text()).prop_map(|notice| Reply::Done { notice }),
        prop::collection::vec(valid_name(), 0..20)
            .prop_map(|youtubers| Reply::Subscriptions { youtubers }),
        reply_text().prop_map(|reason| Reply::Refused { reason }),
        (valid_name(), prop::collection::vec(valid_video(), 0..5))
            .prop_map(|(youtuber, titles)| videos_reply(youtuber, titles)),
        (valid_name(), prop::collection::vec(valid_video(), 0..5))
            .prop_map(|(youtuber, titles)| celebrities_reply(youtuber, titles)),
    ]
}

/// A celebrity followed, with these uploads missed.
fn celebrities_reply(youtuber: String, titles: Vec<String>) -> Reply {
    let missed = titles
        .into_iter()
        .enumerate()
        .map(|(n, video)| Notification::VideoUploaded {
            id: Uuid::from_u128(n as u128),
            youtuber: youtuber.clone(),
            video,
            uploaded_at_ms: n as i64,
            seq: Some(n as u64 + 1),
            stream_after: false,
        })
        .collect::<Vec<_>>();
    Reply::Celebrities {
        read_from_ms: 0,
        celebrities: vec![Celebrity {
            latest: missed.len() as u64,
            youtuber,
            missed,
        }],
    }
}

/// A listing of a YouTuber's videos with these titles.
fn videos_reply(youtuber: String, titles: Vec<String>) -> Reply {
    let videos: Vec<VideoStats> = titles
        .into_iter()
        .enumerate()
        .map(|(n, title)| VideoStats {
            id: Uuid::from_u128(n as u128),
            title,
            uploaded_at_ms: n as i64,
            likes: n as u64,
            dislikes: 0,
            comments: 1,
        })
        .collect();
    Reply::Videos {
        youtuber,
        subscribers: 3,
        total: videos.len() as u64,
        videos,
    }
}

/// A reply with any strings in it, safe to print or not.
fn any_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        2 => valid_reply(),
        1 => prop::option::of(any_text()).prop_map(|notice| Reply::Done { notice }),
        1 => prop::collection::vec(any_text(), 0..4)
            .prop_map(|youtubers| Reply::Subscriptions { youtubers }),
        1 => any_text().prop_map(|reason| Reply::Refused { reason }),
        1 => (title_char(), MAX_REPLY_TEXT_CHARS + 1..=MAX_REPLY_TEXT_CHARS + 2)
            .prop_map(|(c, n)| Reply::Refused { reason: c.to_string().repeat(n) }),
        1 => (any_text(), prop::collection::vec(any_text(), 0..4))
            .prop_map(|(youtuber, titles)| videos_reply(youtuber, titles)),
    ]
}

/// The documented rule for replies: texts of at most 2,000 characters with
/// nothing unprintable, valid YouTuber names.
fn reference_reply_ok(reply: &Reply) -> bool {
    let text_ok =
        |text: &str| text.chars().count() <= 2_000 && !text.chars().any(reference_unprintable);
    match reply {
        Reply::Done { notice } => notice.as_deref().is_none_or(text_ok),
        Reply::Subscriptions { youtubers } => youtubers.iter().all(|n| reference_name_ok(n)),
        Reply::Refused { reason } => text_ok(reason),
        Reply::Videos {
            youtuber, videos, ..
        } => {
            reference_name_ok(youtuber)
                && videos.iter().all(|video| reference_video_ok(&video.title))
        }
        Reply::Celebrities { celebrities, .. } => celebrities.iter().all(|celebrity| {
            reference_name_ok(&celebrity.youtuber)
                && celebrity.missed.iter().all(|missed| {
                    let Notification::VideoUploaded {
                        youtuber,
                        video,
                        seq,
                        ..
                    } = missed;
                    *youtuber == celebrity.youtuber && reference_video_ok(video) && seq.is_some()
                })
        }),
    }
}

/// A notification as the server writes it: a valid name and title.
fn valid_notification() -> impl Strategy<Value = Notification> {
    (any_uuid(), valid_name(), valid_video(), any::<i64>()).prop_map(
        |(id, youtuber, video, uploaded_at_ms)| Notification::VideoUploaded {
            id,
            youtuber,
            video,
            uploaded_at_ms,
            seq: None,
            stream_after: false,
        },
    )
}

fn any_notification() -> impl Strategy<Value = Notification> {
    (
        any_uuid(),
        prop_oneof![3 => valid_name(), 1 => any_text()],
        prop_oneof![3 => valid_video(), 1 => any_text()],
        prop_oneof![
            3 => 0..4_102_444_800_000_i64,
            1 => any::<i64>(),
            1 => prop::sample::select(vec![i64::MIN, -1, 0, i64::MAX]),
        ],
    )
        .prop_map(
            |(id, youtuber, video, uploaded_at_ms)| Notification::VideoUploaded {
                id,
                youtuber,
                video,
                uploaded_at_ms,
                seq: None,
                stream_after: false,
            },
        )
}

/// Any JSON value, nested a little.
fn any_json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        any_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((any_string(), inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A field name the protocol does not use.
fn unknown_field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,12}",
        any_string(),
        Just("V".to_owned()),
        Just("Type".to_owned()),
        Just("ID".to_owned()),
        Just("type ".to_owned()),
    ]
    .prop_filter("not a field of the protocol", |key| {
        !KNOWN_FIELDS.contains(&key.as_str())
    })
}

fn unknown_fields() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec((unknown_field_name(), any_json_value()), 1..5)
}

/// `encode(message)` with `extra` fields added to its JSON object.
fn encode_with_extra_fields<T: serde::Serialize>(
    message: &T,
    extra: &[(String, Value)],
) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(&encode(message)).expect("encode writes JSON");
    let object = value.as_object_mut().expect("encode writes an object");
    for (key, field) in extra {
        object.insert(key.clone(), field.clone());
    }
    serde_json::to_vec(&value).expect("a Value always serialises")
}

// ---------------------------------------------------------------------------
// Strategies: JSON-ish text built from a grammar
// ---------------------------------------------------------------------------

/// A JSON string literal, well formed or not.
fn string_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any_string().prop_map(|s| serde_json::to_string(&s).unwrap()),
        2 => "[a-z_]{0,12}".prop_map(|s| format!("\"{s}\"")),
        1 => any_string().prop_map(|s| format!("\"{s}\"")), // raw: quotes, controls, backslashes
        1 => prop::sample::select(vec![
            r#""\ud800""#,        // lone surrogate
            r#""\udc00\ud800""#,  // reversed pair
            r#""\ud83e\udd80""#,  // a valid pair: 🦀
            r#""\u0000""#,
            r#""\n""#,
            r#""\x41""#,          // invalid escape
            r#""\u12""#,          // short escape
            r#""unterminated"#,
            "\"a\u{0}b\"",        // raw NUL inside
            "\"\u{7f}\"",
            r#""""#,
        ])
        .prop_map(str::to_owned),
    ]
}

/// A JSON number literal, in range or not, well formed or not.
fn number_token() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<i64>().prop_map(|n| n.to_string()),
        2 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|n| n.to_string()), // includes "NaN" and "inf"
        1 => any::<u128>().prop_map(|n| n.to_string()),
        1 => "-?[0-9]{1,3}(\\.[0-9]{0,3})?([eE][+-]?[0-9]{1,4})?",
        1 => "[0-9]{20,400}",
        1 => prop::sample::select(vec![
            "0", "-0", "1", "2", "-1", "1.0", "1e0", "1E+0", "0.1e1", "1e400", "-1e400",
            "18446744073709551615", "18446744073709551616", "9223372036854775807",
            "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
            "01", "+1", ".5", "1.", "1e", "--1", "0x1", "Infinity", "NaN",
        ])
        .prop_map(str::to_owned),
    ]
}

/// A value for "v".
fn version_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("1".to_owned()),
        3 => number_token(),
        1 => prop::sample::select(vec!["\"1\"", "null", "true", "[1]", "{\"v\":1}", "\"\""])
            .prop_map(str::to_owned),
        1 => string_token(),
    ]
}

/// A value for "type": known, unknown, or not a string.
fn type_token() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(KNOWN_TYPES.to_vec()).prop_map(|t| format!("\"{t}\"")),
        1 => prop::sample::select(vec![
            "\"Login\"", "\"login \"", "\"likes\"", "\"\"", "\"video-uploaded\"", "\"\\u006cogin\"",
            "null", "1", "[\"login\"]", "{\"type\":\"login\"}",
        ])
        .prop_map(str::to_owned),
        1 => string_token(),
    ]
}

/// A UUID in one of the spellings the `uuid` crate reads.
fn spelled_uuid() -> impl Strategy<Value = String> {
    (any::<u128>(), 0..5_usize).prop_map(|(n, style)| {
        let id = Uuid::from_u128(n);
        match style {
            0 => id.hyphenated().to_string(),
            1 => id.simple().to_string(),
            2 => id.urn().to_string(),
            3 => id.braced().to_string(),
            _ => id.hyphenated().to_string().to_uppercase(),
        }
    })
}

/// A spelled UUID with one character replaced, often by a control character:
/// right length, wrong content.
fn damaged_uuid() -> impl Strategy<Value = String> {
    let odd_char = prop_oneof![
        any::<char>(),
        prop::char::range('\u{0}', '\u{1f}'),
        prop::sample::select(vec![
            '\u{7f}', '\u{85}', '\u{2028}', '\u{1b}', '`', '"', '\\', 'g'
        ]),
    ];
    (spelled_uuid(), any::<prop::sample::Index>(), odd_char).prop_map(|(id, at, c)| {
        let mut chars: Vec<char> = id.chars().collect();
        let at = at.index(chars.len());
        chars[at] = c;
        chars.into_iter().collect::<String>()
    })
}

/// A value for "id": a UUID in every spelling `uuid` knows, a UUID with one
/// character replaced, or something else entirely.
fn id_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => spelled_uuid().prop_map(|id| format!("\"{id}\"")),
        2 => damaged_uuid().prop_map(|id| serde_json::to_string(&id).unwrap()),
        1 => string_token(),
        1 => number_token(),
        1 => "\\[([0-9]{1,3},){0,16}[0-9]{1,3}\\]", // an array of bytes
    ]
}

/// A wrong value for a field of a valid message: another JSON type, a string
/// with control characters, a damaged UUID.
fn wrong_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => any_json_value(),
        2 => damaged_uuid().prop_map(Value::String),
        1 => spelled_uuid().prop_map(Value::String),
        1 => prop::collection::vec(prop::char::range('\u{0}', '\u{1f}'), 1..4)
            .prop_map(|cs| Value::String(cs.into_iter().collect())),
    ]
}

/// Any JSON-ish value as text, nested a little, sometimes broken.
fn value_token() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => string_token(),
        3 => number_token(),
        1 => prop::sample::select(vec!["null", "true", "false", "nul", "tru", "[]", "{}", "["])
            .prop_map(str::to_owned),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((string_token(), inner), 0..4).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A field of a message object: a protocol field with a plausible or
/// implausible value, or an unknown field.
fn field_token() -> impl Strategy<Value = (String, String)> {
    let name_value = prop_oneof![
        4 => valid_name().prop_map(|s| serde_json::to_string(&s).unwrap()),
        2 => string_token(),
        1 => value_token(),
    ];
    prop_oneof![
        2 => id_token().prop_map(|v| ("\"id\"".to_owned(), v)),
        2 => name_value.clone().prop_map(|v| ("\"user\"".to_owned(), v)),
        2 => name_value.clone().prop_map(|v| ("\"youtuber\"".to_owned(), v)),
        2 => name_value.clone().prop_map(|v| ("\"video\"".to_owned(), v)),
        1 => name_value.clone().prop_map(|v| ("\"notice\"".to_owned(), v)),
        1 => name_value.clone().prop_map(|v| ("\"reason\"".to_owned(), v)),
        1 => prop_oneof![
            prop::sample::select(vec!["true", "false", "0", "1", "\"true\"", "null"]).prop_map(str::to_owned),
            value_token(),
        ]
        .prop_map(|v| ("\"subscribe\"".to_owned(), v)),
        1 => prop_oneof![
            prop::collection::vec(name_value, 0..5).prop_map(|items| format!("[{}]", items.join(","))),
            value_token(),
        ]
        .prop_map(|v| ("\"youtubers\"".to_owned(), v)),
        1 => number_token().prop_map(|v| ("\"uploaded_at_ms\"".to_owned(), v)),
        1 => (string_token(), value_token()),
    ]
}

/// A message-like JSON object: "v" and "type" usually present, protocol
/// fields with good or bad values, unknown fields, in any order.
fn message_token() -> impl Strategy<Value = String> {
    (
        prop::option::weighted(0.9, version_token()),
        prop::option::weighted(0.9, type_token()),
        prop::collection::vec(field_token(), 0..7),
    )
        .prop_flat_map(|(version, kind, fields)| {
            let mut all = fields;
            all.extend(version.map(|v| ("\"v\"".to_owned(), v)));
            all.extend(kind.map(|t| ("\"type\"".to_owned(), t)));
            Just(all).prop_shuffle()
        })
        .prop_map(|fields| {
            let fields: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
}

/// A damage done to a message's text: none, a cut, or a byte overwritten,
/// inserted or removed.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(prop::sample::Index),
    Overwrite(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        6 => Just(Damage::None),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Overwrite(i, b)),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Damage::Remove),
    ]
}

fn apply(damage: &Damage, text: String) -> Vec<u8> {
    let mut bytes = text.into_bytes();
    if bytes.is_empty() {
        return bytes;
    }
    match damage {
        Damage::None => {}
        Damage::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Damage::Overwrite(at, b) => {
            let at = at.index(bytes.len());
            bytes[at] = *b;
        }
        Damage::Insert(at, b) => bytes.insert(at.index(bytes.len() + 1), *b),
        Damage::Remove(at) => {
            bytes.remove(at.index(bytes.len()));
        }
    }
    bytes
}

/// Text around a message: whitespace, a byte-order mark, trailing data.
fn framing() -> impl Strategy<Value = (String, String)> {
    let around = prop::sample::select(vec!["", "", "", " ", "\n", "\t\r\n ", "\u{feff}", "\0"]);
    let after = prop::sample::select(vec!["", "", "", " ", "\n", "{}", "x", ",", "}"]);
    (around, after).prop_map(|(a, b)| (a.to_owned(), b.to_owned()))
}

/// Top-level texts that are not message objects at all.
fn not_an_object() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        value_token().prop_map(String::into_bytes),
        (1..400_usize)
            .prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        (1..400_usize).prop_map(|depth| "{\"v\":".repeat(depth).into_bytes()),
        prop::sample::select(vec![
            "",
            " ",
            "null",
            "true",
            "\"\"",
            "{",
            "}",
            "{}",
            "[]",
            "{\"v\":1}"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

// ---------------------------------------------------------------------------
// Candidate names: valid, nearly valid and anything
// ---------------------------------------------------------------------------

fn candidate_name() -> impl Strategy<Value = String> {
    let near_miss =
        (valid_name(), any::<prop::sample::Index>(), any::<char>()).prop_map(|(name, at, c)| {
            let mut chars: Vec<char> = name.chars().collect();
            let at = at.index(chars.len() + 1);
            chars.insert(at, c);
            chars.into_iter().collect::<String>()
        });
    prop_oneof![
        3 => valid_name(),
        2 => near_miss,
        1 => "[A-Za-z0-9_.-]{63,66}",
        1 => long_text(),
        1 => "[A-Za-z0-9_.\\- /:@+éÉ\t\n\u{0}\u{7f}]{0,70}",
        1 => any_string(),
        1 => Just(String::new()),
    ]
}

/// A value far over every limit, sometimes made of characters that an error
/// message must escape; two of them still fit in one message.
fn long_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 100..3000).prop_map(String::from_iter),
        (unprintable_piece(), 30..1000_usize).prop_map(|(piece, n)| piece.repeat(n)),
        (100..MAX_MESSAGE_BYTES / 16).prop_map(|n| "\u{10ffff}".repeat(n)),
    ]
}

fn candidate_video() -> impl Strategy<Value = String> {
    let whitespace = prop::sample::select(vec![
        ' ', '\t', '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
        '\u{2007}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{3000}', '\u{200b}', '\u{feff}',
    ]);
    let unprintable = prop_oneof![
        prop::char::range('\u{0}', '\u{1f}'),
        prop::char::range('\u{7f}', '\u{9f}'),
        bidi_control(),
        format_char(),
    ];
    let near_miss =
        (valid_video(), any::<prop::sample::Index>(), unprintable).prop_map(|(title, at, c)| {
            let mut chars: Vec<char> = title.chars().collect();
            let at = at.index(chars.len() + 1);
            chars.insert(at, c);
            chars.into_iter().collect::<String>()
        });
    let around_the_limit = (
        prop::sample::select(vec!['x', 'é', '☕', '🦀', ' ']),
        98..=102_usize,
    )
        .prop_map(|(c, n)| format!("a{}", c.to_string().repeat(n - 1)));
    prop_oneof![
        3 => valid_video(),
        2 => near_miss,
        1 => around_the_limit,
        1 => prop::collection::vec(whitespace, 0..8).prop_map(|cs| cs.into_iter().collect()),
        1 => any_string(),
        1 => hostile_text(),
        1 => long_text(),
        1 => prop::collection::vec(any::<char>(), 90..110).prop_map(|cs| cs.into_iter().collect()),
    ]
}

/// The documented rule for user and YouTuber names, written independently of
/// `src/names.rs`: 1–64 bytes, each an ASCII letter, digit, '_', '-' or '.'.
fn reference_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.'))
}

/// The documented rule for video titles: 1–100 characters, no control or
/// format character (Unicode categories Cc and Cf), not only whitespace.
fn reference_video_ok(title: &str) -> bool {
    let count = title.chars().count();
    (1..=100).contains(&count)
        && !title.chars().any(reference_unprintable)
        && title.chars().any(|c| !c.is_whitespace())
}

fn check_name_error(
    kind: NameKind,
    label: &str,
    value: &str,
    error: &InvalidName,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(error.kind, kind);
    prop_assert_eq!(&error.value, value);
    let text = error.to_string();
    prop_assert!(
        text.starts_with(&format!("invalid {label} ")),
        "{text:?} does not name the kind ({label})"
    );
    prop_assert!(
        !text.contains(['\n', '\r']),
        "{text:?} spans more than one line"
    );
    prop_assert!(!error.problem.trim().is_empty(), "{text:?} gives no reason");
    Ok(())
}

/// What `Request::validate` must answer: the first failing check, in the
/// order user, YouTuber, video.
fn expected_validation(request: &Request) -> Result<(), InvalidName> {
    match request {
        Request::Login { user, .. }
        | Request::ListSubscriptions { user }
        | Request::Celebrities { user } => names::check_user(user),
        Request::ChangeSubscription { user, youtuber, .. }
        | Request::Seen { user, youtuber, .. } => {
            names::check_user(user).and_then(|()| names::check_youtuber(youtuber))
        }
        Request::Upload { youtuber, video } => {
            names::check_youtuber(youtuber).and_then(|()| names::check_video(video))
        }
        Request::React { user, video, .. } => {
            names::check_user(user).and_then(|()| names::check_video_ref(video))
        }
        Request::Comment { user, video, text } => names::check_user(user)
            .and_then(|()| names::check_video_ref(video))
            .and_then(|()| names::check_comment(text)),
        Request::ListVideos { youtuber } | Request::Stats { youtuber } => {
            names::check_youtuber(youtuber)
        }
    }
}

fn reference_request_ok(request: &Request) -> bool {
    match request {
        Request::Login { user, .. }
        | Request::ListSubscriptions { user }
        | Request::Celebrities { user } => reference_name_ok(user),
        Request::ChangeSubscription { user, youtuber, .. }
        | Request::Seen { user, youtuber, .. } => {
            reference_name_ok(user) && reference_name_ok(youtuber)
        }
        Request::Upload { youtuber, video } => {
            reference_name_ok(youtuber) && reference_video_ok(video)
        }
        Request::React { user, video, .. } => {
            reference_name_ok(user) && reference_video_ref_ok(video)
        }
        Request::Comment { user, video, text } => {
            reference_name_ok(user) && reference_video_ref_ok(video) && reference_comment_ok(text)
        }
        Request::ListVideos { youtuber } | Request::Stats { youtuber } => {
            reference_name_ok(youtuber)
        }
    }
}

/// The documented rule for a reference to a video: 1–36 of `0-9`, `a-f`
/// (either case), `-`.
fn reference_video_ref_ok(reference: &str) -> bool {
    (1..=36).contains(&reference.len())
        && reference
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' | b'-'))
}

/// The documented rule for comments: 1–500 characters, no control or
/// format character, not only whitespace.
fn reference_comment_ok(text: &str) -> bool {
    let count = text.chars().count();
    (1..=500).contains(&count)
        && !text.chars().any(reference_unprintable)
        && text.chars().any(|c| !c.is_whitespace())
}

fn candidate_request() -> BoxedStrategy<Request> {
    prop_oneof![
        candidate_name().prop_map(Request::login),
        (candidate_name(), candidate_name(), any::<bool>()).prop_map(
            |(user, youtuber, subscribe)| Request::ChangeSubscription {
                user,
                youtuber,
                subscribe,
            }
        ),
        candidate_name().prop_map(|user| Request::ListSubscriptions { user }),
        (candidate_name(), candidate_video())
            .prop_map(|(youtuber, video)| Request::Upload { youtuber, video }),
        (candidate_name(), candidate_video_ref(), any_reaction()).prop_map(
            |(user, video, reaction)| Request::React {
                user,
                video,
                reaction,
            }
        ),
        (candidate_name(), candidate_video_ref(), candidate_comment())
            .prop_map(|(user, video, text)| Request::Comment { user, video, text }),
        candidate_name().prop_map(|youtuber| Request::ListVideos { youtuber }),
        candidate_name().prop_map(|youtuber| Request::Stats { youtuber }),
    ]
    .boxed()
}

/// References to videos, good and nearly good.
fn candidate_video_ref() -> BoxedStrategy<String> {
    prop_oneof![
        3 => valid_video_ref(),
        1 => "[0-9a-fA-G-]{0,38}",
        1 => candidate_name(),
    ]
    .boxed()
}

/// Comments, good and nearly good.
fn candidate_comment() -> BoxedStrategy<String> {
    let around_the_limit = (
        prop::sample::select(vec!['x', 'é', '🦀', ' ']),
        498..=502_usize,
    )
        .prop_map(|(c, n)| format!("a{}", c.to_string().repeat(n - 1)));
    prop_oneof![
        3 => valid_comment(),
        1 => around_the_limit,
        2 => candidate_video(),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    // -- decoding never panics, and every refusal has a one-line reason --

    #[test]
    fn decoders_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes)?;
    }

    #[test]
    fn decoders_survive_arbitrary_text(text in any_string()) {
        decode_everything(text.as_bytes())?;
    }

    #[test]
    fn decoders_survive_message_like_json(
        message in message_token(),
        (before, after) in framing(),
        damage in damage(),
    ) {
        let bytes = apply(&damage, format!("{before}{message}{after}"));
        decode_everything(&bytes)?;
    }

    #[test]
    fn a_valid_message_with_one_field_spoiled_is_refused_cleanly(
        request in envelope(any_request()),
        reply in any_reply(),
        notification in any_notification(),
        field in any::<prop::sample::Index>(),
        wrong in wrong_value(),
    ) {
        for message in [encode(&request), encode(&reply), encode(&notification)] {
            let mut value: Value = serde_json::from_slice(&message).expect("encode writes JSON");
            let object = value.as_object_mut().expect("an object");
            let keys: Vec<String> = object.keys().cloned().collect();
            let key = field.get(&keys);
            object.insert(key.clone(), wrong.clone());
            decode_everything(&serde_json::to_vec(&value).expect("a Value serialises"))?;
        }
    }

    #[test]
    fn decoders_survive_things_that_are_not_objects(bytes in not_an_object()) {
        decode_everything(&bytes)?;
    }

    #[test]
    fn messages_over_the_limit_are_refused_as_too_large(
        message in envelope(valid_request()),
        extra in 1..64_usize,
    ) {
        // A valid message padded past the limit with whitespace (still valid
        // JSON) is refused for its size alone.
        let mut bytes = encode(&message);
        bytes.resize(MAX_MESSAGE_BYTES + extra, b' ');
        let expected = protocol::DecodeError::TooLarge(MAX_MESSAGE_BYTES + extra);
        prop_assert_eq!(decode_request(&bytes), Err(expected.clone()));
        prop_assert_eq!(decode_reply(&bytes).unwrap_err(), expected.clone());
        prop_assert_eq!(decode_notification(&bytes).unwrap_err(), expected.clone());
        check_reason("decode_request", &bytes[..64], &expected)?;
    }

    // -- round trips --

    #[test]
    fn valid_requests_round_trip(message in envelope(valid_request())) {
        prop_assert!(message.request.validate().is_ok());
        prop_assert_eq!(decode_request(&encode(&message)), Ok(message));
    }

    #[test]
    fn requests_with_any_strings_round_trip(message in envelope(any_request())) {
        prop_assert_eq!(decode_request(&encode(&message)), Ok(message));
    }

    #[test]
    fn valid_replies_round_trip(reply in valid_reply()) {
        prop_assert!(reply.validate().is_ok(), "{:?}", reply);
        prop_assert_eq!(decode_reply(&encode(&reply)), Ok(reply));
    }

    #[test]
    fn replies_decode_exactly_when_they_are_safe_to_print(reply in any_reply()) {
        let bytes = encode(&reply);
        match decode_reply(&bytes) {
            Ok(decoded) => {
                prop_assert!(reference_reply_ok(&reply), "accepted {:?}", reply);
                prop_assert_eq!(decoded, reply);
            }
            Err(error) => {
                prop_assert!(!reference_reply_ok(&reply), "refused {:?}: {}", reply, error);
                let DecodeError::Malformed { kind, detail } = &error else {
                    return Err(TestCaseError::fail(format!("not malformed: {error}")));
                };
                prop_assert_eq!(kind.as_str(), reply.kind());
                prop_assert!(detail.starts_with("field `"), "{:?}", detail);
                check_reason("decode_reply", &bytes, &error)?;
                check_printable(&error.to_string())?;
            }
        }
    }

    #[test]
    fn a_reply_whose_reason_holds_an_escape_is_refused(
        reason in reply_text(),
        at in any::<prop::sample::Index>(),
        sequence in prop::sample::select(vec!["\u{1b}", "\u{1b}[2J", "\u{1b}]8;;http://evil\u{7}"]),
    ) {
        let mut chars: Vec<char> = reason.chars().collect();
        let at = at.index(chars.len() + 1);
        chars.splice(at..at, sequence.chars());
        let reply = Reply::Refused { reason: chars.into_iter().collect() };
        let error = decode_reply(&encode(&reply)).expect_err("a reason with an escape");
        let DecodeError::Malformed { kind, detail } = &error else {
            return Err(TestCaseError::fail(format!("not malformed: {error}")));
        };
        prop_assert_eq!(kind.as_str(), "refused");
        prop_assert!(detail.starts_with("field `reason` has "), "{:?}", detail);
        check_printable(&error.to_string())?;
    }

    #[test]
    fn any_text_made_fit_for_a_reply_passes_the_clients_check(
        text in prop_oneof![3 => any_text(), 1 => long_text(), 1 => reply_text()],
    ) {
        let fit = protocol::fit_reply_text(&text);
        if reference_reply_ok(&Reply::Refused { reason: text.clone() }) {
            prop_assert_eq!(&fit, &text);
        }
        let reply = Reply::Refused { reason: fit };
        prop_assert_eq!(decode_reply(&encode(&reply)), Ok(reply));
    }

    #[test]
    fn the_servers_refusals_pass_the_clients_check(request in candidate_request()) {
        // The server answers an invalid request with the error's text as the
        // reason: however long or odd the names, the client must accept it.
        if let Err(invalid) = request.validate() {
            let reply = Reply::Refused { reason: invalid.to_string() };
            prop_assert_eq!(decode_reply(&encode(&reply)), Ok(reply));
        }
    }

    #[test]
    fn notifications_round_trip(notification in any_notification()) {
        let decoded = decode_notification(&encode(&notification));
        prop_assert_eq!(decoded, Ok(notification));
    }

    #[test]
    fn valid_notifications_round_trip_validate_and_print_as_sent(
        notification in valid_notification(),
    ) {
        let decoded = decode_notification(&encode(&notification));
        prop_assert_eq!(decoded.as_ref(), Ok(&notification));
        prop_assert_eq!(notification.validate(), Ok(()));
        let Notification::VideoUploaded { youtuber, video, .. } = &notification;
        prop_assert_eq!(
            notification.to_string(),
            format!("New Notification: {youtuber} uploaded {video}")
        );
    }

    #[test]
    fn a_title_with_an_escape_or_a_bidi_control_fails_validation(
        notification in valid_notification(),
        at in any::<prop::sample::Index>(),
        bad in prop_oneof![Just('\u{1b}'), bidi_control()],
    ) {
        let Notification::VideoUploaded { id, youtuber, video, uploaded_at_ms, .. } = notification;
        let mut chars: Vec<char> = video.chars().collect();
        let at = at.index(chars.len() + 1);
        chars.insert(at, bad);
        let forged = Notification::VideoUploaded {
            id,
            youtuber,
            video: chars.iter().collect(),
            uploaded_at_ms,
            seq: None,
            stream_after: false,
        };
        let error = forged.validate().expect_err("a forged title");
        prop_assert_eq!(error.kind, NameKind::Video);
        if chars.len() <= MAX_VIDEO_CHARS {
            let named = if bad == '\u{1b}' {
                "control character '\\u{1b}'".to_owned()
            } else {
                format!("invisible formatting character U+{:04X}", u32::from(bad))
            };
            let expected = format!("{named} at position {} is not allowed", at + 1);
            prop_assert!(error.problem.starts_with(&expected), "{:?}", error.problem);
        }
        check_printable(&error.to_string())?;
    }

    #[test]
    fn a_decoded_notification_prints_as_one_harmless_line(
        notification in any_notification(),
        extra in prop::option::of(unknown_fields()),
    ) {
        let bytes = match &extra {
            Some(extra) => encode_with_extra_fields(&notification, extra),
            None => encode(&notification),
        };
        let decoded = decode_notification(&bytes).expect("an encoded notification decodes");
        let line = decoded.to_string();
        check_printable(&line)?;
        let Notification::VideoUploaded { youtuber, video, .. } = &decoded;
        prop_assert_eq!(
            line,
            format!(
                "New Notification: {} uploaded {}",
                reference_escape(youtuber),
                reference_escape(video)
            )
        );
    }

    // -- what reaches a terminal --

    #[test]
    fn escaping_leaves_nothing_a_terminal_would_obey(text in any_text()) {
        let escaped = escape_for_terminal(&text);
        check_printable(&escaped)?;
        prop_assert!(!escaped.contains(['\n', '\r']));
        prop_assert_eq!(escaped.as_ref(), reference_escape(&text));
        // Escaping twice changes nothing more.
        prop_assert!(matches!(escape_for_terminal(&escaped), Cow::Borrowed(_)));
        if !text.chars().any(reference_unprintable) {
            prop_assert!(matches!(escaped, Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn escaping_returns_printable_text_unchanged(text in reply_text()) {
        prop_assert!(matches!(escape_for_terminal(&text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn every_format_character_is_refused_and_escaped(c in format_char(), title in valid_video()) {
        // A Unicode table other than ours: a character it calls Cf and we do
        // not means the reference (and `src/names.rs`) is out of date.
        prop_assert!(reference_unprintable(c), "U+{:04X}", u32::from(c));
        let forged = format!("{title}{c}");
        if forged.chars().count() <= MAX_VIDEO_CHARS {
            prop_assert!(names::check_video(&forged).is_err(), "{:?}", forged);
        }
        prop_assert_eq!(escape_for_terminal(&forged), reference_escape(&forged));
    }

    /// Requests and replies share the tag "subscriptions": the reply decoder
    /// reads a subscriptions request as a malformed reply, never as a reply.
    #[test]
    fn each_kind_of_message_is_refused_by_the_other_decoders(
        request in envelope(any_request()),
        reply in any_reply(),
        notification in any_notification(),
    ) {
        let request = encode(&request);
        let reply = encode(&reply);
        let notification = encode(&notification);
        for (bytes, decoder, result) in [
            (&request, "decode_reply", decode_reply(&request).map(drop)),
            (&request, "decode_notification", decode_notification(&request).map(drop)),
            (&reply, "decode_request", decode_request(&reply).map(drop)),
            (&reply, "decode_notification", decode_notification(&reply).map(drop)),
            (&notification, "decode_request", decode_request(&notification).map(drop)),
            (&notification, "decode_reply", decode_reply(&notification).map(drop)),
        ] {
            let error = result.expect_err(decoder);
            check_reason(decoder, bytes, &error)?;
        }
    }

    #[test]
    fn unknown_fields_in_a_request_are_ignored(
        message in envelope(any_request()),
        extra in unknown_fields(),
    ) {
        let bytes = encode_with_extra_fields(&message, &extra);
        prop_assert_eq!(decode_request(&bytes), Ok(message), "{}", shown(&bytes));
    }

    #[test]
    fn unknown_fields_in_a_reply_are_ignored(reply in valid_reply(), extra in unknown_fields()) {
        let bytes = encode_with_extra_fields(&reply, &extra);
        prop_assert_eq!(decode_reply(&bytes), Ok(reply), "{}", shown(&bytes));
    }

    #[test]
    fn unknown_fields_in_a_notification_are_ignored(
        notification in any_notification(),
        extra in unknown_fields(),
    ) {
        let bytes = encode_with_extra_fields(&notification, &extra);
        prop_assert_eq!(decode_notification(&bytes), Ok(notification), "{}", shown(&bytes));
    }

    #[test]
    fn the_encoding_is_one_versioned_object_with_the_type_tag(
        request in envelope(any_request()),
        reply in any_reply(),
        notification in any_notification(),
    ) {
        for (bytes, kind) in [
            (encode(&request), request.request.kind()),
            (encode(&reply), match reply {
                Reply::Done { .. } => "done",
                Reply::Subscriptions { .. } => "subscriptions",
                Reply::Videos { .. } => "videos",
                Reply::Refused { .. } => "refused",
                Reply::Celebrities { .. } => "celebrities",
            }),
            (encode(&notification), "video_uploaded"),
        ] {
            let value: Value = serde_json::from_slice(&bytes).expect("encode writes JSON");
            let object: &Map<String, Value> = value.as_object().expect("an object");
            prop_assert_eq!(object.get("v"), Some(&Value::from(protocol::PROTOCOL_VERSION)));
            prop_assert_eq!(object.get("type"), Some(&Value::from(kind)));
            // One line on the wire: strings are escaped.
            prop_assert!(!bytes.contains(&b'\n'));
        }
    }

    // -- names --

    #[test]
    fn user_names_follow_the_documented_rule(name in candidate_name()) {
        let result = names::check_user(&name);
        prop_assert_eq!(result.is_ok(), reference_name_ok(&name), "{:?}: {:?}", name, result);
        if let Err(error) = result {
            check_name_error(NameKind::User, "user name", &name, &error)?;
        }
    }

    #[test]
    fn youtuber_names_follow_the_documented_rule(name in candidate_name()) {
        let result = names::check_youtuber(&name);
        prop_assert_eq!(result.is_ok(), reference_name_ok(&name), "{:?}: {:?}", name, result);
        if let Err(error) = result {
            check_name_error(NameKind::Youtuber, "YouTuber name", &name, &error)?;
        }
    }

    #[test]
    fn video_titles_follow_the_documented_rule(title in candidate_video()) {
        let result = names::check_video(&title);
        prop_assert_eq!(result.is_ok(), reference_video_ok(&title), "{:?}: {:?}", title, result);
        if let Err(error) = result {
            check_name_error(NameKind::Video, "video name", &title, &error)?;
        }
    }

    #[test]
    fn generated_valid_names_and_titles_are_accepted(name in valid_name(), title in valid_video()) {
        prop_assert!(names::check_user(&name).is_ok(), "{:?}", name);
        prop_assert!(names::check_youtuber(&name).is_ok(), "{:?}", name);
        prop_assert!(names::check_video(&title).is_ok(), "{:?}", title);
    }

    #[test]
    fn request_validation_agrees_with_the_name_checks(request in candidate_request()) {
        let result = request.validate();
        prop_assert_eq!(&result, &expected_validation(&request));
        prop_assert_eq!(result.is_ok(), reference_request_ok(&request), "{:?}", request);
        if let Err(error) = &result {
            let text = error.to_string();
            prop_assert!(!text.contains(['\n', '\r']), "{:?}", text);
        }
    }

    #[test]
    fn validation_survives_the_wire(request in candidate_request(), id in any_uuid()) {
        // The server validates what it decoded: the verdict must be the one
        // the client reached before sending.
        let message = RequestEnvelope { id, request };
        let decoded = decode_request(&encode(&message)).expect("an encoded request decodes");
        prop_assert_eq!(decoded.request.validate(), message.request.validate());
    }
}

// ---------------------------------------------------------------------------
// Fixed cases at the edges of the rules
// ---------------------------------------------------------------------------

#[test]
fn the_length_limits_are_the_documented_ones() {
    assert_eq!(MAX_NAME_CHARS, 64);
    assert_eq!(MAX_VIDEO_CHARS, 100);
    assert!(names::check_user(&"a".repeat(64)).is_ok());
    assert!(names::check_user(&"a".repeat(65)).is_err());
    assert!(names::check_youtuber("-").is_ok());
    assert!(names::check_youtuber(".").is_ok());
    assert!(names::check_youtuber("").is_err());
    assert!(names::check_video(&"é".repeat(100)).is_ok());
    assert!(names::check_video(&"🦀".repeat(101)).is_err());
    assert!(names::check_video("\u{a0}\u{3000}").is_err());
    assert!(names::check_video(" x ").is_ok());
    assert!(names::check_video("\u{85}").is_err());
}

#[test]
fn every_character_is_escaped_and_refused_exactly_when_unprintable() {
    // All 1,112,064 of them: the rule is a table, and a table is easy to
    // get wrong at one edge.
    let mut title = String::new();
    for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
        title.clear();
        title.push('a');
        title.push(c);
        let unprintable = reference_unprintable(c);
        let escaped = escape_for_terminal(&title);
        assert_eq!(
            matches!(escaped, Cow::Owned(_)),
            unprintable,
            "U+{:04X}",
            u32::from(c)
        );
        assert_eq!(
            names::check_video(&title).is_err(),
            unprintable,
            "U+{:04X}",
            u32::from(c)
        );
    }
}

#[test]
fn versions_other_than_one_are_refused() {
    for v in [
        "0",
        "2",
        "-1",
        "1.0",
        "1e0",
        "\"1\"",
        "null",
        "18446744073709551616",
        "1e400",
    ] {
        let body = format!(
            r#"{{"v":{v},"id":"00000000-0000-0000-0000-000000000000","type":"login","user":"a"}}"#
        );
        let result = decode_request(body.as_bytes());
        assert!(result.is_err(), "v = {v} was accepted");
    }
}

// ---------------------------------------------------------------------------
// Regression tests: inputs that once broke a decoder or a check
//
// A crash found by `scripts/fuzz.sh` becomes a test here: copy the bytes the
// script prints into `decodes_cleanly(&[...])` in a new #[test].
// ---------------------------------------------------------------------------

/// Feeds `bytes` to every decoder and checks what `decode_everything` checks.
fn decodes_cleanly(bytes: &[u8]) {
    if let Err(failure) = decode_everything(bytes) {
        panic!("{failure}");
    }
}

#[test]
fn regression_edge_inputs_decode_cleanly() {
    decodes_cleanly(b"");
    decodes_cleanly(b"{\"v\":1,\"type\":\"login\"}");
    decodes_cleanly(&[0xef, 0xbb, 0xbf, b'{', b'}']);
    decodes_cleanly("{\"v\":1,\"type\":\"done\",\"notice\":\"\\ud800\"}".as_bytes());
    decodes_cleanly(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).as_bytes());
}

/// Regression: a request or notification whose "id" is not a UUID is refused
/// as malformed, and the reason quotes the offending character, as the `uuid`
/// crate's parse error does ("found `\n` at 35"). A control character in the
/// id once put a line break (or a terminal escape) into the reason, which
/// becomes the `x-ytnotify-reason` header of the dead-lettered message and a
/// line of the server's log. Every reason must be one line.
#[test]
fn regression_a_bad_id_with_a_control_character_gets_a_one_line_reason() {
    let cases: [&[u8]; 4] = [
        br#"{"v":1,"type":"login","id":"\n","user":"alice"}"#,
        br#"{"v":1,"type":"login","id":"00000000-0000-0000-0000-00000000000\n","user":"alice"}"#,
        br#"{"v":1,"type":"upload","id":"0000000000000000000000000000000\r","youtuber":"bob","video":"x"}"#,
        br#"{"v":1,"type":"video_uploaded","id":"00000000-0000-0000-0000-00000000000\n","youtuber":"bob","video":"x","uploaded_at_ms":1}"#,
    ];
    for bytes in cases {
        decodes_cleanly(bytes);
    }
}

/// A notification published straight into an inbox by a hostile client, and
/// the same text forged into a reply queue as a refusal.
fn forge(title: &str) -> (Notification, Vec<u8>) {
    let notification = Notification::VideoUploaded {
        id: Uuid::nil(),
        youtuber: "bob".into(),
        video: title.into(),
        uploaded_at_ms: 1_700_000_000_000,
        seq: None,
        stream_after: false,
    };
    let reply = encode(&Reply::Refused {
        reason: title.into(),
    });
    let decoded = decode_notification(&encode(&notification)).expect("the forgery is well formed");
    (decoded, reply)
}

/// Regression: `user` printed each notification as it came. A title that
/// clears the screen and hides a link to http://evil behind the word "click"
/// (OSC 8) was obeyed by the terminal. Now it fails validation (the client
/// skips it), prints as visible escapes if shown anyway, and is refused in a
/// reply.
#[test]
fn regression_a_forged_title_with_terminal_escapes() {
    let title = "Hello\u{1b}[2J\u{1b}]8;;http://evil\u{7}click\u{1b}]8;;\u{7}";
    let (notification, reply) = forge(title);
    assert_eq!(
        notification.validate().unwrap_err().problem,
        "control character '\\u{1b}' at position 6 is not allowed; use printable characters only"
    );
    assert_eq!(
        notification.to_string(),
        r"New Notification: bob uploaded Hello\u{1b}[2J\u{1b}]8;;http://evil\u{7}click\u{1b}]8;;\u{7}"
    );
    assert_eq!(
        decode_reply(&reply).unwrap_err().to_string(),
        "malformed \"refused\" message: field `reason` has control character '\\u{1b}' \
         at position 6; a reply holds printable text only"
    );
}

/// Regression: a right-to-left override reverses what follows it on screen,
/// so that the title "\u{202e}3pm.exe" showed as "exe.mp3".
#[test]
fn regression_a_forged_title_with_a_right_to_left_override() {
    let (notification, reply) = forge("\u{202e}3pm.exe");
    assert_eq!(
        notification.validate().unwrap_err().to_string(),
        "invalid video name \"\\u{202e}3pm.exe\": invisible formatting character U+202E \
         at position 1 is not allowed; use printable characters only"
    );
    assert_eq!(
        notification.to_string(),
        r"New Notification: bob uploaded \u{202e}3pm.exe"
    );
    assert_eq!(
        decode_reply(&reply).unwrap_err().to_string(),
        "malformed \"refused\" message: field `reason` has invisible formatting character \
         U+202E at position 1; a reply holds printable text only"
    );
    let names = encode(&Reply::Subscriptions {
        youtubers: vec!["bob".into(), "\u{202e}bob".into()],
    });
    assert!(
        decode_reply(&names)
            .unwrap_err()
            .to_string()
            .contains("field `youtubers[1]` holds an invalid YouTuber name")
    );
}
