//! Accounts: identities that the broker enforces, for secure mode.
//!
//! In secure mode each user and each YouTuber has a RabbitMQ account of its
//! own, named by role: `user.alice`, `youtuber.TomScott` (a person may be
//! both). Its permissions let it do what its program needs and nothing more,
//! and RabbitMQ enforces them:
//!
//! | account            | configure              | write (publish)                | read (consume, purge)            |
//! |--------------------|------------------------|--------------------------------|----------------------------------|
//! | `user.alice`       | her own reply queues   | the user and interaction request exchanges | her reply queues, inbox, history |
//! | `youtuber.TomScott`| his own reply queues   | the YouTuber request exchange  | his reply queues, creator inbox  |
//!
//! Nothing else: not the default exchange (which reaches every queue), not
//! the notifications exchange, no inbox to declare, no request queue to read.
//! Every client sets the AMQP `user_id` property to its account, which
//! RabbitMQ checks against the connection's login; a secure server then
//! applies a request only if that account is the one of the user or
//! YouTuber the request names ([`check_sender`]).
//!
//! - `management.rs`: adding, listing and removing accounts through
//!   RabbitMQ's management HTTP API.
//! - `saved.rs`: the file where a client finds its account's URL.

use std::fmt;

use crate::{
    names::{self, InvalidName},
    protocol::Request,
    topology,
};

mod management;
mod saved;

pub use management::{Management, ManagementConfig, default_management_url};
pub use saved::{SavedAccount, load as load_saved, path as saved_path, save};

/// Which program an account is for: a user or a YouTuber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    /// A user: logs in, subscribes, receives notifications.
    User,
    /// A YouTuber: uploads videos.
    Youtuber,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Youtuber => "youtuber",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.prefix())
    }
}

/// A user's or a YouTuber's account on the broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Account {
    pub role: Role,
    /// The user's or YouTuber's name, as checked by [`crate::names`].
    pub name: String,
}

/// The permissions of one account on one vhost: three regular expressions
/// over exchange and queue names, as RabbitMQ takes them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

impl Account {
    /// The account of `role` `name`, once the name is checked.
    pub fn new(role: Role, name: &str) -> Result<Account, InvalidName> {
        match role {
            Role::User => names::check_user(name)?,
            Role::Youtuber => names::check_youtuber(name)?,
        }
        Ok(Account {
            role,
            name: name.to_owned(),
        })
    }

    /// The account of user `name`.
    pub fn user(name: impl Into<String>) -> Account {
        Account {
            role: Role::User,
            name: name.into(),
        }
    }

    /// The account of YouTuber `name`.
    pub fn youtuber(name: impl Into<String>) -> Account {
        Account {
            role: Role::Youtuber,
            name: name.into(),
        }
    }

    /// The account that may send `request`: the user's, or for an upload
    /// the YouTuber's; `None` for a question anyone may ask (a channel's
    /// videos).
    pub fn for_request(request: &Request) -> Option<Account> {
        match request {
            Request::Login { user, .. }
            | Request::ListSubscriptions { user }
            | Request::ChangeSubscription { user, .. }
            | Request::React { user, .. }
            | Request::Comment { user, .. }
            | Request::Celebrities { user }
            | Request::Seen { user, .. } => Some(Account::user(user)),
            Request::Upload { youtuber, .. } | Request::Stats { youtuber } => {
                Some(Account::youtuber(youtuber))
            }
            Request::ListVideos { .. } => None,
        }
    }

    /// The account named `login` on the broker, if it is one of ours.
    pub fn from_login(login: &str) -> Option<Account> {
        let (role, name) = login.split_once('.')?;
        let role = match role {
            "user" => Role::User,
            "youtuber" => Role::Youtuber,
            _ => return None,
        };
        Account::new(role, name).ok()
    }

    /// The RabbitMQ user name: `user.alice`, `youtuber.TomScott`.
    pub fn login(&self) -> String {
        format!("{}.{}", self.role.prefix(), self.name)
    }

    /// What the account may do, and nothing more.
    pub fn permissions(&self) -> Permissions {
        let replies = format!(
            "{}[0-9a-f]{{32}}",
            escape(&topology::reply_queue_prefix(&self.login()))
        );
        match self.role {
            Role::User => Permissions {
                configure: format!("^{replies}$"),
                write: format!(
                    "^({}|{})$",
                    escape(topology::USER_REQUESTS_EXCHANGE),
                    escape(topology::INTERACTIONS_EXCHANGE)
                ),
                // Every celebrity's stream: what a celebrity uploads is
                // for all to read.
                read: format!(
                    "^({replies}|{}|{}|{}.+)$",
                    escape(&topology::inbox(&self.name)),
                    escape(&topology::history(&self.name)),
                    escape(topology::celebrity_stream_prefix())
                ),
            },
            Role::Youtuber => Permissions {
                configure: format!("^{replies}$"),
                write: format!("^{}$", escape(topology::YOUTUBER_REQUESTS_EXCHANGE)),
                read: format!(
                    "^({replies}|{})$",
                    escape(&topology::creator_inbox(&self.name))
                ),
            },
        }
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.login())
    }
}

/// `text` as a regular expression that matches it alone: every character
/// but letters and digits escaped (names hold `.`, `-` and `_`).
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// In secure mode, whether a request may be applied: its `user_id`, which
/// RabbitMQ has checked against the sender's login, must be the account of
/// the user or YouTuber the request names, and its reply must go to a
/// reply queue of that account. The error is the reason given to the sender.
pub fn check_sender(
    request: &Request,
    user_id: Option<&str>,
    reply_to: Option<&str>,
) -> Result<(), String> {
    let account = Account::for_request(request);
    let Some(sender) = user_id else {
        let with = match &account {
            Some(account) => format!("the account {account}"),
            None => "an account".to_owned(),
        };
        return Err(format!(
            "the request names no sender (AMQP property user_id); this server is in secure mode: \
             send it with {with}"
        ));
    };
    if let Some(account) = &account
        && sender != account.login()
    {
        return Err(format!(
            "the account {sender} may not act as {} {}; log in with the account {account}",
            account.role, account.name
        ));
    }
    if let Some(reply_to) = reply_to
        && !topology::is_reply_queue_of(reply_to, sender)
    {
        return Err(format!(
            "replies to {sender} go to its own reply queues, not to {reply_to}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_name_the_role_and_round_trip() {
        assert_eq!(Account::user("alice").login(), "user.alice");
        assert_eq!(Account::youtuber("Tom.Scott").login(), "youtuber.Tom.Scott");
        assert_eq!(
            Account::from_login("youtuber.Tom.Scott"),
            Some(Account::youtuber("Tom.Scott"))
        );
        assert_eq!(Account::from_login("guest"), None);
        assert_eq!(Account::from_login("admin.alice"), None);
        assert_eq!(Account::from_login("user.bad name"), None);
    }

    #[test]
    fn a_user_may_touch_only_its_own_queues() {
        let permissions = Account::user("a.b").permissions();
        assert_eq!(
            permissions.configure,
            r"^ytnotify\.reply\.user\.a\.b\.[0-9a-f]{32}$"
        );
        assert_eq!(
            permissions.write,
            r"^(ytnotify\.requests\.user|ytnotify\.requests\.interaction)$"
        );
        // And every celebrity's stream, which all may read.
        assert_eq!(
            permissions.read,
            r"^(ytnotify\.reply\.user\.a\.b\.[0-9a-f]{32}|ytnotify\.inbox\.a\.b|ytnotify\.history\.a\.b|ytnotify\.celebrity\..+)$"
        );
        let youtuber = Account::youtuber("TomScott").permissions();
        assert_eq!(youtuber.write, r"^ytnotify\.requests\.youtuber$");
        assert_eq!(
            youtuber.read,
            r"^(ytnotify\.reply\.youtuber\.TomScott\.[0-9a-f]{32}|ytnotify\.creator\.TomScott)$"
        );
    }

    #[test]
    fn only_the_named_account_may_send_a_request() {
        let login = Request::login("alice");
        let mine = topology::reply_queue("user.alice");
        assert_eq!(
            check_sender(&login, Some("user.alice"), Some(&mine)),
            Ok(())
        );
        assert_eq!(check_sender(&login, Some("user.alice"), None), Ok(()));
        let err = check_sender(&login, Some("user.bob"), None).unwrap_err();
        assert!(err.contains("user.bob may not act as user alice"), "{err}");
        let err = check_sender(&login, None, None).unwrap_err();
        assert!(err.contains("names no sender"), "{err}");
        // Her account, but the answer sent to someone else's queue.
        let theirs = topology::reply_queue("user.bob");
        assert!(check_sender(&login, Some("user.alice"), Some(&theirs)).is_err());
        assert!(check_sender(&login, Some("user.alice"), Some("ytnotify.inbox.bob")).is_err());
        let upload = Request::Upload {
            youtuber: "alice".into(),
            video: "v".into(),
        };
        // A user's account is not the YouTuber's of the same name.
        assert!(check_sender(&upload, Some("user.alice"), None).is_err());
        assert_eq!(check_sender(&upload, Some("youtuber.alice"), None), Ok(()));
        // Anyone may ask for a channel's videos, with answers to its own queue.
        let videos = Request::ListVideos {
            youtuber: "bob".into(),
        };
        assert_eq!(check_sender(&videos, Some("user.carol"), None), Ok(()));
        assert!(check_sender(&videos, None, None).is_err());
        assert!(check_sender(&videos, Some("user.carol"), Some(&theirs)).is_err());
    }
}
