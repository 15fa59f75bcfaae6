//! ytnotify: YouTube-style subscription notifications over RabbitMQ.
//!
//! Three programs talk only through RabbitMQ: `youtuber` uploads videos,
//! `user` logs in, subscribes and receives notifications, and `youtube_server`,
//! the only one with state, applies every request durably and notifies each
//! subscriber of every upload, including users who are offline.
//!
//! - [`protocol`]: the messages on the wire (versioned, tagged JSON); pure.
//! - [`names`]: validation of user names, YouTuber names and video titles.
//! - [`topology`]: every exchange, queue and routing key, and `declare`.
//! - [`broker_url`]: the broker's AMQP URL, parsed once; what is shown of it.
//! - [`accounts`]: secure mode's accounts, one per user and YouTuber, and
//!   what each may do on the broker; managed through RabbitMQ's HTTP API.
//! - [`broker`]: opening a connection to RabbitMQ and publishing with confirms.
//! - [`link`]: the supervised connection: reconnection, consumers that
//!   outlive connections ([`link::Feed`]), channels opened again.
//! - [`store`]: the server's database, in SQLite or PostgreSQL.
//! - [`server`]: `youtube_server` — requests applied in batches through a
//!   two-stage pipeline, and `bindings`, which keeps inboxes and bindings in
//!   step with the database.
//! - [`client`]: the client side: request and reply to the server, the
//!   user's requests, the user's inbox, the YouTuber's upload.
//! - `dashboard` (feature `tui`): the terminal dashboards of `user` and `youtube_server`.
//! - [`cli`]: what the three binaries share: flags, logging, signals, exit codes.

pub mod accounts;
pub mod broker;
pub mod broker_url;
pub mod cli;
pub mod client;
#[cfg(feature = "tui")]
pub mod dashboard;
pub mod error;
pub mod link;
pub mod names;
pub mod protocol;
pub mod server;
pub mod store;
mod sync;
pub mod topology;

pub use error::{Error, Result};
