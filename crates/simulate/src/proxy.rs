//! A TCP proxy that cuts connections: it forwards every connection it accepts
//! to one upstream (RabbitMQ, for the chaos run) and, at random intervals or on
//! demand, resets every connection open at that moment, so that the programs
//! behind it see a network cut rather than a broker that closed politely.
//!
//! A cut resets both sides (`SO_LINGER` 0, then close: the peer gets a TCP RST),
//! including connections still waiting for their upstream, so a program that
//! is reconnecting when a cut comes is cut again.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{broadcast, oneshot},
};

// `random` is the simulator's seeded generator: a sibling module in the
// library, an import of the library's in the `simulate` binary.
use crate::random::Rng;

/// How long the proxy waits for the upstream to accept a connection.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(5);

/// The range cut intervals are drawn from, uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutEvery {
    pub min: Duration,
    pub max: Duration,
}

impl std::str::FromStr for CutEvery {
    type Err = String;

    /// `0.5s..8s` (humantime durations), or one duration for a fixed interval.
    fn from_str(text: &str) -> Result<CutEvery, String> {
        let parse = |part: &str| {
            humantime::parse_duration(part.trim())
                .map_err(|e| format!("invalid duration {part:?} in {text:?}: {e}"))
        };
        let (min, max) = match text.split_once("..") {
            Some((min, max)) => (parse(min)?, parse(max)?),
            None => (parse(text)?, parse(text)?),
        };
        if min.is_zero() || min > max {
            return Err(format!(
                "invalid interval {text:?}: write MIN..MAX with 0 < MIN <= MAX, as in 0.5s..8s"
            ));
        }
        Ok(CutEvery { min, max })
    }
}

impl CutEvery {
    fn pick(&self, rng: &mut Rng) -> Duration {
        self.min + (self.max - self.min).mul_f64(rng.unit())
    }
}

/// What the proxy does.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Cut at random intervals in this range; `None`: only on demand.
    pub cut_every: Option<CutEvery>,
    /// Start with the random cuts paused ([`ProxyHandle::set_random_cuts`]).
    pub paused: bool,
    /// Seed of the intervals.
    pub seed: u64,
}

/// Why a cut happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutCause {
    /// The random timer.
    Timer,
    /// [`ProxyHandle::cut_now`] (SIGUSR1 in the binary).
    OnDemand,
}

/// One cut, as announced to [`ProxyHandle::cuts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// 1 for the first cut.
    pub number: u64,
    /// Connections reset by this cut.
    pub connections: usize,
    pub cause: CutCause,
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let noun = if self.connections == 1 {
            "connection"
        } else {
            "connections"
        };
        let cause = match self.cause {
            CutCause::Timer => "timer",
            CutCause::OnDemand => "on demand",
        };
        write!(
            f,
            "proxy: cut {} {noun} (cut {}, {cause})",
            self.connections, self.number
        )
    }
}

/// Totals, when the proxy stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub cuts: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections a cut reset.
    pub connections_cut: u64,
    /// Connections closed because the upstream refused or did not answer.
    pub upstream_failures: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "proxy: stopped after {} cuts; {} connections accepted, {} of them cut, {} closed because the upstream was unreachable",
            self.cuts, self.connections, self.connections_cut, self.upstream_failures
        )
    }
}

struct Shared {
    /// Open connections (accepted, not yet closed), each with the sender that resets it.
    open: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU64,
    cuts: AtomicU64,
    connections: AtomicU64,
    connections_cut: AtomicU64,
    upstream_failures: AtomicU64,
    announce: broadcast::Sender<Cut>,
    random_cuts: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent even if a holder panicked: every change is one call.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Controls a running proxy; cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    /// Resets every connection open now; returns how many.
    pub fn cut_now(&self) -> usize {
        self.cut(CutCause::OnDemand)
    }

    fn cut(&self, cause: CutCause) -> usize {
        let victims: Vec<_> = lock(&self.shared.open).drain().collect();
        let mut cut = 0;
        for (_, reset) in victims {
            // A connection that is closing on its own has dropped its receiver.
            if reset.send(()).is_ok() {
                cut += 1;
            }
        }
        let number = self.shared.cuts.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared
            .connections_cut
            .fetch_add(cut as u64, Ordering::Relaxed);
        // Nobody listening is fine.
        let _ = self.shared.announce.send(Cut {
            number,
            connections: cut,
            cause,
        });
        cut
    }

    /// Pauses (false) or resumes (true) the random cuts; the intervals run on
    /// meanwhile, and a cut that falls due while paused is skipped.
    pub fn set_random_cuts(&self, on: bool) {
        self.shared.random_cuts.store(on, Ordering::Relaxed);
    }

    /// Whether the random cuts are on (not paused).
    pub fn random_cuts(&self) -> bool {
        self.shared.random_cuts.load(Ordering::Relaxed)
    }

    /// Every cut from now on.
    pub fn cuts(&self) -> broadcast::Receiver<Cut> {
        self.shared.announce.subscribe()
    }

    pub fn summary(&self) -> Summary {
        let s = &self.shared;
        Summary {
            cuts: s.cuts.load(Ordering::Relaxed),
            connections: s.connections.load(Ordering::Relaxed),
            connections_cut: s.connections_cut.load(Ordering::Relaxed),
            upstream_failures: s.upstream_failures.load(Ordering::Relaxed),
        }
    }
}

/// A proxy bound to its port, not yet serving.
pub struct Proxy {
    listener: TcpListener,
    config: ProxyConfig,
    handle: ProxyHandle,
}

impl Proxy {
    pub async fn bind(config: ProxyConfig) -> io::Result<Proxy> {
        let listener = TcpListener::bind(config.listen).await?;
        let (announce, _) = broadcast::channel(1024);
        let random_cuts = AtomicBool::new(!config.paused);
        Ok(Proxy {
            listener,
            config,
            handle: ProxyHandle {
                shared: Arc::new(Shared {
                    open: Mutex::new(HashMap::new()),
                    next_id: AtomicU64::new(0),
                    cuts: AtomicU64::new(0),
                    connections: AtomicU64::new(0),
                    connections_cut: AtomicU64::new(0),
                    upstream_failures: AtomicU64::new(0),
                    announce,
                    random_cuts,
                }),
            },
        })
    }

    /// The address it listens on (the port chosen when the config asked for 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// Forwards connections and cuts them until `shutdown` resolves, then
    /// resets whatever is still open and returns the totals.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Summary {
        let Proxy {
            listener,
            config,
            handle,
        } = self;
        let timer = config.cut_every.map(|every| {
            let handle = handle.clone();
            let mut rng = Rng::new(config.seed);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every.pick(&mut rng)).await;
                    if handle.random_cuts() {
                        handle.cut(CutCause::Timer);
                    }
                }
            })
        });
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => {
                        let (reset, cut) = oneshot::channel();
                        let shared = &handle.shared;
                        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                        lock(&shared.open).insert(id, reset);
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(forward(
                            client,
                            config.upstream,
                            cut,
                            Arc::clone(shared),
                            id,
                        ));
                    }
                    // Out of file descriptors, or a connection reset before it
                    // was accepted: keep accepting after a breath.
                    Err(err) => {
                        tracing::warn!(%err, "the proxy could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        if let Some(timer) = timer {
            timer.abort();
        }
        drop(listener);
        for (_, reset) in lock(&handle.shared.open).drain() {
            let _ = reset.send(());
        }
        handle.summary()
    }
}

/// Closes a socket with a TCP RST instead of a FIN.
fn reset(stream: TcpStream) {
    // If SO_LINGER cannot be set, a plain close still ends the connection.
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut cut: oneshot::Receiver<()>,
    shared: Arc<Shared>,
    id: u64,
) {
    let _ = client.set_nodelay(true);
    let connect = tokio::time::timeout(UPSTREAM_CONNECT, TcpStream::connect(upstream));
    let mut server = tokio::select! {
        _ = &mut cut => {
            reset(client);
            return;
        }
        connected = connect => match connected {
            Ok(Ok(server)) => server,
            _ => {
                shared.upstream_failures.fetch_add(1, Ordering::Relaxed);
                lock(&shared.open).remove(&id);
                reset(client);
                return;
            }
        },
    };
    let _ = server.set_nodelay(true);
    let outcome = tokio::select! {
        _ = &mut cut => None,
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => Some(copied),
    };
    lock(&shared.open).remove(&id);
    match outcome {
        // Both sides closed in turn: nothing to pass on.
        Some(Ok(_)) => {}
        // Cut, or one side was reset: the other side sees a reset too.
        None | Some(Err(_)) => {
            reset(client);
            reset(server);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        time::timeout,
    };

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        timeout(WAIT, future)
            .await
            .unwrap_or_else(|_| panic!("{what} took more than {WAIT:?}"))
    }

    /// An upstream that hands over every connection it accepts, and a proxy in front of it.
    async fn proxy(
        cut_every: Option<CutEvery>,
    ) -> (
        SocketAddr,
        ProxyHandle,
        tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Summary>,
    ) {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let (accepted, accepted_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = upstream.accept().await {
                if accepted.send(stream).is_err() {
                    break;
                }
            }
        });
        let proxy = Proxy::bind(ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: upstream_addr,
            cut_every,
            paused: false,
            seed: 7,
        })
        .await
        .unwrap();
        let addr = proxy.local_addr().unwrap();
        let handle = proxy.handle();
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(proxy.serve(async {
            let _ = stopped.await;
        }));
        (addr, handle, accepted_rx, stop, serving)
    }

    /// Reads until the peer closes or resets; true if it did either within the wait.
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        timeout(WAIT, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    #[tokio::test]
    async fn bytes_go_through_both_ways() {
        let (addr, handle, mut accepted, stop, serving) = proxy(None).await;
        let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
        let mut server = within("upstream accept", accepted.recv()).await.unwrap();
        // More than the socket buffers hold, so that both directions must flow at once.
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut got = vec![0; big.len()];
        let (sent, read) = within("200 kB upstream", async {
            tokio::join!(client.write_all(&big), server.read_exact(&mut got))
        })
        .await;
        sent.unwrap();
        read.unwrap();
        assert_eq!(got, big);
        let mut back = vec![0; big.len()];
        let (sent, read) = within("200 kB back", async {
            tokio::join!(server.write_all(&big), client.read_exact(&mut back))
        })
        .await;
        sent.unwrap();
        read.unwrap();
        assert_eq!(back, big);
        assert_eq!(lock(&handle.shared.open).len(), 1);
        // A polite close goes through as a close, and the proxy forgets the connection.
        drop(client);
        assert!(closed(&mut server).await, "the upstream saw no close");
        drop(server);
        within("the proxy to forget the connection", async {
            while !lock(&handle.shared.open).is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        stop.send(()).unwrap();
        let summary = within("shutdown", serving).await.unwrap();
        assert_eq!(summary.connections, 1);
        assert_eq!(summary.cuts, 0);
    }

    #[tokio::test]
    async fn a_cut_closes_both_sides_and_new_connections_still_work() {
        let (addr, handle, mut accepted, stop, serving) = proxy(None).await;
        let mut cuts = handle.cuts();
        let mut clients = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
            let mut server = within("upstream accept", accepted.recv()).await.unwrap();
            // Traffic first, so that both sides are surely connected through.
            client.write_all(b"hi").await.unwrap();
            let mut hi = [0u8; 2];
            within("upstream read", server.read_exact(&mut hi))
                .await
                .unwrap();
            clients.push(client);
            servers.push(server);
        }
        assert_eq!(handle.cut_now(), 3);
        let cut = within("the cut announcement", cuts.recv()).await.unwrap();
        assert_eq!(
            cut,
            Cut {
                number: 1,
                connections: 3,
                cause: CutCause::OnDemand
            }
        );
        assert_eq!(
            cut.to_string(),
            "proxy: cut 3 connections (cut 1, on demand)"
        );
        for stream in clients.iter_mut().chain(servers.iter_mut()) {
            assert!(
                closed(stream).await,
                "a side of a cut connection stayed open"
            );
        }
        // A write on the client side fails too, sooner or later (reset).
        let mut failed = false;
        for _ in 0..50 {
            if clients[0].write_all(b"after the cut").await.is_err() {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(failed, "writing into a cut connection kept succeeding");
        // The proxy itself carries on.
        let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
        let mut server = within("upstream accept", accepted.recv()).await.unwrap();
        client.write_all(b"again").await.unwrap();
        let mut again = [0u8; 5];
        within("upstream read", server.read_exact(&mut again))
            .await
            .unwrap();
        assert_eq!(&again, b"again");
        stop.send(()).unwrap();
        let summary = within("shutdown", serving).await.unwrap();
        assert_eq!(summary.cuts, 1);
        assert_eq!(summary.connections, 4);
        assert_eq!(summary.connections_cut, 3);
        // Shutting down resets what was still open.
        assert!(closed(&mut client).await);
    }

    #[tokio::test]
    async fn the_timer_cuts_at_random_intervals_in_the_range() {
        let every: CutEvery = "20ms..60ms".parse().unwrap();
        let (addr, handle, mut accepted, stop, serving) = proxy(Some(every)).await;
        let mut cuts = handle.cuts();
        let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
        let _server = within("upstream accept", accepted.recv()).await.unwrap();
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            let cut = within("a timed cut", cuts.recv()).await.unwrap();
            assert_eq!(cut.cause, CutCause::Timer);
        }
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert!(closed(&mut client).await);
        // Paused, the timer cuts nothing; resumed, it cuts again.
        handle.set_random_cuts(false);
        // A cut already under way when the pause came may still be announced.
        while cuts.try_recv().is_ok() {}
        let before = handle.summary().cuts;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            handle.summary().cuts <= before + 1,
            "cuts went on while paused"
        );
        handle.set_random_cuts(true);
        within("a cut after resuming", cuts.recv()).await.unwrap();
        stop.send(()).unwrap();
        let summary = within("shutdown", serving).await.unwrap();
        assert!(summary.cuts >= 3);
        assert_eq!(summary.connections_cut, 1);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_closes_the_client() {
        // A port that was free a moment ago: nothing listens there.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = free.local_addr().unwrap();
        drop(free);
        let proxy = Proxy::bind(ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream,
            cut_every: None,
            paused: false,
            seed: 1,
        })
        .await
        .unwrap();
        let addr = proxy.local_addr().unwrap();
        let handle = proxy.handle();
        let serving = tokio::spawn(proxy.serve(std::future::pending()));
        let mut client = within("connect", TcpStream::connect(addr)).await.unwrap();
        assert!(closed(&mut client).await);
        within("the failure to be counted", async {
            while handle.summary().upstream_failures == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(lock(&handle.shared.open).len(), 0);
        serving.abort();
    }

    #[test]
    fn intervals_parse_as_written_on_the_command_line() {
        assert_eq!("0.5s..8s".parse::<CutEvery>(), "500ms..8s".parse());
        assert_eq!(
            "500ms..8s".parse(),
            Ok(CutEvery {
                min: Duration::from_millis(500),
                max: Duration::from_secs(8)
            })
        );
        assert_eq!(
            "2s".parse(),
            Ok(CutEvery {
                min: Duration::from_secs(2),
                max: Duration::from_secs(2)
            })
        );
        assert!("8s..1s".parse::<CutEvery>().is_err());
        assert!("0s..1s".parse::<CutEvery>().is_err());
        assert!("soon".parse::<CutEvery>().is_err());
        let every: CutEvery = "1s..3s".parse().unwrap();
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let picked = every.pick(&mut rng);
            assert!((every.min..=every.max).contains(&picked), "{picked:?}");
        }
    }
}
