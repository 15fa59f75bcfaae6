//! The client side: what `user` and `youtuber` do, as a library.
//!
//! - [`Client`] (in `request.rs`): a request sent with a confirm, its reply
//!   matched by correlation id, requests in flight sent again after a loss.
//! - [`user`]: log in, change and list subscriptions, list a YouTuber's
//!   videos, like, dislike and comment.
//! - [`notifications`]: a live session's notifications, each once: what
//!   waited in the user's durable inbox ([`inbox`]), then every new one from
//!   the user's history ([`history`]), which each session reads from its own
//!   position.
//! - [`youtuber`]: upload a video, and see its subscribers and counts.
//! - [`creator`]: a YouTuber's feed of likes, comments and subscribers.

mod celebrities;
pub mod creator;
pub mod history;
pub mod inbox;
pub mod notifications;
mod recent;
mod request;
pub mod user;
pub mod youtuber;

pub use request::{Client, ClientConfig, DEFAULT_TIMEOUT, PendingReply, Requests};
use request::{Sender, publish_request};
