//! Telling creators: the events of a batch (likes, comments, new
//! subscribers) sent to each creator's inbox, several to a message, and
//! what a crash or a broken inbox left unsent, sent later from the database.
//!
//! An interaction never fails for its creator's inbox: the event is stored
//! with the interaction (the outbox, `creator_events`), sent once the inbox
//! can take it, and marked sent once the broker confirms it. The creator
//! shows each event once, by id, however often it was sent.

use std::{collections::BTreeMap, time::Duration};

use lapin::{Channel, types::ShortString};
use tokio::sync::watch;
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

/// The most unsent events sent in one round of [`YoutubeServer::tell_creators_later`].
const TELL_LATER_LIMIT: usize = 4_096;

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
    pub(super) async fn tell_creators_later(
        &self,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        loop {
            tokio::select! {
                _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                () = tokio::time::sleep(TELL_LATER_EVERY) => {}
            }
            if let Err(err) = self.tell_creators_now().await {
                tracing::warn!(%err, "could not send the creator events left unsent; trying again later");
            }
        }
    }

    async fn tell_creators_now(&self) -> Result<()> {
        let before = store::now_ms() - TELL_LATER_EVERY.as_millis() as i64;
        let notes = self
            .store
            .creator_events_to_send(before, TELL_LATER_LIMIT)
            .await?;
        if notes.is_empty() {
            return Ok(());
        }
        let creators: Vec<String> = notes.iter().map(|note| note.youtuber.clone()).collect();
        let failed = self.bindings.declare_creators(creators).done().await?;
        let notes: Vec<CreatorNote> = notes
            .into_iter()
            .filter(|note| !failed.contains_key(&super::bindings::creator_key(&note.youtuber)))
            .collect();
        tracing::info!(events = notes.len(), "sending creator events left unsent");
        let (_, channel) = self.publisher.get().await?;
        let sent = send(&channel, messages(notes)).await?;
        self.store.mark_told(sent).await
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
