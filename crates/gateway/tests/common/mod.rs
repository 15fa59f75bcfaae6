//! What the gateway's tests share: gateways in-process and as processes,
//! an HTTP client, a user who follows a YouTuber.

#![allow(dead_code)] // each test binary uses its own part

use std::{net::SocketAddr, time::Duration};

use ytnotify::client::{
    Client,
    user::{self, SubscriptionChange},
};
use ytnotify_gateway::{Bound, GatewayConfig};
use ytnotify_testkit::{TestVhost, within};

/// A gateway in-process, on a port of its own.
pub struct TestGateway {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestGateway {
    pub async fn start(vhost: &TestVhost) -> TestGateway {
        TestGateway::start_with(vhost, ytnotify_gateway::STREAMS_PER_CONNECTION).await
    }

    /// A gateway that opens a connection to RabbitMQ per
    /// `streams_per_connection` event streams.
    pub async fn start_with(vhost: &TestVhost, streams_per_connection: usize) -> TestGateway {
        let config = GatewayConfig {
            streams_per_connection,
            ..GatewayConfig::new("127.0.0.1:0".parse().unwrap(), vhost.client_config())
        };
        let bound = within("a gateway to start", Bound::bind(config))
            .await
            .expect("gateway starts");
        let addr = bound.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bound
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .expect("gateway serves");
        });
        TestGateway {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("started in-process").send(());
        within("the gateway to stop", self.task).await.unwrap();
    }
}

/// Logs `user` in and subscribes to `youtuber`.
pub async fn follow(client: &Client, user: &str, youtuber: &str) {
    user::login(client, user).await.unwrap();
    user::update_subscription(client, user, &SubscriptionChange::subscribe(youtuber))
        .await
        .unwrap();
}

/// An HTTP client (with the TLS provider the workspace builds rustls with).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A `gateway` program on `port`.
pub fn spawn_gateway(vhost: &TestVhost, port: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--amqp-url",
            &vhost.url,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the gateway program starts")
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the gateway on `port` answers `/healthz`.
pub async fn wait_healthy(port: u16) -> TestGateway {
    let gateway = TestGateway {
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        stop: None,
        task: tokio::spawn(async {}),
    };
    within("the gateway to be healthy", async {
        loop {
            if let Ok(response) = http().get(gateway.url("/healthz")).send().await
                && response.status() == 200
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    gateway
}
