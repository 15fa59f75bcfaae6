//! Every exchange, queue and routing key, and the one idempotent `declare` that
//! every program calls after connecting.
//!
//! ```text
//! user ──► ytnotify.requests.user ──► ytnotify.user_requests.<0-7> ─────┐
//!                                                                         ├─► youtube_server(s) ──► ytnotify.notifications
//! youtuber ─► ytnotify.requests.youtuber ─► ytnotify.youtuber_requests.<0-7>┘   (direct exchange, routing key = YouTuber)
//!
//!                        ┌─(key "bob")─► ytnotify.user.alice ─┬─► ytnotify.inbox.alice    (durable queue: what no session has shown yet)
//! ytnotify.notifications ┤               (fanout, per user)   └─► ytnotify.history.alice  (stream: every notification, kept a while)
//!                        └─(key "bob")─► ytnotify.user.carol ─► …
//! ```
//!
//! Clients publish requests to an exchange of their own kind, keyed by the
//! partition of the name they are about ([`requests`]), never to the
//! default exchange: an account that may publish there may reach no other
//! queue (see [`crate::accounts`]). The server answers on each client's
//! reply queue, `ytnotify.reply.<account>.<random>`.
//!
//! A subscription is a binding: the user's exchange is bound to the
//! notifications exchange with the YouTuber's name as routing key, so one
//! publish per upload reaches every subscriber and RabbitMQ does the fan-out.
//! The user's exchange copies each notification into the user's durable
//! inbox, and into the user's history, a stream that every live session of
//! the user (`user watch`, a browser tab through `gateway`) reads from its
//! own position. Everything is durable; every message is persistent.

mod requests;

pub use requests::{PARTITIONS, RequestKind, RequestQueue, bound_keys, partition_of};
use requests::{declare_routing, request_queue_arguments};

use crate::broker;
use lapin::{
    Channel, Connection, ExchangeKind,
    options::{
        ExchangeBindOptions, ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};

/// Fanout exchange that users publish their likes and comments to ([`RequestKind::Interactions`]).
pub const INTERACTIONS_EXCHANGE: &str = "ytnotify.requests.interaction";
/// Fanout exchange that users publish their other requests to ([`RequestKind::Users`]).
pub const USER_REQUESTS_EXCHANGE: &str = "ytnotify.requests.user";
/// Fanout exchange that YouTubers publish uploads to ([`RequestKind::Youtubers`]).
pub const YOUTUBER_REQUESTS_EXCHANGE: &str = "ytnotify.requests.youtuber";
/// Direct exchange the server publishes uploads to, with the YouTuber as routing key.
pub const NOTIFICATIONS: &str = "ytnotify.notifications";
/// Fanout exchange for messages the server cannot process.
pub const DEAD_LETTER_EXCHANGE: &str = "ytnotify.dead_letter";
/// Queue that keeps dead-lettered messages for inspection.
pub const DEAD_LETTERS: &str = "ytnotify.dead_letters";
/// Fanout exchange that takes the notifications a full inbox drops.
pub const INBOX_OVERFLOW: &str = "ytnotify.inbox_overflow";
/// Queue of dropped notifications, each routed by the user whose inbox
/// dropped it: the server counts them and tells the user at the next login.
pub const INBOX_OVERFLOW_QUEUE: &str = "ytnotify.inbox_overflow";
/// The most dropped notifications kept for counting while no server runs.
const OVERFLOW_BOUND: i64 = 100_000;
/// Header on a dead-lettered message that says why the server refused it.
pub const REASON_HEADER: &str = "x-ytnotify-reason";
/// Header on a dead-lettered message naming the account that sent it (its
/// `user_id`, checked by RabbitMQ when it was sent).
pub const SENDER_HEADER: &str = "x-ytnotify-sender";
/// Header of a probe: an empty message that a server's consumer publishes to
/// its own request queue, while idle, to see that the broker still feeds it
/// (`link::QueueWatch`). A server takes every probe off the queue, its own and
/// other servers', and does nothing else with it.
pub const PROBE_HEADER: &str = "x-ytnotify-probe";
/// Header on a dead-lettered message naming the queue it came from.
pub const SOURCE_QUEUE_HEADER: &str = "x-ytnotify-source-queue";

const INBOX_PREFIX: &str = "ytnotify.inbox.";
const CREATOR_PREFIX: &str = "ytnotify.creator.";
/// The most bytes a creator's inbox keeps waiting (about 100,000 events):
/// past it the broker refuses more, and the server keeps them in its
/// database until the creator has read some.
const CREATOR_INBOX_BYTES: i64 = 16 * 1024 * 1024;
const USER_EXCHANGE_PREFIX: &str = "ytnotify.user.";
const HISTORY_PREFIX: &str = "ytnotify.history.";
/// The most a user's history keeps, in bytes: about 4,000 notifications.
/// The oldest segment goes when it is full.
pub const HISTORY_MAX_BYTES: i64 = 1_000_000;
/// The size of one segment of a history. Small, since retention drops whole
/// segments only, never the one being written.
const HISTORY_SEGMENT_BYTES: i64 = 200_000;
/// How long a history keeps a notification at most.
pub const HISTORY_MAX_AGE: &str = "7D";

const CELEBRITY_PREFIX: &str = "ytnotify.celebrity.";
/// The most a celebrity's stream keeps, in bytes: about 200,000 uploads.
const CELEBRITY_MAX_BYTES: i64 = 50_000_000;
const CELEBRITY_SEGMENT_BYTES: i64 = 5_000_000;
/// How long a celebrity's stream keeps an upload. Sessions read it from
/// about when they open; what a user missed comes from the server's
/// database, so the stream need not keep it long.
const CELEBRITY_MAX_AGE: &str = "7D";

/// What every reply queue's name begins with.
pub const REPLY_PREFIX: &str = "ytnotify.reply.";

/// A fresh name for a reply queue of the client logged in as `account`.
/// Each client declares its own, exclusive to its connection: RabbitMQ
/// deletes it when the client goes, and the client declares it again after a
/// reconnection (unlike direct reply-to, whose address dies with the
/// connection). The account in the name is what lets RabbitMQ grant each
/// account its own reply queues and no one else's.
pub fn reply_queue(account: &str) -> String {
    format!(
        "{}{}",
        reply_queue_prefix(account),
        uuid::Uuid::new_v4().simple()
    )
}

/// What the names of `account`'s reply queues begin with; 32 hexadecimal
/// digits follow.
pub fn reply_queue_prefix(account: &str) -> String {
    format!("{REPLY_PREFIX}{account}.")
}

/// Whether `queue` is one of `account`'s reply queues.
pub fn is_reply_queue_of(queue: &str, account: &str) -> bool {
    queue
        .strip_prefix(&reply_queue_prefix(account))
        .is_some_and(|random| {
            random.len() == 32
                && random
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Declares a client's reply queue: exclusive, deleted with its connection.
pub async fn declare_reply_queue(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// The durable inbox queue of a user.
pub fn inbox(user: &str) -> String {
    format!("{INBOX_PREFIX}{user}")
}

/// The user an inbox queue belongs to, if the name is an inbox's.
pub fn inbox_owner(queue: &str) -> Option<&str> {
    queue.strip_prefix(INBOX_PREFIX)
}

/// The fanout exchange of a user: bound to the notifications exchange once
/// per subscription, it feeds the user's inbox and history.
pub fn user_exchange(user: &str) -> String {
    format!("{USER_EXCHANGE_PREFIX}{user}")
}

/// The history of a user: a stream that keeps every notification for a
/// while ([`HISTORY_MAX_BYTES`], [`HISTORY_MAX_AGE`]), which each live
/// session reads from its own position.
pub fn history(user: &str) -> String {
    format!("{HISTORY_PREFIX}{user}")
}

/// The stream of a celebrity: a YouTuber with so many subscribers that its
/// uploads are appended here once (the server publishes to it through the
/// default exchange) instead of copied into every subscriber's inbox. Each
/// live session of a subscriber reads it (`client::celebrities`).
pub fn celebrity_stream(youtuber: &str) -> String {
    format!("{CELEBRITY_PREFIX}{youtuber}")
}

/// What every celebrity stream's name begins with.
pub fn celebrity_stream_prefix() -> &'static str {
    CELEBRITY_PREFIX
}

/// Declares a celebrity's stream, as the server does before it appends an
/// upload. Idempotent; one that exists with other settings is refused with
/// `PRECONDITION_FAILED`, which closes the channel.
pub async fn declare_celebrity_stream(
    channel: &Channel,
    youtuber: &str,
) -> Result<(), lapin::Error> {
    let arguments = stream_arguments(
        CELEBRITY_MAX_BYTES,
        CELEBRITY_SEGMENT_BYTES,
        CELEBRITY_MAX_AGE,
    );
    channel
        .queue_declare(
            celebrity_stream(youtuber).as_str().into(),
            durable_queue(),
            arguments,
        )
        .await?;
    Ok(())
}

/// The durable inbox of a creator: what users did about the YouTuber and
/// its videos (`protocol::CreatorEvents`), read by `youtuber watch`.
pub fn creator_inbox(youtuber: &str) -> String {
    format!("{CREATOR_PREFIX}{youtuber}")
}

/// Declares a creator's inbox, as the server does before it sends to it.
/// Idempotent with the same arguments; one that exists with other settings
/// is refused with `PRECONDITION_FAILED`, which closes the channel.
pub async fn declare_creator_inbox(
    channel: &Channel,
    youtuber: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    declare_queue(
        channel,
        &creator_inbox(youtuber),
        queue_type.arguments(creator_inbox_arguments()),
    )
    .await
}

fn creator_inbox_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-max-length-bytes"),
        AMQPValue::LongLongInt(CREATOR_INBOX_BYTES),
    );
    arguments.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("reject-publish".into()),
    );
    arguments
}

/// What kind of queue a vhost's durable queues are: its request queues,
/// inboxes, creators' inboxes, dead letters and dropped notifications.
/// Chosen once per vhost, by the first program that declares them
/// (`youtube_server --queue-type`); the request queues record it, since the
/// type of a queue never changes (`youtube_server migrate-queues` moves a
/// vhost to the other type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// One node holds each queue (with a RabbitMQ cluster, a queue is gone
    /// while its node is down). The fastest on one machine.
    Classic,
    /// Raft-replicated over the cluster's nodes: a queue lives on while a
    /// majority of them do.
    Quorum,
}

impl QueueType {
    /// The name RabbitMQ and `--queue-type` give it.
    pub fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }

    /// `arguments` with the type's own added: a classic queue is declared
    /// without `x-queue-type`, as queues declared before there was a choice.
    fn arguments(self, mut arguments: FieldTable) -> FieldTable {
        if self == QueueType::Quorum {
            arguments.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

/// How a program declares the vhost's durable queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declaring {
    /// A server's way: every queue of this type. One that exists with
    /// another type is refused by the broker (`PRECONDITION_FAILED`).
    As(QueueType),
    /// A client's way: a queue that exists is used as it is, whatever its
    /// type (the server chose it); one that does not is made of the type of
    /// the vhost's other shared queues, classic on a new vhost.
    AsFound,
}

/// Declares the exchanges and queues shared by all programs. Idempotent: every
/// program calls it after connecting, so they can start in any order without a
/// message ever being published to a queue that does not exist yet.
pub async fn declare(connection: &Connection, declaring: Declaring) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let queues = match declaring {
        Declaring::As(queue_type) => Queues::Of(queue_type),
        // A passive declaration of a missing queue closes its channel: it
        // has one of its own.
        Declaring::AsFound => Queues::AsFound {
            connection,
            probe: tokio::sync::Mutex::new(connection.create_channel().await?),
            vhost_type: tokio::sync::OnceCell::new(),
        },
    };
    let request_queues: Vec<RequestQueue> = RequestQueue::all().collect();
    declare_with(&channel, &request_queues, &queues).await?;
    if let Queues::AsFound { probe, .. } = queues {
        probe.into_inner().close(200, "declared".into()).await?;
    }
    channel.close(200, "declared".into()).await
}

/// How [`declare_with`] declares each durable queue.
#[expect(
    clippy::large_enum_variant,
    reason = "one lives for the time of a declaration"
)]
enum Queues<'a> {
    /// Of this type.
    Of(QueueType),
    /// As found, looked for on `probe`; a missing one is made of the type
    /// of the vhost's other shared queues, classic if there are none
    /// ([`Declaring::AsFound`]).
    AsFound {
        connection: &'a Connection,
        probe: tokio::sync::Mutex<Channel>,
        vhost_type: tokio::sync::OnceCell<QueueType>,
    },
}

impl Queues<'_> {
    async fn declare(
        &self,
        channel: &Channel,
        queue: &str,
        arguments: FieldTable,
    ) -> Result<(), lapin::Error> {
        match self {
            Queues::Of(queue_type) => {
                declare_queue(channel, queue, queue_type.arguments(arguments)).await
            }
            Queues::AsFound {
                connection,
                probe,
                vhost_type,
            } => {
                let mut probe = probe.lock().await;
                match exists(&probe, queue).await {
                    Err(err) if broker::is_not_found(&err) => {
                        // Someone deleted it, or no server has declared the
                        // vhost yet: a queue of another type than the rest
                        // would stop the servers from consuming it.
                        let queue_type = vhost_type
                            .get_or_try_init(|| type_of_shared_queues(connection))
                            .await?;
                        *probe = connection.create_channel().await?;
                        declare_queue(&probe, queue, queue_type.arguments(arguments)).await
                    }
                    found => found,
                }
            }
        }
    }
}

/// The type of the first of the vhost's shared queues that exists with
/// ytnotify's settings. On a new vhost, where none does, a server started
/// at the same time as this client is given [`FIRST_DECLARATION`] to
/// declare them with the type it was asked for; then they are classic.
async fn type_of_shared_queues(connection: &Connection) -> Result<QueueType, lapin::Error> {
    let deadline = tokio::time::Instant::now() + FIRST_DECLARATION;
    loop {
        if let Some(queue_type) = vhost_queue_type(connection).await? {
            return Ok(queue_type);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(QueueType::Classic);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How long a client that comes first to a new vhost waits for a server to
/// declare its queues before it declares them itself.
const FIRST_DECLARATION: std::time::Duration = std::time::Duration::from_secs(2);

/// [`declare`] the server's way with, of the request queues, only `queue`
/// if it is one: what a server's consumer of `queue` declares when it sets
/// itself up again.
///
/// RabbitMQ 3.10 can leave a consumer registered on a queue yet never fed,
/// and never cancelled, when the queue is declared at the moment it is
/// deleted (`ARCHITECTURE.md`). A consumer whose queue was deleted must not
/// declare its neighbour's queue, which may be being deleted too.
pub async fn declare_for_consumer(
    channel: &Channel,
    queue: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    let request_queues: Vec<RequestQueue> = RequestQueue::named(queue).into_iter().collect();
    declare_with(channel, &request_queues, &Queues::Of(queue_type)).await
}

/// The type of the vhost's request queues, `None` before any program has
/// declared them: the vhost's choice, which a server follows.
pub async fn vhost_queue_type(connection: &Connection) -> Result<Option<QueueType>, lapin::Error> {
    // Each kind's first request queue; then, for a vhost where someone
    // deleted them, the other shared queues. (All of a vhost's queues are
    // of one type: the others need no look.)
    let mut shared = DurableQueue::shared();
    shared.retain(|queue| {
        RequestQueue::named(&queue.name).is_none_or(|request_queue| request_queue.partition == 0)
    });
    shared.rotate_right(RequestKind::ALL.len());
    for queue in shared {
        match queue.queue_type(connection).await {
            Ok(Some(queue_type)) => return Ok(Some(queue_type)),
            // Missing, or declared by another client with settings of its
            // own: the next one says.
            Ok(None) => {}
            Err(err) if broker::is_precondition_failed(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(None)
}

/// The shared queues whose move to another type has not finished: a
/// holding queue of `migrate-queues` exists for them. A server refuses to
/// start on such a vhost (what it would take from those queues could be
/// applied out of order when the move finishes).
pub async fn unfinished_moves(connection: &Connection) -> Result<Vec<String>, lapin::Error> {
    let mut unfinished = Vec::new();
    for queue in DurableQueue::shared() {
        let channel = connection.create_channel().await?;
        match exists(&channel, &holding_queue(&queue.name)).await {
            Ok(()) => {
                unfinished.push(queue.name);
                channel.close(200, "found".into()).await?;
            }
            Err(err) if broker::is_not_found(&err) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(unfinished)
}

/// The queue that holds `queue`'s messages while `migrate-queues` moves it.
pub fn holding_queue(queue: &str) -> String {
    format!("{HOLDING_PREFIX}{queue}")
}

const HOLDING_PREFIX: &str = "ytnotify.migrating.";

async fn exists(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    inspect(channel, queue).await.map(drop)
}

async fn declare_queue(
    channel: &Channel,
    queue: &str,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    channel
        .queue_declare(queue.into(), durable_queue(), arguments)
        .await
        .map(drop)
}

/// Declares the exchanges, bindings and durable queues (as `queues` says)
/// shared by all programs, with `request_queues` of the request queues.
async fn declare_with(
    channel: &Channel,
    request_queues: &[RequestQueue],
    queues: &Queues<'_>,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    queues
        .declare(channel, DEAD_LETTERS, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            DEAD_LETTERS.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for kind in RequestKind::ALL {
        declare_routing(channel, kind).await?;
    }
    for &queue in request_queues {
        queues
            .declare(channel, queue.name(), request_queue_arguments())
            .await?;
        requests::bind(channel, queue).await?;
    }
    channel
        .exchange_declare(
            INBOX_OVERFLOW.into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    queues
        .declare(channel, INBOX_OVERFLOW_QUEUE, overflow_arguments())
        .await?;
    channel
        .queue_bind(
            INBOX_OVERFLOW_QUEUE.into(),
            INBOX_OVERFLOW.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            NOTIFICATIONS.into(),
            ExchangeKind::Direct,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn overflow_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(OVERFLOW_BOUND),
    );
    arguments
}

/// One of a vhost's durable queues, described for moving it to another
/// type (`server::migrate`): its name, its arguments but the type's, and
/// the exchange that feeds it.
#[derive(Debug, Clone)]
pub struct DurableQueue {
    /// The queue's name.
    pub name: String,
    arguments: FieldTable,
    /// The exchange bound to it; `None` for a creator's inbox, which the
    /// server publishes to through the default exchange.
    pub source: Option<String>,
    /// The routing keys of that binding: `""` but for request queues.
    pub keys: Vec<&'static str>,
}

impl DurableQueue {
    /// The queues every vhost has, the request queues last: their type is
    /// the vhost's ([`vhost_queue_type`]).
    pub fn shared() -> Vec<DurableQueue> {
        let mut shared = vec![
            DurableQueue {
                name: DEAD_LETTERS.to_owned(),
                arguments: FieldTable::default(),
                source: Some(DEAD_LETTER_EXCHANGE.to_owned()),
                keys: vec![""],
            },
            DurableQueue {
                name: INBOX_OVERFLOW_QUEUE.to_owned(),
                arguments: overflow_arguments(),
                source: Some(INBOX_OVERFLOW.to_owned()),
                keys: vec![""],
            },
        ];
        shared.extend(RequestQueue::all().map(|queue| DurableQueue {
            name: queue.name().to_owned(),
            arguments: request_queue_arguments(),
            source: Some(queue.kind.partition_exchange().to_owned()),
            keys: bound_keys(queue),
        }));
        shared
    }

    /// A user's inbox, declared with `bound` ([`declare_inbox`]).
    pub fn inbox(user: &str, bound: Option<u32>) -> DurableQueue {
        DurableQueue {
            name: inbox(user),
            arguments: inbox_arguments(user, bound),
            source: Some(user_exchange(user)),
            keys: vec![""],
        }
    }

    /// A creator's inbox ([`declare_creator_inbox`]).
    pub fn creator_inbox(youtuber: &str) -> DurableQueue {
        DurableQueue {
            name: creator_inbox(youtuber),
            arguments: creator_inbox_arguments(),
            source: None,
            keys: Vec::new(),
        }
    }

    /// The queue without arguments that holds `queue`'s messages while it
    /// is moved to another type ([`holding_queue`]).
    pub fn holding(queue: &str) -> DurableQueue {
        DurableQueue {
            name: holding_queue(queue),
            arguments: FieldTable::default(),
            source: None,
            keys: Vec::new(),
        }
    }

    /// Declares it as `queue_type`; a queue of that name with another type
    /// or other arguments is refused (`PRECONDITION_FAILED`).
    pub async fn declare(
        &self,
        channel: &Channel,
        queue_type: QueueType,
    ) -> Result<(), lapin::Error> {
        declare_queue(
            channel,
            &self.name,
            queue_type.arguments(self.arguments.clone()),
        )
        .await
    }

    /// Its type, `None` if it does not exist. Each guess is tried on a
    /// channel of its own, since a wrong one closes it; a queue that is
    /// neither (declared first by another client, with settings of its own)
    /// is the broker's refusal.
    pub async fn queue_type(
        &self,
        connection: &Connection,
    ) -> Result<Option<QueueType>, lapin::Error> {
        let channel = connection.create_channel().await?;
        match exists(&channel, &self.name).await {
            Ok(()) => channel.close(200, "found".into()).await?,
            Err(err) if broker::is_not_found(&err) => return Ok(None),
            Err(err) => return Err(err),
        }
        let mut refusal = None;
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            let channel = connection.create_channel().await?;
            match self.declare(&channel, queue_type).await {
                Ok(()) => {
                    channel.close(200, "found".into()).await?;
                    return Ok(Some(queue_type));
                }
                Err(err) if broker::is_precondition_failed(&err) => refusal = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(refusal.expect("refused twice"))
    }
}

/// Whether the request exchanges exist, without declaring them: what a client
/// whose account may not declare the topology checks instead (a missing
/// exchange is an error, and closes the channel).
pub async fn check_declared(channel: &Channel) -> Result<(), lapin::Error> {
    let exchanges = RequestKind::ALL.into_iter().flat_map(|kind| {
        [
            (kind.exchange(), ExchangeKind::Fanout),
            (kind.partition_exchange(), ExchangeKind::Direct),
        ]
    });
    for (exchange, exchange_kind) in exchanges {
        channel
            .exchange_declare(
                exchange.into(),
                exchange_kind,
                ExchangeDeclareOptions {
                    passive: true,
                    ..durable_exchange()
                },
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares a user's durable inbox, as the server does at login. `bound`
/// is the most notifications it keeps waiting: past it the oldest is
/// dropped, and routed to [`INBOX_OVERFLOW`] keyed by the user, so that the
/// server can tell the user at the next login. `None` is an inbox declared
/// before inboxes were bounded (the arguments of a queue cannot change).
///
/// Idempotent with the same arguments; an inbox that exists with other
/// settings (declared first by another client) is refused by the broker with
/// `PRECONDITION_FAILED`, which closes the channel. Returns how many
/// notifications are waiting and how many consumers read the inbox now.
pub async fn declare_inbox(
    channel: &Channel,
    user: &str,
    bound: Option<u32>,
    queue_type: QueueType,
) -> Result<(u32, u32), lapin::Error> {
    declare_user_exchange(channel, user).await?;
    let queue = channel
        .queue_declare(
            inbox(user).as_str().into(),
            durable_queue(),
            queue_type.arguments(inbox_arguments(user, bound)),
        )
        .await?;
    channel
        .queue_bind(
            inbox(user).as_str().into(),
            user_exchange(user).as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((queue.message_count(), queue.consumer_count()))
}

async fn declare_user_exchange(channel: &Channel, user: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            user_exchange(user).as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
}

/// Declares a user's history, and binds it to the user's exchange: what the
/// server does at a login that asks for it (a live session's). Idempotent.
///
/// A stream costs the broker two file descriptors and some memory for as
/// long as it exists, so only users who read their notifications live have
/// one. Its retention drops whole segments, hence the small segment size.
pub async fn declare_history(channel: &Channel, user: &str) -> Result<(), lapin::Error> {
    declare_user_exchange(channel, user).await?;
    let arguments = stream_arguments(HISTORY_MAX_BYTES, HISTORY_SEGMENT_BYTES, HISTORY_MAX_AGE);
    channel
        .queue_declare(history(user).as_str().into(), durable_queue(), arguments)
        .await?;
    channel
        .queue_bind(
            history(user).as_str().into(),
            user_exchange(user).as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The arguments of a stream that keeps at most `max_bytes` for at most
/// `max_age`, in segments of `segment_bytes` (retention drops whole ones).
fn stream_arguments(max_bytes: i64, segment_bytes: i64, max_age: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("stream".into()),
    );
    arguments.insert(
        ShortString::from("x-max-length-bytes"),
        AMQPValue::LongLongInt(max_bytes),
    );
    arguments.insert(
        ShortString::from("x-stream-max-segment-size-bytes"),
        AMQPValue::LongLongInt(segment_bytes),
    );
    arguments.insert(
        ShortString::from("x-max-age"),
        AMQPValue::LongString(max_age.into()),
    );
    arguments
}

fn inbox_arguments(user: &str, bound: Option<u32>) -> FieldTable {
    let mut arguments = FieldTable::default();
    let Some(bound) = bound else {
        return arguments;
    };
    arguments.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(i64::from(bound)),
    );
    arguments.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("drop-head".into()),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(INBOX_OVERFLOW.into()),
    );
    arguments.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(user.into()),
    );
    arguments
}

/// How many messages wait in an existing queue and how many consumers read
/// it, without declaring it (a missing queue is an error, and closes the channel).
pub async fn inspect(channel: &Channel, queue: &str) -> Result<(u32, u32), lapin::Error> {
    let queue = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.message_count(), queue.consumer_count()))
}

/// Makes `user` receive `youtuber`'s uploads: binds the user's exchange
/// (declared first: someone may have deleted it; the user's next login binds
/// it to the inbox again) with the YouTuber's name as routing key. Binding
/// twice is harmless.
pub async fn bind_subscription(
    channel: &Channel,
    user: &str,
    youtuber: &str,
) -> Result<(), lapin::Error> {
    declare_user_exchange(channel, user).await?;
    channel
        .exchange_bind(
            user_exchange(user).as_str().into(),
            NOTIFICATIONS.into(),
            youtuber.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Stops `user` receiving `youtuber`'s uploads, through the user's exchange
/// and through a binding of the older layout that a server could not move
/// (see [`unbind_inbox_directly`]). Unbinding a missing binding is harmless.
pub async fn unbind_subscription(
    channel: &Channel,
    user: &str,
    youtuber: &str,
) -> Result<(), lapin::Error> {
    declare_user_exchange(channel, user).await?;
    channel
        .exchange_unbind(
            user_exchange(user).as_str().into(),
            NOTIFICATIONS.into(),
            youtuber.into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    unbind_inbox_directly(channel, user, youtuber).await
}

/// Removes the binding an older version made for a subscription: the inbox
/// bound straight to the notifications exchange. What the server does once,
/// for every subscription, when it moves a database to per-user exchanges.
pub async fn unbind_inbox_directly(
    channel: &Channel,
    user: &str,
    youtuber: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_unbind(
            inbox(user).as_str().into(),
            NOTIFICATIONS.into(),
            youtuber.into(),
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creators_have_inboxes() {
        assert_eq!(creator_inbox("bob"), "ytnotify.creator.bob");
    }

    #[test]
    fn inbox_names_round_trip() {
        assert_eq!(inbox("alice"), "ytnotify.inbox.alice");
        assert_eq!(inbox_owner(&inbox("alice")), Some("alice"));
        assert_eq!(
            inbox_owner(RequestQueue::all().next().unwrap().name()),
            None
        );
    }

    #[test]
    fn each_user_has_an_exchange_and_a_history() {
        assert_eq!(user_exchange("alice"), "ytnotify.user.alice");
        assert_eq!(history("alice"), "ytnotify.history.alice");
        let longest = "a".repeat(crate::names::MAX_NAME_CHARS);
        assert!(history(&longest).len() <= 255);
    }

    #[test]
    fn reply_queues_carry_their_account() {
        let queue = reply_queue("user.alice");
        assert!(is_reply_queue_of(&queue, "user.alice"), "{queue}");
        assert!(!is_reply_queue_of(&queue, "user.ali"));
        assert!(!is_reply_queue_of(&queue, "user"));
        assert!(!is_reply_queue_of(&format!("{queue}0"), "user.alice"));
        assert!(!is_reply_queue_of("ytnotify.inbox.alice", "user.alice"));
    }

    #[test]
    fn the_longest_name_still_makes_a_legal_queue_name() {
        // AMQP limits queue names to 255 bytes; names are at most 64 ASCII characters.
        let longest = "a".repeat(crate::names::MAX_NAME_CHARS);
        assert!(inbox(&longest).len() <= 255);
    }
}
