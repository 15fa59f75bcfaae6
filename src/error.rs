//! The library's one error type. Every message is one line that says what went
//! wrong and what to do about it; the binaries print it and exit. A message
//! that asks to change a setting names the setting ([`Error::setting`]), not
//! a flag: each program adds its own flag.

use std::time::Duration;

use crate::names::InvalidName;

/// Anything that can go wrong in ytnotify.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers at the broker's address.
    #[error(
        "cannot reach RabbitMQ at {address} ({reason}); start it with `sudo rabbitmq-server -detached` \
         (install it with `sudo apt-get install rabbitmq-server`), or give the URL of a running broker"
    )]
    BrokerUnreachable { address: String, reason: String },
    /// A server asked for queues of one type on a vhost whose queues are of
    /// the other.
    #[error(
        "the queues of vhost {vhost} are {found} queues, and --queue-type asks for {wanted}; \
         move them with `youtube_server migrate-queues --to {wanted}` (it loses nothing), or \
         leave out --queue-type to use them as they are"
    )]
    QueueTypeMismatch {
        vhost: String,
        found: crate::topology::QueueType,
        wanted: crate::topology::QueueType,
    },
    /// The broker answered but refused the connection (credentials, vhost).
    #[error(
        "RabbitMQ at {address} refused the connection ({reason}); check the user, password and \
         vhost of the broker's URL"
    )]
    BrokerRefused { address: String, reason: String },
    /// The broker's address is not an AMQP URL.
    #[error(
        "{address} is not an AMQP URL ({reason}); write it as amqp://user:password@host:5672/vhost"
    )]
    BadUrl { address: String, reason: String },
    /// The certificate authority file for `amqps://` cannot be used.
    #[error("cannot use the CA certificate {path}: {reason}; give a PEM file")]
    CaCert { path: String, reason: String },
    /// The broker's TLS certificate is signed by no CA this program trusts.
    #[error(
        "the TLS handshake with RabbitMQ at {address} failed ({reason}); if the broker's \
         certificate is signed by a private CA, give that CA's PEM file"
    )]
    UntrustedCertificate { address: String, reason: String },
    /// TLS with the broker failed for another reason.
    #[error("the TLS handshake with RabbitMQ at {address} failed ({reason}); {advice}")]
    Tls {
        address: String,
        reason: String,
        advice: &'static str,
    },
    /// RabbitMQ's management API cannot be reached or used.
    #[error(
        "cannot use RabbitMQ's management API at {address} ({reason}); enable it with \
         `sudo rabbitmq-plugins enable rabbitmq_management`, or give its address"
    )]
    Management { address: String, reason: String },
    /// The management API refused the credentials.
    #[error(
        "RabbitMQ's management API at {address} refused the user {user}; managing accounts needs \
         a RabbitMQ user tagged administrator in the broker's URL"
    )]
    ManagementRefused { address: String, user: String },
    /// The management API answered a call with an error.
    #[error("RabbitMQ's management API answered {status} to {what}")]
    ManagementStatus { status: u16, what: String },
    /// The account to add exists already.
    #[error(
        "the account {0} exists already on the broker; to give it a new password, remove it \
         (youtube_server account remove) and add it again"
    )]
    AccountExists(String),
    /// The account to remove does not exist.
    #[error(
        "there is no account {account} on the broker (vhost {vhost}); see youtube_server account list"
    )]
    NoSuchAccount { account: String, vhost: String },
    /// The account to remove has no permissions on this vhost.
    #[error(
        "the account {account} has no permissions on vhost {vhost}: it belongs to another vhost, \
         so it is left alone; use that vhost's URL to remove it"
    )]
    AccountElsewhere { account: String, vhost: String },
    /// A saved account file cannot be read or written.
    #[error("cannot use the account file {path}: {reason}")]
    SavedAccount { path: String, reason: String },
    /// The shared exchanges and queues cannot be declared as ytnotify needs them.
    #[error(
        "RabbitMQ at {address} refused ytnotify's queues and exchanges ({reason}); another client \
         declared the one named there with other settings: an administrator must delete it \
         (`rabbitmqctl delete_queue -p <vhost> <name>` for a queue)"
    )]
    Topology { address: String, reason: String },
    /// A queue of the vhost has another type than the request queues.
    #[error(
        "RabbitMQ at {address} holds a queue of another type than the vhost's request queues \
         ({reason}); a move between queue types stopped half-way, a client came first to a new \
         vhost, or an older program made it: move them all to one type with \
         `youtube_server migrate-queues --to <type>` (it loses nothing)"
    )]
    MixedQueueTypes { address: String, reason: String },
    /// The account may not declare the topology, and nobody has.
    #[error(
        "RabbitMQ at {address} has no ytnotify exchanges yet, and this account may not declare \
         them: start youtube_server on this vhost first"
    )]
    NotSetUp { address: String },
    /// A request queue is missing and this account may not declare it.
    #[error(
        "{0} is missing on the broker, and this account may not declare it: youtube_server \
         declares it when it starts (start it, or ask whoever runs it)"
    )]
    QueueMissing(String),
    /// The broker refused an operation that the account may not do.
    #[error(
        "RabbitMQ refused access ({0}): the broker's URL logs in with an account that may not do \
         this; use the account of the user or YouTuber you act as"
    )]
    AccessRefused(String),
    /// A name or title breaks the naming rules.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// The server refused the request; nothing changed.
    #[error("youtube_server refused the request: {0}")]
    Refused(String),
    /// The server did not answer in time; the request waits in its durable queue.
    #[error(
        "youtube_server did not answer within {}; the request is kept in the queue and will be \
         applied when youtube_server runs{}",
        humantime::format_duration(*timeout),
        if *server_running { "" } else { " (no youtube_server is running now: start one with `youtube_server`)" }
    )]
    ServerTimeout {
        timeout: Duration,
        server_running: bool,
    },
    /// The broker refused to take a message (a negative publisher confirm).
    #[error("RabbitMQ did not take the message for {0} (negative publisher confirm); try again")]
    Nacked(String),
    /// The broker did not confirm a message in time while it accepted
    /// publishing: the channel is taken for stuck, and the message sent again.
    #[error("RabbitMQ did not confirm the message for {0} in time; try again")]
    Unconfirmed(String),
    /// A mandatory message reached no queue.
    #[error(
        "no queue took the message for {0}; run any ytnotify program once to declare the queues"
    )]
    Unroutable(String),
    /// The user's history does not exist and the server did not declare it.
    #[error(
        "{0} has no history on the broker and youtube_server did not declare one within 10 s; \
         start youtube_server (of this version: older ones do not keep histories), then try again"
    )]
    NoHistory(String),
    /// The user's history exists but the broker cannot serve it now.
    #[error(
        "{user}'s history cannot be read now ({reason}); notifications come from the inbox alone \
         until it can"
    )]
    HistoryUnavailable { user: String, reason: String },
    /// The user's inbox does not exist and the server did not declare it.
    #[error(
        "{0} has no inbox on the broker and youtube_server did not declare one within 10 s; \
         start youtube_server, then log in with `user login {0}`"
    )]
    NoInbox(String),
    /// The YouTuber's creator inbox does not exist yet.
    #[error(
        "{0} has no creator inbox yet: youtube_server makes it at {0}'s first upload \
         (youtuber {0} <video>), or at the first like, comment or subscriber after it"
    )]
    NoCreatorInbox(String),
    /// The terminal could not be used for a dashboard.
    #[error("cannot use the terminal for the dashboard ({0}); use plain lines instead")]
    Terminal(String),
    /// The server answered with something this client cannot read.
    #[error("unexpected reply from youtube_server: {0}")]
    UnexpectedReply(String),
    /// The server's database could not be opened.
    #[error("cannot open the database {path}: {reason}; choose another file")]
    StoreOpen { path: String, reason: String },
    /// PostgreSQL cannot be reached, refused the connection, or cannot hold
    /// the tables.
    #[error("cannot use the PostgreSQL database {url} ({reason}); {advice}")]
    PostgresUnusable {
        url: String,
        reason: String,
        advice: String,
    },
    /// The PostgreSQL URL does not parse.
    #[error(
        "{url} is not a PostgreSQL URL ({reason}); write it as postgres://user:password@host:5432/database"
    )]
    BadPostgresUrl { url: String, reason: String },
    /// A database operation failed.
    #[error("database error: {0}")]
    Store(String),
    /// The state could not be copied to another database; nothing was.
    #[error("nothing was copied: {0}")]
    CopyRefused(String),
    /// A move between queue types has not finished: a server must not
    /// take requests from queues that are half moved.
    #[error(
        "the move of {0} to another queue type has not finished; run `youtube_server \
         migrate-queues --to <type>` again to finish it, then start the server"
    )]
    MoveUnfinished(String),
    /// The queues could not be moved to another type now; what was moved is
    /// kept, and running the command again finishes the move.
    #[error("the queues were not all moved: {0}")]
    MigrationRefused(String),
    /// A part of the server stopped while others still relied on it.
    #[error("youtube_server stopped: {0}")]
    Stopped(String),
    /// The broker closed the connection or a channel.
    #[error("RabbitMQ error: {0}")]
    Broker(#[from] lapin::Error),
}

/// A setting that an error asks the user to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The broker's URL.
    BrokerUrl,
    /// The address of RabbitMQ's management API.
    ManagementUrl,
    /// The certificate authority trusted for `amqps://`.
    CaCert,
    /// The server's database file.
    Database,
    /// Plain lines rather than a dashboard.
    PlainOutput,
}

impl Error {
    /// The setting this error asks the user to change, if any.
    pub fn setting(&self) -> Option<Setting> {
        match self {
            Error::BrokerUnreachable { .. }
            | Error::BrokerRefused { .. }
            | Error::BadUrl { .. } => Some(Setting::BrokerUrl),
            Error::CaCert { .. } | Error::UntrustedCertificate { .. } => Some(Setting::CaCert),
            Error::Tls { .. } => Some(Setting::BrokerUrl),
            Error::AccessRefused(_) | Error::ManagementRefused { .. } => Some(Setting::BrokerUrl),
            Error::Management { .. } => Some(Setting::ManagementUrl),
            Error::StoreOpen { .. }
            | Error::PostgresUnusable { .. }
            | Error::BadPostgresUrl { .. } => Some(Setting::Database),
            Error::Terminal(_) => Some(Setting::PlainOutput),
            _ => None,
        }
    }

    /// The process exit code for this error: 3 when the server did not answer
    /// (the request is queued, not lost), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ServerTimeout { .. } => 3,
            _ => 1,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
