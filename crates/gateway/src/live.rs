//! The event streams. Each connection, a Server-Sent Events request or a
//! WebSocket, opens a session of the user's notifications
//! (`ytnotify::client::notifications`) after the position the browser gives
//! (`Last-Event-ID`, or `?last_event_id=` for a page that opens a stream
//! itself), and passes on what it reads as events:
//!
//! | event          | when                                              | id (SSE) / `cursor` |
//! |----------------|---------------------------------------------------|---------------------|
//! | `hello`        | first; again if the history lost what followed    | the position        |
//! | `notification` | a notification this connection has not sent       | its position, if it came from the history |
//! | `position`     | the position moved past something already sent    | the position        |
//! | `problem`      | the session failed; the stream ends               | —                   |
//!
//! The page says what it has shown with `POST /api/users/<name>/ack` (or an
//! `ack` message on the WebSocket); only then do the inbox's copies go.

use std::convert::Infallible;

use axum::{
    extract::{
        Path, Query, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code,
            rejection::WebSocketUpgradeRejection,
        },
    },
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;
use ytnotify::{
    broker,
    client::{
        history::Cursor,
        notifications::{Notifications, Update},
    },
    protocol::Notification,
    topology,
};

use crate::{
    Gateway,
    api::{ApiError, user_name},
};

/// The largest message a WebSocket client may send: an acknowledgement of
/// about a hundred notifications.
const MAX_WS_MESSAGE_BYTES: usize = 4 * 1024;

/// Events a connection's pump may hold for a slow client before it waits.
const PENDING_EVENTS: usize = 64;

/// One event of a stream.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LiveEvent {
    Hello {
        connection: Uuid,
        /// Whether everything after the position asked for was still kept.
        recovered: bool,
        gateway: String,
        cursor: String,
    },
    Notification {
        id: Uuid,
        youtuber: String,
        video: String,
        uploaded_at_ms: i64,
        away: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    Position {
        cursor: String,
    },
    Problem {
        error: String,
    },
}

impl LiveEvent {
    fn name(&self) -> &'static str {
        match self {
            LiveEvent::Hello { .. } => "hello",
            LiveEvent::Notification { .. } => "notification",
            LiveEvent::Position { .. } => "position",
            LiveEvent::Problem { .. } => "problem",
        }
    }

    fn cursor(&self) -> Option<&str> {
        match self {
            LiveEvent::Hello { cursor, .. } | LiveEvent::Position { cursor } => Some(cursor),
            LiveEvent::Notification { cursor, .. } => cursor.as_deref(),
            LiveEvent::Problem { .. } => None,
        }
    }

    /// As Server-Sent Events: the position is the event's id (the browser
    /// sends the last one back as `Last-Event-ID`); a move of the position
    /// alone is an id with no data, which the browser records without
    /// dispatching anything.
    fn to_sse(&self) -> Event {
        let mut event = Event::default();
        if let Some(cursor) = self.cursor() {
            // A cursor is ASCII letters, digits and a dot: never a line break.
            event = event.id(cursor);
        }
        if matches!(self, LiveEvent::Position { .. }) {
            return event;
        }
        let data = serde_json::to_string(self).expect("events always serialize");
        event.event(self.name()).data(data)
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events always serialize")
    }
}

/// Where a stream starts.
#[derive(Deserialize)]
pub(crate) struct Resume {
    last_event_id: Option<String>,
}

/// The position to resume after: the `Last-Event-ID` header (a browser's
/// own reconnection) wins over the query (a page's first stream).
fn resume_cursor(headers: &HeaderMap, query: &Resume) -> Result<Option<Cursor>, ApiError> {
    let header = headers
        .get("last-event-id")
        .map(|value| value.to_str().unwrap_or("\u{fffd}"));
    let given = header
        .or(query.last_event_id.as_deref())
        .filter(|id| !id.is_empty());
    given
        .map(|id| {
            id.parse::<Cursor>()
                .map_err(|invalid| ApiError::new(StatusCode::BAD_REQUEST, invalid.to_string()))
        })
        .transpose()
}

/// What a stream reads on, kept for as long as it is open.
enum On {
    Pool(crate::pool::Lease),
    Account(crate::Caller),
}

/// An open session, read as events.
struct Live {
    gateway: Gateway,
    connection: Uuid,
    notifications: Notifications,
    /// Its place on one of the gateway's connections (open mode), or the
    /// account's login it reads through (secure mode).
    _on: On,
    /// The first event, ready before the stream starts.
    hello: Option<LiveEvent>,
    ended: bool,
}

impl Live {
    /// Checks the request and opens the session: every error is an HTTP
    /// answer, before any stream starts.
    async fn open(
        gateway: Gateway,
        name: &str,
        headers: &HeaderMap,
        query: &Resume,
    ) -> Result<Live, ApiError> {
        let user = user_name(name)?;
        let from = resume_cursor(headers, query)?;
        let caller = gateway.caller(headers, user)?;
        check_user_exists(gateway.client(&caller).link(), user).await?;
        let requests = gateway.client(&caller).requests();
        let on = match caller {
            crate::Caller::Anyone => On::Pool(gateway.0.pool.lease().await?),
            account => On::Account(account),
        };
        let link = match &on {
            On::Pool(lease) => lease.link(),
            On::Account(caller) => gateway.client(caller).link(),
        };
        let notifications = Notifications::open(link, &requests, user, from)
            .await?
            .resumable();
        let connection = Uuid::new_v4();
        gateway
            .0
            .connections
            .lock()
            .expect("never held across a panic")
            .insert(connection, (user.to_owned(), notifications.acks()));
        let hello = LiveEvent::Hello {
            connection,
            recovered: notifications.recovered(),
            gateway: gateway.0.serving.clone(),
            cursor: notifications.position().to_string(),
        };
        tracing::debug!(user, %connection, "event stream opened");
        Ok(Live {
            gateway,
            connection,
            notifications,
            _on: on,
            hello: Some(hello),
            ended: false,
        })
    }

    /// The next event; `None` once the stream must end (the session failed,
    /// after its `problem`, or the gateway is stopping).
    async fn next_event(&mut self) -> Option<LiveEvent> {
        if let Some(hello) = self.hello.take() {
            return Some(hello);
        }
        if self.ended {
            return None;
        }
        let mut stopping = self.gateway.0.stopping.clone();
        let update = tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => return None,
            update = self.notifications.next_update() => update,
        };
        Some(match update {
            Ok(Update::Notification(received)) => {
                let Notification::VideoUploaded {
                    id,
                    youtuber,
                    video,
                    uploaded_at_ms,
                    ..
                } = received.notification;
                LiveEvent::Notification {
                    id,
                    youtuber,
                    video,
                    uploaded_at_ms,
                    away: received.away,
                    cursor: received.cursor.map(|cursor| cursor.to_string()),
                }
            }
            Ok(Update::Moved(cursor)) => LiveEvent::Position {
                cursor: cursor.to_string(),
            },
            Ok(Update::Gap) => LiveEvent::Hello {
                connection: self.connection,
                recovered: false,
                gateway: self.gateway.0.serving.clone(),
                cursor: self.notifications.position().to_string(),
            },
            Err(err) => {
                self.ended = true;
                LiveEvent::Problem {
                    error: err.to_string(),
                }
            }
        })
    }

    /// Acknowledges what the client says it has shown.
    async fn shown(&self, ids: &[Uuid]) -> ytnotify::error::Result<()> {
        let acks = self.notifications.acks();
        for id in ids {
            acks.shown(*id).await?;
        }
        Ok(())
    }

    async fn close(self) {
        self.gateway
            .0
            .connections
            .lock()
            .expect("never held across a panic")
            .remove(&self.connection);
        tracing::debug!(connection = %self.connection, "event stream closed");
        self.notifications.close().await;
    }
}

/// A user who never logged in has no inbox: a stream for that name is a
/// mistake (a typo, say), not a request to add the user.
async fn check_user_exists(link: &ytnotify::link::Link, user: &str) -> Result<(), ApiError> {
    let session = link.session().await?;
    let channel = session
        .connection()
        .create_channel()
        .await
        .map_err(ytnotify::error::Error::from)?;
    let found = topology::inspect(&channel, &topology::inbox(user)).await;
    if channel.status().connected() {
        let _ = channel.close(200, "looked".into()).await;
    }
    match found {
        Ok(_) => Ok(()),
        Err(err) if broker::is_not_found(&err) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "there is no user {user}: log in first (on the page, with POST /api/session, \
                 or with `user login {user}`)"
            ),
        )),
        Err(err) => Err(ytnotify::error::Error::from(err).into()),
    }
}

/// `GET /api/users/{name}/events`: the notifications as Server-Sent Events.
pub(crate) async fn events(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    Query(query): Query<Resume>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let keep_alive = gateway.0.keep_alive;
    let mut live = Live::open(gateway, &name, &headers, &query).await?;
    let (sender, events) = mpsc::channel::<LiveEvent>(PENDING_EVENTS);
    // The pump ends when the client goes (the stream, and its receiver, are
    // dropped), when the session fails, or when the gateway stops.
    let mut stopping = live.gateway.0.stopping.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = sender.closed() => break,
                event = live.next_event() => event,
            };
            let Some(event) = event else { break };
            // A client that reads nothing fills the channel: the pump waits
            // for it, but not past the gateway's stop.
            tokio::select! {
                sent = sender.send(event) => if sent.is_err() { break },
                _ = stopping.wait_for(|stop| *stop) => break,
            }
        }
        live.close().await;
    });
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((Ok(event.to_sse()), events))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive)))
}

/// What a WebSocket client may send.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    /// The notifications the client has shown.
    Ack { ids: Vec<Uuid> },
}

/// `GET /api/users/{name}/ws`: the notifications over a WebSocket, as JSON
/// text messages; the client acknowledges with `{"type":"ack","ids":[...]}`.
pub(crate) async fn websocket(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    Query(query): Query<Resume>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The request is checked first, so that a wrong name says so even to a
    // client that is not a WebSocket.
    user_name(&name)?;
    resume_cursor(&headers, &query)?;
    let caller = gateway.caller(&headers, &name)?;
    check_user_exists(gateway.client(&caller).link(), &name).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            format!(
                "{} ({}); this address takes a WebSocket, /api/users/{name}/events takes \
                 Server-Sent Events",
                "not a WebSocket request",
                rejection.body_text()
            ),
        )
    })?;
    let live = Live::open(gateway, &name, &headers, &query).await?;
    Ok(upgrade
        .max_message_size(MAX_WS_MESSAGE_BYTES)
        .max_frame_size(MAX_WS_MESSAGE_BYTES)
        .on_failed_upgrade(|err| tracing::debug!(%err, "a WebSocket upgrade failed"))
        .on_upgrade(move |socket| websocket_session(socket, live))
        .into_response())
}

async fn websocket_session(mut socket: WebSocket, mut live: Live) {
    loop {
        tokio::select! {
            event = live.next_event() => {
                let Some(event) = event else {
                    let _ = socket.send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: "the gateway is stopping or the session ended; connect again".into(),
                    }))).await;
                    break;
                };
                if socket.send(Message::Text(event.to_json().into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::Ack { ids }) => live.shown(&ids).await.err().map(|err| err.to_string()),
                        Err(err) => Some(format!(
                            "cannot read this message ({err}); send {{\"type\":\"ack\",\"ids\":[...]}}"
                        )),
                    };
                    if let Some(error) = reply {
                        let problem = LiveEvent::Problem { error };
                        if socket.send(Message::Text(problem.to_json().into())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let problem = LiveEvent::Problem {
                        error: "binary messages are not taken; send JSON text".into(),
                    };
                    if socket.send(Message::Text(problem.to_json().into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(err)) => {
                    // A message over the size limit, or a broken frame.
                    tracing::debug!(%err, "closing a WebSocket after a bad message");
                    let _ = socket.send(Message::Close(Some(CloseFrame {
                        code: close_code::SIZE,
                        reason: format!("messages are at most {MAX_WS_MESSAGE_BYTES} bytes").into(),
                    }))).await;
                    break;
                }
            }
        }
    }
    live.close().await;
}
