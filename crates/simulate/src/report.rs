//! The result of a simulation: a plain struct that serialises to JSON
//! (`--json`) and renders as text for people.

use std::fmt::{self, Write as _};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::scenario::Scenario;

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    pub setup: Setup,
    pub run: Run,
    pub check: Check,
    pub server: ServerUsage,
    pub ceiling: Ceiling,
    pub ratios: Ratios,
    /// Browser-like clients through gateways, when the scenario has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browsers: Option<Browsers>,
    /// Likes and comments, when the scenario has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interactions: Option<Interactions>,
    /// The broker's Erlang VMs, when the run was given their process ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerUsage>,
}

/// Memory and CPU of the broker's Erlang VMs (summed over the nodes of a
/// cluster), read from `/proc`: only for nodes on this machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerUsage {
    pub nodes: u32,
    pub rss_mb_after_setup: f64,
    pub rss_mb_end: f64,
    /// The greatest resident memory since each node started (VmHWM).
    pub peak_rss_mb: f64,
    /// CPU seconds (user + system) during the measured run.
    pub cpu_seconds: f64,
    /// Cores busy on average during the measured run.
    pub cpu_cores: f64,
}

/// Creating users and subscriptions through the server, before the measured run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    /// Requests sent (logins and subscriptions), all answered.
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    /// Inbox queues and bindings the broker holds after set-up.
    pub queues: u64,
    pub bindings: u64,
}

/// The measured run: uploads, churn, deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// From the first request sent to the last notification received.
    pub seconds: f64,
    pub uploads: u64,
    pub changes: u64,
    /// Uploads and subscription changes answered per second, over the time they took.
    pub requests_per_s: f64,
    /// Notifications received, including catch-up after a user came back.
    pub deliveries: u64,
    /// Of `deliveries`, those read from celebrities' streams rather than
    /// from inboxes.
    #[serde(default)]
    pub streamed_deliveries: u64,
    pub deliveries_per_s: f64,
    /// Deliveries to a user who was offline when the upload was sent; not in `latency_ms`.
    pub catch_up_deliveries: u64,
    /// Upload sent to notification received, for users online at the time.
    pub latency_ms: Latency,
    /// Upload sent to the last subscriber having it, per upload.
    pub fanout_ms: Latency,
    /// Subscription changes the server confirmed per second (churn only).
    pub changes_per_s: Option<f64>,
    /// Requests the server refused or did not answer.
    pub failed_requests: u64,
}

/// The exactly-once check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// (user, upload) pairs that must receive the upload exactly once.
    pub expected: u64,
    /// Expected pairs that received it at least once.
    pub received: u64,
    /// Expected pairs that never received it.
    pub lost: u64,
    /// Copies shown beyond the first, over all pairs checked.
    pub duplicates: u64,
    /// Copies of a notification already received in the same session (a
    /// redelivery after a lost acknowledgement), dropped by id as a `user`
    /// session drops them: not shown, so not duplicates.
    #[serde(default)]
    pub redelivered: u64,
    /// Copies of a notification already received in the same session that
    /// the broker did not flag as redelivered: the same notification
    /// published twice (a publisher that took a late confirm for a lost
    /// one), dropped by id as well.
    #[serde(default)]
    pub republished: u64,
    /// Notifications received by a user who was not subscribed when the upload was sent.
    pub unexpected: u64,
    /// Pairs left out of the check because a subscription change was in flight
    /// during the upload (either outcome is correct).
    pub ambiguous: u64,
    /// No loss, no duplicate, nothing unexpected.
    pub ok: bool,
}

/// The server's own use of the machine, when it runs as a child process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    /// `process` (a child `youtube_server`, measured), `in-process` or `external` (not measured).
    pub mode: String,
    /// Where the server kept its state: `sqlite` or `postgres` (reports
    /// from before PostgreSQL are SQLite's).
    #[serde(default = "sqlite")]
    pub database: String,
    /// How many servers ran, sharing the request queues' partitions
    /// (reports from before several servers are one server's).
    #[serde(default = "one")]
    pub servers: u32,
    /// Whether the broker was a three-node cluster, on quorum queues (else
    /// one broker, on the vhost's default queue type).
    #[serde(default)]
    pub cluster: bool,
    /// Memory and CPU below are the sums over the servers.
    pub rss_mb_after_setup: Option<f64>,
    pub rss_mb_end: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// CPU seconds (user + system) during the measured run.
    pub cpu_seconds: Option<f64>,
    /// Cores busy on average during the measured run.
    pub cpu_cores: Option<f64>,
    /// Each server's own figures, when there are several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub each: Vec<OneServer>,
}

/// One server's memory and CPU, of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneServer {
    pub rss_mb_end: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub cpu_cores: Option<f64>,
}

impl ServerUsage {
    /// `process on sqlite`, `2 × process on postgres, a 3-node cluster (quorum
    /// queues)`: how many servers, how they ran, on what.
    pub fn described(&self) -> String {
        let servers = if self.servers > 1 {
            format!("{} × {}", self.servers, self.mode)
        } else {
            self.mode.clone()
        };
        let broker = if self.cluster {
            ", a 3-node cluster (quorum queues)"
        } else {
            ""
        };
        format!("{servers} on {}{broker}", self.database)
    }
}

fn sqlite() -> String {
    "sqlite".to_owned()
}

fn one() -> u32 {
    1
}

/// The same shape with plain lapin and no application logic, measured in the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ceiling {
    pub seconds: f64,
    pub publishes: u64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub latency_ms: Latency,
    pub fanout_ms: Latency,
    /// Binding changes (bind or unbind) the broker confirmed per second, for churn.
    pub changes_per_s: Option<f64>,
    pub lost: u64,
    pub duplicates: u64,
}

/// Ours / ceiling. Above 1 is better for rates; for latency, 1 is the broker's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ratios {
    pub deliveries_per_s: Option<f64>,
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    pub changes_per_s: Option<f64>,
}

impl Ratios {
    pub fn of(run: &Run, ceiling: &Ceiling) -> Ratios {
        let ratio = |ours: f64, raw: f64| (ours > 0.0 && raw > 0.0).then(|| ours / raw);
        Ratios {
            deliveries_per_s: ratio(run.deliveries_per_s, ceiling.deliveries_per_s),
            latency_p50: ratio(run.latency_ms.p50, ceiling.latency_ms.p50),
            latency_p99: ratio(run.latency_ms.p99, ceiling.latency_ms.p99),
            changes_per_s: run
                .changes_per_s
                .zip(ceiling.changes_per_s)
                .and_then(|(ours, raw)| ratio(ours, raw)),
        }
    }
}

/// The browser-like clients of a run: what they received through the
/// gateways, beside the AMQP receivers of the same run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Browsers {
    pub sse_clients: u32,
    pub ws_clients: u32,
    /// Clients that had their `hello`.
    pub connected: u64,
    /// From the first stream asked for to the last `hello`.
    pub connect_seconds: f64,
    /// Notifications received, all clients together (every copy on the wire).
    pub deliveries: u64,
    /// From the first upload sent to the last notification a client received.
    pub deliveries_per_s: f64,
    /// Upload sent to a client having it (first copies only).
    pub latency_ms: Latency,
    pub sse_latency_ms: Latency,
    pub ws_latency_ms: Latency,
    pub check: BrowserCheck,
    pub ratios: BrowserRatios,
    pub gateways: Vec<GatewayUsage>,
    /// Notifications still in the inboxes of the clients' users once the
    /// gateways stopped: shown but never acknowledged.
    pub left_in_inboxes: Option<u64>,
}

/// The browser clients' check: per client, the uploads its user's inbox
/// must receive (sent after the client connected) against what it received.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrowserCheck {
    pub clients: u64,
    /// Clients that never had their `hello`.
    pub not_connected: u64,
    /// Connected clients that received everything they expected.
    pub complete: u64,
    /// Clients whose stream ended before the run did.
    pub ended_early: u64,
    /// (client, upload) pairs expected, received at least once, never received.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Copies of a notification id beyond the first, on one client's stream.
    pub duplicates: u64,
    /// Uploads a client received that its user was not subscribed to.
    pub unexpected: u64,
    /// (client, upload) pairs left out: a change was in flight during the upload.
    pub ambiguous: u64,
    /// Notifications whose id or title could not be read.
    pub unreadable: u64,
    /// Acknowledgements the gateway refused or did not answer.
    pub ack_failures: u64,
    /// The first clients that lost, repeated or failed anything, and why.
    pub problems: Vec<String>,
    /// Every client connected; no loss, no duplicate, nothing unexpected.
    pub ok: bool,
}

/// Browser / AMQP, in the same run. For latency, 1 is the AMQP path's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BrowserRatios {
    /// Deliveries per second: above 1 when the browser clients are more
    /// than the users (each client gets its user's every notification).
    pub deliveries_per_s: Option<f64>,
    /// Time from the first upload to the last delivery: above 1 means the
    /// browsers finished later.
    pub completion: Option<f64>,
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
    pub latency_max: Option<f64>,
}

/// One gateway's use of the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayUsage {
    pub address: String,
    /// Clients connected to it.
    pub clients: u64,
    /// Resident memory right before the clients connected, and once all had.
    pub rss_mb_before: Option<f64>,
    pub rss_mb_connected: Option<f64>,
    /// (connected − before) / clients.
    pub kb_per_connection: Option<f64>,
    /// Peak resident memory (VmHWM) at the end of the run.
    pub peak_rss_mb: Option<f64>,
    /// CPU seconds while the clients connected, and during the uploads and drain.
    pub cpu_seconds_connecting: Option<f64>,
    pub cpu_seconds_run: Option<f64>,
    /// Cores busy on average during the uploads and drain.
    pub cpu_cores: Option<f64>,
}

/// Likes and comments: sent through the server once every notification had
/// arrived, and the events that reached the creators' inboxes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interactions {
    pub likes: u64,
    pub comments: u64,
    /// Videos liked or commented on.
    pub videos: u64,
    /// Creators whose inboxes were read.
    pub creators: u64,
    /// Requests the server answered (applied, or done with a notice).
    pub answered: u64,
    /// Requests refused or never answered.
    pub failed: u64,
    /// From the first request sent to the last answer or event, whichever came later.
    pub seconds: f64,
    /// Requests answered per second, from the first sent to the last answer.
    pub requests_per_s: f64,
    /// Likes and comments that reached creators (first copies).
    pub events: u64,
    /// From the first request sent to the last event received.
    pub events_per_s: f64,
    /// Messages the creators' inboxes delivered (several events each).
    pub messages: u64,
    /// Request sent to its event in the creator's inbox.
    pub latency_ms: Latency,
    /// New and departed subscribers the creators heard of (churn): not checked.
    pub subscriber_events: u64,
    /// The server's CPU seconds while the likes and comments were sent and
    /// their events drained.
    pub server_cpu_seconds: Option<f64>,
    pub check: InteractionCheck,
    /// The same count of persistent, confirmed messages through one durable
    /// queue to one consumer, with plain lapin.
    pub ceiling: Option<InteractionCeiling>,
    pub ratios: InteractionRatios,
}

/// The interactions' exactly-once check, by event id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InteractionCheck {
    /// Likes and comments the server applied: each must reach its creator once.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Copies of an event beyond the first, in messages the broker
    /// delivered for the first time (the server sent the event again).
    pub duplicates: u64,
    /// Copies in messages the broker delivered again (an acknowledgement
    /// lost with a connection): dropped by id, as a creator's feed does.
    pub redelivered: u64,
    /// Events no applied request of this run made, or at the wrong creator.
    pub unexpected: u64,
    /// Requests never answered, which may or may not have been applied.
    pub not_checked: u64,
    pub ok: bool,
}

/// The ceiling of the interactions' shape: many publishers, one durable
/// queue, one consumer that acknowledges, plain lapin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InteractionCeiling {
    /// Publishing connections, each with one confirming channel.
    pub publishers: u32,
    /// Publishes in flight at most (the interactions' window).
    pub window: u32,
    pub publishes: u64,
    /// Bytes of each message's body, on average.
    pub body_bytes: u64,
    pub seconds: f64,
    /// Publishes the broker confirmed per second.
    pub confirmed_per_s: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Publish to delivery.
    pub latency_ms: Latency,
    pub lost: u64,
    pub duplicates: u64,
}

/// Ours / ceiling for the interactions. Above 1 is better for rates; for
/// latency, 1 is the broker's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InteractionRatios {
    /// Requests answered/s against publishes confirmed/s.
    pub requests_per_s: Option<f64>,
    /// Events delivered/s against messages delivered/s.
    pub events_per_s: Option<f64>,
    pub latency_p50: Option<f64>,
    pub latency_p99: Option<f64>,
}

impl InteractionRatios {
    pub fn of(ours: &Interactions, ceiling: &InteractionCeiling) -> InteractionRatios {
        let ratio = |ours: f64, raw: f64| (ours > 0.0 && raw > 0.0).then(|| ours / raw);
        InteractionRatios {
            requests_per_s: ratio(ours.requests_per_s, ceiling.confirmed_per_s),
            events_per_s: ratio(ours.events_per_s, ceiling.deliveries_per_s),
            latency_p50: ratio(ours.latency_ms.p50, ceiling.latency_ms.p50),
            latency_p99: ratio(ours.latency_ms.p99, ceiling.latency_ms.p99),
        }
    }
}

/// A latency distribution, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Summarises a histogram recorded in microseconds.
    pub fn from_micros(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Latency {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return write!(f, "none measured");
        }
        write!(
            f,
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} samples)",
            short(self.p50),
            short(self.p90),
            short(self.p99),
            short(self.max),
            thousands(self.count)
        )
    }
}

/// A number with three significant figures, at most.
pub fn short(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// An integer with thousands separators: 12,345.
/// The head of a check line: "OK: 1,000 expected, 1,000 received, 0 lost,
/// 0 duplicates, 0 unexpected".
fn tally(
    ok: bool,
    expected: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    unexpected: u64,
) -> String {
    format!(
        "{}: {} expected, {} received, {} lost, {} duplicates, {} unexpected",
        if ok { "OK" } else { "FAILED" },
        thousands(expected),
        thousands(received),
        thousands(lost),
        thousands(duplicates),
        thousands(unexpected),
    )
}

pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn rate(value: f64) -> String {
    thousands(value.round() as u64)
}

fn ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}"))
}

fn mb(value: Option<f64>) -> String {
    value.map_or_else(|| "not measured".to_owned(), |v| format!("{v:.1} MB"))
}

impl fmt::Display for Report {
    /// The report as people read it at the end of a run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scenario;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}: {} users, {} YouTubers, {} subscriptions ({}), {} uploads, {} changes, {:.0}% offline, seed {}",
            s.name,
            thousands(u64::from(s.users)),
            thousands(u64::from(s.youtubers)),
            thousands(s.subscriptions),
            s.spread,
            thousands(u64::from(s.uploads)),
            thousands(u64::from(s.churn)),
            s.offline_share * 100.0,
            s.seed
        );
        if s.celebrities_from > 0 {
            let _ = writeln!(
                out,
                "celebrities from {} subscribers: their uploads go once to a stream each subscriber reads",
                thousands(u64::from(s.celebrities_from))
            );
        }
        let u = &self.setup;
        let _ = writeln!(
            out,
            "set-up      {} requests in {:.1} s ({} requests/s); {} inboxes, {} bindings (not measured below)",
            thousands(u.requests),
            u.seconds,
            rate(u.requests_per_s),
            thousands(u.queues),
            thousands(u.bindings)
        );
        let r = &self.run;
        let _ = writeln!(
            out,
            "run         {:.2} s: {} uploads and {} changes, {} requests/s",
            r.seconds,
            thousands(r.uploads),
            thousands(r.changes),
            rate(r.requests_per_s)
        );
        let _ = writeln!(
            out,
            "deliveries  {} ({} catch-up after coming back{}), {} notifications/s",
            thousands(r.deliveries),
            thousands(r.catch_up_deliveries),
            if r.streamed_deliveries > 0 {
                format!(
                    "; {} from celebrities' streams",
                    thousands(r.streamed_deliveries)
                )
            } else {
                String::new()
            },
            rate(r.deliveries_per_s)
        );
        let _ = writeln!(out, "latency     {}", r.latency_ms);
        let _ = writeln!(
            out,
            "fan-out     {} (upload to its last subscriber)",
            r.fanout_ms
        );
        if let Some(changes) = r.changes_per_s {
            let _ = writeln!(out, "churn       {} confirmed changes/s", rate(changes));
        }
        if r.failed_requests > 0 {
            let _ = writeln!(
                out,
                "failed      {} requests refused or unanswered",
                thousands(r.failed_requests)
            );
        }
        let c = &self.check;
        let _ = writeln!(
            out,
            "check       {}{}{}",
            tally(
                c.ok,
                c.expected,
                c.received,
                c.lost,
                c.duplicates,
                c.unexpected
            ),
            if c.redelivered > 0 {
                format!(
                    "; {} redelivered copies dropped by id, as a user session does",
                    thousands(c.redelivered)
                )
            } else {
                String::new()
            } + &if c.republished > 0 {
                format!(
                    "; {} copies published twice dropped by id",
                    thousands(c.republished)
                )
            } else {
                String::new()
            },
            if c.ambiguous > 0 {
                format!(
                    "; {} pairs not checked (a change was in flight during the upload)",
                    thousands(c.ambiguous)
                )
            } else {
                String::new()
            }
        );
        let v = &self.server;
        let _ = writeln!(
            out,
            "server      {}: memory {}{} after set-up, {} at the end, peak {}; CPU {}",
            v.described(),
            if v.servers > 1 { "(sum) " } else { "" },
            mb(v.rss_mb_after_setup),
            mb(v.rss_mb_end),
            mb(v.peak_rss_mb),
            match (v.cpu_seconds, v.cpu_cores) {
                (Some(seconds), Some(cores)) => format!(
                    "{seconds:.2} s during the run ({:.0}% of one core)",
                    cores * 100.0
                ),
                _ => "not measured".to_owned(),
            }
        );
        for (i, one) in v.each.iter().enumerate() {
            let _ = writeln!(
                out,
                "  server {i}  memory {} at the end, peak {}; CPU {}",
                mb(one.rss_mb_end),
                mb(one.peak_rss_mb),
                match (one.cpu_seconds, one.cpu_cores) {
                    (Some(seconds), Some(cores)) => format!(
                        "{seconds:.2} s during the run ({:.0}% of one core)",
                        cores * 100.0
                    ),
                    _ => "not measured".to_owned(),
                }
            );
        }
        if let Some(b) = &self.broker {
            let _ = writeln!(
                out,
                "broker      {}: memory {} after set-up, {} at the end, peak {}; CPU {:.2} s during the run ({:.0}% of one core)",
                if b.nodes > 1 {
                    format!("{} nodes (sum)", b.nodes)
                } else {
                    "RabbitMQ".to_owned()
                },
                mb(Some(b.rss_mb_after_setup)),
                mb(Some(b.rss_mb_end)),
                mb(Some(b.peak_rss_mb)),
                b.cpu_seconds,
                b.cpu_cores * 100.0
            );
        }
        let g = &self.ceiling;
        let _ = writeln!(
            out,
            "ceiling     plain lapin, same queues and bindings: {} deliveries/s, latency {}{}",
            rate(g.deliveries_per_s),
            g.latency_ms,
            g.changes_per_s
                .map(|c| format!(", {} binding changes/s", rate(c)))
                .unwrap_or_default()
        );
        let q = &self.ratios;
        let _ = writeln!(
            out,
            "ours/ceiling deliveries/s {}, latency p50 {}, p99 {}, changes/s {}",
            ratio(q.deliveries_per_s),
            ratio(q.latency_p50),
            ratio(q.latency_p99),
            ratio(q.changes_per_s)
        );
        if let Some(b) = &self.browsers {
            b.render(&mut out);
        }
        if let Some(i) = &self.interactions {
            i.render(&mut out);
        }
        f.write_str(&out)
    }
}

impl Interactions {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "interactions {} likes and {} comments on {} videos: {} answered, {} requests/s{}",
            thousands(self.likes),
            thousands(self.comments),
            thousands(self.videos),
            thousands(self.answered),
            rate(self.requests_per_s),
            if self.failed > 0 {
                format!("; {} refused or unanswered", thousands(self.failed))
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "  creators  {} events in {} messages to {} creators, {} events/s{}",
            thousands(self.events),
            thousands(self.messages),
            thousands(self.creators),
            rate(self.events_per_s),
            if self.subscriber_events > 0 {
                format!(
                    "; and {} subscribers come and gone",
                    thousands(self.subscriber_events)
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "  latency   {} (request sent to event in the creator's inbox)",
            self.latency_ms
        );
        let c = &self.check;
        let _ = writeln!(
            out,
            "  check     {}{}{}",
            tally(
                c.ok,
                c.expected,
                c.received,
                c.lost,
                c.duplicates,
                c.unexpected
            ),
            if c.redelivered > 0 {
                format!(
                    "; {} redelivered copies dropped by id, as a creator's feed does",
                    thousands(c.redelivered)
                )
            } else {
                String::new()
            },
            if c.not_checked > 0 {
                format!("; {} unanswered not checked", thousands(c.not_checked))
            } else {
                String::new()
            }
        );
        if let Some(cpu) = self.server_cpu_seconds {
            let _ = writeln!(out, "  server    {cpu:.2} s of CPU");
        }
        if let Some(g) = &self.ceiling {
            let _ = writeln!(
                out,
                "  ceiling   plain lapin, {} publishers (window {}) → one durable queue → one consumer, {} messages of {} bytes: {} confirmed/s, {} deliveries/s, latency {}{}",
                g.publishers,
                g.window,
                thousands(g.publishes),
                g.body_bytes,
                rate(g.confirmed_per_s),
                rate(g.deliveries_per_s),
                g.latency_ms,
                if g.lost > 0 || g.duplicates > 0 {
                    format!("; {} lost, {} duplicates", g.lost, g.duplicates)
                } else {
                    String::new()
                }
            );
        }
        let q = &self.ratios;
        let _ = writeln!(
            out,
            "  ours/ceiling requests/s {}, events/s {}, latency p50 {}, p99 {}",
            ratio(q.requests_per_s),
            ratio(q.events_per_s),
            ratio(q.latency_p50),
            ratio(q.latency_p99)
        );
    }
}

impl Browsers {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "browsers    {} SSE + {} WebSocket clients on {} gateways, {} connected in {:.1} s",
            thousands(u64::from(self.sse_clients)),
            thousands(u64::from(self.ws_clients)),
            self.gateways.len(),
            thousands(self.connected),
            self.connect_seconds
        );
        let _ = writeln!(
            out,
            "  deliveries {}, {} notifications/s",
            thousands(self.deliveries),
            rate(self.deliveries_per_s)
        );
        let _ = writeln!(out, "  latency    {}", self.latency_ms);
        let _ = writeln!(out, "    SSE      {}", self.sse_latency_ms);
        let _ = writeln!(out, "    WebSocket {}", self.ws_latency_ms);
        let c = &self.check;
        let _ = writeln!(
            out,
            "  check      {}; {} of {} clients complete{}{}{}",
            tally(
                c.ok,
                c.expected,
                c.received,
                c.lost,
                c.duplicates,
                c.unexpected
            ),
            thousands(c.complete),
            thousands(c.clients),
            if c.not_connected > 0 {
                format!(", {} never connected", thousands(c.not_connected))
            } else {
                String::new()
            },
            if c.ended_early > 0 {
                format!(", {} streams ended early", thousands(c.ended_early))
            } else {
                String::new()
            },
            if c.ack_failures > 0 {
                format!(", {} acknowledgements failed", thousands(c.ack_failures))
            } else {
                String::new()
            }
        );
        for problem in &c.problems {
            let _ = writeln!(out, "    {problem}");
        }
        if let Some(left) = self.left_in_inboxes {
            let _ = writeln!(
                out,
                "  inboxes    {} notifications left unacknowledged",
                thousands(left)
            );
        }
        let q = &self.ratios;
        let _ = writeln!(
            out,
            "  browser/AMQP deliveries/s {}, completion time {}, latency p50 {}, p99 {}, max {}",
            ratio(q.deliveries_per_s),
            ratio(q.completion),
            ratio(q.latency_p50),
            ratio(q.latency_p99),
            ratio(q.latency_max)
        );
        for g in &self.gateways {
            let _ = writeln!(
                out,
                "  gateway {} {} clients: memory {} before, {} connected ({} per connection), peak {}; CPU {} connecting, {} during the run{}",
                g.address,
                thousands(g.clients),
                mb(g.rss_mb_before),
                mb(g.rss_mb_connected),
                g.kb_per_connection
                    .map_or_else(|| "n/a".to_owned(), |kb| format!("{} KB", short(kb))),
                mb(g.peak_rss_mb),
                g.cpu_seconds_connecting
                    .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2} s")),
                g.cpu_seconds_run
                    .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.2} s")),
                g.cpu_cores
                    .map(|cores| format!(" ({:.0}% of one core)", cores * 100.0))
                    .unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report with fixed figures, for rendering tests.
    pub(crate) fn sample() -> Report {
        let latency = Latency {
            count: 1200,
            p50: 0.84,
            p90: 1.2,
            p99: 1.9,
            max: 3.25,
        };
        let run = Run {
            seconds: 2.5,
            uploads: 300,
            changes: 0,
            requests_per_s: 120.0,
            deliveries: 1234,
            streamed_deliveries: 0,
            deliveries_per_s: 493.6,
            catch_up_deliveries: 34,
            latency_ms: latency.clone(),
            fanout_ms: latency.clone(),
            changes_per_s: None,
            failed_requests: 0,
        };
        let ceiling = Ceiling {
            seconds: 1.0,
            publishes: 300,
            deliveries: 1200,
            deliveries_per_s: 1000.0,
            latency_ms: Latency {
                p50: 0.21,
                p99: 0.38,
                ..latency.clone()
            },
            fanout_ms: latency,
            changes_per_s: None,
            lost: 0,
            duplicates: 0,
        };
        Report {
            scenario: Scenario::preset("classroom").unwrap(),
            started_at: "2026-01-01T00:00:00Z".to_owned(),
            setup: Setup {
                requests: 100,
                seconds: 0.5,
                requests_per_s: 200.0,
                queues: 50,
                bindings: 100,
            },
            ratios: Ratios::of(&run, &ceiling),
            run,
            check: Check {
                expected: 1234,
                received: 1234,
                lost: 0,
                duplicates: 0,
                unexpected: 0,
                redelivered: 0,
                republished: 0,
                ambiguous: 0,
                ok: true,
            },
            server: ServerUsage {
                mode: "process".to_owned(),
                database: "sqlite".to_owned(),
                servers: 1,
                cluster: false,
                each: Vec::new(),
                rss_mb_after_setup: Some(12.5),
                rss_mb_end: Some(13.0),
                peak_rss_mb: Some(13.2),
                cpu_seconds: Some(0.8),
                cpu_cores: Some(0.32),
            },
            ceiling,
            browsers: None,
            interactions: None,
            broker: None,
        }
    }

    #[test]
    fn the_text_report_names_every_figure() {
        let text = sample().to_string();
        for expected in [
            "scenario classroom: 50 users, 5 YouTubers, 100 subscriptions (uniform), 300 uploads, 0 changes, 20% offline, seed 1",
            "deliveries  1,234 (34 catch-up after coming back), 494 notifications/s",
            "latency     p50 0.840 ms, p90 1.20 ms, p99 1.90 ms, max 3.25 ms (1,200 samples)",
            "check       OK: 1,234 expected, 1,234 received, 0 lost, 0 duplicates, 0 unexpected",
            "server      process on sqlite: memory 12.5 MB after set-up, 13.0 MB at the end, peak 13.2 MB; CPU 0.80 s during the run (32% of one core)",
            "ours/ceiling deliveries/s 0.49, latency p50 4.00, p99 5.00, changes/s n/a",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn streamed_deliveries_and_the_broker_are_reported_when_there_are_any() {
        let mut report = sample();
        report.scenario.celebrities_from = 1_000;
        report.run.streamed_deliveries = 1_000;
        report.broker = Some(BrokerUsage {
            nodes: 1,
            rss_mb_after_setup: 150.0,
            rss_mb_end: 180.5,
            peak_rss_mb: 200.25,
            cpu_seconds: 1.5,
            cpu_cores: 0.6,
        });
        let text = report.to_string();
        for expected in [
            "celebrities from 1,000 subscribers: their uploads go once to a stream each subscriber reads",
            "deliveries  1,234 (34 catch-up after coming back; 1,000 from celebrities' streams), 494 notifications/s",
            "broker      RabbitMQ: memory 150.0 MB after set-up, 180.5 MB at the end, peak 200.2 MB; CPU 1.50 s during the run (60% of one core)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let plain = sample().to_string();
        assert!(
            !plain.contains("celebrities") && !plain.contains("broker "),
            "{plain}"
        );
        let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back.broker, report.broker);
        assert_eq!(back.run.streamed_deliveries, 1_000);
    }

    #[test]
    fn the_json_report_reads_back_the_same() {
        let report = sample();
        let json = serde_json::to_string_pretty(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        // Floats may differ in the last bit; everything else reads back exactly.
        assert_eq!(back.scenario, report.scenario);
        assert_eq!(back.check, report.check);
        assert_eq!(back.server.mode, report.server.mode);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["check"]["lost"], 0);
        assert_eq!(value["run"]["latency_ms"]["p99"], 1.9);
        assert!(value["ratios"]["deliveries_per_s"].as_f64().unwrap() < 1.0);
    }

    #[test]
    fn browser_figures_are_rendered_and_read_back() {
        let mut report = sample();
        report.browsers = Some(Browsers {
            sse_clients: 1000,
            ws_clients: 1000,
            connected: 2000,
            connect_seconds: 12.5,
            deliveries: 60_000,
            deliveries_per_s: 2400.0,
            latency_ms: Latency {
                count: 60_000,
                p50: 4.2,
                p90: 8.0,
                p99: 20.0,
                max: 61.0,
            },
            sse_latency_ms: Latency::default(),
            ws_latency_ms: Latency::default(),
            check: BrowserCheck {
                clients: 2000,
                complete: 2000,
                expected: 60_000,
                received: 60_000,
                ok: true,
                ..BrowserCheck::default()
            },
            ratios: BrowserRatios {
                deliveries_per_s: Some(9.9),
                completion: Some(1.01),
                latency_p50: Some(5.0),
                latency_p99: None,
                latency_max: None,
            },
            gateways: vec![GatewayUsage {
                address: "127.0.0.1:4000".to_owned(),
                clients: 1000,
                rss_mb_before: Some(10.0),
                rss_mb_connected: Some(60.0),
                kb_per_connection: Some(51.2),
                peak_rss_mb: Some(70.0),
                cpu_seconds_connecting: Some(1.5),
                cpu_seconds_run: Some(6.0),
                cpu_cores: Some(0.25),
            }],
            left_in_inboxes: Some(0),
        });
        let text = report.to_string();
        for expected in [
            "browsers    1,000 SSE + 1,000 WebSocket clients on 1 gateways, 2,000 connected in 12.5 s",
            "  check      OK: 60,000 expected, 60,000 received, 0 lost, 0 duplicates, 0 unexpected; 2,000 of 2,000 clients complete",
            "  browser/AMQP deliveries/s 9.90, completion time 1.01, latency p50 5.00, p99 n/a, max n/a",
            "  gateway 127.0.0.1:4000 1,000 clients: memory 10.0 MB before, 60.0 MB connected (51.2 KB per connection), peak 70.0 MB; CPU 1.50 s connecting, 6.00 s during the run (25% of one core)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let json = serde_json::to_string(&report).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back.browsers.unwrap().check, report.browsers.unwrap().check);
        // A report without browsers has no such key, and reads back as none.
        let plain = serde_json::to_value(sample()).unwrap();
        assert!(plain.get("browsers").is_none());
    }

    #[test]
    fn interaction_figures_are_rendered_and_read_back() {
        let latency = |p50: f64, p99: f64| Latency {
            count: 12_000,
            p50,
            p90: p99,
            p99,
            max: p99 * 2.0,
        };
        let mut interactions = Interactions {
            likes: 10_000,
            comments: 2_000,
            videos: 1,
            creators: 1,
            answered: 12_000,
            failed: 0,
            seconds: 5.0,
            requests_per_s: 2_400.0,
            events: 12_000,
            events_per_s: 2_390.0,
            messages: 90,
            latency_ms: latency(120.0, 300.0),
            subscriber_events: 0,
            server_cpu_seconds: Some(4.5),
            check: InteractionCheck {
                expected: 12_000,
                received: 12_000,
                ok: true,
                ..InteractionCheck::default()
            },
            ceiling: Some(InteractionCeiling {
                publishers: 16,
                window: 512,
                publishes: 12_000,
                body_bytes: 230,
                seconds: 1.0,
                confirmed_per_s: 12_000.0,
                deliveries: 12_000,
                deliveries_per_s: 11_950.0,
                latency_ms: latency(30.0, 60.0),
                lost: 0,
                duplicates: 0,
            }),
            ratios: InteractionRatios::default(),
        };
        interactions.ratios =
            InteractionRatios::of(&interactions, interactions.ceiling.as_ref().unwrap());
        let mut report = sample();
        report.interactions = Some(interactions);
        let text = report.to_string();
        for expected in [
            "interactions 10,000 likes and 2,000 comments on 1 videos: 12,000 answered, 2,400 requests/s",
            "  creators  12,000 events in 90 messages to 1 creators, 2,390 events/s",
            "  latency   p50 120 ms, p90 300 ms, p99 300 ms, max 600 ms (12,000 samples)",
            "  check     OK: 12,000 expected, 12,000 received, 0 lost, 0 duplicates, 0 unexpected",
            "  ceiling   plain lapin, 16 publishers (window 512) → one durable queue → one consumer, 12,000 messages of 230 bytes: 12,000 confirmed/s, 11,950 deliveries/s",
            "  ours/ceiling requests/s 0.20, events/s 0.20, latency p50 4.00, p99 5.00",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["interactions"]["check"]["lost"], 0);
        assert_eq!(json["interactions"]["ceiling"]["publishes"], 12_000);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(
            back.interactions.unwrap().check,
            report.interactions.unwrap().check
        );
        // A report without interactions has no such key, and reads back as none.
        let plain = serde_json::to_value(sample()).unwrap();
        assert!(plain.get("interactions").is_none());
        let back: Report = serde_json::from_value(plain).unwrap();
        assert!(back.interactions.is_none());
    }

    #[test]
    fn numbers_read_easily() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(short(0.1234), "0.123");
        assert_eq!(short(12.345), "12.3");
        assert_eq!(short(1234.6), "1235");
    }

    #[test]
    fn latency_comes_from_a_histogram_in_microseconds() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for micros in 1..=1000 {
            histogram.record(micros).unwrap();
        }
        let latency = Latency::from_micros(&histogram);
        assert_eq!(latency.count, 1000);
        assert!((latency.p50 - 0.5).abs() < 0.01, "{latency:?}");
        assert!((latency.p99 - 0.99).abs() < 0.01, "{latency:?}");
        assert!((latency.max - 1.0).abs() < 0.01, "{latency:?}");
        assert_eq!(Latency::from_micros(&Histogram::new(3).unwrap()).count, 0);
    }
}
