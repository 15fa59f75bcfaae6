//! `youtube_server --tui`: the server's dashboard. Users and whether each is
//! online (a consumer on their inbox), YouTubers with subscriber counts and
//! latest video, the live event stream, and request and notification rates.
//!
//! - `state.rs`: [`ServerDashboard`] and the types around it, and
//!   [`ServerDashboard::update`], which handles a [`Msg`].
//! - `view.rs`: [`ServerDashboard::render`], which draws the state and changes
//!   nothing.
//! - `run.rs`: [`run`], the event loop and the refresh task that reads the
//!   database and the broker.
//! - `fixtures.rs` (tests only): the sample dashboard that the state and view
//!   tests share.

mod run;
mod state;
mod view;

#[cfg(test)]
mod fixtures;

pub use run::run;
pub use state::{Msg, ServerDashboard, Snapshot, UserRow};
