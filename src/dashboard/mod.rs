//! The terminal dashboards (feature `tui`): `user watch` and `youtuber
//! watch` in a terminal, and `youtube_server --tui`.
//!
//! Each dashboard is plain state with an `update(msg)` that handles events
//! and returns what to do, and a read-only `render(frame)`; the event loop in
//! each `run` merges terminal events, a slow tick and messages from the broker
//! task. State and rendering are tested without a terminal.

pub mod creator;
pub mod server;
pub mod user;

mod shown;
mod terminal;
mod widgets;

pub use terminal::log_file;
