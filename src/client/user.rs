//! The user's requests: log in and change or list subscriptions.

use crate::{
    client::Client,
    error::{Error, Result},
    protocol::{Reply, Request},
};

/// A subscription change, as the exercise's `s` and `u`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionChange {
    pub youtuber: String,
    pub subscribe: bool,
}

impl SubscriptionChange {
    /// Subscribe to `youtuber`.
    pub fn subscribe(youtuber: impl Into<String>) -> SubscriptionChange {
        SubscriptionChange {
            youtuber: youtuber.into(),
            subscribe: true,
        }
    }

    /// Unsubscribe from `youtuber`.
    pub fn unsubscribe(youtuber: impl Into<String>) -> SubscriptionChange {
        SubscriptionChange {
            youtuber: youtuber.into(),
            subscribe: false,
        }
    }
}

/// Logs `user` in, adding them the first time, and has the user's history kept
/// (the user reads notifications live). Returns the server's notice, if any.
pub async fn login(client: &Client, user: &str) -> Result<Option<String>> {
    let reply = client.call(live_login(user)).await?;
    into_notice(reply)
}

/// Subscribes `user` to a YouTuber or unsubscribes. Returns once the server
/// has stored the change and bound (or unbound) the inbox: an upload sent
/// after this returns reaches (or skips) the user.
pub async fn update_subscription(
    client: &Client,
    user: &str,
    change: &SubscriptionChange,
) -> Result<Option<String>> {
    let reply = client.call(subscription_request(user, change)).await?;
    into_notice(reply)
}

/// Logs in and, if asked, changes a subscription, sending both requests at once
/// (the server applies one user's requests in order). Returns the notices.
pub async fn login_and_update(
    client: &Client,
    user: &str,
    change: Option<&SubscriptionChange>,
) -> Result<Vec<String>> {
    let login = client.send(live_login(user)).await?;
    let update = match change {
        Some(change) => Some(client.send(subscription_request(user, change)).await?),
        None => None,
    };
    let mut notices = Vec::new();
    notices.extend(into_notice(client.wait(login).await?)?);
    if let Some(update) = update {
        notices.extend(into_notice(client.wait(update).await?)?);
    }
    Ok(notices)
}

/// The YouTubers `user` follows, in name order.
pub async fn subscriptions(client: &Client, user: &str) -> Result<Vec<String>> {
    match client
        .call(Request::ListSubscriptions {
            user: user.to_owned(),
        })
        .await?
    {
        Reply::Subscriptions { youtubers } => Ok(youtubers),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}

/// A login of someone who reads notifications as they come: it asks the
/// server for the user's history too (see `client::notifications`).
fn live_login(user: &str) -> Request {
    Request::Login {
        user: user.to_owned(),
        history: true,
    }
}

fn subscription_request(user: &str, change: &SubscriptionChange) -> Request {
    Request::ChangeSubscription {
        user: user.to_owned(),
        youtuber: change.youtuber.clone(),
        subscribe: change.subscribe,
    }
}

fn into_notice(reply: Reply) -> Result<Option<String>> {
    match reply {
        Reply::Done { notice } => Ok(notice),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}
