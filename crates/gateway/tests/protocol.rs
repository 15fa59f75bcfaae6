//! The gateway's protocols, SSE and WebSocket, against a real RabbitMQ and
//! a server in-process: what waited, live notifications, a reconnect after
//! the last event id, several gateways, bad input.

use std::{collections::HashSet, pin::Pin, time::Duration};

use eventsource_stream::Eventsource;
use futures::{SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message};
use ytnotify::{
    client::{Client, notifications::Notifications, youtuber::publish_video},
    topology,
};
use ytnotify_testkit::{TestVhost, within};

mod common;
use common::{TestGateway, follow, free_port, http, spawn_gateway, wait_healthy};

/// A client's view of one stream, SSE or WebSocket: events as JSON, with
/// the last position seen.
struct Events {
    stream: Pin<Box<dyn Stream<Item = Value> + Send>>,
    last_id: Option<String>,
    ws: Option<futures::channel::mpsc::UnboundedSender<String>>,
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Sse,
    WebSocket,
}

impl Events {
    async fn connect(
        gateway: &TestGateway,
        transport: Transport,
        user: &str,
        last_id: Option<&str>,
    ) -> Events {
        match transport {
            Transport::Sse => Events::sse(gateway, user, last_id).await,
            Transport::WebSocket => Events::websocket(gateway, user, last_id).await,
        }
    }

    async fn sse(gateway: &TestGateway, user: &str, last_id: Option<&str>) -> Events {
        let mut request = http().get(gateway.url(&format!("/api/users/{user}/events")));
        if let Some(id) = last_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = within("the event stream to open", request.send())
            .await
            .expect("gateway answers");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        // Each event carries the stream's last id so far, as a browser keeps it.
        let stream = response.bytes_stream().eventsource().map(|event| {
            let event = event.expect("a well-formed event stream");
            let mut value: Value = serde_json::from_str(&event.data).expect("JSON data");
            value["last_event_id"] = Value::String(event.id);
            value
        });
        Events {
            stream: Box::pin(stream),
            last_id: last_id.map(str::to_owned),
            ws: None,
        }
    }

    async fn websocket(gateway: &TestGateway, user: &str, last_id: Option<&str>) -> Events {
        let mut url = format!("ws://{}/api/users/{user}/ws", gateway.addr);
        if let Some(id) = last_id {
            url.push_str(&format!("?last_event_id={id}"));
        }
        let (socket, _) = within(
            "the WebSocket to open",
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("gateway upgrades");
        let (mut sink, stream) = socket.split();
        let (outgoing, mut to_send) = futures::channel::mpsc::unbounded::<String>();
        tokio::spawn(async move {
            while let Some(text) = to_send.next().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let stream = stream.filter_map(|message| async move {
            match message {
                Ok(Message::Text(text)) => Some(serde_json::from_str(&text).expect("JSON message")),
                _ => None,
            }
        });
        Events {
            stream: Box::pin(stream),
            last_id: last_id.map(str::to_owned),
            ws: Some(outgoing),
        }
    }

    /// The next event with data; the position moves with every event.
    async fn next(&mut self) -> Value {
        loop {
            let event = within("an event", self.stream.next())
                .await
                .expect("the stream goes on");
            if let Some(id) = event["last_event_id"].as_str().filter(|id| !id.is_empty()) {
                self.last_id = Some(id.to_owned());
            }
            if let Some(cursor) = event["cursor"].as_str() {
                self.last_id = Some(cursor.to_owned());
            }
            if event["type"] == "position" {
                continue;
            }
            return event;
        }
    }

    async fn notification(&mut self) -> Value {
        let event = self.next().await;
        assert_eq!(event["type"], "notification", "{event}");
        event
    }

    /// The next notification, which must have a position.
    async fn positioned(&mut self) -> Value {
        let event = self.notification().await;
        assert!(event.get("cursor").is_some(), "{event}");
        event
    }

    async fn hello(&mut self) -> Value {
        let event = self.next().await;
        assert_eq!(event["type"], "hello", "{event}");
        event
    }

    /// Says the notifications were shown, as the page does.
    async fn ack(&self, gateway: &TestGateway, user: &str, connection: &str, ids: &[&str]) {
        match &self.ws {
            Some(ws) => ws
                .unbounded_send(serde_json::json!({"type": "ack", "ids": ids}).to_string())
                .unwrap(),
            None => {
                let response = http()
                    .post(gateway.url(&format!("/api/users/{user}/ack")))
                    .json(&serde_json::json!({"connection": connection, "ids": ids}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 204);
            }
        }
    }
}

fn video(event: &Value) -> &str {
    event["video"].as_str().expect("a video")
}

/// The messages in `user`'s inbox, delivered or not.
fn inbox_size(vhost: &TestVhost, user: &str) -> u64 {
    let listing = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            &vhost.name,
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let inbox = topology::inbox(user);
    listing
        .lines()
        .find_map(|line| {
            let (name, messages) = line.split_once('\t')?;
            (name == inbox).then(|| messages.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("{inbox} is listed: {listing}"))
}

/// The offset of the oldest message `user`'s history keeps.
async fn first_offset(client: &Client, user: &str) -> u64 {
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    let session = client.link().session().await.unwrap();
    let channel = session.connection().create_channel().await.unwrap();
    channel
        .basic_qos(10, lapin::options::BasicQosOptions::default())
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        ShortString::from("x-stream-offset"),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            topology::history(user).as_str().into(),
            "first".into(),
            lapin::options::BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    let delivery = within("the first message of a history", consumer.next())
        .await
        .expect("a message")
        .unwrap();
    let offset = match delivery
        .properties
        .headers()
        .as_ref()
        .unwrap()
        .inner()
        .get("x-stream-offset")
    {
        Some(AMQPValue::LongLongInt(offset)) => *offset as u64,
        other => panic!("a stream offset: {other:?}"),
    };
    channel.close(200, "looked".into()).await.unwrap();
    offset
}

async fn what_waited_is_shown_then_acknowledged_and_a_reconnect_resumes(transport: Transport) {
    let vhost = TestVhost::new("gateway-resume");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    publish_video(&client, "mkbhd", "While away").await.unwrap();
    let gateway = TestGateway::start(&vhost).await;
    // Stored well before the connection, it comes from the inbox alone.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // Shown but not acknowledged: it waits in the inbox, and the next
    // connection shows it again.
    let mut events = Events::connect(&gateway, transport, "alice", None).await;
    assert_eq!(events.hello().await["recovered"], true);
    let away = events.notification().await;
    assert_eq!(
        (video(&away), &away["away"]),
        ("While away", &Value::Bool(true))
    );
    assert!(away.get("cursor").is_none(), "from the inbox: no position");
    drop(events);
    let mut events = Events::connect(&gateway, transport, "alice", None).await;
    let connection = events.hello().await["connection"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = events.notification().await;
    assert_eq!(
        (video(&again), &again["away"]),
        ("While away", &Value::Bool(true))
    );
    // Acknowledged, it is gone for good.
    events
        .ack(
            &gateway,
            "alice",
            &connection,
            &[again["id"].as_str().unwrap()],
        )
        .await;
    within("the inbox to empty", async {
        while inbox_size(&vhost, "alice") != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop(events);
    let mut events = Events::connect(&gateway, transport, "alice", None).await;
    events.hello().await;

    for title in ["Live 1", "Live 2"] {
        publish_video(&client, "mkbhd", title).await.unwrap();
        let live = events.notification().await;
        assert_eq!((video(&live), &live["away"]), (title, &Value::Bool(false)));
    }
    let position = events
        .last_id
        .clone()
        .expect("a position after live events");
    drop(events);

    for title in ["Missed 1", "Missed 2", "Missed 3"] {
        publish_video(&client, "mkbhd", title).await.unwrap();
    }
    let mut events = Events::connect(&gateway, transport, "alice", Some(&position)).await;
    assert_eq!(events.hello().await["recovered"], true);
    for title in ["Missed 1", "Missed 2", "Missed 3"] {
        assert_eq!(video(&events.positioned().await), title);
    }
    publish_video(&client, "mkbhd", "Live 3").await.unwrap();
    // Nothing with a position shown twice: the next one is the new one.
    assert_eq!(video(&events.positioned().await), "Live 3");

    drop(events);
    gateway.stop().await;
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn sse_shows_what_waited_then_live_ones_and_resumes_after_the_last_event_id() {
    what_waited_is_shown_then_acknowledged_and_a_reconnect_resumes(Transport::Sse).await;
}

#[tokio::test]
async fn websocket_shows_what_waited_then_live_ones_and_resumes_after_the_last_event_id() {
    what_waited_is_shown_then_acknowledged_and_a_reconnect_resumes(Transport::WebSocket).await;
}

async fn reconnects_in_a_burst(transport: Transport) {
    const UPLOADS: usize = 150;
    let vhost = TestVhost::new("gateway-burst");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    let gateway = TestGateway::start(&vhost).await;
    let mut events = Events::connect(&gateway, transport, "alice", None).await;

    let uploader = {
        let client = vhost.client("uploader").await;
        tokio::spawn(async move {
            for n in 0..UPLOADS {
                publish_video(&client, "mkbhd", &format!("Burst {n}"))
                    .await
                    .unwrap();
            }
            client.close().await.unwrap();
        })
    };
    let mut received: Vec<String> = Vec::new();
    let mut reconnects = 0;
    let mut connection = String::new();
    while received.len() < UPLOADS {
        let event = events.next().await;
        if event["type"] == "hello" {
            connection = event["connection"].as_str().unwrap().to_owned();
            continue;
        }
        assert_eq!(event["type"], "notification", "{event}");
        // Every one with a position: none comes again from the inbox, even
        // when a reconnection cut its acknowledgement.
        assert!(event.get("cursor").is_some(), "{event}");
        received.push(video(&event).to_owned());
        // Acknowledged as a page does; on a WebSocket, an empty
        // acknowledgement as well, so that client messages keep arriving
        // while notifications are on their way.
        events
            .ack(
                &gateway,
                "alice",
                &connection,
                &[event["id"].as_str().unwrap()],
            )
            .await;
        events.ack(&gateway, "alice", &connection, &[]).await;
        // Go away and come back every 17 notifications, wherever the burst is.
        if received.len().is_multiple_of(17) {
            let position = events.last_id.clone().expect("a position");
            drop(events);
            events = Events::connect(&gateway, transport, "alice", Some(&position)).await;
            let hello = events.hello().await;
            assert_eq!(hello["recovered"], true);
            connection = hello["connection"].as_str().unwrap().to_owned();
            reconnects += 1;
        }
    }
    within("the uploads", uploader).await.unwrap();
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), UPLOADS, "no duplicate: {received:?}");
    let expected: Vec<String> = (0..UPLOADS).map(|n| format!("Burst {n}")).collect();
    assert_eq!(received, expected, "all, in order");
    assert!(reconnects >= 8);

    drop(events);
    gateway.stop().await;
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn an_sse_reconnect_in_the_middle_of_a_burst_loses_nothing_and_repeats_nothing() {
    reconnects_in_a_burst(Transport::Sse).await;
}

#[tokio::test]
async fn a_websocket_reconnect_in_the_middle_of_a_burst_loses_nothing_and_repeats_nothing() {
    reconnects_in_a_burst(Transport::WebSocket).await;
}

#[tokio::test]
async fn two_gateways_each_serve_every_tab_and_a_killed_one_loses_nothing() {
    let vhost = TestVhost::new("gateway-two");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    let port = free_port();
    let mut process = spawn_gateway(&vhost, port);
    let first = wait_healthy(port).await;
    let second = TestGateway::start(&vhost).await;
    let mut on_first = Events::connect(&first, Transport::Sse, "alice", None).await;
    let mut on_second = Events::connect(&second, Transport::WebSocket, "alice", None).await;
    on_first.hello().await;
    on_second.hello().await;
    publish_video(&client, "mkbhd", "For both tabs")
        .await
        .unwrap();
    assert_eq!(video(&on_first.notification().await), "For both tabs");
    assert_eq!(video(&on_second.notification().await), "For both tabs");

    // The first gateway is killed; what comes meanwhile waits for its tab,
    // which comes back to it once it is restarted, or to the other one.
    let position = on_first.last_id.clone().unwrap();
    process.kill().unwrap();
    process.wait().unwrap();
    drop(on_first);
    publish_video(&client, "mkbhd", "While a gateway is down")
        .await
        .unwrap();
    assert_eq!(
        video(&on_second.notification().await),
        "While a gateway is down"
    );
    let mut moved = Events::connect(&second, Transport::Sse, "alice", Some(&position)).await;
    assert_eq!(moved.hello().await["recovered"], true);
    assert_eq!(
        video(&moved.notification().await),
        "While a gateway is down"
    );
    let mut process = spawn_gateway(&vhost, port);
    let restarted = wait_healthy(port).await;
    let mut back = Events::connect(&restarted, Transport::Sse, "alice", Some(&position)).await;
    assert_eq!(back.hello().await["recovered"], true);
    assert_eq!(video(&back.notification().await), "While a gateway is down");

    drop((moved, on_second, back));
    process.kill().unwrap();
    process.wait().unwrap();
    second.stop().await;
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_browser_and_user_watch_each_see_every_notification() {
    let vhost = TestVhost::new("gateway-and-cli");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    let gateway = TestGateway::start(&vhost).await;
    let mut browser = Events::connect(&gateway, Transport::Sse, "alice", None).await;
    browser.hello().await;
    let watcher = vhost.client("watch").await;
    let mut watch = within(
        "a session",
        Notifications::open(watcher.link(), &watcher.requests(), "alice", None),
    )
    .await
    .unwrap();
    for n in 0..20 {
        publish_video(&client, "mkbhd", &format!("Both {n}"))
            .await
            .unwrap();
    }
    for n in 0..20 {
        let expected = format!("Both {n}");
        assert_eq!(video(&browser.notification().await), expected);
        let received = within("a notification in user watch", watch.next())
            .await
            .unwrap();
        assert_eq!(
            received.notification.to_string(),
            format!("New Notification: mkbhd uploaded {expected}")
        );
        received.ack().await.unwrap();
    }
    watch.close().await;
    watcher.close().await.unwrap();
    drop(browser);
    gateway.stop().await;
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_position_the_history_no_longer_keeps_is_said_plainly() {
    let vhost = TestVhost::new("gateway-trimmed");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    let gateway = TestGateway::start(&vhost).await;
    let mut events = Events::connect(&gateway, Transport::Sse, "alice", None).await;
    events.hello().await;
    publish_video(&client, "mkbhd", "Soon forgotten")
        .await
        .unwrap();
    events.notification().await;
    let position = events.last_id.clone().unwrap();
    drop(events);

    // Fill the history past what it keeps, straight into alice's exchange:
    // the segment that held the position is dropped.
    let session = client.link().session().await.unwrap();
    let channel = ytnotify::broker::confirming_channel(session.connection())
        .await
        .unwrap();
    let filler = vec![b'x'; 50_000];
    for _ in 0..(3 * topology::HISTORY_MAX_BYTES as usize / filler.len()) {
        channel
            .basic_publish(
                topology::user_exchange("alice").as_str().into(),
                "".into(),
                lapin::options::BasicPublishOptions::default(),
                &filler,
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // The broker drops old segments a moment after new ones begin.
    let Some(kept) = position
        .strip_prefix('o')
        .and_then(|rest| rest.split_once('.'))
    else {
        panic!("a position in the history: {position}")
    };
    let kept: u64 = kept.0.parse().unwrap();
    within("the history to drop the position", async {
        while first_offset(&client, "alice").await <= kept {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    publish_video(&client, "mkbhd", "After the flood")
        .await
        .unwrap();

    let mut events = Events::connect(&gateway, Transport::Sse, "alice", Some(&position)).await;
    assert_eq!(events.hello().await["recovered"], false);
    assert_eq!(video(&events.notification().await), "After the flood");

    drop(events);
    gateway.stop().await;
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_one_clear_line_and_the_gateway_keeps_serving() {
    let vhost = TestVhost::new("gateway-bad-input");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    let gateway = TestGateway::start(&vhost).await;
    let http = http();
    let error = |body: Value| body["error"].as_str().unwrap_or_default().to_owned();

    let cases = [
        (
            "/api/users/nobody/events",
            404,
            "there is no user nobody: log in first",
        ),
        (
            "/api/users/al%20ice/events",
            400,
            "invalid user name \"al ice\": a space at position 3",
        ),
        (
            "/api/users/alice/events?last_event_id=o12",
            400,
            "\"o12\" is not a position in a history",
        ),
        ("/api/users/nobody/ws", 404, "there is no user nobody"),
        ("/nowhere", 404, "no such page"),
    ];
    for (path, status, message) in cases {
        let response = http.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(error(body.clone()).starts_with(message), "{path}: {body}");
    }
    let response = http
        .post(gateway.url("/api/users/alice/subscriptions"))
        .json(&serde_json::json!({"youtuber": "bad name!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .post(gateway.url("/api/users/alice/subscriptions"))
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        error(response.json().await.unwrap())
            .starts_with("the request body is not what this call takes")
    );
    // A refusal of the server comes through as it is.
    let response = http
        .delete(gateway.url("/api/users/alice/subscriptions/nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert!(error(response.json().await.unwrap()).contains("alice is not subscribed to nobody"));

    // A WebSocket message that cannot be read is answered; one too big closes
    // that socket only.
    let (mut socket, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/api/users/alice/ws", gateway.addr))
            .await
            .unwrap();
    socket
        .send(Message::text("{\"type\":\"like\"}"))
        .await
        .unwrap();
    let problem = loop {
        let Some(Ok(Message::Text(text))) = within("an answer", socket.next()).await else {
            panic!("the socket stays open")
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        if value["type"] == "problem" {
            break value;
        }
    };
    assert!(
        problem["error"]
            .as_str()
            .unwrap()
            .contains("send {\"type\":\"ack\""),
        "{problem}"
    );
    socket
        .send(Message::text("x".repeat(64 * 1024)))
        .await
        .unwrap();
    let close = loop {
        match within("the socket to close", socket.next()).await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    if let Some(frame) = close {
        assert_eq!(
            frame.code,
            tungstenite::protocol::frame::coding::CloseCode::Size
        );
    }

    // Still serving.
    let health = http.get(gateway.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let mut events = Events::connect(&gateway, Transport::Sse, "alice", None).await;
    events.hello().await;
    publish_video(&client, "mkbhd", "Still here").await.unwrap();
    assert_eq!(video(&events.notification().await), "Still here");

    drop(events);
    gateway.stop().await;
    client.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn streams_spread_over_connections_and_each_gets_every_notification() {
    let vhost = TestVhost::new("gateway-pool");
    let server = vhost.start_server().await;
    let client = vhost.client("test").await;
    follow(&client, "alice", "mkbhd").await;
    let gateway = TestGateway::start_with(&vhost, 4).await;
    let mut tabs = Vec::new();
    for n in 0..10 {
        let transport = if n % 2 == 0 {
            Transport::Sse
        } else {
            Transport::WebSocket
        };
        let mut events = Events::connect(&gateway, transport, "alice", None).await;
        events.hello().await;
        tabs.push(events);
    }
    let health: Value = http()
        .get(gateway.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["streams"], 10, "{health}");
    // 10 streams, 4 on each connection, and the one that sends requests.
    assert_eq!(health["broker_connections"], 4, "{health}");
    publish_video(&client, "mkbhd", "For ten tabs")
        .await
        .unwrap();
    for tab in &mut tabs {
        assert_eq!(video(&tab.notification().await), "For ten tabs");
    }
    drop(tabs);
    gateway.stop().await;
    client.close().await.unwrap();
    server.stop().await;
}
