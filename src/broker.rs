//! Connecting to RabbitMQ and publishing with confirms.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{LongString, ShortString},
    uri::AMQPUri,
};

use crate::error::{Error, Result};

/// The broker every program uses unless told otherwise.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long to wait for the TCP and AMQP handshake before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// Hides the password of an AMQP URL, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// The heartbeat asked of the broker unless the URL sets one: a stalled broker
/// (or network) is noticed within about twice this.
const HEARTBEAT_SECS: u16 = 10;

/// Connects to RabbitMQ, naming the connection so it shows in `rabbitmqctl
/// list_connections`. Errors say whether the broker is missing or refused us.
///
/// The connection recovers by itself (lapin's auto-recovery): after a broker
/// restart or a network cut it reconnects with backoff, for as long as it
/// takes, and replays channels, QoS, declarations, bindings and consumers.
/// Code that sees an error calls `Channel::wait_for_recovery` and carries on;
/// [`watch_link`] reports the state.
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection> {
    let address = redact(url);
    let mut uri: AMQPUri = url.parse().map_err(|reason: String| Error::BrokerRefused {
        address: address.clone(),
        reason: format!("not an AMQP URL: {reason}"),
    })?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    // Fail fast, with the right words, when nothing listens: lapin would
    // otherwise keep retrying the first connection too.
    let target = (uri.authority.host.clone(), uri.authority.port);
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
        Err(_) => {
            return Err(Error::BrokerUnreachable {
                address,
                reason: format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            });
        }
        Ok(Err(err)) => {
            let reason = match err.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                _ => err.to_string(),
            };
            return Err(Error::BrokerUnreachable { address, reason });
        }
        Ok(Ok(_probe)) => {}
    }
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(connection_name))
        .enable_auto_recover()
        .configure_backoff(|backoff| {
            backoff
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
        });
    let attempt = Connection::connect_uri(uri, properties);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(Error::BrokerUnreachable {
            address,
            reason: format!("no AMQP handshake within {}s", CONNECT_TIMEOUT.as_secs()),
        }),
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(classify_connect_error(address, err)),
    }
}

/// The state of a connection to RabbitMQ, for status lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Connected,
    /// Lost; reconnecting with backoff.
    Reconnecting(String),
    /// The broker blocks publishers (a memory or disk alarm); publishes wait.
    Blocked(String),
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Connected => f.write_str("connected"),
            LinkState::Reconnecting(why) => write!(f, "reconnecting ({why})"),
            LinkState::Blocked(why) => write!(f, "blocked by the broker ({why}); waiting"),
        }
    }
}

/// Follows a connection's state: logs each change (at warn level, so the
/// clients show it on stderr) and publishes it for dashboards. The state is
/// sampled four times a second, and the broker's blocked notice as it comes.
pub fn watch_link(connection: &Connection, label: &str) -> tokio::sync::watch::Receiver<LinkState> {
    use futures_lite::StreamExt;
    let (state, receiver) = tokio::sync::watch::channel(LinkState::Connected);
    let status = connection.status().clone();
    let mut events = connection.events_listener();
    let label = label.to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut blocked_by: Option<String> = None;
        let mut last_error = String::from("connection lost");
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                event = events.next() => match event {
                    Some(lapin::Event::ConnectionBlocked(reason)) => blocked_by = Some(reason),
                    Some(lapin::Event::ConnectionUnblocked) => blocked_by = None,
                    Some(lapin::Event::Error(err)) => last_error = err.to_string(),
                    Some(_) => {}
                    None => break,
                },
            }
            let next = if status.reconnecting() || status.errored() || status.connecting() {
                LinkState::Reconnecting(last_error.clone())
            } else if status.closed() || status.closing() {
                break;
            } else if status.blocked() {
                LinkState::Blocked(
                    blocked_by
                        .clone()
                        .unwrap_or_else(|| "resource alarm".to_owned()),
                )
            } else {
                LinkState::Connected
            };
            if *state.borrow() == next {
                continue;
            }
            match &next {
                LinkState::Connected => tracing::warn!("{label}: connected to RabbitMQ again"),
                LinkState::Reconnecting(why) => {
                    tracing::warn!("{label}: lost the connection to RabbitMQ ({why}); reconnecting")
                }
                LinkState::Blocked(why) => tracing::warn!(
                    "{label}: RabbitMQ blocks publishing ({why}); waiting until it resumes"
                ),
            }
            if state.send(next).is_err() {
                break;
            }
        }
    });
    receiver
}

fn classify_connect_error(address: String, err: lapin::Error) -> Error {
    use lapin::ErrorKind;
    match err.kind() {
        ErrorKind::IOError(io) => {
            let reason = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                _ => io.to_string(),
            };
            Error::BrokerUnreachable { address, reason }
        }
        ErrorKind::ProtocolError(amqp) => Error::BrokerRefused {
            address,
            reason: amqp.to_string(),
        },
        _ => Error::BrokerRefused {
            address,
            reason: err.to_string(),
        },
    }
}

/// Whether an error means the connection is down, so that waiting for lapin
/// to reconnect (`Channel::wait_for_recovery`) is the cure. An error the
/// broker raised on one channel (a missing queue, say) closes that channel
/// only; waiting would not fix it.
pub fn is_outage(err: &lapin::Error) -> bool {
    let on_one_channel = matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    );
    err.can_be_recovered() && !on_one_channel
}

/// Opens a channel with publisher confirms on.
pub async fn confirming_channel(connection: &Connection) -> Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Properties of a persistent JSON message.
pub fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(PERSISTENT)
}

/// Publishes and waits for the broker's confirm: when this returns `Ok`, the
/// broker has taken responsibility for the message (for a persistent message
/// on a durable queue, it is on disk). With `mandatory`, a message that no
/// queue takes is an error instead of silently dropped.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<()> {
    publish(channel, exchange, routing_key, mandatory, body, properties)
        .await?
        .confirmed()
        .await
}

/// Publishes without waiting for the confirm, so that several publishes can be
/// in flight at once (the broker writes them to disk together). Await
/// [`Unconfirmed::confirmed`] on each before relying on any of them.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Unconfirmed> {
    let options = BasicPublishOptions {
        mandatory,
        ..BasicPublishOptions::default()
    };
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties,
        )
        .await?;
    let target = if exchange.is_empty() {
        format!("queue {routing_key}")
    } else {
        format!("exchange {exchange} (key {routing_key:?})")
    };
    Ok(Unconfirmed { confirm, target })
}

/// A message published on a confirming channel whose confirm may not have
/// come yet.
#[must_use = "a publish is only safe once confirmed"]
pub struct Unconfirmed {
    confirm: lapin::PublisherConfirm,
    target: String,
}

impl Unconfirmed {
    /// Waits for the broker's confirm.
    pub async fn confirmed(self) -> Result<()> {
        let target = self.target;
        match self.confirm.await? {
            Confirmation::Ack(None) => Ok(()),
            // Only channels from `confirming_channel` come here; a channel
            // without confirms would make every guarantee a lie: refuse loudly.
            Confirmation::NotRequested => Err(Error::Nacked(format!(
                "{target}: the channel has no publisher confirms"
            ))),
            Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable(target)),
            Confirmation::Nack(_) => Err(Error::Nacked(target)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
        assert_eq!(redact("not a url"), "not a url");
    }
}
