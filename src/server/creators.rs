//! Telling creators: the events of a batch (likes, comments, new
//! subscribers) sent to each creator's inbox, several to a message, and
//! what a crash or a broken inbox left unsent, sent later from the database.
//!
//! An interaction never fails for its creator's inbox: the event is stored
//! with the interaction (the outbox, `creator_events`), sent once the inbox
//! can take it (declared; not full: a full one refuses, and the events wait),
//! and marked sent once the broker confirms it. The creator shows each event
//! once, by id, however often it was sent.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use lapin::{Channel, types::ShortString};
use tokio::{sync::watch, time::Instant};
use uuid::Uuid;

use super::YoutubeServer;
use crate::{
    broker,
    error::{Error, Result},
    protocol::{self, CreatorEvent, CreatorEvents},
    store::{self, CreatorNote},
    topology,
};

/// The most bytes of events in one message to a creator: well under
/// [`protocol::MAX_MESSAGE_BYTES`], whatever a comment holds.
const MESSAGE_BYTES: usize = 32 * 1024;

/// How often the events left unsent are looked for, and how old one must be
/// (a batch in flight sends its own).
const TELL_LATER_EVERY: Duration = Duration::from_secs(5);

/// The longest a creator whose inbox refused its events waits before it is
/// tried again.
const TELL_LATER_AT_MOST: Duration = Duration::from_secs(300);

/// The most unsent events of one creator sent in one round.
const TELL_LATER_LIMIT: usize = 4_096;

/// Creators whose inbox could not take their events, and when to try again.
#[derive(Default)]
struct Waiting(HashMap<String, (Instant, Duration)>);

impl Waiting {
    fn due(&self, youtuber: &str, now: Instant) -> bool {
        self.0.get(youtuber).is_none_or(|(until, _)| *until <= now)
    }

    /// Tries `youtuber` again after twice the last pause.
    fn back_off(&mut self, youtuber: &str) {
        let pause = self.0.get(youtuber).map_or(TELL_LATER_EVERY, |(_, pause)| {
            (*pause * 2).min(TELL_LATER_AT_MOST)
        });
        self.0
            .insert(youtuber.to_owned(), (Instant::now() + pause, pause));
    }

    fn served(&mut self, youtuber: &str) {
        self.0.remove(youtuber);
    }
}

/// A message for one creator, and the events it carries.
pub(super) struct ForCreator {
    youtuber: String,
    body: Vec<u8>,
    ids: Vec<Uuid>,
}

/// The events grouped by creator, in order, in messages of at most
/// [`MESSAGE_BYTES`] of events.
pub(super) fn messages(notes: Vec<CreatorNote>) -> Vec<ForCreator> {
    let mut by_creator: BTreeMap<String, Vec<CreatorEvent>> = BTreeMap::new();
    for note in notes {
        by_creator
            .entry(note.youtuber)
            .or_default()
            .push(note.event);
    }
    let mut messages = Vec::new();
    for (youtuber, events) in by_creator {
        let mut chunk: Vec<CreatorEvent> = Vec::new();
        let mut bytes = 0;
        for event in events {
            let size = protocol::encode(&event).len();
            if !chunk.is_empty() && bytes + size > MESSAGE_BYTES {
                messages.push(message(&youtuber, std::mem::take(&mut chunk)));
                bytes = 0;
            }
            bytes += size;
            chunk.push(event);
        }
        if !chunk.is_empty() {
            messages.push(message(&youtuber, chunk));
        }
    }
    messages
}

fn message(youtuber: &str, events: Vec<CreatorEvent>) -> ForCreator {
    let ids = events.iter().map(CreatorEvent::id).collect();
    let body = protocol::encode(&CreatorEvents {
        youtuber: youtuber.to_owned(),
        events,
    });
    ForCreator {
        youtuber: youtuber.to_owned(),
        body,
        ids,
    }
}

/// Sends the messages to their creators' inboxes (declared before), and
/// returns the ids of the events the broker confirmed. One refused (the
/// inbox deleted meanwhile, say) stays unsent, for later; a lost
/// connection is an error.
pub(super) async fn send(channel: &Channel, messages: Vec<ForCreator>) -> Result<Vec<Uuid>> {
    let mut unconfirmed = Vec::with_capacity(messages.len());
    for message in messages {
        let queue = topology::creator_inbox(&message.youtuber);
        let properties = broker::persistent_json()
            .with_message_id(ShortString::from(message.ids[0].to_string()))
            .with_timestamp((store::now_ms() / 1000) as u64);
        let sending = broker::publish(channel, "", &queue, true, &message.body, properties).await?;
        unconfirmed.push((message, sending));
    }
    let mut confirmed = Vec::new();
    for (message, sending) in unconfirmed {
        match sending.confirmed().await {
            Ok(()) => confirmed.extend(message.ids),
            Err(err @ (Error::Nacked(_) | Error::Unroutable(_))) => tracing::warn!(
                %err,
                youtuber = message.youtuber,
                events = message.ids.len(),
                "a creator's inbox did not take its events; they are sent again later"
            ),
            Err(err) => return Err(err),
        }
    }
    Ok(confirmed)
}

impl YoutubeServer {
    /// Sends, now and then, the creator events stored over
    /// [`TELL_LATER_EVERY`] ago and not sent yet: what a crash, a refused
    /// message or a creator inbox that could not be declared left behind.
    /// Each creator is served on its own: one whose inbox keeps refusing is
    /// tried again less and less often, and never holds up the others. A
    /// creator's events are the business of the server that takes the
    /// creator's uploads (its partition), not of a hot standby.
    pub(super) async fn tell_creators_later(
        &self,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let mut waiting = Waiting::default();
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                () = tokio::time::sleep(TELL_LATER_EVERY) => {}
            }
            if let Err(err) = self.tell_creators_now(&mut waiting).await {
                tracing::warn!(%err, "could not send the creator events left unsent; trying again later");
            }
        }
    }

    async fn tell_creators_now(&self, waiting: &mut Waiting) -> Result<()> {
        let before = store::now_ms() - TELL_LATER_EVERY.as_millis() as i64;
        let now = Instant::now();
        let due: Vec<String> = self
            .store
            .creators_with_unsent(before)
            .await?
            .into_iter()
            .filter(|youtuber| self.serves_uploads_of(youtuber) && waiting.due(youtuber, now))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let failed = self.bindings.declare_creators(due.clone()).done().await?;
        let (_, channel) = self.publisher.get().await?;
        for youtuber in due {
            if failed.contains_key(&super::bindings::creator_key(&youtuber)) {
                waiting.back_off(&youtuber);
                continue;
            }
            let notes = self
                .store
                .creator_events_to_send(&youtuber, before, TELL_LATER_LIMIT)
                .await?;
            let count = notes.len();
            tracing::info!(
                youtuber,
                events = count,
                "sending creator events left unsent"
            );
            let sent = send(&channel, messages(notes)).await?;
            if sent.len() < count {
                waiting.back_off(&youtuber);
            } else {
                waiting.served(&youtuber);
            }
            self.store.mark_told(sent).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(youtuber: &str, text: &str) -> CreatorNote {
        CreatorNote {
            youtuber: youtuber.to_owned(),
            event: CreatorEvent::Commented {
                id: Uuid::new_v4(),
                user: "alice".into(),
                video_id: Uuid::nil(),
                video: "Hello".into(),
                text: text.to_owned(),
                at_ms: 0,
            },
        }
    }

    #[test]
    fn events_go_by_creator_in_order_in_messages_that_fit() {
        let long = "é".repeat(crate::names::MAX_COMMENT_CHARS - 4);
        let mut notes = Vec::new();
        for n in 0..200 {
            notes.push(comment("bob", &format!("{n:03} {long}")));
            if n % 4 == 0 {
                notes.push(comment("carol", "short"));
            }
        }
        let expected_bob: Vec<Uuid> = notes
            .iter()
            .filter(|note| note.youtuber == "bob")
            .map(|note| note.event.id())
            .collect();
        let messages = messages(notes);
        let bob: Vec<&ForCreator> = messages.iter().filter(|m| m.youtuber == "bob").collect();
        assert!(bob.len() > 1, "200 long comments take several messages");
        let ids: Vec<Uuid> = bob.iter().flat_map(|m| m.ids.clone()).collect();
        assert_eq!(ids, expected_bob);
        for message in &messages {
            assert!(message.body.len() <= protocol::MAX_MESSAGE_BYTES);
            let decoded = protocol::decode_creator_events(&message.body).unwrap();
            assert_eq!(decoded.youtuber, message.youtuber);
            let decoded_ids: Vec<Uuid> = decoded.events.iter().map(CreatorEvent::id).collect();
            assert_eq!(decoded_ids, message.ids);
        }
        assert_eq!(messages.iter().filter(|m| m.youtuber == "carol").count(), 1);
    }
}
