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
//! the user logs out or the gateway stops. A browser that moves to another
//! gateway logs in there again; nothing is lost meanwhile (its position in
//! the history is the browser's).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::http::{HeaderMap, StatusCode, header};
use ytnotify::{
    accounts::Account,
    broker::Endpoint,
    broker_url::BrokerUrl,
    client::{Client, ClientConfig},
    error::Error,
};

use crate::api::ApiError;

/// The cookie that holds a secure-mode login's token.
pub(crate) const COOKIE: &str = "ytnotify_session";

/// One user's login: the account's own connection.
pub(crate) struct Login {
    pub(crate) user: String,
    pub(crate) client: Client,
}

/// The logins of secure mode, by token.
#[derive(Default)]
pub(crate) struct Logins {
    by_token: Mutex<HashMap<String, Arc<Login>>>,
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
        let account = Account::user(user).login();
        let url: BrokerUrl = config.broker.url.parse().map_err(ApiError::from)?;
        let endpoint = Endpoint {
            url: url.with_login(&account, password).to_string(),
            ca_cert: config.broker.ca_cert.clone(),
        };
        let client_config = ClientConfig {
            broker: endpoint,
            timeout: config.timeout,
        };
        let client = match Client::connect(&client_config, &format!("gateway for {user}")).await {
            Ok(client) => client,
            Err(Error::BrokerRefused { reason, .. }) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "RabbitMQ refused the login of {account} ({reason}); check the password \
                         (`youtube_server account add {user}` gave it, in the account's URL)"
                    ),
                ));
            }
            Err(err) => return Err(err.into()),
        };
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let login = Arc::new(Login {
            user: user.to_owned(),
            client,
        });
        self.by_token
            .lock()
            .expect("never held across a panic")
            .insert(token.clone(), Arc::clone(&login));
        Ok((token, login))
    }

    /// The login a request's cookie names, if any.
    pub(crate) fn find(&self, headers: &HeaderMap) -> Option<Arc<Login>> {
        let token = token(headers)?;
        self.by_token
            .lock()
            .expect("never held across a panic")
            .get(token)
            .cloned()
    }

    /// Ends the login a request's cookie names; its connection closes once
    /// its last stream has ended.
    pub(crate) async fn log_out(&self, headers: &HeaderMap) {
        let Some(token) = token(headers) else { return };
        let login = self
            .by_token
            .lock()
            .expect("never held across a panic")
            .remove(token);
        if let Some(login) = login.and_then(|login| Arc::try_unwrap(login).ok()) {
            let _ = login.client.close().await;
        }
    }

    /// Closes every login's connection (the gateway is stopping, its
    /// streams have ended).
    pub(crate) async fn close(&self) {
        let logins: Vec<Arc<Login>> = self
            .by_token
            .lock()
            .expect("never held across a panic")
            .drain()
            .map(|(_, login)| login)
            .collect();
        for login in logins {
            if let Ok(login) = Arc::try_unwrap(login) {
                let _ = login.client.close().await;
            }
        }
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
