//! `youtuber watch` in a terminal: the YouTuber's videos with their likes,
//! dislikes and comments, kept up to date, and the activity feed (likes
//! gathered under a burst, comments, subscribers come and gone), newest first.
//!
//! - `state.rs`: [`CreatorDashboard`], and [`CreatorDashboard::update`],
//!   which handles a [`Msg`] and returns the [`Command`]s to run.
//! - `view.rs`: [`CreatorDashboard::render`], which draws the state and
//!   changes nothing.
//! - `run.rs`: [`run`], the event loop, the feed task, and the stats asked
//!   of the server.

mod run;
mod state;
mod view;

pub use run::run;
pub use state::{Activity, Command, CreatorDashboard, MAX_ACTIVITY, Msg};
