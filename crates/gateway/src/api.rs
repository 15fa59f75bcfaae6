//! The JSON API: log in, list and change subscriptions (each a request to
//! `youtube_server`, as the `user` program sends it), say what a page has
//! shown, and the gateway's health. Every error is one line, in
//! `{"error": "..."}`, with a status that says whose fault it is.

use axum::{
    Json,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;
use ytnotify::{
    client::user::{self, SubscriptionChange},
    error::Error,
    link::LinkState,
    names,
};

use crate::{Gateway, sessions};

/// The largest request body taken: a page's acknowledgement of a few
/// hundred notifications fits many times over.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// An error as the API answers it: a status and one line.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> ApiError {
        let status = match &err {
            Error::InvalidName(_) => StatusCode::BAD_REQUEST,
            Error::Refused(_) => StatusCode::CONFLICT,
            Error::AccessRefused(_) => StatusCode::FORBIDDEN,
            Error::ServerTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, err.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        ApiError::new(
            rejection.status(),
            format!(
                "the request body is not what this call takes: {}",
                rejection.body_text()
            ),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A user name from a path, checked.
pub(crate) fn user_name(name: &str) -> ApiResult<&str> {
    names::check_user(name)
        .map_err(|invalid| ApiError::new(StatusCode::BAD_REQUEST, invalid.to_string()))?;
    Ok(name)
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such page; the gateway serves / and /api/users/<name>/{events,ws,subscriptions,ack}",
    )
}

/// `GET /healthz`: 200 while connected to RabbitMQ, 503 otherwise.
pub(crate) async fn health(State(gateway): State<Gateway>) -> Response {
    let state = gateway.0.client.state().borrow().clone();
    let streams = gateway
        .0
        .connections
        .lock()
        .expect("never held across a panic")
        .len();
    // The pool's connections, and the one that sends requests.
    let connections = gateway.0.pool.connections().await + 1;
    let body = json!({
        "broker": state.to_string(),
        "streams": streams,
        "broker_connections": connections,
    });
    match state {
        LinkState::Connected => (StatusCode::OK, Json(body)).into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response(),
    }
}

/// `GET /api/config`: what the page needs to know before a login.
pub(crate) async fn config(State(gateway): State<Gateway>) -> Json<serde_json::Value> {
    let mode = if gateway.0.secure { "secure" } else { "open" };
    Json(json!({ "mode": mode }))
}

#[derive(Deserialize)]
pub(crate) struct Login {
    user: String,
    #[serde(default)]
    password: Option<String>,
}

/// `POST /api/session`: logs the user in through the server (adding the
/// user the first time), with the server's notices. In secure mode, with
/// the password of the user's account; the answer sets the login's cookie.
pub(crate) async fn session(
    State(gateway): State<Gateway>,
    body: Result<Json<Login>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(login) = body?;
    let name = user_name(&login.user)?;
    if !gateway.0.secure {
        let notices: Vec<String> = user::login(&gateway.0.client, name)
            .await?
            .into_iter()
            .collect();
        return Ok(Json(json!({ "user": name, "notices": notices })).into_response());
    }
    let Some(password) = login.password.filter(|password| !password.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "this gateway is in secure mode: give the password of the user's account",
        ));
    };
    let (token, account) = gateway
        .0
        .logins
        .log_in(&gateway.0.client_config, name, &password)
        .await?;
    let notices: Vec<String> = user::login(&account.client, name)
        .await?
        .into_iter()
        .collect();
    Ok((
        [(axum::http::header::SET_COOKIE, sessions::cookie(&token))],
        Json(json!({ "user": name, "notices": notices })),
    )
        .into_response())
}

/// `DELETE /api/session`: ends a secure-mode login (its connection closes).
pub(crate) async fn log_out(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    gateway.0.logins.log_out(&headers);
    (
        StatusCode::NO_CONTENT,
        [(axum::http::header::SET_COOKIE, sessions::expired_cookie())],
    )
        .into_response()
}

/// `GET /api/users/{name}/subscriptions`.
pub(crate) async fn subscriptions(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let name = user_name(&name)?;
    let caller = gateway.caller(&headers, name)?;
    let youtubers = user::subscriptions(gateway.client(&caller), name).await?;
    Ok(Json(json!({ "youtubers": youtubers })))
}

#[derive(Deserialize)]
pub(crate) struct Subscribe {
    youtuber: String,
}

/// `POST /api/users/{name}/subscriptions` with `{"youtuber": ...}`.
pub(crate) async fn subscribe(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Subscribe>, JsonRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Json(Subscribe { youtuber }) = body?;
    change(
        &gateway,
        &headers,
        &name,
        SubscriptionChange::subscribe(youtuber),
    )
    .await
}

/// `DELETE /api/users/{name}/subscriptions/{youtuber}`.
pub(crate) async fn unsubscribe(
    State(gateway): State<Gateway>,
    Path((name, youtuber)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    change(
        &gateway,
        &headers,
        &name,
        SubscriptionChange::unsubscribe(youtuber),
    )
    .await
}

async fn change(
    gateway: &Gateway,
    headers: &HeaderMap,
    name: &str,
    change: SubscriptionChange,
) -> ApiResult<Json<serde_json::Value>> {
    let name = user_name(name)?;
    names::check_youtuber(&change.youtuber)
        .map_err(|invalid| ApiError::new(StatusCode::BAD_REQUEST, invalid.to_string()))?;
    let caller = gateway.caller(headers, name)?;
    let notices: Vec<String> = user::update_subscription(gateway.client(&caller), name, &change)
        .await?
        .into_iter()
        .collect();
    Ok(Json(json!({ "notices": notices })))
}

#[derive(Deserialize)]
pub(crate) struct Ack {
    connection: Uuid,
    ids: Vec<Uuid>,
}

/// `POST /api/users/{name}/ack` with `{"connection": ..., "ids": [...]}`:
/// the notifications a page has shown, received on one of its event
/// streams; their copies leave the user's inbox.
pub(crate) async fn ack(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Ack>, JsonRejection>,
) -> ApiResult<StatusCode> {
    user_name(&name)?;
    gateway.caller(&headers, &name)?;
    let Json(Ack { connection, ids }) = body?;
    let acks = gateway
        .0
        .connections
        .lock()
        .expect("never held across a panic")
        .get(&connection)
        .filter(|(user, _)| *user == name)
        .map(|(_, acks)| acks.clone());
    let Some(acks) = acks else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "connection {connection} is not open on this gateway (it ended, or is on \
                 another); what it did not acknowledge comes again on the next connection"
            ),
        ));
    };
    for id in ids {
        acks.shown(id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
