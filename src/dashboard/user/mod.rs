//! `user watch` in a terminal: the user's subscriptions with unread counts, the
//! notification feed (newest first), and keys to subscribe, unsubscribe, mark
//! read, filter, and like, dislike or comment on the selected video.
//! Subscription changes and interactions go through the server like any
//! other request; its answer shows in the status line.
//!
//! - `state.rs`: [`UserDashboard`] and the types around it, and
//!   [`UserDashboard::update`], which handles a [`Msg`] and returns the
//!   [`Command`]s to run.
//! - `view.rs`: [`UserDashboard::render`], which draws the state and changes
//!   nothing.
//! - `run.rs`: [`run`], the event loop, the inbox task and the commands run
//!   against the server.
//! - `fixtures.rs` (tests only): the sample dashboard that the state and view
//!   tests share.

mod run;
mod state;
mod view;

#[cfg(test)]
mod fixtures;

pub use run::run;
pub use state::{
    Command, FeedItem, Focus, Interaction, MAX_FEED, Mode, Msg, Outcome, ServerHealth,
    UserDashboard,
};
