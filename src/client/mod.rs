//! The client side: what `user` and `youtuber` do, as a library.
//!
//! - [`Client`] (in `request.rs`): a request sent with a confirm, its reply
//!   matched by correlation id, requests in flight sent again after a loss.
//! - [`user`]: log in, change and list subscriptions.
//! - [`inbox`]: read a user's durable inbox, the notifications that waited
//!   first.
//! - [`youtuber`]: upload a video.

pub mod inbox;
mod request;
pub mod user;
pub mod youtuber;

pub use request::{Client, ClientConfig, DEFAULT_TIMEOUT, PendingReply};
use request::{Sender, publish_request};
