//! A gateway in secure mode: each user logs in with the password of the
//! user's account, and the gateway acts for that user through that account
//! only; RabbitMQ and the server refuse anything else.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};
use ytnotify::{accounts::Account, broker_url::BrokerUrl, client::youtuber::publish_video};
use ytnotify_gateway::{Bound, GatewayConfig};
use ytnotify_testkit::{TestServer, TestVhost, unique, within};

mod common;
use common::http;

async fn start_gateway(vhost: &TestVhost) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = GatewayConfig {
        secure: true,
        ..GatewayConfig::new("127.0.0.1:0".parse().unwrap(), vhost.client_config())
    };
    let bound = within("a gateway to start", Bound::bind(config))
        .await
        .unwrap();
    let address = format!("http://{}", bound.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    (address, stop)
}

fn error(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_user_logs_in_with_the_accounts_password_and_acts_as_no_one_else() {
    let vhost = TestVhost::new("gateway-secure");
    let server = TestServer::start(vhost.secure_server_config()).await;
    let (alice, bob, creator) = (unique("alice"), unique("bob"), unique("creator"));
    let alice_url = vhost.add_account(&Account::user(&alice)).await;
    vhost.add_account(&Account::user(&bob)).await;
    let creator_url = vhost.add_account(&Account::youtuber(&creator)).await;
    let password = alice_url
        .parse::<BrokerUrl>()
        .unwrap()
        .password()
        .to_owned();
    let (gateway, stop) = start_gateway(&vhost).await;
    let http = http();

    let config: Value = http
        .get(format!("{gateway}/api/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["mode"], "secure");

    // No password, a wrong one: one line each, and no login.
    let response = http
        .post(format!("{gateway}/api/session"))
        .json(&json!({"user": alice}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(error(&response.json().await.unwrap()).contains("give the password"));
    let response = http
        .post(format!("{gateway}/api/session"))
        .json(&json!({"user": alice, "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        error(&body).starts_with(&format!("RabbitMQ refused the login of user.{alice}")),
        "{body}"
    );

    // Without a login, nothing.
    let response = http
        .get(format!("{gateway}/api/users/{alice}/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(error(&response.json().await.unwrap()).starts_with("log in first"));

    // The right password: a cookie, and the user's own requests.
    let response = http
        .post(format!("{gateway}/api/session"))
        .json(&json!({"user": alice, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let response = http
        .post(format!("{gateway}/api/users/{alice}/subscriptions"))
        .header("cookie", &cookie)
        .json(&json!({"youtuber": creator}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let listed: Value = http
        .get(format!("{gateway}/api/users/{alice}/subscriptions"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["youtubers"], json!([creator]));

    // alice's login may not act as bob, nor read bob's stream.
    for path in [
        format!("/api/users/{bob}/subscriptions"),
        format!("/api/users/{bob}/events"),
    ] {
        let response = http
            .get(format!("{gateway}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            error(&body).starts_with(&format!("this browser is logged in as {alice}")),
            "{body}"
        );
    }

    // Her stream, read through her account, brings the creator's upload.
    let response = http
        .get(format!("{gateway}/api/users/{alice}/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = response.bytes_stream().eventsource();
    let hello = within("hello", events.next()).await.unwrap().unwrap();
    assert_eq!(hello.event, "hello");
    let as_creator = vhost.client_as(&creator_url, "creator").await;
    publish_video(&as_creator, &creator, "Only for followers")
        .await
        .unwrap();
    let notification = within("a notification", events.next())
        .await
        .unwrap()
        .unwrap();
    let data: Value = serde_json::from_str(&notification.data).unwrap();
    assert_eq!(data["video"], "Only for followers");
    drop(events);

    // Logged out, the cookie opens nothing.
    let response = http
        .delete(format!("{gateway}/api/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = http
        .get(format!("{gateway}/api/users/{alice}/subscriptions"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let _ = stop.send(());
    as_creator.close().await.unwrap();
    server.stop().await;
}
