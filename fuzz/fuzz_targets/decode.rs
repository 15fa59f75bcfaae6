//! Feeds arbitrary bytes to every decoder that the server and the clients
//! run on what they read from RabbitMQ.
//!
//! - `decode_request`: the server, on its two request queues;
//! - `decode_reply`: the clients, on their reply queue, and the server's
//!   store, on replies it kept for redelivered requests;
//! - `decode_notification`: `user`, on its inbox.
//!
//! Nothing may panic. A request or notification that decodes is validated
//! (as the server and `user` do), a reply that decodes is one a client may
//! print, and a notification's line holds nothing a terminal would obey;
//! every message that decodes survives `encode` and a second decode
//! unchanged. A refusal must give a reason.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use ytnotify::names::escape_for_terminal;
use ytnotify::protocol::{decode_notification, decode_reply, decode_request, encode};

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(envelope) => {
            if let Err(invalid) = envelope.request.validate() {
                assert!(!invalid.to_string().is_empty());
            }
            let encoded = encode(&envelope);
            match decode_request(&encoded) {
                Ok(again) => assert_eq!(again, envelope, "request changed by a round trip"),
                Err(error) => panic!("an encoded request does not decode: {error}"),
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    match decode_reply(data) {
        Ok(reply) => {
            assert_eq!(
                reply.validate(),
                Ok(()),
                "decode_reply let through {reply:?}"
            );
            let encoded = encode(&reply);
            match decode_reply(&encoded) {
                Ok(again) => assert_eq!(again, reply, "reply changed by a round trip"),
                Err(error) => panic!("an encoded reply does not decode: {error}"),
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    match decode_notification(data) {
        Ok(notification) => {
            if let Err(invalid) = notification.validate() {
                assert!(!invalid.to_string().is_empty());
            }
            let line = notification.to_string();
            assert!(
                matches!(escape_for_terminal(&line), Cow::Borrowed(_)),
                "a notification prints as {line:?}"
            );
            let encoded = encode(&notification);
            match decode_notification(&encoded) {
                Ok(again) => {
                    assert_eq!(again, notification, "notification changed by a round trip")
                }
                Err(error) => panic!("an encoded notification does not decode: {error}"),
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
