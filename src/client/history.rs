//! A user's history, read: the stream of every notification the user's
//! exchange received, kept for a while (`topology::history`), read from a
//! position of the reader's choosing.
//!
//! A position is a [`Cursor`]: the offset of the last notification read
//! (with its id, to tell a history deleted and declared again from the
//! same one), or, before the first, the time the reader started. Offsets
//! grow but are not consecutive, so a reader that comes back attaches at its
//! own last offset and checks that the first delivery is that notification:
//! anything else means that what followed it may be gone.

use std::{
    fmt,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use uuid::Uuid;

use super::inbox::{UserQueue, existing_queue};
use crate::{
    broker,
    error::{Error, Result},
    link::{Feed, Link, Opened, Opening, Session},
    protocol::{self, Notification},
    topology,
};

/// How many notifications the broker may push ahead of the reader. Stream
/// consumers need a prefetch: acknowledgements are their credit.
const HISTORY_PREFETCH: u16 = 200;

/// How far before its start a reader attached by time looks: a stream is
/// found by time at the granularity of its chunks, and of seconds.
const TIME_MARGIN_MS: i64 = 2_000;

/// How long a reader that comes back waits for the notification at its
/// offset before it looks whether the history still reaches that far.
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// How long the header of the history is read, to find where it ends.
const TAIL_WAIT: Duration = Duration::from_secs(3);

/// How many offsets before its position a reader that comes back reads, to
/// learn which notifications its client had already: the inbox may still
/// hold copies of them whose acknowledgement the end of the last session
/// cut, and those must not be shown again. About 250 KB at most, once per
/// resume: more than a session ever has in flight (its inbox prefetch and
/// what the history ran ahead of the inbox).
const LOOK_BACK: u64 = 1_000;

/// A position in a user's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// After the notification `id`, at `offset`. `since_ms`: the start of
    /// the sessions that led there, one coming back after the other; every
    /// notification stored from then on up to `offset` was handed out with
    /// a position, so the reader had it. `None` in a position written
    /// before it was kept.
    Offset {
        offset: u64,
        id: Uuid,
        since_ms: Option<i64>,
    },
    /// After what the server stored before `ms` (milliseconds since the Unix
    /// epoch): a reader's position before it has read anything.
    Time { ms: i64 },
}

impl Cursor {
    /// The position of a reader starting now.
    pub fn now() -> Cursor {
        Cursor::Time {
            ms: crate::store::now_ms(),
        }
    }
}

/// `o<offset>.<id>.<since ms>` or `t<ms>`: what a gateway sends as an
/// event's id.
impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Offset {
                offset,
                id,
                since_ms: Some(since),
            } => write!(f, "o{offset}.{}.{since}", id.simple()),
            Cursor::Offset {
                offset,
                id,
                since_ms: None,
            } => write!(f, "o{offset}.{}", id.simple()),
            Cursor::Time { ms } => write!(f, "t{ms}"),
        }
    }
}

/// A position that is not one this crate writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a position in a history; give the id of the last event received \
     (o<offset>.<id>.<milliseconds> or t<milliseconds>), or none to start now"
)]
pub struct InvalidCursor(pub String);

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Cursor, InvalidCursor> {
        let invalid = || InvalidCursor(text.chars().take(100).collect());
        if let Some(ms) = text.strip_prefix('t') {
            let ms = ms.parse::<i64>().map_err(|_| invalid())?;
            return if ms >= 0 {
                Ok(Cursor::Time { ms })
            } else {
                Err(invalid())
            };
        }
        let (offset, rest) = text
            .strip_prefix('o')
            .and_then(|rest| rest.split_once('.'))
            .ok_or_else(invalid)?;
        let (id, since_ms) = match rest.split_once('.') {
            Some((id, since)) if !since.is_empty() && since.bytes().all(|b| b.is_ascii_digit()) => {
                (id, Some(since.parse::<i64>().map_err(|_| invalid())?))
            }
            Some(_) => return Err(invalid()),
            None => (rest, None),
        };
        if id.len() != 32 || !offset.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        // Stream offsets are signed 64-bit numbers on the wire.
        let offset: u64 = offset.parse().map_err(|_| invalid())?;
        if i64::try_from(offset).is_err() {
            return Err(invalid());
        }
        Ok(Cursor::Offset {
            offset,
            id: Uuid::try_parse(id).map_err(|_| invalid())?,
            since_ms,
        })
    }
}

/// What reading the history turned up.
#[derive(Debug)]
pub(crate) enum Entry {
    /// A notification after the position: the position is now `cursor`.
    Notification {
        notification: Notification,
        cursor: Cursor,
    },
    /// Nothing to show (something older than a reader attached by time
    /// wants, a message that is not a notification), but the position moved
    /// to `cursor`.
    Moved(Cursor),
    /// The notification at the position the reader resumed from, which it
    /// has already: the position is confirmed. `before` holds the
    /// notifications the history keeps just before it (up to [`LOOK_BACK`]
    /// offsets), which the reader's client had as well.
    Resumed {
        cursor: Cursor,
        id: Uuid,
        before: Vec<Uuid>,
    },
    /// What followed the position is no longer all kept (trimmed by the
    /// history's retention, or the history was deleted and declared again):
    /// the entries after this are all that is left.
    Gap,
}

/// Where the consumer attaches, and what it must check or skip first.
#[derive(Debug, Clone, Copy)]
enum Attach {
    /// At this offset, which must hold notification `id`.
    Offset(u64, Uuid),
    /// At this time, skipping what the server stored before it.
    Time(i64),
    /// At the start of what is kept.
    First,
}

/// What the opener and the reader share.
struct State {
    attach: Attach,
    /// The notification the consumer must deliver first, if it attached at
    /// an offset and has not delivered anything yet.
    verify: Option<(u64, Uuid)>,
    /// While the reader that comes back has not reached its position: the
    /// notifications read before it, if it attached [`LOOK_BACK`] earlier.
    /// `None` once the position is confirmed (or missing), and for a
    /// consumer attached again later, which starts at its last offset.
    looking_back: Option<Vec<Uuid>>,
    /// How many deliveries before the position have been read: the wait
    /// for the position goes on while they come.
    looked_back: usize,
    /// Since when every notification up to the position was handed out with
    /// a position (see [`Cursor::Offset`]): the look-back counts only those
    /// as the client's, not older ones that came to it from the inbox, which
    /// it may not have shown.
    since_ms: Option<i64>,
    /// The highest offset read: a consumer attached again may deliver it
    /// once more.
    last_offset: Option<u64>,
    /// What the server stored before this is older than the reader wants.
    floor_ms: Option<i64>,
    /// From which upload time on the reader gets every notification from
    /// the history, once known.
    live_from_ms: Option<i64>,
}

/// A user's history, read from a position. Rides out every loss of the
/// connection or of the consumer (see [`Feed`]): a consumer set up again
/// attaches at the last position read.
pub(crate) struct History {
    feed: Feed,
    user: String,
    state: Arc<Mutex<State>>,
    ahead: std::collections::VecDeque<Entry>,
}

impl History {
    /// Opens `user`'s history after `from`. A missing history is asked for
    /// with a login that asks for it; the server declares and binds it.
    pub(crate) async fn open(link: &Link, user: &str, from: Cursor) -> Result<History> {
        // A reader attached by time shows what the server stored from then
        // on (by the server's clock: the machines' clocks must agree); what
        // came before is the inbox's, so that a new session does not show
        // again what another has just shown.
        let (start, floor_ms, looking_back, since_ms) = match from {
            Cursor::Offset {
                offset,
                id,
                since_ms,
            } => (Attach::Offset(offset, id), None, Some(Vec::new()), since_ms),
            Cursor::Time { ms } => (Attach::Time(ms), Some(ms), None, Some(ms)),
        };
        let state = Arc::new(Mutex::new(State {
            attach: start,
            verify: None,
            looking_back,
            looked_back: 0,
            since_ms,
            last_offset: None,
            floor_ms,
            live_from_ms: floor_ms,
        }));
        let opener = {
            let (user, state, login) =
                (user.to_owned(), Arc::clone(&state), link.login().to_owned());
            Box::new(move |session: Session| {
                let (user, state, login) = (user.clone(), Arc::clone(&state), login.clone());
                Box::pin(async move { attach_consumer(&session, &login, &user, &state).await })
                    as Opening
            })
        };
        let feed = Feed::open(link, format!("{user}'s history"), opener).await?;
        let mut history = History {
            feed,
            user: user.to_owned(),
            state,
            ahead: std::collections::VecDeque::new(),
        };
        if let Cursor::Offset { offset, .. } = from {
            history.check_resumed(link, offset).await?;
        }
        Ok(history)
    }

    /// After attaching at `offset`: the broker delivers it at once if it is
    /// kept, or the first offset kept after it. If nothing comes, either the
    /// broker is slow or the history no longer reaches that far (it was
    /// deleted and declared again): the end of the history tells which.
    async fn check_resumed(&mut self, link: &Link, offset: u64) -> Result<()> {
        loop {
            let looked_back = self.lock().looked_back;
            if let Ok(read) = tokio::time::timeout(RESUME_WAIT, self.read()).await {
                return read;
            }
            // Still reading what comes before the position: not slow, long.
            if self.lock().looked_back == looked_back {
                break;
            }
        }
        let tail = last_offset(link, &self.user).await?;
        if tail.is_some_and(|tail| tail >= offset) {
            // Kept, and on its way.
            return Ok(());
        }
        tracing::info!(
            user = self.user,
            offset,
            "the history ends before the position asked for; reading it from its start"
        );
        {
            let mut state = self.state.lock().expect("never held across a panic");
            state.attach = Attach::First;
            state.verify = None;
            state.looking_back = None;
            state.live_from_ms = None;
        }
        self.feed
            .reset("the position asked for is past the end of the history");
        self.ahead.push_back(Entry::Gap);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("never held across a panic")
    }

    /// The upload time from which this reader gets every notification from
    /// the history: its start, for a reader attached by time; that of the
    /// notification it resumed at (or the first one kept, after a gap); or
    /// `None` if unknown (a history declared again, read from its start).
    pub(crate) fn live_from_ms(&self) -> Option<i64> {
        self.state
            .lock()
            .expect("never held across a panic")
            .live_from_ms
    }

    /// Whether everything after the position it was opened from is still
    /// kept: the first entry is not a gap, which it then takes away.
    pub(crate) fn resumed_whole(&mut self) -> bool {
        if matches!(self.ahead.front(), Some(Entry::Gap)) {
            self.ahead.pop_front();
            return false;
        }
        true
    }

    /// The notifications just before the position this reader resumed at,
    /// if it has reached it already (else they come with
    /// [`Entry::Resumed`]): its client had them.
    pub(crate) fn take_before_position(&mut self) -> Vec<Uuid> {
        match self.ahead.front_mut() {
            Some(Entry::Resumed { before, .. }) => std::mem::take(before),
            _ => Vec::new(),
        }
    }

    /// The next entry. Fails only when the connection is closed.
    pub(crate) async fn next(&mut self) -> Result<Entry> {
        loop {
            if let Some(entry) = self.ahead.pop_front() {
                return Ok(entry);
            }
            self.read().await?;
        }
    }

    /// Reads deliveries until one makes an entry (or two: a gap, and what
    /// follows it), and puts it in `ahead`.
    async fn read(&mut self) -> Result<()> {
        loop {
            let delivery = self.feed.next().await?;
            // A stream's acknowledgements are its consumer's credit, and a
            // stream refuses a reject (it closes the connection): every
            // delivery is acknowledged, whatever it holds.
            // Spawned: nothing is awaited once a delivery is taken, so that
            // a caller's timeout or `select!` never loses one.
            let acker = delivery.acker.clone();
            tokio::spawn(async move {
                let _ = broker::ack(&acker, BasicAckOptions::default()).await;
            });
            let Some(offset) = stream_offset(&delivery) else {
                continue;
            };
            let notification = protocol::decode_notification(&delivery.data)
                .ok()
                .filter(|notification| notification.validate().is_ok());
            let mut state = self.state.lock().expect("never held across a panic");
            if let Some((expected, id)) = state.verify {
                if offset < expected && state.looking_back.is_some() {
                    state.looked_back += 1;
                    let since = state.since_ms;
                    let had = notification
                        .as_ref()
                        .filter(|n| since.is_some_and(|since| n.uploaded_at_ms() >= since));
                    if let (Some(before), Some(had)) = (state.looking_back.as_mut(), had) {
                        before.push(had.id());
                    }
                    continue;
                }
                state.verify = None;
                let before = state.looking_back.take().unwrap_or_default();
                let same =
                    offset == expected && notification.as_ref().is_some_and(|n| n.id() == id);
                if same {
                    state.last_offset = Some(offset);
                    state.live_from_ms = notification.as_ref().map(Notification::uploaded_at_ms);
                    self.ahead.push_back(Entry::Resumed {
                        cursor: Cursor::Offset {
                            offset,
                            id,
                            since_ms: state.since_ms,
                        },
                        id,
                        before,
                    });
                    return Ok(());
                }
                {
                    // What followed the position is gone, in part or all
                    // (a broker that delivered from before it would be
                    // wrong too: say so rather than guess).
                    state.live_from_ms = notification.as_ref().map(Notification::uploaded_at_ms);
                    self.ahead.push_back(Entry::Gap);
                    let entry = state.entry(offset, notification);
                    self.ahead.push_back(entry);
                    return Ok(());
                }
            }
            if state.last_offset.is_some_and(|last| offset <= last) {
                continue;
            }
            let entry = state.entry(offset, notification);
            self.ahead.push_back(entry);
            return Ok(());
        }
    }

    /// Stops reading.
    pub(crate) async fn close(self) {
        self.feed.close().await;
    }
}

impl State {
    /// What a delivery at `offset` is to the reader; the position moves to it.
    fn entry(&mut self, offset: u64, notification: Option<Notification>) -> Entry {
        self.last_offset = Some(offset);
        let Some(notification) = notification else {
            // Not the server's (anyone may publish into a user's exchange in
            // open mode): nothing to show, and the next attachment is by time.
            tracing::debug!(
                offset,
                "skipping a message in a history that is not a notification"
            );
            return Entry::Moved(self.cursor_after_skip());
        };
        let id = notification.id();
        self.attach = Attach::Offset(offset, id);
        let cursor = Cursor::Offset {
            offset,
            id,
            since_ms: self.since_ms,
        };
        let old = self
            .floor_ms
            .is_some_and(|floor| notification.uploaded_at_ms() < floor);
        if old {
            Entry::Moved(cursor)
        } else {
            Entry::Notification {
                notification,
                cursor,
            }
        }
    }

    /// The position after a message that is not a notification: the last
    /// notification's, kept as the place to attach again.
    fn cursor_after_skip(&self) -> Cursor {
        match self.attach {
            Attach::Offset(offset, id) => Cursor::Offset {
                offset,
                id,
                since_ms: self.since_ms,
            },
            Attach::Time(ms) => Cursor::Time { ms },
            Attach::First => Cursor::Time { ms: 0 },
        }
    }
}

/// The offset the broker gives each delivery from a stream.
pub fn stream_offset(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get("x-stream-offset")? {
        AMQPValue::LongLongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::LongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::LongUInt(offset) => Some(u64::from(*offset)),
        _ => None,
    }
}

/// Sets a consumer up on the history, at the position the reader has reached.
async fn attach_consumer(
    session: &Session,
    login: &str,
    user: &str,
    state: &Mutex<State>,
) -> Result<Opened> {
    let (channel, _) =
        existing_queue(session, login, user, UserQueue::History, HISTORY_PREFETCH).await?;
    let (attach, look_back) = {
        let mut state = state.lock().expect("never held across a panic");
        state.verify = match state.attach {
            Attach::Offset(offset, id) => Some((offset, id)),
            _ => None,
        };
        // Attached again before reaching the position: what was read
        // before it is read again.
        if let Some(before) = state.looking_back.as_mut() {
            before.clear();
        }
        (state.attach, state.looking_back.is_some())
    };
    let start = match attach {
        Attach::Offset(offset, _) if look_back => {
            AMQPValue::LongLongInt(offset.saturating_sub(LOOK_BACK) as i64)
        }
        Attach::Offset(offset, _) => AMQPValue::LongLongInt(offset as i64),
        Attach::Time(ms) => AMQPValue::Timestamp(((ms - TIME_MARGIN_MS).max(0) / 1000) as u64),
        Attach::First => AMQPValue::LongString("first".into()),
    };
    let consumer = consume_from(&channel, user, start).await?;
    Ok(Opened {
        channel,
        consumer,
        owns_channel: true,
    })
}

async fn consume_from(channel: &Channel, user: &str, start: AMQPValue) -> Result<lapin::Consumer> {
    let mut arguments = FieldTable::default();
    arguments.insert(ShortString::from("x-stream-offset"), start);
    channel
        .basic_consume(
            topology::history(user).as_str().into(),
            format!("history:{user}:{}", Uuid::new_v4().simple())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .map_err(|err| {
            if broker::is_access_refused(&err) {
                Error::AccessRefused(broker::amqp_reason(&err))
            } else if broker::is_unavailable(&err) {
                Error::HistoryUnavailable {
                    user: user.to_owned(),
                    reason: broker::amqp_reason(&err),
                }
            } else {
                Error::Broker(err)
            }
        })
}

/// The offset of the last notification kept in `user`'s history, if any:
/// the broker delivers the last chunk to a consumer attached at "last".
async fn last_offset(link: &Link, user: &str) -> Result<Option<u64>> {
    let session = link.session().await?;
    let channel = session.connection().create_channel().await?;
    channel
        .basic_qos(HISTORY_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = consume_from(&channel, user, AMQPValue::LongString("last".into())).await?;
    let mut last = None;
    let deadline = tokio::time::Instant::now() + TAIL_WAIT;
    use futures_lite::StreamExt;
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout_at(deadline, consumer.next()).await {
        let _ = broker::ack(&delivery.acker, BasicAckOptions::default()).await;
        last = last.max(stream_offset(&delivery));
    }
    let _ = channel.close(200, "looked".into()).await;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let id = Uuid::new_v4();
        for cursor in [
            Cursor::Offset {
                offset: 0,
                id,
                since_ms: None,
            },
            Cursor::Offset {
                offset: i64::MAX as u64,
                id,
                since_ms: Some(1_700_000_000_000),
            },
            Cursor::Time {
                ms: 1_700_000_000_000,
            },
        ] {
            assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        }
    }

    #[test]
    fn a_cursor_not_written_here_is_refused_with_what_to_give() {
        for text in [
            "",
            "o",
            "o12",
            "o12.",
            "o-1.00000000000000000000000000000000",
            "o1.0000000000000000000000000000000g",
            "o1.00000000-0000-0000-0000-000000000000",
            "t",
            "t-5",
            "x12",
            "o99999999999999999999999.00000000000000000000000000000000",
            "o18446744073709551615.00000000000000000000000000000000",
            "o1.00000000000000000000000000000000.",
            "o1.00000000000000000000000000000000.-5",
            "o1.00000000000000000000000000000000.+5",
            "o1.00000000000000000000000000000000.5.6",
        ] {
            let err = text.parse::<Cursor>().unwrap_err();
            assert!(err.to_string().contains("not a position"), "{text}: {err}");
        }
    }
}
