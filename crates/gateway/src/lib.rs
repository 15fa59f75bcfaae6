//! `gateway`: a user's notifications in the browser.
//!
//! A gateway serves a web page, a JSON API that sends the user's requests to
//! `youtube_server` like the `user` program does, and each user's
//! notifications as Server-Sent Events or over a WebSocket. It keeps no
//! state but its connections: every notification comes from RabbitMQ, from
//! the user's inbox and history (`ytnotify::client::notifications`), so any
//! number of gateways can run side by side, and a browser can come back to
//! any of them, after the position it had reached, without a gap.
//!
//! - `api.rs`: the JSON API (log in, subscriptions, acknowledgements) and
//!   its errors.
//! - `live.rs`: the event streams, SSE and WebSocket, over one pump per
//!   connection.
//! - `assets.rs`: the page, its script and its style sheet, built in.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, routing::get};
use tokio::sync::watch;
use uuid::Uuid;
use ytnotify::{
    client::{Client, ClientConfig, notifications::Acks},
    error::Result,
};

mod api;
mod assets;
mod live;
mod pool;
mod sessions;

pub use pool::STREAMS_PER_CONNECTION;

/// Where a gateway listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How a gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The address to serve on.
    pub listen: SocketAddr,
    /// The broker, and how long to wait for the server's replies.
    pub client: ClientConfig,
    /// How often an idle event stream carries a keep-alive.
    pub keep_alive: Duration,
    /// Event streams per connection to RabbitMQ at most.
    pub streams_per_connection: usize,
    /// Secure mode: each user logs in with the password of the user's
    /// account, and the gateway acts for the user through that account only.
    pub secure: bool,
}

impl GatewayConfig {
    /// A gateway on `listen` with the defaults.
    pub fn new(listen: SocketAddr, client: ClientConfig) -> GatewayConfig {
        GatewayConfig {
            listen,
            client,
            keep_alive: Duration::from_secs(15),
            streams_per_connection: STREAMS_PER_CONNECTION,
            secure: false,
        }
    }
}

/// What every request handler shares.
#[derive(Clone)]
struct Gateway(Arc<Shared>);

struct Shared {
    /// The gateway's own connection: every request of open mode; in secure
    /// mode, `/healthz` only.
    client: Client,
    /// How a secure-mode login connects.
    client_config: ClientConfig,
    secure: bool,
    logins: sessions::Logins,
    /// The connections the event streams read on.
    pool: pool::Pool,
    /// The address the gateway serves on, as browsers see it in `hello`.
    serving: String,
    /// The open event streams, by connection id, with their user: where
    /// acknowledgements go.
    connections: Mutex<HashMap<Uuid, (String, Acks)>>,
    /// Turns true when the gateway stops: every stream ends.
    stopping: watch::Receiver<bool>,
    keep_alive: Duration,
}

/// Who a request acts as.
#[derive(Clone)]
enum Caller {
    /// Open mode: the gateway acts for anyone, on its own connections.
    Anyone,
    /// Secure mode: through this user's account.
    Account(Arc<sessions::Login>),
}

impl Gateway {
    /// Who a request for `user` acts as: in secure mode, the login its
    /// cookie names, which must be `user`'s.
    fn caller(&self, headers: &axum::http::HeaderMap, user: &str) -> Result<Caller, api::ApiError> {
        use axum::http::StatusCode;
        if !self.0.secure {
            return Ok(Caller::Anyone);
        }
        let Some(login) = self.0.logins.find(headers) else {
            return Err(api::ApiError::new(
                StatusCode::UNAUTHORIZED,
                "log in first: this gateway is in secure mode (on the page, or POST /api/session \
                 with the user's account password)",
            ));
        };
        if login.user != user {
            return Err(api::ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this browser is logged in as {}; log in as {user} to act for {user}",
                    login.user
                ),
            ));
        }
        Ok(Caller::Account(login))
    }

    /// The client that sends `caller`'s requests.
    fn client<'a>(&'a self, caller: &'a Caller) -> &'a Client {
        match caller {
            Caller::Anyone => &self.0.client,
            Caller::Account(login) => &login.client,
        }
    }
}

/// A gateway bound to its address, ready to serve.
pub struct Bound {
    listener: tokio::net::TcpListener,
    gateway: Gateway,
    stop: watch::Sender<bool>,
}

impl Bound {
    /// Connects to RabbitMQ and binds the address: what can fail at start
    /// fails here, before anything is served.
    pub async fn bind(config: GatewayConfig) -> Result<Bound> {
        let client = Client::connect(&config.client, "gateway").await?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|err| {
                ytnotify::error::Error::Stopped(format!(
                    "cannot listen on {}: {err}; give another address with --listen",
                    config.listen
                ))
            })?;
        let serving = listener
            .local_addr()
            .map_or_else(|_| config.listen.to_string(), |addr| addr.to_string());
        let (stop, stopping) = watch::channel(false);
        let gateway = Gateway(Arc::new(Shared {
            pool: pool::Pool::new(config.client.broker.clone(), config.streams_per_connection),
            client,
            client_config: config.client.clone(),
            secure: config.secure,
            logins: sessions::Logins::default(),
            serving,
            connections: Mutex::new(HashMap::new()),
            stopping,
            keep_alive: config.keep_alive,
        }));
        Ok(Bound {
            listener,
            gateway,
            stop,
        })
    }

    /// The address served on (the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then ends every event stream (the
    /// browsers reconnect, to this gateway when it is back or to another)
    /// and closes the connection to RabbitMQ.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Bound {
            listener,
            gateway,
            stop,
        } = self;
        tracing::info!(
            "gateway serving on http://{} in {} mode (broker account {})",
            gateway.0.serving,
            if gateway.0.secure { "secure" } else { "open" },
            gateway.0.client.link().login()
        );
        let app = router(gateway.clone());
        let mut stopped = stop.subscribe();
        let stopping = async move {
            shutdown.await;
            tracing::info!("gateway stopping: ending every event stream");
            let _ = stop.send(true);
        };
        let serving = axum::serve(listener, app).with_graceful_shutdown(stopping);
        // A client that reads nothing can hold its stream open: past the
        // grace period the gateway stops anyway.
        let grace = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let served = tokio::select! {
            served = serving => served.map_err(|err| ytnotify::error::Error::Stopped(err.to_string())),
            () = grace => {
                tracing::warn!(
                    "some event streams did not end within {SHUTDOWN_GRACE:?} (clients that read nothing); stopping anyway"
                );
                Ok(())
            }
        };
        gateway.0.pool.close().await;
        gateway.0.logins.close();
        gateway.0.client.link().close().await;
        served
    }
}

/// How long a stopping gateway waits for its event streams to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs a gateway until `shutdown` resolves.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    Bound::bind(config).await?.serve(shutdown).await
}

fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/style.css", get(assets::style))
        .route("/healthz", get(api::health))
        .route("/api/config", get(api::config))
        .route(
            "/api/session",
            axum::routing::post(api::session).delete(api::log_out),
        )
        .route(
            "/api/users/{name}/subscriptions",
            get(api::subscriptions).post(api::subscribe),
        )
        .route(
            "/api/users/{name}/subscriptions/{youtuber}",
            axum::routing::delete(api::unsubscribe),
        )
        .route("/api/users/{name}/ack", axum::routing::post(api::ack))
        .route("/api/users/{name}/events", get(live::events))
        .route("/api/users/{name}/ws", get(live::websocket))
        .fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .with_state(gateway)
}
