//! The library against a real RabbitMQ: the server in-process, driven by the
//! library's own clients on a vhost per test (`server`), and faults injected
//! on purpose against a private broker node (`faults`, `restart`), and
//! secure mode with real accounts (`secure`).

mod celebrities;
mod faults;
mod restart;
mod secure;
mod server;

use ytnotify::client::{
    Client,
    user::{self, SubscriptionChange},
};

/// Logs `user` in, subscribed to `youtuber`: how most tests begin. Returns
/// the server's notices.
async fn log_in_following(client: &Client, user: &str, youtuber: &str) -> Vec<String> {
    user::login_and_update(client, user, Some(&SubscriptionChange::subscribe(youtuber)))
        .await
        .unwrap_or_else(|err| panic!("{user} logs in following {youtuber}: {err}"))
}
