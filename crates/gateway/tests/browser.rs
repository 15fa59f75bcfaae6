//! The page in a real headless Chromium, driven over WebDriver
//! (chromedriver), against two `gateway` processes, a server in-process and a
//! real RabbitMQ.
//!
//! Needs Debian's `chromium` and `chromium-driver`: `scripts/test.sh`
//! installs them when run as root; without them this test fails with the
//! command to run.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::json;
use ytnotify::client::{
    user::{self, SubscriptionChange},
    youtuber::publish_video,
};
use ytnotify_testkit::{TestVhost, program, within};

mod common;
use common::{follow, free_port, spawn_gateway, wait_healthy};

/// How long the page may take to show something. The longest wait is for a
/// tab whose gateway was killed: the page tries again after 3 s, then 6 s.
const PAGE_WAIT: Duration = Duration::from_secs(40);

/// chromedriver, and a headless Chromium session through it.
struct Driver {
    process: Child,
    browser: Browser,
}

impl Driver {
    async fn start() -> Driver {
        fn missing<T>() -> T {
            panic!(
                "the browser tests need Chromium and its WebDriver: \
                 sudo apt-get install -y chromium chromium-driver \
                 (scripts/test.sh installs them when run as root)"
            )
        }
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|path| std::path::Path::new(path).is_file())
            .unwrap_or_else(missing::<&str>);
        let port = free_port();
        let process = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|_| missing());
        let url = format!("http://127.0.0.1:{port}");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // As root, Chromium runs only without its sandbox.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1100,1000"],
            }),
        );
        let browser = within("chromedriver to start a session", async {
            loop {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector)
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await
                {
                    Ok(browser) => break browser,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await;
        Driver { process, browser }
    }

    async fn stop(mut self) {
        let _ = self.browser.close().await;
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Waits until an element matching `css` shows `text`.
async fn wait_for_text(browser: &Browser, css: &str, text: &str) {
    let found = tokio::time::timeout(PAGE_WAIT, async {
        loop {
            if let Ok(elements) = browser.find_all(Locator::Css(css)).await {
                for element in elements {
                    if element.text().await.is_ok_and(|shown| shown.contains(text)) {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if found.is_err() {
        let page = browser.source().await.unwrap_or_default();
        panic!("no {css} showed {text:?} within {PAGE_WAIT:?}; the page:\n{page}");
    }
}

async fn log_in(browser: &Browser, address: &str, user: &str) {
    browser.goto(&format!("http://{address}/")).await.unwrap();
    let name = within(
        "the login form",
        browser.wait().for_element(Locator::Css("#login-name")),
    )
    .await
    .unwrap();
    name.send_keys(user).await.unwrap();
    browser
        .find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(browser, "#whoami", user).await;
    wait_for_text(browser, "#connection", "Live").await;
}

/// The notifications the page shows, by id, in order (newest first).
async fn feed_ids(browser: &Browser) -> Vec<String> {
    let mut ids = Vec::new();
    for item in browser
        .find_all(Locator::Css("#feed li.notification"))
        .await
        .unwrap()
    {
        ids.push(item.attr("data-id").await.unwrap().unwrap_or_default());
    }
    ids
}

#[tokio::test]
async fn the_page_shows_catch_up_live_uploads_and_subscriptions_on_two_gateways_and_outlives_a_killed_one()
 {
    let vhost = TestVhost::new("browser");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    publish_video(&client, "mkbhd", "While you were away")
        .await
        .unwrap();
    let (first_port, second_port) = (free_port(), free_port());
    let mut first = spawn_gateway(&vhost, first_port);
    let mut second = spawn_gateway(&vhost, second_port);
    wait_healthy(first_port).await;
    wait_healthy(second_port).await;
    let first_address = format!("127.0.0.1:{first_port}");
    let second_address = format!("127.0.0.1:{second_port}");
    let driver = Driver::start().await;
    let tab = &driver.browser;

    // Log in: what waited comes first, marked as such.
    log_in(tab, &first_address, "alice").await;
    wait_for_text(
        tab,
        "#feed li.notification.away",
        "mkbhd uploaded While you were away",
    )
    .await;

    // An upload from the youtuber program appears.
    // Not blocking: the server runs on this test's thread.
    let uploaded = within(
        "the youtuber program",
        tokio::process::Command::new(program("youtuber"))
            .args([
                "mkbhd",
                "Live",
                "from",
                "youtuber",
                "--amqp-url",
                &vhost.url,
            ])
            .output(),
    )
    .await
    .unwrap();
    assert!(uploaded.status.success(), "{uploaded:?}");
    wait_for_text(
        tab,
        "#feed li.notification",
        "mkbhd uploaded Live from youtuber",
    )
    .await;
    wait_for_text(tab, "#unread-count", "2").await;

    // A subscription made on the page is honoured by the next upload.
    let field = tab.find(Locator::Css("#subscribe-name")).await.unwrap();
    field.send_keys("veritasium").await.unwrap();
    tab.find(Locator::Css("#subscribe-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(
        tab,
        "#subscriptions li[data-youtuber='veritasium']",
        "veritasium",
    )
    .await;
    publish_video(&client, "veritasium", "Honoured")
        .await
        .unwrap();
    wait_for_text(tab, "#feed li.notification", "veritasium uploaded Honoured").await;

    // A refused unsubscribe is shown: alice left mkbhd elsewhere meanwhile.
    user::update_subscription(&client, "alice", &SubscriptionChange::unsubscribe("mkbhd"))
        .await
        .unwrap();
    tab.find(Locator::Css(
        "#subscriptions li[data-youtuber='mkbhd'] button.unsubscribe",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    within("the confirmation", async {
        while tab.accept_alert().await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    wait_for_text(
        tab,
        "#subscription-message[data-kind='error']",
        "alice is not subscribed to mkbhd",
    )
    .await;

    // Two tabs on two gateway processes both show a notification.
    let first_tab = tab.window().await.unwrap();
    let other = tab.new_window(true).await.unwrap();
    tab.switch_to_window(other.handle.clone()).await.unwrap();
    log_in(tab, &second_address, "alice").await;
    publish_video(&client, "veritasium", "For both tabs")
        .await
        .unwrap();
    wait_for_text(
        tab,
        "#feed li.notification",
        "veritasium uploaded For both tabs",
    )
    .await;
    tab.switch_to_window(first_tab.clone()).await.unwrap();
    wait_for_text(
        tab,
        "#feed li.notification",
        "veritasium uploaded For both tabs",
    )
    .await;

    // The first gateway is killed; what comes meanwhile reaches the first tab
    // once the gateway is back, and nothing is shown twice.
    first.kill().unwrap();
    first.wait().unwrap();
    // The page notices (any text will do, in a state other than live).
    wait_for_text(tab, "#connection:not([data-state='live'])", "").await;
    publish_video(&client, "veritasium", "While the gateway was down")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    first = spawn_gateway(&vhost, first_port);
    wait_healthy(first_port).await;
    wait_for_text(
        tab,
        "#feed li.notification",
        "veritasium uploaded While the gateway was down",
    )
    .await;
    wait_for_text(tab, "#connection", "Live").await;
    let ids = feed_ids(tab).await;
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), 5, "five notifications: {ids:?}");
    assert_eq!(unique.len(), ids.len(), "none twice: {ids:?}");

    if let Some(path) = std::env::var_os("YT_SCREENSHOT") {
        std::fs::write(path, tab.screenshot().await.unwrap()).unwrap();
    }

    driver.stop().await;
    for process in [&mut first, &mut second] {
        let _ = process.kill();
        let _ = process.wait();
    }
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn in_secure_mode_the_page_logs_in_with_the_accounts_password() {
    let vhost = TestVhost::new("browser-secure");
    let server = ytnotify_testkit::TestServer::start(vhost.secure_server_config()).await;
    let (alice, creator) = (
        ytnotify_testkit::unique("alice"),
        ytnotify_testkit::unique("creator"),
    );
    let alice_url = vhost
        .add_account(&ytnotify::accounts::Account::user(&alice))
        .await;
    let creator_url = vhost
        .add_account(&ytnotify::accounts::Account::youtuber(&creator))
        .await;
    let password = alice_url
        .parse::<ytnotify::broker_url::BrokerUrl>()
        .unwrap()
        .password()
        .to_owned();
    let port = free_port();
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--amqp-url",
            &vhost.url,
            "--secure",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(port).await;
    let driver = Driver::start().await;
    let tab = &driver.browser;
    tab.goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();

    // A wrong password is refused with the broker's word for it.
    let name = within(
        "the login form",
        tab.wait().for_element(Locator::Css("#login-name")),
    )
    .await
    .unwrap();
    name.send_keys(&alice).await.unwrap();
    let field = within(
        "the password field",
        tab.wait().for_element(Locator::Css(
            "#login-password-row:not([hidden]) #login-password",
        )),
    )
    .await
    .unwrap();
    field.send_keys("not the password").await.unwrap();
    tab.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(
        tab,
        "#login-error",
        &format!("RabbitMQ refused the login of user.{alice}"),
    )
    .await;

    // The right one: her page, her subscription, her notification.
    field.clear().await.unwrap();
    field.send_keys(&password).await.unwrap();
    tab.find(Locator::Css("#login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(tab, "#whoami", &alice).await;
    wait_for_text(tab, "#connection", "Live").await;
    let subscribe = tab.find(Locator::Css("#subscribe-name")).await.unwrap();
    subscribe.send_keys(&creator).await.unwrap();
    tab.find(Locator::Css("#subscribe-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_text(
        tab,
        &format!("#subscriptions li[data-youtuber='{creator}']"),
        &creator,
    )
    .await;
    let as_creator = vhost.client_as(&creator_url, "creator").await;
    publish_video(&as_creator, &creator, "For her eyes")
        .await
        .unwrap();
    wait_for_text(
        tab,
        "#feed li.notification",
        &format!("{creator} uploaded For her eyes"),
    )
    .await;

    driver.stop().await;
    let _ = gateway.kill();
    let _ = gateway.wait();
    as_creator.close().await.unwrap();
    server.stop().await;
}
