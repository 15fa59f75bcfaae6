//! Connecting to RabbitMQ and publishing with confirms.

use std::{path::PathBuf, time::Duration};

use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties,
    DefaultConnectionBuilder,
    options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions},
    tcp::OwnedTLSConfig,
    types::{LongString, ShortString},
};

pub use crate::broker_url::redact;
use crate::{
    broker_url::BrokerUrl,
    error::{Error, Result},
};

/// The broker every program uses unless told otherwise.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where RabbitMQ is and, for an `amqps://` URL, which certificate authority
/// to trust besides the system's: what every program connects with.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The AMQP URL; its user is the account, its vhost the ytnotify stack.
    /// Several URLs separated by commas are the nodes of one cluster, tried
    /// in turn ([`crate::broker_url::parse_list`]).
    pub url: String,
    /// A PEM file of the certificate authority that signed the broker's
    /// certificate, for a private CA.
    pub ca_cert: Option<PathBuf>,
}

impl Endpoint {
    /// The broker at `url`, trusted as the system trusts it.
    pub fn new(url: impl Into<String>) -> Endpoint {
        Endpoint {
            url: url.into(),
            ca_cert: None,
        }
    }

    /// The URL to show in messages and logs: the password hidden.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// The URL of each node, in the order given.
    pub fn urls(&self) -> Result<Vec<BrokerUrl>> {
        crate::broker_url::parse_list(&self.url)
    }

    /// The first node's URL: its vhost and user are every node's.
    pub fn first_url(&self) -> Result<BrokerUrl> {
        Ok(self.urls()?.swap_remove(0))
    }

    /// The same nodes and CA, logged in as `user` with `password`.
    pub fn with_login(&self, user: &str, password: &str) -> Result<Endpoint> {
        let urls: Vec<String> = self
            .urls()?
            .iter()
            .map(|url| url.with_login(user, password).to_string())
            .collect();
        Ok(Endpoint {
            url: urls.join(","),
            ca_cert: self.ca_cert.clone(),
        })
    }

    /// The certificates to trust besides the system's, read from
    /// [`Endpoint::ca_cert`] at each connection (so a renewed CA is picked up).
    fn tls(&self) -> Result<OwnedTLSConfig> {
        let Some(path) = &self.ca_cert else {
            return Ok(OwnedTLSConfig::default());
        };
        let pem = std::fs::read_to_string(path).map_err(|err| Error::CaCert {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(Error::CaCert {
                path: path.display().to_string(),
                reason: "it holds no PEM certificate".to_owned(),
            });
        }
        Ok(OwnedTLSConfig {
            identity: None,
            cert_chain: Some(pem),
        })
    }
}

/// Debug output ends up in logs and panics: never with the password.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.redacted())
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::new(DEFAULT_AMQP_URL)
    }
}

/// How long to wait for the TCP and AMQP handshake before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The heartbeat asked of the broker unless the URL sets one, in seconds: a
/// stalled broker (or network) is noticed within about twice this.
pub const HEARTBEAT_SECS: u16 = 10;

/// Opens one connection to RabbitMQ, naming it so it shows in `rabbitmqctl
/// list_connections`. Errors say whether the broker is missing or refused us.
///
/// The connection does not recover by itself: [`crate::link::Link`] owns
/// reconnection, and every program connects through it.
pub async fn connect(endpoint: &Endpoint, connection_name: &str) -> Result<Connection> {
    Ok(connect_from(endpoint, 0, connection_name).await?.0)
}

/// [`connect`] to the first node that answers, of the endpoint's nodes
/// taken in turn from the `start`th (wrapping round), and which one that
/// was. A node that refuses the login refuses it for all: that error is
/// final. When none answers, the error names each node and what it said.
pub async fn connect_from(
    endpoint: &Endpoint,
    start: usize,
    connection_name: &str,
) -> Result<(Connection, usize)> {
    let urls = endpoint.urls()?;
    let tls = endpoint.tls()?;
    let mut unreachable = Vec::new();
    let mut last = None;
    for index in (0..urls.len()).map(|i| (start + i) % urls.len()) {
        match connect_to(&urls[index], &tls, connection_name).await {
            Ok(connection) => return Ok((connection, index)),
            Err(err) if urls.len() == 1 || is_the_clusters(&err) => return Err(err),
            Err(Error::BrokerUnreachable { address, reason }) => {
                tracing::debug!("{connection_name}: {address} did not answer ({reason})");
                unreachable.push(format!("{address}: {reason}"));
            }
            // This node's own trouble (shutting down, a vhost down on it,
            // something else listening): the next may serve.
            Err(err) => {
                tracing::debug!(%err, "{connection_name}: a node refused the connection");
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::BrokerUnreachable {
        address: format!("any of its {} nodes", urls.len()),
        reason: unreachable.join("; "),
    }))
}

/// Whether a refused connection would be refused by every node of the
/// cluster alike: the login, or a vhost that does not exist.
fn is_the_clusters(err: &Error) -> bool {
    match err {
        Error::BrokerRefused { reason, .. } => {
            reason.contains("ACCESS_REFUSED") || reason.contains("not found")
        }
        Error::BadUrl { .. } | Error::CaCert { .. } | Error::UntrustedCertificate { .. } => true,
        _ => false,
    }
}

async fn connect_to(
    url: &BrokerUrl,
    tls: &OwnedTLSConfig,
    connection_name: &str,
) -> Result<Connection> {
    let address = url.redacted();
    let mut uri = url.uri().clone();
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    // Fail fast, with the right words, when nothing listens.
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
    // Something listens. A handshake that the network cuts (a connection
    // reset on the way) is tried again within the same time limit; a
    // refusal by the broker is final.
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    let mut pause = Duration::from_millis(100);
    loop {
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from(connection_name));
        let attempt = async {
            DefaultConnectionBuilder::new()?
                .with_uri(uri.clone())
                .with_properties(properties)
                .with_tls_config(tls.clone())
                .connect()
                .await
        };
        let err = match tokio::time::timeout_at(deadline, attempt).await {
            Err(_) => {
                return Err(Error::BrokerUnreachable {
                    address,
                    reason: format!("no AMQP handshake within {}s", CONNECT_TIMEOUT.as_secs()),
                });
            }
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(err)) => err,
        };
        if !is_cut(&err) || tokio::time::Instant::now() + pause >= deadline {
            let tls = uri.scheme == lapin::uri::AMQPScheme::AMQPS;
            return Err(classify_connect_error(address, tls, err));
        }
        tracing::debug!(%err, "the connection was cut during the handshake; trying again");
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

/// Whether the broker said that a queue or exchange does not exist.
pub fn is_not_found(err: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
    )
}

/// Whether the broker said that a queue exists but cannot be used now: its
/// home node is down, or (RabbitMQ 3.10, a stream declared just before the
/// broker crashed) its replica never came back (`ARCHITECTURE.md`).
pub fn is_unavailable(err: &lapin::Error) -> bool {
    let reason = amqp_reason(err);
    (is_not_found(err) && reason.contains("is down or inaccessible"))
        // A stream whose member on this node is not running (yet): RabbitMQ
        // 3.10 says so to a consumer of a stream just declared under load.
        || (is_precondition_failed(err) && reason.contains("does not have a replica on the local node"))
}

/// Whether the broker refused a declaration whose settings differ from the
/// existing queue's or exchange's.
pub fn is_precondition_failed(err: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Whether the broker refused an operation that the account may not do.
pub fn is_access_refused(err: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
    )
}

/// What the broker said when it closed a channel or connection, without
/// lapin's wrapping; or the error as it is.
pub fn amqp_reason(err: &lapin::Error) -> String {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => err.to_string(),
    }
}

/// Whether a connection failed because the network cut it, not because
/// nothing listens or the broker refused.
pub(crate) fn is_cut(err: &lapin::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        lapin::ErrorKind::IOError(io) if matches!(
            io.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        )
    )
}

/// The error for a topology that cannot be declared: most often a queue or
/// exchange that another client declared first with other settings.
pub fn topology_error(url: &str, err: lapin::Error) -> Error {
    if is_not_found(&err) {
        return Error::NotSetUp {
            address: redact(url),
        };
    }
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp
                .get_message()
                .as_str()
                .contains("inequivalent arg 'x-queue-type'") =>
        {
            Error::MixedQueueTypes {
                address: redact(url),
                reason: amqp.to_string(),
            }
        }
        lapin::ErrorKind::ProtocolError(amqp) => Error::Topology {
            address: redact(url),
            reason: amqp.to_string(),
        },
        _ => Error::Broker(err),
    }
}

fn classify_connect_error(address: String, tls: bool, err: lapin::Error) -> Error {
    use lapin::ErrorKind;
    match err.kind() {
        // rustls reports an untrusted certificate, a name that does not
        // match it, or a peer that does not speak TLS, as invalid data.
        ErrorKind::IOError(io) if tls && io.kind() == std::io::ErrorKind::InvalidData => {
            tls_error(address, io)
        }
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
        // Neither nothing listening nor a refusal: say what lapin saw,
        // without guessing at a cause.
        _ => Error::Broker(err),
    }
}

/// What went wrong in a TLS handshake, and what to do about it.
fn tls_error(address: String, io: &std::io::Error) -> Error {
    use rustls::{CertificateError, Error as Rustls};
    let reason = io.to_string();
    let advice = match io.get_ref().and_then(|err| err.downcast_ref::<Rustls>()) {
        Some(Rustls::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => return Error::UntrustedCertificate { address, reason },
        Some(Rustls::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => {
            "the broker's certificate is for another host name: use the name it was issued for in the URL"
        }
        Some(Rustls::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => {
            "the broker's certificate has expired or is not valid yet: renew it, or check this machine's clock"
        }
        Some(Rustls::InvalidMessage(_)) => {
            "the port may not speak TLS: amqps:// needs the broker's TLS port (5671 unless configured otherwise)"
        }
        _ => "check the broker's TLS settings",
    };
    Error::Tls {
        address,
        reason,
        advice,
    }
}

/// How long settling a delivery may take before it is left to the broker.
const SETTLE_WITHIN: Duration = Duration::from_secs(3);

/// Acknowledges a delivery. Returns `Ok(false)` when the acknowledgement was
/// not written within [`SETTLE_WITHIN`] (or the delivery was already settled):
/// then the broker delivers it again if the connection is lost.
///
/// Every acknowledgement of the crate goes through here, for one reason:
/// lapin 4.12 completes an acknowledgement once its frame is written, and
/// fails the frames waiting to be written once, when the connection dies; a
/// frame queued right after that is never written nor failed, and the call
/// would never return (see `ARCHITECTURE.md`). Past the bound, the frame
/// stays queued: on a live connection it is still written.
pub async fn ack(acker: &Acker, options: BasicAckOptions) -> Result<bool> {
    settle(acker.ack(options)).await
}

/// Rejects a delivery (back to the queue with `requeue`, else to the
/// dead-letter exchange), with the bound of [`ack`].
pub async fn nack(acker: &Acker, options: BasicNackOptions) -> Result<bool> {
    settle(acker.nack(options)).await
}

async fn settle(settling: impl Future<Output = lapin::Result<bool>>) -> Result<bool> {
    match tokio::time::timeout(SETTLE_WITHIN, settling).await {
        Ok(settled) => Ok(settled?),
        Err(_) => {
            tracing::debug!("an acknowledgement was not written within {SETTLE_WITHIN:?}");
            Ok(false)
        }
    }
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
    /// What the message was published to, as errors name it.
    pub fn target(&self) -> &str {
        &self.target
    }

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
