//! `youtube_server migrate-queues --to quorum`: moves every durable queue of
//! a vhost to the other type without losing a message.
//!
//! A queue's type never changes, so each queue is emptied into a holding
//! queue, declared again with the new type, and filled back:
//!
//! 1. the holding queue `ytnotify.migrating.<queue>` is bound to the
//!    queue's exchange, and the queue unbound, so that what is published
//!    meanwhile (a client's request) lands in the holding queue;
//! 2. every message moves to the holding queue, acknowledged only once the
//!    broker has confirmed its copy; the emptied queue is deleted;
//! 3. the queue is declared with the new type and bound again, the holding
//!    queue unbound, and its messages moved back the same way.
//!
//! Each step can be done again, so a move that stopped half-way (a crash, a
//! lost connection) is finished by running the command again. A message
//! copied but not yet acknowledged when it stopped is kept twice; every
//! message carries its id, and the programs drop a second copy.
//!
//! Inboxes are found from the database (every user's, with the bound it was
//! declared with, and every YouTuber's creator inbox); the request queues
//! come last, since their type is the vhost's choice, which servers follow.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions,
        QueueBindOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};

use crate::{
    broker,
    error::{Error, Result},
    protocol,
    store::{Database, Store},
    topology::{self, DurableQueue, QueueType, RequestKind, RequestQueue},
};

use super::ServerConfig;

/// How many messages are moved between two waits for the broker's confirms.
const MOVE_BATCH: usize = 500;
/// How long the broker may take to hand out the next message to move.
const STALLED: Duration = Duration::from_secs(30);

/// What a migration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Migrated {
    /// Queues moved to the new type.
    pub queues: usize,
    /// Messages they held, moved with them.
    pub messages: u64,
    /// Queues that had the new type already.
    pub already: usize,
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        write!(
            f,
            "{} moved ({} in them), {} of that type already",
            plural(self.queues as u64, "queue"),
            plural(self.messages, "message"),
            self.already
        )
    }
}

/// Moves every durable queue of the vhost that `config.broker` names to
/// `to`. Refused while any program consumes one of them: the servers and
/// the users' live sessions are stopped first.
pub async fn migrate_queues(config: &ServerConfig, to: QueueType) -> Result<Migrated> {
    // A new, empty database would list no inbox: the users' would be left
    // behind, and refused at their next login.
    if let Database::Sqlite(path) = &config.database
        && !path.exists()
    {
        return Err(Error::MigrationRefused(format!(
            "there is no database at {}; give the server's with --db, which lists the users \
             whose inboxes to move",
            path.display()
        )));
    }
    let store = Store::connect(&config.database).await?;
    let vhost = config.broker.first_url()?.vhost().to_owned();
    let mut queues = Vec::new();
    for (inbox, _) in store.every_inbox().await? {
        queues.push(DurableQueue::inbox(&inbox.user, inbox.bound));
    }
    if queues.is_empty() {
        tracing::warn!(
            "the database {} has no users: only the shared queues are moved",
            config.database.shown()
        );
    }
    for youtuber in store.youtubers_overview().await? {
        queues.push(DurableQueue::creator_inbox(&youtuber.name));
    }
    queues.extend(DurableQueue::shared());

    let connection = broker::connect(&config.broker, "youtube_server migrate-queues").await?;
    let result = async {
        refuse_unless_quiet(&connection, &queues).await?;
        let mut migrated = Migrated::default();
        for (done, queue) in queues.iter().enumerate() {
            match migrate(&connection, &vhost, queue, to).await? {
                Some(messages) => {
                    migrated.queues += 1;
                    migrated.messages += messages;
                }
                None => migrated.already += 1,
            }
            if (done + 1) % 1000 == 0 {
                tracing::info!("{} of {} queues done", done + 1, queues.len());
            }
        }
        Ok(migrated)
    }
    .await;
    let _ = connection.close(200, "migrated".into()).await;
    result
}

/// Refuses while a program reads one of the queues (it would lose its
/// consumer in the middle, and a server would declare the queue again with
/// the old type), and while requests wait: each carries its sender's
/// account as `user_id`, which a copy published under another login may
/// not carry (secure mode), and a server applies them before anything sent
/// during the move.
async fn refuse_unless_quiet(connection: &Connection, queues: &[DurableQueue]) -> Result<()> {
    let mut channel = connection.create_channel().await?;
    for queue in queues {
        match topology::inspect(&channel, &queue.name).await {
            Ok((waiting, 0))
                if waiting > 0 && topology::RequestQueue::named(&queue.name).is_some() =>
            {
                return Err(Error::MigrationRefused(format!(
                    "{} holds {waiting} request{} not applied yet: start youtube_server until \
                     they are, stop it, then run this again",
                    queue.name,
                    if waiting == 1 { "" } else { "s" }
                )));
            }
            Ok((_, 0)) => {}
            Ok((_, consumers)) => {
                return Err(Error::MigrationRefused(format!(
                    "{} has {consumers} consumer{}: stop every youtube_server, `user watch` \
                     and gateway of this vhost, then run it again",
                    queue.name,
                    if consumers == 1 { "" } else { "s" }
                )));
            }
            // A missing queue (a user who never logged in since it was
            // deleted) closes the channel, and has nothing to move.
            Err(err) if broker::is_not_found(&err) => {
                channel = connection.create_channel().await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    let _ = channel.close(200, "looked".into()).await;
    Ok(())
}

/// Moves one queue to `to`, finishing a move that stopped half-way. The
/// number of messages moved, or `None` if there was nothing to do: the
/// queue has the type already, or does not exist (it gets the vhost's type
/// when it is next declared).
async fn migrate(
    connection: &Connection,
    vhost: &str,
    queue: &DurableQueue,
    to: QueueType,
) -> Result<Option<u64>> {
    let holding = DurableQueue::holding(&queue.name);
    let found = queue
        .queue_type(connection)
        .await
        .map_err(|err| refused(vhost, queue, &err))?;
    let half_done = holding.queue_type(connection).await?.is_some();
    let other_type = found.is_some_and(|found| found != to);
    if !other_type && !half_done {
        return Ok(None);
    }
    let mut moved = 0;
    if other_type {
        let channel = connection.create_channel().await?;
        holding.declare(&channel, QueueType::Classic).await?;
        rebind(&channel, queue, &holding.name, &queue.name).await?;
        close(channel).await;
        moved = move_messages(connection, &queue.name, &holding.name).await?;
    }
    // A channel that consumed a quorum queue does not see it deleted well
    // (RabbitMQ 3.10 answers INTERNAL_ERROR): each step has its own.
    let channel = connection.create_channel().await?;
    if other_type {
        delete_emptied(&channel, &queue.name).await?;
    }
    queue
        .declare(&channel, to)
        .await
        .map_err(|err| refused(vhost, queue, &err))?;
    rebind(&channel, queue, &queue.name, &holding.name).await?;
    close(channel).await;
    move_messages(connection, &holding.name, &queue.name).await?;
    let channel = connection.create_channel().await?;
    delete_emptied(&channel, &holding.name).await?;
    close(channel).await;
    Ok(Some(moved))
}

/// Moves the requests left in the single request queue of each kind that a
/// vhost had before requests were partitioned to their partitions, and
/// deletes it: what a server does at start. Each is unbound first (it would
/// otherwise get a copy of every request for good). Returns how many moved.
///
/// A request that waited there since before the vhost's clients moved to
/// the partitions comes after what they sent since.
pub(super) async fn move_unpartitioned(connection: &Connection) -> Result<u64> {
    let mut moved = 0;
    for kind in RequestKind::ALL {
        let queue = kind.unpartitioned();
        let channel = connection.create_channel().await?;
        let (waiting, consumers) = match topology::inspect(&channel, queue).await {
            Ok(found) => found,
            Err(err) if broker::is_not_found(&err) => continue,
            Err(err) => return Err(err.into()),
        };
        channel
            .queue_unbind(
                queue.into(),
                kind.exchange().into(),
                "".into(),
                FieldTable::default(),
            )
            .await?;
        if consumers > 0 {
            tracing::warn!(
                queue,
                waiting,
                "a youtube_server of an older version still consumes {queue}: stop it; the \
                 requests it leaves there are moved to their partitions at this server's next start"
            );
            close(channel).await;
            continue;
        }
        if waiting > 0 {
            tracing::info!(
                queue,
                waiting,
                "moving the requests of a vhost set up before request queues were partitioned"
            );
            let confirming = broker::confirming_channel(connection).await?;
            confirming
                .basic_qos(MOVE_BATCH as u16, BasicQosOptions::default())
                .await?;
            let route = |delivery: &Delivery| {
                let partition = protocol::decode_request(&delivery.data)
                    .map_or(0, |envelope| RequestQueue::of(&envelope.request).partition);
                // One unreadable goes to partition 0, whose server
                // dead-letters it.
                RequestQueue { kind, partition }.name().to_owned()
            };
            let done = move_on(&confirming, queue, &route).await;
            close(confirming).await;
            moved += done?;
        }
        delete_emptied(&channel, queue).await?;
        close(channel).await;
    }
    Ok(moved)
}

async fn close(channel: Channel) {
    let _ = channel.close(200, "done".into()).await;
}

/// Deletes a queue that the move emptied, after looking that it is: a
/// queue that still holds a message is never deleted, and the command stops
/// (running it again finishes the move). Quorum queues do not take
/// `if_empty`, hence the look; nothing publishes to the queue any more.
async fn delete_emptied(channel: &Channel, queue: &str) -> Result<()> {
    let (waiting, consumers) = topology::inspect(channel, queue).await?;
    if consumers > 0 {
        return Err(Error::MigrationRefused(format!(
            "a program started reading {queue} during the move: stop it, then run this again \
             to finish"
        )));
    }
    if waiting > 0 {
        return Err(Error::MigrationRefused(format!(
            "{queue} still holds {waiting} messages after the move; run it again to finish"
        )));
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}

/// A queue that is of neither type as ytnotify declares it: someone else's.
fn refused(vhost: &str, queue: &DurableQueue, err: &lapin::Error) -> Error {
    let lost = if topology::inbox_owner(&queue.name).is_some() {
        " (the notifications waiting in it go with it)"
    } else {
        ""
    };
    Error::MigrationRefused(format!(
        "{} has settings ytnotify does not give it ({}); if another program declared it, \
         delete it with `rabbitmqctl delete_queue -p {vhost} {}`{lost}, then run this again",
        queue.name,
        broker::amqp_reason(err),
        queue.name
    ))
}

/// Binds `to` to the queue's exchange, then unbinds `from`: nothing
/// published meanwhile is lost, though it may reach both.
async fn rebind(channel: &Channel, queue: &DurableQueue, to: &str, from: &str) -> Result<()> {
    let Some(source) = &queue.source else {
        return Ok(());
    };
    for &key in &queue.keys {
        channel
            .queue_bind(
                to.into(),
                source.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    for &key in &queue.keys {
        channel
            .queue_unbind(
                from.into(),
                source.as_str().into(),
                key.into(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Moves every message of `from` to `to`, each acknowledged once the
/// broker has confirmed its copy, until `from` is empty; returns how many.
/// Properties and headers are kept: a request keeps its id and sender, a
/// notification its id.
async fn move_messages(connection: &Connection, from: &str, to: &str) -> Result<u64> {
    let channel = broker::confirming_channel(connection).await?;
    channel
        .basic_qos(MOVE_BATCH as u16, BasicQosOptions::default())
        .await?;
    let moved = move_on(&channel, from, &|_| to.to_owned()).await;
    close(channel).await;
    moved
}

/// [`move_messages`] on `channel`, each message to the queue `route` names.
async fn move_on(
    channel: &Channel,
    from: &str,
    route: &(dyn Fn(&Delivery) -> String + Sync),
) -> Result<u64> {
    let mut moved = 0;
    loop {
        // Nothing else consumes the queue, and nothing is published to it
        // any more: what it holds now is all there is to move. (A quorum
        // queue with a single active consumer refuses `basic.get`.)
        let (waiting, _) = topology::inspect(channel, from).await?;
        if waiting == 0 {
            return Ok(moved);
        }
        let tag = format!("migrate {from}");
        // Not exclusive: RabbitMQ refuses an exclusive consumer on a queue
        // with a single active consumer. A second mover (two servers
        // starting at once) waits behind the first, then gives up.
        let mut deliveries = channel
            .basic_consume(
                from.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut copies = Vec::new();
        for taken in 1..=u64::from(waiting) {
            let delivery = match tokio::time::timeout(STALLED, deliveries.next()).await {
                Ok(Some(delivery)) => delivery?,
                Ok(None) | Err(_) => {
                    return Err(Error::MigrationRefused(format!(
                        "RabbitMQ stopped handing out the messages of {from}; run it again \
                         to finish"
                    )));
                }
            };
            let copy = broker::publish(
                channel,
                "",
                &route(&delivery),
                true,
                &delivery.data,
                delivery.properties.clone(),
            )
            .await
            .map_err(|err| impersonation_advice(from, err))?;
            copies.push(copy);
            if copies.len() == MOVE_BATCH || taken == u64::from(waiting) {
                moved += copies.len() as u64;
                for copy in copies.drain(..) {
                    copy.confirmed()
                        .await
                        .map_err(|err| impersonation_advice(from, err))?;
                }
                broker::ack(&delivery.acker, BasicAckOptions { multiple: true }).await?;
            }
        }
        channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await?;
    }
}

/// A copy of a request sent by another account carries that account's
/// `user_id`, which RabbitMQ lets only an impersonator publish.
fn impersonation_advice(queue: &str, err: Error) -> Error {
    match &err {
        Error::Broker(lapin) if broker::is_precondition_failed(lapin) => {
            Error::MigrationRefused(format!(
                "RabbitMQ refused a copy of a message of {queue} ({}); another account sent \
                 it during the move: stop every client of the vhost, then run this again logged \
                 in as a user tagged impersonator (`rabbitmqctl set_user_tags <user> \
                 administrator impersonator`), which may copy it",
                broker::amqp_reason(lapin)
            ))
        }
        _ => err,
    }
}
