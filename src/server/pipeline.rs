//! Consuming a request queue: batches taken in two overlapping stages,
//! [`YoutubeServer::prepare`] and [`YoutubeServer::finish`], and a request
//! whose effects fail tried again after a pause, up to [`MAX_ATTEMPTS`].

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{
    Event, MAX_RETRY_DELAY, YoutubeServer,
    bindings::{self, Failure, creator_key},
    creators, next_batch,
    upkeep::publish_notification,
};
use crate::{
    accounts, broker,
    error::{Error, Result},
    link::{Feed, SessionChannel},
    protocol::{self, CreatorEvent, Reply, Request, RequestEnvelope},
    store::{Applied, CreatorNote, Decision, Effect},
    sync::lock,
    topology::{self, RequestKind, RequestQueue},
};

impl YoutubeServer {
    /// Applies a queue's requests in the order they were delivered, until
    /// `stopped`. The consumer outlives lost connections and cancelled
    /// consumers ([`Feed`]). Any failure of a batch as a whole — the
    /// connection, the database — closes the consuming channel, which sends
    /// every unacknowledged request back to the queue in order; after an
    /// outage they are taken again at once, after another failure after a
    /// pause that doubles each time, up to [`MAX_RETRY_DELAY`]. A failure of
    /// one request's effects is that request's alone ([`Self::finish`]).
    pub(super) async fn consume_requests(
        &self,
        queue: RequestQueue,
        mut feed: Feed,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let publisher = SessionChannel::new(&self.link, true);
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            let started_on = self.link.current().map(|session| session.generation());
            let failure = match self
                .pipeline(queue, &publisher, &mut feed, &mut stopped, &mut delay)
                .await
            {
                Ok(()) => break,
                Err(failure) => failure,
            };
            feed.reset("requests go back to the queue");
            if self.link.current().map(|session| session.generation()) != started_on {
                tracing::warn!(%failure, queue = queue.name(), "the connection to RabbitMQ changed under a batch; taking its requests again");
                continue;
            }
            tracing::warn!(
                %failure,
                queue = queue.name(),
                "could not apply requests; they go back to the queue and are tried again in {delay:?}"
            );
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => break,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
        // Hand-over: what was prefetched behind the last batch goes back to
        // the queue now, ahead of anything a standby could take.
        feed.close().await;
        tracing::debug!(
            queue = queue.name(),
            "stopped consuming; requests not taken are back in the queue"
        );
        Ok(())
    }

    /// Takes a queue's requests in batches, through two stages that overlap:
    ///
    /// 1. [`prepare`](Self::prepare): whatever has arrived (up to
    ///    [`MAX_BATCH`]) is stored in one database transaction, and its
    ///    effects are set going: bindings on the [`Bindings`](super::bindings::Bindings) lanes,
    ///    notifications published;
    /// 2. [`finish`](Self::finish): once those are done and confirmed, the
    ///    replies are sent and the requests acknowledged.
    ///
    /// While one batch finishes, the next is stored. Under load the batches
    /// grow, and one disk write and one round of confirms serve many
    /// requests; when idle a batch is a single request. Each stage takes the
    /// batches in order, so requests are applied, carried out and answered in
    /// the order they were delivered.
    async fn pipeline(
        &self,
        queue: RequestQueue,
        publisher: &SessionChannel,
        feed: &mut Feed,
        stopped: &mut watch::Receiver<bool>,
        delay: &mut Duration,
    ) -> Result<()> {
        let (prepared, mut to_finish) = mpsc::channel::<Prepared>(1);
        // Videos whose notification, and creator events (by request id),
        // published but not yet recorded as sent: a redelivered request among
        // them is not sent twice. It lives as long as this pipeline: after a
        // failure, what was in flight is published again.
        let unrecorded = Mutex::new(HashSet::new());
        let unrecorded = &unrecorded;
        let prepare = async move {
            while let Some(batch) = next_batch(feed, stopped).await? {
                let batch = reported(
                    queue.name(),
                    "storing it and setting its effects going",
                    self.prepare(queue, publisher, batch, unrecorded),
                )
                .await?;
                let handed =
                    reported(queue.name(), "the batch before it", prepared.send(batch)).await;
                if handed.is_err() {
                    break;
                }
            }
            Ok::<(), Error>(())
        };
        let finish = async {
            while let Some(batch) = to_finish.recv().await {
                self.finish(queue, publisher, batch, unrecorded).await?;
                *delay = FIRST_RETRY_DELAY;
            }
            Ok::<(), Error>(())
        };
        tokio::try_join!(prepare, finish).map(|_| ())
    }

    /// The first stage: stores the batch and sets its effects going.
    async fn prepare(
        &self,
        queue: RequestQueue,
        publisher: &SessionChannel,
        batch: Vec<Delivery>,
        unrecorded: &Mutex<HashSet<Uuid>>,
    ) -> Result<Prepared> {
        let started = std::time::Instant::now();
        // The channel of the connection of the moment: one that a lost
        // connection took away is replaced before it is used.
        let (_, publisher) = publisher.get().await?;
        let publisher = &publisher;
        if queue.kind == RequestKind::Youtubers
            && !self.outbox_flushed[usize::from(queue.partition)].load(Ordering::Acquire)
        {
            // This server has just become the one that takes the partition's
            // uploads (or sends them now): what a crash left unsent goes
            // before anything else.
            self.flush_outbox(queue.partition).await?;
        }
        let requests: Vec<Triaged> = batch
            .iter()
            .map(|delivery| triage(queue, delivery, self.config.secure))
            .collect();
        let to_apply: Vec<(Uuid, Request)> = requests
            .iter()
            .filter_map(|triaged| match triaged {
                Triaged::Apply(envelope) => Some((envelope.id, envelope.request.clone())),
                _ => None,
            })
            .collect();
        let outcomes = if to_apply.is_empty() {
            Vec::new()
        } else {
            self.store.apply(to_apply).await?
        };
        let envelopes = requests.iter().filter_map(|triaged| match triaged {
            Triaged::Apply(envelope) => Some(envelope),
            _ => None,
        });
        for (envelope, outcome) in envelopes.clone().zip(&outcomes) {
            if let Some(event) = event_of(&envelope.request, outcome) {
                self.emit(event);
            }
        }
        let bindings = self.bindings.carry_out(&outcomes);
        // Sent once the creators' inboxes are declared, in `finish`; not one
        // that an earlier batch still has in flight (a redelivery's).
        let tell: Vec<CreatorNote> = outcomes
            .iter()
            .filter_map(|outcome| outcome.tell.clone())
            .filter(|note| lock(unrecorded).insert(note.event.id()))
            .collect();
        let mut notifications = Vec::new();
        let videos = outcomes.iter().filter_map(|outcome| match &outcome.effect {
            Effect::Notify(video) => Some(video),
            _ => None,
        });
        self.declare_celebrity_streams(videos).await?;
        for (index, outcome) in outcomes.iter().enumerate() {
            if let Effect::Notify(video) = &outcome.effect
                && !video.notified
                && lock(unrecorded).insert(video.id)
            {
                // A copy of an upload read its video while an earlier batch
                // still had the notification in flight; that batch may have
                // recorded it sent and let it go since. Look again.
                if !outcome.reply.is_new() && self.store.is_notified(video.id).await? {
                    lock(unrecorded).remove(&video.id);
                    continue;
                }
                let unconfirmed = publish_notification(publisher, video).await?;
                notifications.push((video.id, index, unconfirmed));
            }
        }
        let applied = envelopes
            .zip(outcomes)
            .map(|(envelope, outcome)| AppliedRequest {
                id: envelope.id,
                users: effect_users(&outcome.effect),
                reply: outcome.reply.into_inner(),
            })
            .collect();
        Ok(Prepared {
            deliveries: batch,
            requests,
            applied,
            bindings,
            notifications,
            tell,
            started,
        })
    }

    /// The second stage: waits for the batch's effects, records the
    /// notifications as sent, answers, and acknowledges. The deliveries are
    /// settled last, once nothing before can fail.
    ///
    /// A request whose effects failed (its user's inbox refused by the
    /// broker, its notification refused) is that request's problem alone:
    /// it goes back to the queue after a pause, without holding up the
    /// others, and after [`MAX_ATTEMPTS`] attempts — or at once when trying
    /// again cannot help — it is refused to its sender with the reason and
    /// dead-lettered. Its stored part stays stored; a later attempt carries
    /// out the effects from the database, so a retry never undoes a later
    /// request of the same user.
    async fn finish(
        &self,
        queue: RequestQueue,
        publisher: &SessionChannel,
        batch: Prepared,
        unrecorded: &Mutex<HashSet<Uuid>>,
    ) -> Result<()> {
        let Prepared {
            deliveries,
            requests,
            applied,
            bindings,
            notifications,
            tell,
            started,
        } = batch;
        let failed_users = reported(queue.name(), "its bindings", bindings.done()).await?;
        if !tell.is_empty() {
            self.tell_creators(queue.name(), publisher, tell, &failed_users, unrecorded)
                .await?;
        }
        let mut failures: HashMap<usize, Failure> = HashMap::new();
        for (index, request) in applied.iter().enumerate() {
            if let Some(failure) = request.users.iter().find_map(|user| failed_users.get(user)) {
                failures.insert(index, failure.clone());
            }
        }
        if !notifications.is_empty() {
            let mut sent = Vec::with_capacity(notifications.len());
            let mut settled = Vec::with_capacity(notifications.len());
            let mut outcome = Ok(());
            for (video, index, notification) in notifications {
                settled.push(video);
                match reported(
                    queue.name(),
                    "a notification's confirm",
                    publisher.confirmed(notification),
                )
                .await
                {
                    Ok(()) => sent.push(video),
                    Err(err @ (Error::Nacked(_) | Error::Unroutable(_))) => {
                        if matches!(err, Error::Nacked(_)) {
                            publisher.renew().await;
                        }
                        failures.insert(
                            index,
                            Failure {
                                reason: format!("the notification was not taken: {err}"),
                                permanent: false,
                            },
                        );
                    }
                    Err(err) => outcome = Err(err),
                }
            }
            // Recorded before they leave `unrecorded`: a copy of the upload
            // in the next batch must find them either in flight or sent.
            let recorded = match outcome {
                Ok(()) => self.store.mark_notified(sent).await,
                Err(err) => Err(err),
            };
            let mut unrecorded = lock(unrecorded);
            for video in settled {
                unrecorded.remove(&video);
            }
            drop(unrecorded);
            recorded?;
        }
        let carried = started.elapsed();

        let (_, channel) = publisher.get().await?;
        let channel = &channel;
        let mut answers = Vec::new();
        let mut settle = Vec::with_capacity(deliveries.len());
        let mut applied = applied.into_iter().enumerate();
        for (delivery, triaged) in deliveries.into_iter().zip(&requests) {
            let action = match triaged {
                Triaged::DeadLetter(reason) => Settle::DeadLetter(reason.clone()),
                Triaged::Forbidden(reason) => {
                    let refusal = Reply::Refused {
                        reason: reason.clone(),
                    };
                    answers.extend(self.reply(channel, &delivery, &refusal).await?);
                    Settle::DeadLetter(reason.clone())
                }
                Triaged::Refuse(reply) => {
                    answers.extend(self.reply(channel, &delivery, reply).await?);
                    Settle::Ack
                }
                Triaged::Apply(_) => {
                    let (index, request) = applied
                        .next()
                        .expect("the store answers every request it is given");
                    match failures.remove(&index) {
                        None => {
                            lock(&self.attempts).remove(&request.id);
                            answers.extend(self.reply(channel, &delivery, &request.reply).await?);
                            Settle::Ack
                        }
                        Some(failure) => {
                            let attempt = self.count_attempt(request.id);
                            if failure.permanent || attempt >= MAX_ATTEMPTS {
                                lock(&self.attempts).remove(&request.id);
                                let reason = if failure.permanent {
                                    failure.reason
                                } else {
                                    format!("{} (gave up after {attempt} attempts)", failure.reason)
                                };
                                let refusal = Reply::Refused {
                                    reason: reason.clone(),
                                };
                                answers.extend(self.reply(channel, &delivery, &refusal).await?);
                                Settle::DeadLetter(reason)
                            } else {
                                tracing::warn!(
                                    request = %request.id,
                                    attempt,
                                    reason = %failure.reason,
                                    "could not carry out a request; trying it again later"
                                );
                                Settle::Retry(attempt)
                            }
                        }
                    }
                }
            };
            settle.push((delivery, action));
        }
        for answer in answers {
            match reported(
                queue.name(),
                "a reply's confirm",
                publisher.confirmed(answer),
            )
            .await
            {
                Err(err @ (Error::Broker(_) | Error::Unconfirmed(_))) => return Err(err),
                Err(err) => {
                    tracing::warn!(%err, "could not send a reply; the request is applied all the same")
                }
                Ok(()) => {}
            }
        }
        let replied = started.elapsed();

        // One acknowledgement for the whole batch (`multiple`: everything
        // delivered up to its last request) unless a request is held back to
        // be tried again, in this batch or an earlier one: it would be
        // settled too.
        let singly = self.held.load(Ordering::Acquire) > 0
            || settle
                .iter()
                .any(|(_, action)| matches!(action, Settle::Retry(_)));
        let mut last_ack = None;
        for (delivery, action) in settle {
            match action {
                Settle::Ack if singly => {
                    broker::ack(&delivery, BasicAckOptions::default()).await?;
                }
                Settle::Ack => last_ack = Some(delivery),
                Settle::DeadLetter(reason) => {
                    let moving = self.dead_letter(channel, queue.name(), &delivery, reason);
                    reported(queue.name(), "a dead letter's confirm", moving).await?
                }
                Settle::Retry(attempt) => self.retry_later(delivery, attempt),
            }
        }
        if let Some(last) = last_ack {
            broker::ack(&last.acker, BasicAckOptions { multiple: true }).await?;
        }
        tracing::debug!(
            queue = queue.name(),
            requests = requests.len(),
            ?carried,
            ?replied,
            settled = ?started.elapsed(),
            "handled a batch"
        );
        Ok(())
    }

    /// Sends a batch's creator events, but for those whose creator inbox
    /// could not be declared (they wait in the database), and records them
    /// as sent. Before the replies: once a user sees SUCCESS, the creator's
    /// inbox has the event.
    async fn tell_creators(
        &self,
        queue: &str,
        publisher: &SessionChannel,
        tell: Vec<CreatorNote>,
        failed: &bindings::Failures,
        unrecorded: &Mutex<HashSet<Uuid>>,
    ) -> Result<()> {
        let ids: Vec<Uuid> = tell.iter().map(|note| note.event.id()).collect();
        let ready = tell
            .into_iter()
            .filter(|note| !failed.contains_key(&creator_key(&note.youtuber)))
            .collect();
        let sent = async {
            let (_, channel) = publisher.get().await?;
            let sent = creators::send(&channel, creators::messages(ready)).await?;
            self.store.mark_told(sent).await
        };
        let sent = reported(queue, "its creator events' confirms", sent).await;
        let mut unrecorded = lock(unrecorded);
        for id in ids {
            unrecorded.remove(&id);
        }
        sent
    }

    /// Counts one more failed attempt of a request, and returns how many.
    fn count_attempt(&self, id: Uuid) -> u32 {
        let mut attempts = lock(&self.attempts);
        // Entries leave when their request succeeds or is refused; one whose
        // request another server took never would: forget them all rather
        // than grow without bound.
        if attempts.len() >= MAX_TRACKED_ATTEMPTS {
            attempts.clear();
        }
        let count = attempts.entry(id).or_insert(0);
        *count += 1;
        *count
    }

    /// Sends a request back to its queue after a pause that grows with the
    /// attempts; meanwhile the requests behind it go on.
    fn retry_later(&self, delivery: Delivery, attempt: u32) {
        let pause = FIRST_RETRY_DELAY * 2u32.saturating_pow(attempt.saturating_sub(1));
        let held = std::sync::Arc::clone(&self.held);
        held.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(async move {
            tokio::time::sleep(pause.min(MAX_RETRY_DELAY)).await;
            // If the channel has closed meanwhile, the broker has already
            // put the request back.
            let _ = broker::nack(
                &delivery,
                BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                },
            )
            .await;
            held.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Sends the answer to the client's reply-to address, if it gave one;
    /// the caller waits for the confirm. A client that has gone away (timed
    /// out, say) misses the answer, not the effect. A broker outage is an
    /// error: the request is then redelivered, recognised, and answered again.
    async fn reply(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        reply: &Reply,
    ) -> Result<Option<broker::Unconfirmed>> {
        let Some(reply_to) = delivery.properties.reply_to() else {
            return Ok(None);
        };
        // In secure mode an answer goes only to a reply queue of the account
        // that sent the request (RabbitMQ vouches for `user_id`): never into
        // someone else's queue that the sender named.
        if self.config.secure {
            let sender = delivery.properties.user_id().as_ref();
            if !sender.is_some_and(|sender| {
                topology::is_reply_queue_of(reply_to.as_str(), sender.as_str())
            }) {
                tracing::warn!(%reply_to, "not answering to a queue that is not the sender's");
                return Ok(None);
            }
        }
        let mut properties =
            BasicProperties::default().with_content_type(ShortString::from("application/json"));
        if let Some(correlation) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation.clone());
        }
        let body = protocol::encode(&reply.clone().fitted());
        let sending = broker::publish(channel, "", reply_to.as_str(), false, &body, properties);
        let sent = reported(reply_to.as_str(), "sending a reply to it", sending).await?;
        Ok(Some(sent))
    }

    /// Moves an unreadable or refused message to the dead-letter queue with
    /// the reason, its queue and its sender in headers, then acknowledges it;
    /// the server carries on.
    async fn dead_letter(
        &self,
        channel: &Channel,
        queue: &str,
        delivery: &Delivery,
        reason: String,
    ) -> Result<()> {
        tracing::warn!(queue, %reason, "dead-lettering a message");
        // The sender's own headers are not copied: they could claim to be
        // ours (a forged sender), or be so large that the copy no longer
        // fits in a frame and the broker closes the server's connection.
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(topology::REASON_HEADER),
            AMQPValue::LongString(reason.as_str().into()),
        );
        headers.insert(
            ShortString::from(topology::SOURCE_QUEUE_HEADER),
            AMQPValue::LongString(queue.into()),
        );
        if let Some(sender) = delivery.properties.user_id() {
            headers.insert(
                ShortString::from(topology::SENDER_HEADER),
                AMQPValue::LongString(sender.as_str().into()),
            );
        }
        let properties = dead_letter_properties(&delivery.properties).with_headers(headers);
        let moved = broker::publish_confirmed(
            channel,
            topology::DEAD_LETTER_EXCHANGE,
            queue,
            false,
            &delivery.data,
            properties,
        )
        .await;
        match moved {
            Ok(()) => broker::ack(delivery, BasicAckOptions::default()).await?,
            // The queue's own dead-letter exchange still keeps the message,
            // without our reason header.
            Err(err) => {
                tracing::warn!(%err, "could not attach a reason; rejecting to the dead-letter exchange");
                broker::nack(
                    delivery,
                    BasicNackOptions {
                        requeue: false,
                        ..BasicNackOptions::default()
                    },
                )
                .await?
            }
        };
        self.emit(Event::DeadLettered {
            queue: queue.to_owned(),
            reason,
        });
        Ok(())
    }
}

/// How long a batch may wait on one step before the log says so.
const SLOW_STEP: Duration = Duration::from_secs(10);

/// Awaits one step of a batch; past [`SLOW_STEP`], and every [`SLOW_STEP`]
/// after, says at WARN level what the batch waits for, so that a wait that
/// never ends shows in the log with its cause. Nothing is cancelled.
async fn reported<T>(queue: &str, what: &str, step: impl Future<Output = T>) -> T {
    let mut step = std::pin::pin!(step);
    let mut waited = Duration::ZERO;
    loop {
        match tokio::time::timeout(SLOW_STEP, &mut step).await {
            Ok(done) => return done,
            Err(_) => {
                waited += SLOW_STEP;
                tracing::warn!(queue, "a batch has waited {waited:?} for {what}");
            }
        }
    }
}

/// A dead-lettered message's properties: the original's, but for its
/// `user_id`, which RabbitMQ would check against the server's own login and
/// refuse (the sender is kept in a header instead).
fn dead_letter_properties(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(value) = original.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.delivery_mode() {
        copy = copy.with_delivery_mode(*value);
    }
    if let Some(value) = original.priority() {
        copy = copy.with_priority(*value);
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.reply_to() {
        copy = copy.with_reply_to(value.clone());
    }
    if let Some(value) = original.message_id() {
        copy = copy.with_message_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    copy
}

/// The first pause before requests that failed are tried again. The five
/// attempts span about 6 s: a quorum queue whose leader went down refuses
/// what it is sent until it has elected another, which takes a few seconds.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(400);

/// How many times a request whose effects fail is tried before it is
/// refused and dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;

/// The most requests whose failed attempts are counted at once.
const MAX_TRACKED_ATTEMPTS: usize = 10_000;

/// A batch between the two stages of [`YoutubeServer::pipeline`].
struct Prepared {
    deliveries: Vec<Delivery>,
    requests: Vec<Triaged>,
    /// Each request the store applied, in order.
    applied: Vec<AppliedRequest>,
    bindings: bindings::Pending,
    /// Each new upload's video id, the index of its request in `applied`,
    /// and its notification, unconfirmed.
    notifications: Vec<(Uuid, usize, broker::Unconfirmed)>,
    /// What creators are to hear of.
    tell: Vec<CreatorNote>,
    started: std::time::Instant,
}

/// A request the store applied: its id, its reply, and the users whose
/// inboxes its effects touch.
struct AppliedRequest {
    id: Uuid,
    reply: Reply,
    users: Vec<String>,
}

/// What becomes of a delivered request once its batch is carried out.
enum Settle {
    Ack,
    DeadLetter(String),
    /// Back to the queue after a pause; the number of attempts so far.
    Retry(u32),
}

/// The users whose inboxes an effect touches.
fn effect_users(effect: &Effect) -> Vec<String> {
    match effect {
        Effect::Inbox { inbox, .. } => vec![inbox.user.clone()],
        Effect::Binding { user, .. } => vec![user.clone()],
        Effect::None | Effect::Notify(_) => Vec::new(),
    }
}

/// What a delivered request needs.
#[derive(Debug, Clone)]
enum Triaged {
    /// Unreadable or on the wrong queue: to the dead-letter queue, with why.
    DeadLetter(String),
    /// In secure mode, from an account that may not send it: refused to
    /// its sender and dead-lettered, with why.
    Forbidden(String),
    /// Readable but invalid: answered with a refusal, nothing stored.
    Refuse(Reply),
    /// To apply.
    Apply(RequestEnvelope),
}

fn triage(queue: RequestQueue, delivery: &Delivery, secure: bool) -> Triaged {
    let envelope = match protocol::decode_request(&delivery.data) {
        Ok(envelope) => envelope,
        Err(reason) => return Triaged::DeadLetter(reason.to_string()),
    };
    // A request in another partition of its kind is applied: only its own
    // sender's order is at stake, and a client that routes by no key at all
    // lands on partition 0.
    let expected = RequestQueue::of(&envelope.request);
    if queue.kind != expected.kind {
        return Triaged::DeadLetter(format!(
            "{} requests belong on {expected}, not {queue}",
            envelope.request.kind()
        ));
    }
    if let Err(invalid) = envelope.request.validate() {
        tracing::warn!(%invalid, "refused a request");
        return Triaged::Refuse(Reply::Refused {
            reason: invalid.to_string(),
        });
    }
    if secure {
        let properties = &delivery.properties;
        let sender = properties.user_id().as_ref().map(|id| id.as_str());
        let reply_to = properties.reply_to().as_ref().map(|queue| queue.as_str());
        if let Err(reason) = accounts::check_sender(&envelope.request, sender, reply_to) {
            return Triaged::Forbidden(reason);
        }
    }
    Triaged::Apply(envelope)
}

/// The event a request makes, if it was applied now and changed something.
fn event_of(request: &Request, outcome: &Decision) -> Option<Event> {
    let Applied::New(Reply::Done { .. }) = outcome.reply else {
        return None;
    };
    Some(match request.clone() {
        Request::Login { user, .. } => Event::LoggedIn { user },
        Request::ChangeSubscription {
            user,
            youtuber,
            subscribe: true,
        } => Event::Subscribed { user, youtuber },
        Request::ChangeSubscription {
            user,
            youtuber,
            subscribe: false,
        } => Event::Unsubscribed { user, youtuber },
        Request::Upload { youtuber, video } => Event::Uploaded { youtuber, video },
        Request::React { .. } | Request::Comment { .. } => {
            // A like taken back, or one given already, tells no one.
            let note = outcome.tell.as_ref()?;
            match &note.event {
                CreatorEvent::Reacted {
                    user,
                    video,
                    reaction,
                    ..
                } => Event::Reacted {
                    user: user.clone(),
                    youtuber: note.youtuber.clone(),
                    video: video.clone(),
                    reaction: *reaction,
                },
                CreatorEvent::Commented { user, video, .. } => Event::Commented {
                    user: user.clone(),
                    youtuber: note.youtuber.clone(),
                    video: video.clone(),
                },
                CreatorEvent::Subscribed { .. } | CreatorEvent::Unsubscribed { .. } => return None,
            }
        }
        Request::ListSubscriptions { .. }
        | Request::ListVideos { .. }
        | Request::Stats { .. }
        | Request::Celebrities { .. }
        | Request::Seen { .. } => {
            return None;
        }
    })
}
