//! Accounts added, listed and removed through RabbitMQ's management HTTP API
//! (the `rabbitmq_management` plugin), so that it works with a remote broker
//! as with a local one, with the credentials of the server's own URL.

use std::{path::PathBuf, sync::Once, time::Duration};

use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{Account, Permissions};
use crate::{
    broker_url::BrokerUrl,
    error::{Error, Result},
    topology,
};

/// How long one call to the management API may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The most replies a reply queue keeps waiting; a client takes each at once.
const MAX_WAITING_REPLIES: u32 = 1_000;
/// A reply queue that no client has used for an hour is deleted (a client's
/// own is exclusive, and goes with its connection anyway).
const UNUSED_REPLY_QUEUE_MS: u64 = 3_600_000;
/// The most dead letters kept for inspection; past it the oldest go.
const MAX_DEAD_LETTERS: u32 = 100_000;

/// The most connections and channels an account may hold at once: a client
/// needs one connection and a few channels; a runaway script is stopped
/// here rather than by the broker's memory.
const MAX_CONNECTIONS: u32 = 16;
const MAX_CHANNELS: u32 = 64;

/// Where the management API is and who talks to it.
#[derive(Debug, Clone)]
pub struct ManagementConfig {
    /// The API's base URL, such as `http://127.0.0.1:15672`.
    pub url: String,
    /// The server's broker URL: its user and password log in to the API (an
    /// administrator's), its vhost is where accounts get permissions.
    pub broker: BrokerUrl,
    /// A PEM file of a private CA, for an `https://` API.
    pub ca_cert: Option<PathBuf>,
}

/// The management API of the broker at `broker`, where the plugin listens by
/// default: `http://host:15672`, or `https://host:15671` for `amqps://`.
pub fn default_management_url(broker: &BrokerUrl) -> String {
    let (host, _) = broker.host_port();
    if broker.is_tls() {
        format!("https://{host}:15671")
    } else {
        format!("http://{host}:15672")
    }
}

/// A client of the management API, for one vhost.
pub struct Management {
    http: reqwest::Client,
    base: Url,
    user: String,
    password: String,
    vhost: String,
}

impl Management {
    /// A client for `config`; nothing is sent yet.
    pub fn new(config: &ManagementConfig) -> Result<Management> {
        // Whatever stands before an `@` may be credentials: never shown.
        let shown = match config.url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => config.url.clone(),
        };
        let unusable = |reason: &str| Error::Management {
            address: shown.clone(),
            reason: reason.to_owned(),
        };
        let base = Url::parse(&config.url)
            .map_err(|err| unusable(&format!("not a URL: {err}")))
            .and_then(|url| {
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(unusable(
                        "it holds credentials: give them in the broker's URL instead",
                    ));
                }
                match url.scheme() {
                    "http" | "https" => Ok(url),
                    other => Err(unusable(&format!(
                        "{other}:// is not HTTP: write it as http://host:15672"
                    ))),
                }
            })?;
        install_crypto_provider();
        let mut http = reqwest::Client::builder().timeout(CALL_TIMEOUT);
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path).map_err(|err| Error::CaCert {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;
            let certificate =
                reqwest::Certificate::from_pem(&pem).map_err(|err| Error::CaCert {
                    path: path.display().to_string(),
                    reason: err.to_string(),
                })?;
            http = http.add_root_certificate(certificate);
        }
        let http = http.build().map_err(|err| unusable(&err.to_string()))?;
        Ok(Management {
            http,
            base,
            user: config.broker.user().to_owned(),
            password: config.broker.password().to_owned(),
            vhost: config.broker.vhost().to_owned(),
        })
    }

    /// The API's address, as messages show it.
    fn address(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_owned()
    }

    /// The vhost accounts are given permissions on.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Adds `account` with a fresh password and the permissions of its
    /// role on this vhost, and returns the password. An account that exists
    /// is left alone (it may belong to another vhost): remove it first.
    pub async fn add(&self, account: &Account) -> Result<String> {
        let login = account.login();
        if self.get(&["users", &login]).await?.is_some() {
            return Err(Error::AccountExists(login));
        }
        self.bound_what_accounts_fill().await?;
        let password = uuid::Uuid::new_v4().simple().to_string();
        self.put(
            &["users", &login],
            json!({ "password": password, "tags": "" }),
        )
        .await?;
        let Permissions {
            configure,
            write,
            read,
        } = account.permissions();
        let granted = self
            .put(
                &["permissions", &self.vhost, &login],
                json!({ "configure": configure, "write": write, "read": read }),
            )
            .await;
        if let Err(err) = granted {
            // An account without its permissions or limits is not added.
            let _ = self.call(Method::DELETE, &["users", &login], None).await;
            return Err(err);
        }
        for (limit, value) in [
            ("max-connections", MAX_CONNECTIONS),
            ("max-channels", MAX_CHANNELS),
        ] {
            let limited = self
                .put(&["user-limits", &login, limit], json!({ "value": value }))
                .await;
            if let Err(err) = limited {
                let _ = self.call(Method::DELETE, &["users", &login], None).await;
                return Err(err);
            }
        }
        Ok(password)
    }

    /// Bounds, with operator policies (which RabbitMQ combines with any
    /// other policy, the stricter value winning), the queues that a client
    /// account can fill: its reply queues, which it may declare itself
    /// (durable, without end), and the dead letters its refused requests
    /// become. Idempotent.
    async fn bound_what_accounts_fill(&self) -> Result<()> {
        let reply_queues = json!({
            "pattern": format!("^{}", super::escape(topology::REPLY_PREFIX)),
            "apply-to": "queues",
            "definition": { "max-length": MAX_WAITING_REPLIES, "expires": UNUSED_REPLY_QUEUE_MS },
        });
        self.put(
            &["operator-policies", &self.vhost, "ytnotify-reply-queues"],
            reply_queues,
        )
        .await?;
        let dead_letters = json!({
            "pattern": format!("^{}$", super::escape(topology::DEAD_LETTERS)),
            "apply-to": "queues",
            "definition": { "max-length": MAX_DEAD_LETTERS },
        });
        self.put(
            &["operator-policies", &self.vhost, "ytnotify-dead-letters"],
            dead_letters,
        )
        .await?;
        Ok(())
    }

    /// Removes `account` and closes its connections on this vhost, so that
    /// it stops at once. Returns how many connections were closed.
    pub async fn remove(&self, account: &Account) -> Result<usize> {
        let login = account.login();
        if self.get(&["users", &login]).await?.is_none() {
            return Err(Error::NoSuchAccount {
                account: login,
                vhost: self.vhost.clone(),
            });
        }
        if self
            .get(&["permissions", &self.vhost, &login])
            .await?
            .is_none()
        {
            return Err(Error::AccountElsewhere {
                account: login,
                vhost: self.vhost.clone(),
            });
        }
        self.call(Method::DELETE, &["users", &login], None).await?;
        // The account is gone; closing its connections is a courtesy that
        // a failed listing does not undo.
        let connections = self
            .get(&["vhosts", &self.vhost, "connections"])
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut closed = 0;
        for connection in connections.as_array().into_iter().flatten() {
            let (Some(user), Some(name)) =
                (connection["user"].as_str(), connection["name"].as_str())
            else {
                continue;
            };
            if user == login
                && self
                    .call(Method::DELETE, &["connections", name], None)
                    .await
                    .is_ok()
            {
                closed += 1;
            }
        }
        Ok(closed)
    }

    /// The accounts with permissions on this vhost, users first, by name.
    pub async fn list(&self) -> Result<Vec<Account>> {
        let granted = self
            .get(&["vhosts", &self.vhost, "permissions"])
            .await?
            .unwrap_or_default();
        let mut accounts: Vec<Account> = granted
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|permission| permission["user"].as_str())
            .filter_map(Account::from_login)
            .collect();
        accounts.sort_by(|a, b| (a.role as u8, &a.name).cmp(&(b.role as u8, &b.name)));
        Ok(accounts)
    }

    /// A GET; `None` for a 404.
    async fn get(&self, path: &[&str]) -> Result<Option<Value>> {
        match self.call(Method::GET, path, None).await {
            Ok(value) => Ok(Some(value)),
            Err(Error::ManagementStatus { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn put(&self, path: &[&str], body: Value) -> Result<Value> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// One call: `path` is `/api/` followed by these segments, each
    /// percent-encoded (the default vhost `/` becomes `%2F`).
    async fn call(&self, method: Method, path: &[&str], body: Option<Value>) -> Result<Value> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::Management {
                address: self.address(),
                reason: "it cannot have a path".to_owned(),
            })?
            .pop_if_empty()
            .push("api")
            .extend(path);
        let mut request = self
            .http
            .request(method, url.clone())
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| Error::Management {
            address: self.address(),
            reason: root_cause(&err),
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            return Err(Error::ManagementRefused {
                address: self.address(),
                user: self.user.clone(),
            });
        }
        if !status.is_success() {
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|body| body["reason"].as_str().map(str::to_owned))
                .unwrap_or_else(|| status.to_string());
            return Err(Error::ManagementStatus {
                status: status.as_u16(),
                what: format!("{} {}", url.path(), reason),
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// What went wrong at the bottom of reqwest's chain of causes ("Connection
/// refused (os error 111)"), which is the part that tells what to do.
fn root_cause(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return format!("no answer within {}s", CALL_TIMEOUT.as_secs());
    }
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// reqwest takes its TLS primitives from the process's rustls provider; the
/// crate builds rustls with *ring* (as lapin does), so that is the one.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only if another provider is installed already: that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
