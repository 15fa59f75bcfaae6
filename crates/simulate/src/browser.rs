//! Browser-like clients: `gateway` processes started for the run, and
//! clients that read each user's notifications from them as a page does —
//! Server-Sent Events or a WebSocket — acknowledge what they receive, and
//! are checked and timed against the uploads the run sent.
//!
//! Client `c` belongs to user `c % users` (user i gets clients i, i + users,
//! …); the first `sse_clients` read Server-Sent Events, the others a
//! WebSocket. Client `c` is served by gateway `(c + c / users) % gateways`:
//! consecutive clients alternate, and so do the clients of one user.
//!
//! Clients stay connected from before the first upload to the end of the
//! run. Churn and offline users are allowed: each client expects exactly
//! what its user's inbox expects in [`crate::check`] (a user going offline
//! closes only the simulator's AMQP reading, not the browsers), restricted
//! to uploads sent after the client had its `hello`; pairs left out there
//! for a change in flight are left out here too.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use eventsource_stream::Eventsource;
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::Value;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::{
    SimError,
    check::Expectations,
    harness::Usage,
    receiver::{Tally, histogram},
    report::{BrowserCheck, Latency},
    scenario::{Scenario, WsAcks, user_name},
};

/// How long one client may take to open its stream and get `hello`.
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// How long a gateway may take to answer `/healthz` after it is started.
const START_WAIT: Duration = Duration::from_secs(30);
/// How long a gateway may take to stop on SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// A client acknowledges what it received at most this often, as a page
/// batches its acknowledgements.
const ACK_EVERY: Duration = Duration::from_millis(50);
/// Ids per acknowledgement: a WebSocket message is at most 4 KiB, about a
/// hundred ids.
const ACK_BATCH: usize = 64;
/// How long one acknowledgement may take.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Streams being opened at once: thousands at a time would only queue up
/// inside the gateways.
const OPENING: usize = 32;
/// Clients listed by name in the report when they lost or repeated something.
const PROBLEMS_LISTED: usize = 10;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How a client reads its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Sse => "SSE",
            Transport::WebSocket => "WebSocket",
        }
    }
}

/// Where client `index` goes: its user, transport and gateway.
pub fn placement(scenario: &Scenario, index: u32) -> (u32, Transport, usize) {
    let users = scenario.users.max(1);
    let user = index % users;
    let transport = if index < scenario.sse_clients {
        Transport::Sse
    } else {
        Transport::WebSocket
    };
    let gateways = scenario.gateway_count().max(1);
    let gateway = (index + index / users) % gateways;
    (user, transport, gateway as usize)
}

/// The `gateway` program: `explicit` if given, else the one beside the
/// running executable (as in `target/release/`).
pub fn find_gateway(explicit: Option<&Path>) -> Result<PathBuf, SimError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(SimError::Harness(format!(
                "there is no gateway program at {}; build it with `cargo build --workspace --release`",
                path.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| SimError::Harness(format!("cannot find this program's own path: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // Test binaries live one level down, in `deps/`.
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join("gateway"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            SimError::Harness(format!(
                "browser clients need the gateway program beside {}: build it with \
                 `cargo build --workspace --release` (or give its path with --gateway-bin)",
                dir.display()
            ))
        })
}

fn http() -> reqwest::Client {
    // The workspace builds rustls without a default crypto provider; a second
    // install is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// One `gateway` child process.
struct Gateway {
    child: Child,
    addr: SocketAddr,
}

/// The run's gateways, killed when dropped unless stopped first.
pub struct Gateways {
    running: Vec<Gateway>,
}

/// A port nothing listens on now.
fn free_port() -> Result<u16, SimError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| SimError::Harness(format!("cannot find a free port on 127.0.0.1: {e}")))
}

fn last_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .last()
        .unwrap_or("(nothing logged)")
        .to_owned()
}

impl Gateways {
    /// Starts `count` gateways on free ports of 127.0.0.1, all on `url`
    /// (the run's vhost), logging into `scratch`, and waits until each
    /// answers `/healthz`.
    pub async fn start(
        exe: &Path,
        count: u32,
        url: &str,
        scratch: &Path,
    ) -> Result<Gateways, SimError> {
        let mut gateways = Gateways {
            running: Vec::new(),
        };
        let mut logs = Vec::new();
        for k in 0..count {
            let port = free_port()?;
            let log_path = scratch.join(format!("gateway-{k}.log"));
            let log = std::fs::File::create(&log_path).map_err(|e| {
                SimError::Harness(format!("cannot create {}: {e}", log_path.display()))
            })?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let child = Command::new(exe)
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--amqp-url")
                .arg(url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| SimError::Harness(format!("cannot start {}: {e}", exe.display())))?;
            gateways.running.push(Gateway { child, addr });
            logs.push(log_path);
        }
        let http = http();
        let deadline = tokio::time::Instant::now() + START_WAIT;
        for (gateway, log) in gateways.running.iter_mut().zip(&logs) {
            let health = format!("http://{}/healthz", gateway.addr);
            loop {
                if let Ok(Some(status)) = gateway.child.try_wait() {
                    return Err(SimError::Harness(format!(
                        "gateway on {} exited at start-up ({status}): {}",
                        gateway.addr,
                        last_line(log)
                    )));
                }
                let answer = http
                    .get(&health)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                if answer.is_ok_and(|response| response.status() == 200) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(SimError::Harness(format!(
                        "gateway on {} did not answer /healthz within {}s: {}",
                        gateway.addr,
                        START_WAIT.as_secs(),
                        last_line(log)
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(gateways)
    }

    /// No gateway: what is left once they have stopped.
    pub fn none() -> Gateways {
        Gateways {
            running: Vec::new(),
        }
    }

    /// The address of gateway `k`.
    pub fn addr(&self, k: usize) -> SocketAddr {
        self.running[k].addr
    }

    /// Every gateway's address, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.running.iter().map(|g| g.addr.to_string()).collect()
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Each gateway's memory and CPU now.
    pub fn usage(&self) -> Vec<Option<Usage>> {
        self.running
            .iter()
            .map(|gateway| Usage::of(gateway.child.id()))
            .collect()
    }

    /// Stops every gateway: SIGTERM, then SIGKILL after [`STOP_WAIT`].
    pub async fn stop(mut self) {
        for gateway in &self.running {
            let _ = Command::new("kill")
                .args(["-TERM", &gateway.child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + STOP_WAIT;
        for gateway in &mut self.running {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = gateway.child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Drop kills and reaps whatever is left.
    }
}

impl Drop for Gateways {
    fn drop(&mut self) {
        for gateway in &mut self.running {
            if let Ok(None) = gateway.child.try_wait() {
                let _ = gateway.child.kill();
            }
            let _ = gateway.child.wait();
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// When `hello` arrived (the run's clock); `None` until then.
    connected_at: Option<u64>,
    /// Copies received per notification id.
    ids: HashMap<Uuid, u32>,
    /// Uploads received (first copies), by sequence number.
    seqs: HashSet<u32>,
    /// Notifications whose title or id could not be read.
    unreadable: u64,
    /// Why the stream ended before the run did, or failed to open.
    ended: Option<String>,
    ack_failures: u64,
}

/// One client and what it saw.
struct ClientState {
    index: u32,
    user: u32,
    transport: Transport,
    gateway: usize,
    seen: Mutex<Seen>,
}

/// Latency histograms (microseconds), one per transport.
struct Histograms {
    sse: Histogram<u64>,
    ws: Histogram<u64>,
}

/// Everything the clients share.
struct Shared {
    tally: Arc<Tally>,
    histograms: Mutex<Histograms>,
    received: AtomicU64,
    last_delivery: AtomicU64,
}

/// The browser clients of a run, reading.
pub struct Browsers {
    clients: Vec<Arc<ClientState>>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// How long opening every stream took.
    pub connect_seconds: f64,
}

/// A notification as a client reads it: (id, upload sequence).
fn notification(event: &Value) -> Option<(Uuid, u32)> {
    let id = event["id"].as_str()?.parse().ok()?;
    let seq = event["video"].as_str()?.strip_prefix('v')?.parse().ok()?;
    Some((id, seq))
}

impl Shared {
    /// Counts one notification received by `client` now.
    fn record(&self, client: &ClientState, event: &Value) -> Option<Uuid> {
        let now = self.tally.now();
        let mut seen = lock(&client.seen);
        let Some((id, seq)) = notification(event) else {
            seen.unreadable += 1;
            return None;
        };
        let copies = seen.ids.entry(id).or_default();
        *copies += 1;
        if *copies == 1 {
            seen.seqs.insert(seq);
            drop(seen);
            if let Some(sent) = self.tally.sent(seq) {
                let micros = (now.saturating_sub(sent) / 1_000).max(1);
                let mut histograms = lock(&self.histograms);
                let histogram = match client.transport {
                    Transport::Sse => &mut histograms.sse,
                    Transport::WebSocket => &mut histograms.ws,
                };
                let _ = histogram.record(micros);
            }
        }
        self.last_delivery.fetch_max(now, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
        Some(id)
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<Value, String>> + Send>>;

/// How a client says what it has shown.
enum Acker {
    /// `POST /api/users/<name>/ack` naming the connection from `hello`.
    Http {
        http: reqwest::Client,
        url: String,
        connection: String,
        /// The writer of a WebSocket whose acknowledgements go over HTTP,
        /// kept so that the socket stays open.
        _socket: Option<futures::channel::mpsc::UnboundedSender<String>>,
    },
    /// An `ack` message on the WebSocket.
    Socket(futures::channel::mpsc::UnboundedSender<String>),
}

impl Acker {
    /// Sends `ids` in batches; how many batches failed.
    async fn send(&self, ids: Vec<Uuid>) -> u64 {
        let mut failures = 0;
        for batch in ids.chunks(ACK_BATCH) {
            let ok = match self {
                Acker::Http {
                    http,
                    url,
                    connection,
                    ..
                } => {
                    let body = serde_json::json!({"connection": connection, "ids": batch});
                    http.post(url)
                        .timeout(ACK_WAIT)
                        .json(&body)
                        .send()
                        .await
                        .is_ok_and(|response| response.status() == 204)
                }
                Acker::Socket(outgoing) => {
                    let body = serde_json::json!({"type": "ack", "ids": batch});
                    outgoing.unbounded_send(body.to_string()).is_ok()
                }
            };
            failures += u64::from(!ok);
        }
        failures
    }
}

/// Opens a stream: its events as JSON, and where to send acknowledgements
/// (without the connection id for SSE, which comes with `hello`).
async fn open(
    http: &reqwest::Client,
    gateway: SocketAddr,
    user: &str,
    transport: Transport,
    ws_acks: WsAcks,
) -> Result<(Events, Acker), String> {
    let http_acker = |socket| Acker::Http {
        http: http.clone(),
        url: format!("http://{gateway}/api/users/{user}/ack"),
        connection: String::new(),
        _socket: socket,
    };
    match transport {
        Transport::Sse => {
            let url = format!("http://{gateway}/api/users/{user}/events");
            let response = http
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            if response.status() != 200 {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                return Err(format!("GET {url}: {status} {body}"));
            }
            let events = response.bytes_stream().eventsource().filter_map(|event| {
                std::future::ready(match event {
                    // A move of the position alone carries no data.
                    Ok(event) if event.data.is_empty() => None,
                    Ok(event) => Some(
                        serde_json::from_str::<Value>(&event.data)
                            .map_err(|e| format!("an event that is not JSON ({e})")),
                    ),
                    Err(err) => Some(Err(format!("the event stream broke: {err}"))),
                })
            });
            Ok((Box::pin(events), http_acker(None)))
        }
        Transport::WebSocket => {
            let url = format!("ws://{gateway}/api/users/{user}/ws");
            let (socket, _) = tokio_tungstenite::connect_async(&url)
                .await
                .map_err(|e| format!("WebSocket {url}: {e}"))?;
            let (mut sink, stream) = socket.split();
            let (outgoing, mut to_send) = futures::channel::mpsc::unbounded::<String>();
            tokio::spawn(async move {
                while let Some(text) = to_send.next().await {
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                let _ = sink.close().await;
            });
            let events = stream.filter_map(|message| {
                std::future::ready(match message {
                    Ok(Message::Text(text)) => Some(
                        serde_json::from_str::<Value>(&text)
                            .map_err(|e| format!("a message that is not JSON ({e})")),
                    ),
                    Ok(Message::Close(frame)) => Some(Err(format!(
                        "the gateway closed the WebSocket: {}",
                        frame.map_or_else(String::new, |f| f.reason.to_string())
                    ))),
                    Ok(_) => None,
                    Err(err) => Some(Err(format!("the WebSocket broke: {err}"))),
                })
            });
            let acker = match ws_acks {
                WsAcks::Socket => Acker::Socket(outgoing),
                WsAcks::Http => http_acker(Some(outgoing)),
            };
            Ok((Box::pin(events), acker))
        }
    }
}

/// Opens the client's stream and waits for `hello`.
async fn connect(
    http: &reqwest::Client,
    gateway: SocketAddr,
    client: &ClientState,
    ws_acks: WsAcks,
) -> Result<(Events, Acker), String> {
    let user = user_name(client.user);
    let (mut events, mut acker) = open(http, gateway, &user, client.transport, ws_acks).await?;
    let hello = loop {
        match events.next().await {
            Some(Ok(event)) if event["type"] == "hello" => break event,
            Some(Ok(event)) if event["type"] == "problem" => {
                return Err(format!("the gateway's problem: {}", event["error"]));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err),
            None => return Err("the stream ended before hello".to_owned()),
        }
    };
    if let Acker::Http { connection, .. } = &mut acker {
        *connection = hello["connection"]
            .as_str()
            .ok_or("a hello without its connection id")?
            .to_owned();
    }
    Ok((events, acker))
}

/// One client, from its stream's opening to the end of the run.
async fn run_client(
    client: Arc<ClientState>,
    shared: Arc<Shared>,
    http: reqwest::Client,
    gateway: SocketAddr,
    ws_acks: WsAcks,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let opened =
        tokio::time::timeout(CONNECT_WAIT, connect(&http, gateway, &client, ws_acks)).await;
    let (mut events, acker) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => {
            lock(&client.seen).ended = Some(format!("could not connect: {err}"));
            let _ = ready.send(());
            return;
        }
        Err(_) => {
            lock(&client.seen).ended = Some(format!(
                "no hello within {}s of asking for the stream",
                CONNECT_WAIT.as_secs()
            ));
            let _ = ready.send(());
            return;
        }
    };
    lock(&client.seen).connected_at = Some(shared.tally.now());
    let _ = ready.send(());
    let acker = Arc::new(acker);
    let mut pending: Vec<Uuid> = Vec::new();
    let mut sending: Vec<tokio::task::JoinHandle<u64>> = Vec::new();
    let mut failures = 0;
    let mut tick = tokio::time::interval(ACK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            _ = tick.tick() => {
                if !pending.is_empty() {
                    // Sent aside, so that reading (and its timing) never
                    // waits for an acknowledgement.
                    let (acker, ids) = (Arc::clone(&acker), std::mem::take(&mut pending));
                    sending.push(tokio::spawn(async move { acker.send(ids).await }));
                }
                let (done, going): (Vec<_>, Vec<_>) =
                    sending.drain(..).partition(|task| task.is_finished());
                sending = going;
                for task in done {
                    failures += task.now_or_never().map_or(1, |sent| sent.unwrap_or(1));
                }
            }
            event = events.next() => match event {
                Some(Ok(event)) => match event["type"].as_str() {
                    Some("notification") => {
                        if let Some(id) = shared.record(&client, &event) {
                            pending.push(id);
                        }
                    }
                    Some("problem") => {
                        lock(&client.seen).ended = Some(format!("the gateway's problem: {}", event["error"]));
                        break;
                    }
                    _ => {}
                },
                Some(Err(err)) => {
                    lock(&client.seen).ended = Some(err);
                    break;
                }
                None => {
                    lock(&client.seen).ended = Some("the stream ended".to_owned());
                    break;
                }
            },
        }
    }
    if !pending.is_empty() {
        let last = Arc::clone(&acker);
        sending.push(tokio::spawn(async move { last.send(pending).await }));
    }
    for task in sending {
        match tokio::time::timeout(ACK_WAIT, task).await {
            Ok(Ok(failed)) => failures += failed,
            _ => failures += 1,
        }
    }
    lock(&client.seen).ack_failures += failures;
    // Dropping the stream (and the WebSocket's writer with the acker)
    // closes the connection.
}

impl Browsers {
    /// Connects every client of the scenario, `OPENING` at a time, and
    /// returns once each has its `hello` or has failed to open.
    pub async fn connect(scenario: &Scenario, gateways: &Gateways, tally: Arc<Tally>) -> Browsers {
        let shared = Arc::new(Shared {
            tally,
            histograms: Mutex::new(Histograms {
                sse: histogram(),
                ws: histogram(),
            }),
            received: AtomicU64::new(0),
            last_delivery: AtomicU64::new(0),
        });
        let (stop, stopping) = watch::channel(false);
        let http = http();
        let opening = Arc::new(Semaphore::new(OPENING));
        let started = Instant::now();
        let mut clients = Vec::new();
        let mut tasks = Vec::new();
        let mut readies = Vec::new();
        for index in 0..scenario.browser_clients() {
            let (user, transport, gateway) = placement(scenario, index);
            let client = Arc::new(ClientState {
                index,
                user,
                transport,
                gateway,
                seen: Mutex::new(Seen::default()),
            });
            clients.push(Arc::clone(&client));
            let (ready, is_ready) = oneshot::channel();
            // The semaphore is never closed: a permit always comes.
            let permit = Arc::clone(&opening).acquire_owned().await.ok();
            let addr = gateways.addr(gateway);
            tasks.push(tokio::spawn(run_client(
                client,
                Arc::clone(&shared),
                http.clone(),
                addr,
                scenario.ws_acks,
                ready,
                stopping.clone(),
            )));
            // The permit goes once the stream is open (or has failed).
            readies.push(tokio::spawn(async move {
                let _ = is_ready.await;
                drop(permit);
            }));
        }
        for ready in readies {
            let _ = ready.await;
        }
        Browsers {
            clients,
            shared,
            stop,
            tasks,
            connect_seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Clients whose stream is open (they had `hello`).
    pub fn connected(&self) -> u64 {
        self.clients
            .iter()
            .filter(|c| lock(&c.seen).connected_at.is_some())
            .count() as u64
    }

    /// Connected clients per gateway.
    pub fn connected_per_gateway(&self, gateways: usize) -> Vec<u64> {
        let mut counts = vec![0; gateways];
        for client in &self.clients {
            if lock(&client.seen).connected_at.is_some() {
                counts[client.gateway] += 1;
            }
        }
        counts
    }

    /// Every client's expected uploads: those its user's inbox expects,
    /// sent after the client had its `hello`.
    fn expected(&self, expectations: &Expectations) -> Vec<Vec<u32>> {
        let mut by_user: HashMap<u32, Vec<u32>> = HashMap::new();
        for &(user, seq) in &expectations.expected {
            by_user.entry(user).or_default().push(seq);
        }
        self.clients
            .iter()
            .map(|client| {
                let Some(connected) = lock(&client.seen).connected_at else {
                    return Vec::new();
                };
                by_user
                    .get(&client.user)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|&seq| {
                        self.shared
                            .tally
                            .sent(seq)
                            .is_some_and(|at| at >= connected)
                    })
                    .collect()
            })
            .collect()
    }

    /// Waits until every connected client has all it expects (or its stream
    /// ended), or the timeout.
    pub async fn drain(&self, expectations: &Expectations, timeout: Duration, bar: &ProgressBar) {
        let expected = self.expected(expectations);
        let want: u64 = expected.iter().map(|seqs| seqs.len() as u64).sum();
        bar.set_length(want);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut arrived = 0;
            let mut waiting = false;
            for (client, seqs) in self.clients.iter().zip(&expected) {
                let seen = lock(&client.seen);
                let have = seqs.iter().filter(|seq| seen.seqs.contains(seq)).count();
                arrived += have as u64;
                waiting |= have < seqs.len() && seen.ended.is_none();
            }
            bar.set_position(arrived);
            if !waiting || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A duplicate would come right behind; give it a moment to show.
        tokio::time::sleep(Duration::from_millis(200)).await;
        bar.finish();
    }

    /// Stops every client: each sends its last acknowledgements and closes.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            // Each client bounds its own last acknowledgements.
            let _ = tokio::time::timeout(ACK_WAIT * 2, task).await;
        }
    }

    /// Notifications received, all clients together.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// When the last notification reached a client (the run's clock).
    pub fn last_delivery(&self) -> u64 {
        self.shared.last_delivery.load(Ordering::Relaxed)
    }

    /// Latency over all clients, and for SSE and WebSocket clients apart.
    pub fn latency(&self) -> (Latency, Latency, Latency) {
        let histograms = lock(&self.shared.histograms);
        let mut all = histograms.sse.clone();
        let _ = all.add(&histograms.ws);
        (
            Latency::from_micros(&all),
            Latency::from_micros(&histograms.sse),
            Latency::from_micros(&histograms.ws),
        )
    }

    /// The check: per client, what it expected against what it received.
    pub fn check(&self, expectations: &Expectations, gateways: &[String]) -> BrowserCheck {
        let expected = self.expected(expectations);
        let mut ambiguous_by_user: HashMap<u32, HashSet<u32>> = HashMap::new();
        for &(user, seq) in &expectations.ambiguous {
            ambiguous_by_user.entry(user).or_default().insert(seq);
        }
        let none = HashSet::new();
        let mut check = BrowserCheck {
            clients: self.clients.len() as u64,
            ..BrowserCheck::default()
        };
        for (client, seqs) in self.clients.iter().zip(&expected) {
            let seen = lock(&client.seen);
            let Some(connected) = seen.connected_at else {
                check.not_connected += 1;
                if check.problems.len() < PROBLEMS_LISTED {
                    check.problems.push(format!(
                        "client {} ({}, {} on {}): {}",
                        client.index,
                        user_name(client.user),
                        client.transport.label(),
                        gateways[client.gateway],
                        seen.ended.as_deref().unwrap_or("never connected")
                    ));
                }
                continue;
            };
            let ambiguous = ambiguous_by_user.get(&client.user).unwrap_or(&none);
            let wanted: HashSet<u32> = seqs.iter().copied().collect();
            let lost = wanted.difference(&seen.seqs).count() as u64;
            let duplicates: u64 = seen
                .ids
                .values()
                .map(|&copies| u64::from(copies.saturating_sub(1)))
                .sum();
            // Uploads sent before the client connected are neither expected
            // nor unexpected: the session may or may not take them.
            let unexpected = seen
                .seqs
                .iter()
                .filter(|seq| {
                    !wanted.contains(seq)
                        && !ambiguous.contains(seq)
                        && self
                            .shared
                            .tally
                            .sent(**seq)
                            .is_none_or(|at| at >= connected)
                })
                .count() as u64;
            check.expected += wanted.len() as u64;
            check.received += (wanted.len() as u64) - lost;
            check.lost += lost;
            check.duplicates += duplicates;
            check.unexpected += unexpected;
            check.unreadable += seen.unreadable;
            check.ack_failures += seen.ack_failures;
            check.complete += u64::from(lost == 0);
            check.ended_early += u64::from(seen.ended.is_some());
            if (lost > 0 || duplicates > 0 || unexpected > 0)
                && check.problems.len() < PROBLEMS_LISTED
            {
                check.problems.push(format!(
                    "client {} ({}, {} on {}): {lost} lost, {duplicates} duplicates, {unexpected} unexpected{}",
                    client.index,
                    user_name(client.user),
                    client.transport.label(),
                    gateways[client.gateway],
                    seen.ended
                        .as_deref()
                        .map(|why| format!("; {why}"))
                        .unwrap_or_default()
                ));
            }
        }
        let mut clients_of: HashMap<u32, u64> = HashMap::new();
        for client in &self.clients {
            *clients_of.entry(client.user).or_default() += 1;
        }
        check.ambiguous = expectations
            .ambiguous
            .iter()
            .map(|(user, _)| clients_of.get(user).copied().unwrap_or(0))
            .sum();
        check.ok = check.lost == 0
            && check.duplicates == 0
            && check.unexpected == 0
            && check.not_connected == 0;
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_go_round_robin_over_users_and_gateways() {
        let scenario = Scenario {
            users: 4,
            sse_clients: 5,
            ws_clients: 3,
            ..Scenario::default()
        };
        let placed: Vec<_> = (0..8).map(|c| placement(&scenario, c)).collect();
        let users: Vec<u32> = placed.iter().map(|p| p.0).collect();
        assert_eq!(users, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(placed[4].1, Transport::Sse);
        assert_eq!(placed[5].1, Transport::WebSocket);
        // Two gateways by default; one user's two clients on different ones.
        let gateways: Vec<usize> = placed.iter().map(|p| p.2).collect();
        assert_eq!(gateways, [0, 1, 0, 1, 1, 0, 1, 0]);
    }

    #[test]
    fn a_notification_is_read_from_its_event() {
        let id = Uuid::new_v4();
        let event = serde_json::json!({"type": "notification", "id": id, "video": "v42"});
        assert_eq!(notification(&event), Some((id, 42)));
        assert_eq!(notification(&serde_json::json!({"video": "v1"})), None);
    }
}
