//! The request queues. Each kind of request — a user's, a YouTuber's, a like
//! or comment — is spread over [`PARTITIONS`] queues by the name it is
//! about, so that several servers can apply requests at once while each
//! user's, and each YouTuber's, stay in the order they were sent:
//!
//! ```text
//! client ─(key "3")─► ytnotify.requests.user ─► ytnotify.partitions.user ─(key "3")─► ytnotify.user_requests.3
//!                     (fanout, as before)        (direct)                 └(key "0" or "")─► ytnotify.user_requests.0
//! ```
//!
//! A client computes the partition of the name ([`partition_of`]) and
//! publishes with it as routing key. One that does not (a key of `""`)
//! lands on partition 0: its requests still keep their order, since they
//! all travel on one queue.
//!
//! Each partition queue has a single active consumer, so one server at a
//! time applies its requests; which server takes which partition is the
//! servers' business (`server::partitions`).

use std::sync::LazyLock;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeBindOptions, QueueBindOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use super::{
    DEAD_LETTER_EXCHANGE, INTERACTIONS_EXCHANGE, USER_REQUESTS_EXCHANGE,
    YOUTUBER_REQUESTS_EXCHANGE, durable_exchange,
};
use crate::protocol::Request;

/// How many queues each kind of request is spread over: as many servers
/// can apply requests at once. Part of the protocol: a client routes by it.
pub const PARTITIONS: u16 = 8;

/// The partition of the user or YouTuber a request is about: FNV-1a (32
/// bits) of the name's UTF-8 bytes, modulo [`PARTITIONS`]. Stable across
/// programs, versions and languages.
pub fn partition_of(name: &str) -> u16 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % u32::from(PARTITIONS)) as u16
}

/// The three kinds of request, each with queues of its own: a viral
/// video's burst of likes never delays a login, nor a login an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Logins, subscription changes and queries.
    Users,
    /// Uploads and a YouTuber's statistics.
    Youtubers,
    /// Likes, dislikes and comments.
    Interactions,
}

impl RequestKind {
    /// Every kind, in the order the server lists them.
    pub const ALL: [RequestKind; 3] = [
        RequestKind::Users,
        RequestKind::Youtubers,
        RequestKind::Interactions,
    ];

    /// The kind a request travels as.
    pub fn of(request: &Request) -> RequestKind {
        match request {
            Request::Upload { .. } | Request::Stats { .. } => RequestKind::Youtubers,
            Request::React { .. } | Request::Comment { .. } => RequestKind::Interactions,
            Request::Login { .. }
            | Request::ChangeSubscription { .. }
            | Request::ListSubscriptions { .. }
            | Request::ListVideos { .. }
            | Request::Celebrities { .. }
            | Request::Seen { .. } => RequestKind::Users,
        }
    }

    /// The fanout exchange clients publish this kind to.
    pub fn exchange(self) -> &'static str {
        match self {
            RequestKind::Users => USER_REQUESTS_EXCHANGE,
            RequestKind::Youtubers => YOUTUBER_REQUESTS_EXCHANGE,
            RequestKind::Interactions => INTERACTIONS_EXCHANGE,
        }
    }

    /// The direct exchange that routes this kind to its partitions.
    pub fn partition_exchange(self) -> &'static str {
        match self {
            RequestKind::Users => "ytnotify.partitions.user",
            RequestKind::Youtubers => "ytnotify.partitions.youtuber",
            RequestKind::Interactions => "ytnotify.partitions.interaction",
        }
    }

    /// What the names of this kind's queues begin with; also the name of
    /// the single queue of a vhost set up before requests were partitioned.
    pub fn unpartitioned(self) -> &'static str {
        match self {
            RequestKind::Users => "ytnotify.user_requests",
            RequestKind::Youtubers => "ytnotify.youtuber_requests",
            RequestKind::Interactions => "ytnotify.interactions",
        }
    }

    /// This kind's queues, partition 0 first.
    pub fn queues(self) -> impl Iterator<Item = RequestQueue> {
        (0..PARTITIONS).map(move |partition| RequestQueue {
            kind: self,
            partition,
        })
    }

    fn index(self) -> usize {
        match self {
            RequestKind::Users => 0,
            RequestKind::Youtubers => 1,
            RequestKind::Interactions => 2,
        }
    }
}

/// One request queue: a kind's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestQueue {
    pub kind: RequestKind,
    pub partition: u16,
}

/// Names and routing keys, made once: the server passes queues around by
/// `&'static str`.
static NAMES: LazyLock<Vec<String>> = LazyLock::new(|| {
    RequestKind::ALL
        .into_iter()
        .flat_map(RequestKind::queues)
        .map(|queue| format!("{}.{}", queue.kind.unpartitioned(), queue.partition))
        .collect()
});
static KEYS: LazyLock<Vec<String>> =
    LazyLock::new(|| (0..PARTITIONS).map(|p| p.to_string()).collect());

impl RequestQueue {
    /// The queue a request travels on: its kind's, in the partition of the
    /// name it is about.
    pub fn of(request: &Request) -> RequestQueue {
        RequestQueue {
            kind: RequestKind::of(request),
            partition: partition_of(request.subject()),
        }
    }

    /// Every request queue, kind by kind.
    pub fn all() -> impl Iterator<Item = RequestQueue> {
        RequestKind::ALL.into_iter().flat_map(RequestKind::queues)
    }

    /// The three queues of a partition.
    pub fn in_partition(partition: u16) -> [RequestQueue; 3] {
        RequestKind::ALL.map(|kind| RequestQueue { kind, partition })
    }

    /// The request queue of that name, if it is one.
    pub fn named(name: &str) -> Option<RequestQueue> {
        RequestQueue::all().find(|queue| queue.name() == name)
    }

    /// `ytnotify.user_requests.3`, …
    pub fn name(self) -> &'static str {
        &NAMES[self.kind.index() * usize::from(PARTITIONS) + usize::from(self.partition)]
    }

    /// The routing key that reaches it from its kind's exchange.
    pub fn routing_key(self) -> &'static str {
        &KEYS[usize::from(self.partition)]
    }

    /// The exchange clients publish to for it.
    pub fn exchange(self) -> &'static str {
        self.kind.exchange()
    }
}

impl std::fmt::Display for RequestQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Request queues dead-letter what is rejected, and deliver to one server at
/// a time (single active consumer): requests of one partition are never
/// applied by two servers at once, which keeps each user's in order, and a
/// second server consuming the same partition waits as a hot standby.
pub(super) fn request_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    arguments.insert(
        ShortString::from("x-single-active-consumer"),
        AMQPValue::Boolean(true),
    );
    arguments
}

/// Declares a kind's two exchanges and binds them: what routes a request to
/// its partition. Idempotent.
pub(super) async fn declare_routing(
    channel: &Channel,
    kind: RequestKind,
) -> Result<(), lapin::Error> {
    for (exchange, exchange_kind) in [
        (kind.exchange(), ExchangeKind::Fanout),
        (kind.partition_exchange(), ExchangeKind::Direct),
    ] {
        channel
            .exchange_declare(
                exchange.into(),
                exchange_kind,
                durable_exchange(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .exchange_bind(
            kind.partition_exchange().into(),
            kind.exchange().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Binds a declared partition queue to its kind's partition exchange:
/// with its number, and partition 0 with `""` too.
pub(super) async fn bind(channel: &Channel, queue: RequestQueue) -> Result<(), lapin::Error> {
    for key in bound_keys(queue) {
        channel
            .queue_bind(
                queue.name().into(),
                queue.kind.partition_exchange().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// The routing keys a partition queue is bound with.
pub fn bound_keys(queue: RequestQueue) -> Vec<&'static str> {
    if queue.partition == 0 {
        vec![queue.routing_key(), ""]
    } else {
        vec![queue.routing_key()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: the partition is part of the protocol.
        assert_eq!(partition_of(""), (0x811c_9dc5_u32 % 8) as u16);
        assert_eq!(partition_of("alice"), partition_of("alice"));
        let mut seen = [0; PARTITIONS as usize];
        for user in 0..8000 {
            seen[usize::from(partition_of(&format!("user{user}")))] += 1;
        }
        for count in seen {
            assert!((800..1200).contains(&count), "{seen:?}");
        }
    }

    #[test]
    fn each_request_has_its_queue() {
        let like = Request::React {
            user: "alice".into(),
            video: "3f".into(),
            reaction: None,
        };
        let queue = RequestQueue::of(&like);
        assert_eq!(queue.kind, RequestKind::Interactions);
        assert_eq!(queue.exchange(), INTERACTIONS_EXCHANGE);
        assert_eq!(queue.partition, partition_of("alice"));
        assert_eq!(
            queue.name(),
            format!("ytnotify.interactions.{}", partition_of("alice"))
        );
        let stats = Request::Stats {
            youtuber: "bob".into(),
        };
        assert_eq!(RequestQueue::of(&stats).kind, RequestKind::Youtubers);
        assert_eq!(RequestQueue::of(&stats).partition, partition_of("bob"));
        assert_eq!(
            RequestQueue::of(&Request::login("alice")).kind,
            RequestKind::Users
        );
        assert_eq!(RequestQueue::all().count(), 3 * usize::from(PARTITIONS));
        for queue in RequestQueue::all() {
            assert_eq!(RequestQueue::named(queue.name()), Some(queue));
        }
        assert_eq!(RequestQueue::named("ytnotify.user_requests"), None);
    }
}
