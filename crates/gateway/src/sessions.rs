//! Who a request acts as. In open mode, anyone is anyone: the gateway acts
//! for every user on its own connections. In secure mode (`--secure`), a
//! user logs in with the password of the user's account (`youtube_server
//! account add`), and the gateway then acts for that user only through that
//! account, on a connection of its own: RabbitMQ, not the gateway, decides
//! what it may read and send, and the server checks that each request comes
//! from the account of the user it names.
//!
//! A login is a connection: the browser holds a random token in an HttpOnly
//! cookie, and the gateway the account's connection under that token, until
//! the user logs out or the gateway stops. Every login of one user on a
//! gateway (tabs, devices) shares one connection, so that logins never use
//! up the account's connections (16, `youtube_server account add`). A
//! browser that moves to another gateway logs in there again; nothing is
//! lost meanwhile (its position in the history is the browser's).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::http::{HeaderMap, StatusCode, header};
use ytnotify::{
    accounts::Account,
    client::{Client, ClientConfig},
    error::Error,
};

use crate::api::ApiError;

/// The cookie that holds a secure-mode login's token.
pub(crate) const COOKIE: &str = "ytnotify_session";

/// One user's login: the account's own connection.
pub(crate) struct Login {
    pub(crate) user: String,
    /// What a later login must give to share this connection.
    password: String,
    pub(crate) client: Client,
}

impl Drop for Login {
    /// The last token and stream are gone: the connection closes.
    fn drop(&mut self) {
        let link = self.client.link().clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { link.close().await });
        }
    }
}

/// The logins of secure mode, by token, and each user's connection.
#[derive(Default)]
pub(crate) struct Logins {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    by_token: HashMap<String, Arc<Login>>,
    by_user: HashMap<String, Arc<Login>>,
}

impl Logins {
    /// Logs `user` in with the account's `password`: connects as the
    /// account (which checks the password), and returns the new token.
    pub(crate) async fn log_in(
        &self,
        config: &ClientConfig,
        user: &str,
        password: &str,
    ) -> Result<(String, Arc<Login>), ApiError> {
        let shared = self
            .tables()
            .by_user
            .get(user)
            .filter(|login| login.password == password)
            .cloned();
        let login = match shared {
            Some(login) => login,
            None => Arc::new(Login {
                user: user.to_owned(),
                password: password.to_owned(),
                client: connect(config, user, password).await?,
            }),
        };
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut tables = self.tables();
        tables.by_token.insert(token.clone(), Arc::clone(&login));
        tables.by_user.insert(user.to_owned(), Arc::clone(&login));
        Ok((token, login))
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.inner.lock().expect("never held across a panic")
    }

    /// The login a request's cookie names, if any.
    pub(crate) fn find(&self, headers: &HeaderMap) -> Option<Arc<Login>> {
        let token = token(headers)?;
        self.tables().by_token.get(token).cloned()
    }

    /// Ends the login a request's cookie names; its connection closes once
    /// no other login of the user and no stream uses it.
    pub(crate) fn log_out(&self, headers: &HeaderMap) {
        let Some(token) = token(headers) else { return };
        let mut tables = self.tables();
        let Some(login) = tables.by_token.remove(token) else {
            return;
        };
        let in_use = tables
            .by_token
            .values()
            .any(|other| Arc::ptr_eq(other, &login));
        if !in_use
            && tables
                .by_user
                .get(&login.user)
                .is_some_and(|current| Arc::ptr_eq(current, &login))
        {
            tables.by_user.remove(&login.user);
        }
    }

    /// Forgets every login (the gateway is stopping, its streams have
    /// ended): their connections close.
    pub(crate) fn close(&self) {
        let mut tables = self.tables();
        tables.by_token.clear();
        tables.by_user.clear();
    }
}

/// Connects as `user`'s account, which checks the password.
async fn connect(config: &ClientConfig, user: &str, password: &str) -> Result<Client, ApiError> {
    let account = Account::user(user).login();
    let client_config = ClientConfig {
        broker: config
            .broker
            .with_login(&account, password)
            .map_err(ApiError::from)?,
        timeout: config.timeout,
    };
    match Client::connect(&client_config, &format!("gateway for {user}")).await {
        Ok(client) => Ok(client),
        Err(Error::BrokerRefused { reason, .. }) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "RabbitMQ refused the login of {account} ({reason}); check the password \
                 (`youtube_server account add {user}` gave it, in the account's URL)"
            ),
        )),
        Err(err) => Err(err.into()),
    }
}

/// The token in a request's cookie.
fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, token)| token)
}

/// The `Set-Cookie` value for a new login (HttpOnly: no script reads it;
/// SameSite=Strict: no other site's page sends it).
pub(crate) fn cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `Set-Cookie` value that ends a login in the browser.
pub(crate) fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}
