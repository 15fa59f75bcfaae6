//! What a simulation does: the [`Scenario`] (from a preset, a JSON file and
//! flags, in that order), and the [`Plan`] it expands into with its seed —
//! who subscribes to whom, who uploads when, which changes churn, who goes
//! offline — so that a seed always gives the same run. Which videos users
//! like and comment on depends on what they received, so it is drawn after
//! the uploads ([`Scenario::interactions`]), from the same seed.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

use super::random::{Picker, Rng};

/// How subscriptions are spread over YouTubers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Spread {
    /// Every YouTuber is as likely as any other.
    Uniform,
    /// YouTuber k (from 0) is chosen with weight 1 / (k + 1)^exponent: a few have most subscribers.
    Zipf { exponent: f64 },
}

impl std::str::FromStr for Spread {
    type Err = String;

    /// `uniform`, `zipf` (exponent 1) or `zipf:1.2`.
    fn from_str(text: &str) -> Result<Spread, String> {
        match text.split_once(':') {
            None if text == "uniform" => Ok(Spread::Uniform),
            None if text == "zipf" => Ok(Spread::Zipf { exponent: 1.0 }),
            Some(("zipf", exponent)) => match exponent.parse::<f64>() {
                Ok(exponent) if exponent.is_finite() && exponent > 0.0 => {
                    Ok(Spread::Zipf { exponent })
                }
                _ => Err(format!(
                    "invalid Zipf exponent {exponent:?}: use a positive number, as in zipf:1.2"
                )),
            },
            _ => Err(format!(
                "unknown spread {text:?}: use uniform, zipf or zipf:<exponent>"
            )),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Spread::Uniform => write!(f, "uniform"),
            Spread::Zipf { exponent } => write!(f, "zipf:{exponent}"),
        }
    }
}

/// How WebSocket clients acknowledge what they received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WsAcks {
    /// An `ack` message on the WebSocket (the protocol's own way).
    #[default]
    Socket,
    /// `POST /api/users/<name>/ack` naming the connection, as SSE clients do.
    Http,
}

impl std::str::FromStr for WsAcks {
    type Err = String;

    fn from_str(text: &str) -> Result<WsAcks, String> {
        match text {
            "socket" => Ok(WsAcks::Socket),
            "http" => Ok(WsAcks::Http),
            _ => Err(format!(
                "unknown way to acknowledge {text:?}: use socket or http"
            )),
        }
    }
}

/// One simulated load. Every field has a default, so a scenario file names
/// only what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A label for reports.
    pub name: String,
    /// Simulated users, each with a durable inbox.
    pub users: u32,
    /// Simulated YouTubers.
    pub youtubers: u32,
    /// Subscriptions made before the uploads start, spread over users as evenly as possible.
    pub subscriptions: u64,
    /// How those subscriptions are spread over YouTubers.
    pub spread: Spread,
    /// Uploads during the run, by YouTubers picked uniformly.
    pub uploads: u32,
    /// Uploads per second; 0 sends them as fast as `upload_window` allows.
    pub upload_rate: f64,
    /// Uploads in flight (sent, not yet answered) at most; 1 is one at a time.
    pub upload_window: u32,
    /// Share of users (0 to 1) that close their inbox during the run and open it again later.
    pub offline_share: f64,
    /// Subscription changes (subscribe or unsubscribe) sent during the run.
    pub churn: u32,
    /// How many users (the first ones) make those changes; 0 means all.
    pub churn_users: u32,
    /// Subscription changes in flight at most.
    pub churn_window: u32,
    /// Subscription changes per second; 0 sends them as fast as
    /// `churn_window` allows.
    pub churn_rate: f64,
    /// Requests in flight at most while subscriptions are set up.
    pub setup_window: u32,
    /// Connections that send requests.
    pub clients: u32,
    /// Channels (spread over a few connections) that receive notifications.
    pub receivers: u32,
    /// How long to wait for the last notifications once every request is answered.
    #[serde(with = "humantime_serde_compat")]
    pub drain_timeout: Duration,
    /// Seed of every random choice: the same seed, the same run.
    pub seed: u64,
    /// Browser-like clients reading Server-Sent Events through `gateway`
    /// processes; user i gets clients i, i + users, …
    pub sse_clients: u32,
    /// Browser-like clients on a WebSocket through the gateways (after the
    /// SSE clients in that order).
    pub ws_clients: u32,
    /// `gateway` processes the browser clients are spread over; 0 means 2
    /// when there are browser clients.
    pub gateways: u32,
    /// How WebSocket clients acknowledge: on the socket, or over HTTP.
    pub ws_acks: WsAcks,
    /// Share (0 to 1) of the notifications a user received whose video it
    /// likes, once every notification has arrived.
    pub like_share: f64,
    /// Share (0 to 1) of them it comments on, once each.
    pub comment_share: f64,
    /// Which of the videos it received a user likes or comments on, by
    /// their place in its feed, newest first: Zipf puts most on the newest.
    pub interaction_spread: Spread,
    /// Likes and comments in flight (sent, not yet answered) at most.
    pub interaction_window: u32,
    /// Tasks that send uploads at once, each a share of the YouTubers in
    /// order, on clients of their own where there are enough. One sender
    /// waits for each upload's publish to be confirmed before the next,
    /// which caps uploads at about one per broker round trip however wide
    /// the window; more need no rate and no offline users.
    pub upload_senders: u32,
    /// The servers' `--celebrities-from`: a YouTuber with at least this many
    /// subscribers has its uploads appended once to a stream that each
    /// subscriber's session reads, instead of copied into every inbox. 0:
    /// every upload is copied (the servers' default).
    pub celebrities_from: u32,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "custom".to_owned(),
            users: 20,
            youtubers: 3,
            subscriptions: 40,
            spread: Spread::Uniform,
            uploads: 20,
            upload_rate: 0.0,
            upload_window: 1,
            offline_share: 0.0,
            churn: 0,
            churn_users: 0,
            churn_window: 64,
            churn_rate: 0.0,
            setup_window: 256,
            clients: 4,
            receivers: 8,
            drain_timeout: Duration::from_secs(30),
            seed: 1,
            sse_clients: 0,
            ws_clients: 0,
            gateways: 0,
            ws_acks: WsAcks::Socket,
            like_share: 0.0,
            comment_share: 0.0,
            interaction_spread: Spread::Zipf { exponent: 1.0 },
            interaction_window: 256,
            upload_senders: 1,
            celebrities_from: 0,
        }
    }
}

/// The benchmark set, by name.
pub const PRESETS: [&str; 6] = [
    "classroom",
    "celebrity",
    "many-to-many",
    "churn",
    "scale",
    "viral",
];

impl Scenario {
    /// One of the benchmark scenarios ([`PRESETS`]).
    pub fn preset(name: &str) -> Option<Scenario> {
        let base = Scenario {
            name: name.to_owned(),
            ..Scenario::default()
        };
        Some(match name {
            "classroom" => Scenario {
                users: 50,
                youtubers: 5,
                subscriptions: 100,
                uploads: 300,
                upload_window: 1,
                offline_share: 0.2,
                ..base
            },
            "celebrity" => Scenario {
                users: 10_000,
                youtubers: 1,
                subscriptions: 10_000,
                uploads: 20,
                upload_window: 20,
                ..base
            },
            "many-to-many" => Scenario {
                users: 10_000,
                youtubers: 1_000,
                subscriptions: 100_000,
                spread: Spread::Zipf { exponent: 1.0 },
                uploads: 3_000,
                upload_window: 64,
                ..base
            },
            "churn" => Scenario {
                users: 1_000,
                youtubers: 50,
                subscriptions: 2_000,
                uploads: 200,
                upload_rate: 20.0,
                upload_window: 4,
                offline_share: 0.1,
                churn: 50_000,
                churn_window: 256,
                // Each client waits for the broker's confirm of one request
                // before it sends the next; as many clients as the ceiling
                // has channels, so that sending is not the limit.
                clients: 32,
                ..base
            },
            "scale" => Scenario {
                users: 10_000,
                youtubers: 1_000,
                subscriptions: 100_000,
                spread: Spread::Zipf { exponent: 1.0 },
                uploads: 100,
                upload_window: 8,
                ..base
            },
            // One video that every subscriber likes, a fifth comment on:
            // 12,000 requests for one creator's inbox, sent as fast as the
            // window lets them, from the same 16 connections.
            "viral" => Scenario {
                users: 10_000,
                youtubers: 1,
                subscriptions: 10_000,
                uploads: 1,
                like_share: 1.0,
                comment_share: 0.2,
                interaction_window: 512,
                clients: 16,
                drain_timeout: Duration::from_secs(120),
                ..base
            },
            _ => return None,
        })
    }

    /// Reads a scenario from a JSON file; missing fields keep their defaults.
    pub fn from_json(text: &str) -> Result<Scenario, String> {
        serde_json::from_str(text).map_err(|e| format!("invalid scenario: {e}"))
    }

    /// Sets the number of uploads from a rate and a duration.
    pub fn set_duration(&mut self, duration: Duration) -> Result<(), String> {
        if self.upload_rate <= 0.0 {
            return Err("a duration needs an upload rate (--upload-rate)".to_owned());
        }
        self.uploads = (self.upload_rate * duration.as_secs_f64()).round() as u32;
        Ok(())
    }

    /// Checks that the numbers make a runnable scenario.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |what: &str| Err(format!("scenario {:?}: {what}", self.name));
        if self.users == 0 || self.youtubers == 0 {
            return fail("needs at least one user and one YouTuber");
        }
        if self.users > 999_999 || self.youtubers > 99_999 {
            return fail("at most 999,999 users and 99,999 YouTubers");
        }
        if self.subscriptions > u64::from(self.users) * u64::from(self.youtubers) {
            return fail("more subscriptions than user-YouTuber pairs");
        }
        if !(0.0..=1.0).contains(&self.offline_share) {
            return fail("offline_share must be between 0 and 1");
        }
        if self.upload_rate < 0.0 || !self.upload_rate.is_finite() {
            return fail("upload_rate must be 0 (as fast as possible) or positive");
        }
        if self.churn_rate < 0.0 || !self.churn_rate.is_finite() {
            return fail("churn_rate must be 0 (as fast as possible) or positive");
        }
        if self.upload_window == 0
            || self.churn_window == 0
            || self.setup_window == 0
            || self.clients == 0
            || self.receivers == 0
        {
            return fail("windows, clients and receivers must be at least 1");
        }
        if self.churn_users > self.users {
            return fail("churn_users exceeds users");
        }
        if u64::from(self.sse_clients) + u64::from(self.ws_clients) > 1_000_000 {
            return fail("at most 1,000,000 browser clients");
        }
        if self.gateways > 64 {
            return fail("at most 64 gateways");
        }
        if !(0.0..=1.0).contains(&self.like_share) || !(0.0..=1.0).contains(&self.comment_share) {
            return fail("like_share and comment_share must be between 0 and 1");
        }
        if self.interaction_window == 0 {
            return fail("interaction_window must be at least 1");
        }
        if self.upload_senders == 0 {
            return fail("upload_senders must be at least 1");
        }
        if self.upload_senders > 1 && (self.upload_rate > 0.0 || self.offline_share > 0.0) {
            return fail("several upload_senders need upload_rate 0 and offline_share 0");
        }
        if self.celebrities_from > 0 && self.browser_clients() > 0 {
            return fail(
                "the readers of browser users' notifications do not follow streams: run \
                 celebrities_from without sse_clients and ws_clients",
            );
        }
        Ok(())
    }

    /// Whether users like or comment on what they receive.
    pub fn has_interactions(&self) -> bool {
        self.like_share > 0.0 || self.comment_share > 0.0
    }

    /// The likes and comments of a run, drawn with the seed from what each
    /// user received: `received` holds (user, upload) pairs.
    ///
    /// Each received video is liked with probability `like_share` and
    /// commented on with probability `comment_share`, so that the shares
    /// hold on average; how many a user likes is drawn that way, and which
    /// ones is drawn by `interaction_spread` over the user's feed, newest
    /// first, without taking a video twice. A feed shows the newest first,
    /// and attention falls off with the place in it, so with Zipf a user
    /// mostly reacts to what it received last; across users, a video that
    /// reached more of them draws more. Each user likes a video at most
    /// once (a second like changes nothing and tells the creator nothing)
    /// and comments on it at most once. The order is shuffled, so that a
    /// burst mixes users, videos and kinds.
    pub fn interactions(&self, received: &[(u32, u32)]) -> Vec<Interaction> {
        let mut by_user: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut pairs = received.to_vec();
        pairs.sort_unstable();
        pairs.dedup();
        for (user, seq) in pairs {
            match by_user.last_mut() {
                Some((last, seqs)) if *last == user => seqs.push(seq),
                _ => by_user.push((user, vec![seq])),
            }
        }
        // Its own stream of the seed: the plan's draws stay as they were.
        let mut rng = Rng::new(self.seed ^ 0x1A7E_4AC7_0000_0001);
        let mut out = Vec::new();
        for (user, mut feed) in by_user {
            feed.reverse();
            for (kind, share) in [
                (InteractionKind::Like, self.like_share),
                (InteractionKind::Comment, self.comment_share),
            ] {
                let count = (0..feed.len()).filter(|_| rng.unit() < share).count();
                for seq in self.pick_from_feed(&feed, count, &mut rng) {
                    out.push(Interaction { user, seq, kind });
                }
            }
        }
        for i in (1..out.len()).rev() {
            out.swap(i, rng.below(i as u64 + 1) as usize);
        }
        out
    }

    /// `count` different videos of `feed` (newest first), weighted by place
    /// as `interaction_spread` says: Efraimidis and Spirakis's sampling
    /// without replacement (the `count` largest of u^(1/weight)).
    fn pick_from_feed(&self, feed: &[u32], count: usize, rng: &mut Rng) -> Vec<u32> {
        if count >= feed.len() {
            return feed.to_vec();
        }
        let mut keyed: Vec<(f64, u32)> = feed
            .iter()
            .enumerate()
            .map(|(place, &seq)| {
                let weight = match self.interaction_spread {
                    Spread::Uniform => 1.0,
                    Spread::Zipf { exponent } => 1.0 / (place as f64 + 1.0).powf(exponent),
                };
                (rng.unit().max(f64::MIN_POSITIVE).ln() / weight, seq)
            })
            .collect();
        keyed.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        keyed.into_iter().take(count).map(|(_, seq)| seq).collect()
    }

    /// Browser-like clients, SSE and WebSocket together.
    pub fn browser_clients(&self) -> u32 {
        self.sse_clients.saturating_add(self.ws_clients)
    }

    /// Users with at least one browser client: the first ones.
    pub fn browser_users(&self) -> u32 {
        self.users.min(self.browser_clients())
    }

    /// Gateways the run starts: none without browser clients, 2 unless told.
    pub fn gateway_count(&self) -> u32 {
        match (self.browser_clients(), self.gateways) {
            (0, _) => 0,
            (_, 0) => 2,
            (_, asked) => asked,
        }
    }

    /// Expands the scenario with its seed.
    pub fn plan(&self) -> Plan {
        let mut rng = Rng::new(self.seed);
        let picker = match self.spread {
            Spread::Uniform => Picker::uniform(self.youtubers),
            Spread::Zipf { exponent } => Picker::zipf(self.youtubers, exponent),
        };
        let users = self.users as usize;
        let mut subscriptions = vec![Vec::new(); users];
        let base = self.subscriptions / self.users as u64;
        let extra = self.subscriptions % self.users as u64;
        for (user, follows) in subscriptions.iter_mut().enumerate() {
            let wanted = base + u64::from((user as u64) < extra);
            let mut chosen = HashSet::new();
            while (chosen.len() as u64) < wanted {
                // Past half the YouTubers, rejection gets slow: fill uniformly instead.
                let youtuber = if chosen.len() as u32 * 2 < self.youtubers {
                    picker.pick(&mut rng)
                } else {
                    rng.below(u64::from(self.youtubers)) as u32
                };
                if chosen.insert(youtuber) {
                    follows.push(youtuber);
                }
            }
        }
        let uploads = (0..self.uploads)
            .map(|_| rng.below(u64::from(self.youtubers)) as u32)
            .collect();
        let churn_users = if self.churn_users == 0 {
            self.users
        } else {
            self.churn_users
        };
        let mut state: HashSet<(u32, u32)> = subscriptions
            .iter()
            .enumerate()
            .flat_map(|(user, follows)| follows.iter().map(move |&y| (user as u32, y)))
            .collect();
        let churn = (0..self.churn)
            .map(|_| {
                let user = rng.below(u64::from(churn_users)) as u32;
                let youtuber = picker.pick(&mut rng);
                // Toggle, so that every change is one the server accepts.
                let subscribe = state.insert((user, youtuber));
                if !subscribe {
                    state.remove(&(user, youtuber));
                }
                Change {
                    user,
                    youtuber,
                    subscribe,
                }
            })
            .collect();
        let offline_count = (self.offline_share * f64::from(self.users)).round() as u32;
        let steps = self.uploads.max(1);
        let mut offline_users: Vec<u32> = (0..self.users).collect();
        for i in (1..offline_users.len()).rev() {
            offline_users.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let offline = offline_users[..offline_count as usize]
            .iter()
            .map(|&user| {
                // Away for a quarter to a half of the run, back before its end.
                let length = steps / 4 + rng.below(u64::from(steps / 4 + 1)) as u32;
                let from = rng.below(u64::from(steps - length.min(steps - 1))) as u32;
                OfflineWindow {
                    user,
                    from,
                    until: (from + length.max(1)).min(steps - 1).max(from),
                }
            })
            .collect();
        Plan {
            subscriptions,
            uploads,
            churn,
            offline,
        }
    }
}

/// What a user does about a video it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InteractionKind {
    Like,
    Comment,
}

/// One like or comment: `user` about upload `seq`'s video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interaction {
    pub user: u32,
    pub seq: u32,
    pub kind: InteractionKind,
}

impl Interaction {
    /// The comment's text: `c<user>-<upload>`, one per user and video.
    pub fn text(&self) -> String {
        format!("c{}-{}", self.user, self.seq)
    }
}

/// One subscription change of the churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub user: u32,
    pub youtuber: u32,
    pub subscribe: bool,
}

/// A user who closes the inbox before upload `from` is sent and opens it again
/// before upload `until` is sent (upload indices; `from == until` when there
/// are too few uploads to be away for any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineWindow {
    pub user: u32,
    pub from: u32,
    pub until: u32,
}

/// A scenario expanded with its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// For each user, the YouTubers it follows when the run starts.
    pub subscriptions: Vec<Vec<u32>>,
    /// For each upload, in order, the YouTuber that uploads it.
    pub uploads: Vec<u32>,
    /// The subscription changes made during the run, in order.
    pub churn: Vec<Change>,
    /// Who goes offline, and when.
    pub offline: Vec<OfflineWindow>,
}

impl Plan {
    /// Subscribers per YouTuber when the run starts.
    pub fn audience(&self, youtubers: u32) -> Vec<u32> {
        let mut audience = vec![0; youtubers as usize];
        for follows in &self.subscriptions {
            for &youtuber in follows {
                audience[youtuber as usize] += 1;
            }
        }
        audience
    }
}

/// The name of simulated user `i`.
pub fn user_name(i: u32) -> String {
    format!("user{i:06}")
}

/// The name of simulated YouTuber `i`.
pub fn youtuber_name(i: u32) -> String {
    format!("yt{i:05}")
}

/// Durations in scenario files as people write them ("30s", "2m").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_named() {
        for name in PRESETS {
            let scenario = Scenario::preset(name).unwrap();
            assert_eq!(scenario.name, name);
            scenario.validate().unwrap();
        }
        assert!(Scenario::preset("nope").is_none());
    }

    #[test]
    fn a_file_names_only_what_it_changes() {
        let scenario = Scenario::from_json(
            r#"{"name":"mine","users":7,"spread":{"kind":"zipf","exponent":1.5},"drain_timeout":"5s"}"#,
        )
        .unwrap();
        assert_eq!(scenario.users, 7);
        assert_eq!(scenario.spread, Spread::Zipf { exponent: 1.5 });
        assert_eq!(scenario.drain_timeout, Duration::from_secs(5));
        assert_eq!(scenario.youtubers, Scenario::default().youtubers);
        let err = Scenario::from_json(r#"{"userz":7}"#).unwrap_err();
        assert!(err.contains("unknown field `userz`"), "{err}");
        // A scenario written out reads back the same.
        let text = serde_json::to_string(&scenario).unwrap();
        assert_eq!(Scenario::from_json(&text).unwrap(), scenario);
    }

    #[test]
    fn spreads_parse_as_written_on_the_command_line() {
        assert_eq!("uniform".parse(), Ok(Spread::Uniform));
        assert_eq!("zipf".parse(), Ok(Spread::Zipf { exponent: 1.0 }));
        assert_eq!("zipf:1.2".parse(), Ok(Spread::Zipf { exponent: 1.2 }));
        assert!("zipf:-1".parse::<Spread>().is_err());
        assert!("pareto".parse::<Spread>().is_err());
    }

    #[test]
    fn a_duration_sets_the_uploads_from_the_rate() {
        let mut scenario = Scenario::default();
        assert!(scenario.set_duration(Duration::from_secs(10)).is_err());
        scenario.upload_rate = 50.0;
        scenario.set_duration(Duration::from_secs(10)).unwrap();
        assert_eq!(scenario.uploads, 500);
    }

    #[test]
    fn bad_numbers_are_refused_with_the_reason() {
        let scenario = Scenario {
            users: 2,
            youtubers: 2,
            subscriptions: 5,
            ..Scenario::default()
        };
        assert!(
            scenario
                .validate()
                .unwrap_err()
                .contains("more subscriptions")
        );
        let scenario = Scenario {
            offline_share: 1.5,
            ..Scenario::default()
        };
        assert!(scenario.validate().unwrap_err().contains("offline_share"));
        let scenario = Scenario {
            celebrities_from: 10,
            sse_clients: 5,
            ..Scenario::default()
        };
        assert!(
            scenario
                .validate()
                .unwrap_err()
                .contains("celebrities_from")
        );
        let scenario = Scenario {
            celebrities_from: 10,
            ..Scenario::default()
        };
        assert_eq!(scenario.validate(), Ok(()));
    }

    #[test]
    fn the_plan_is_determined_by_the_seed() {
        let scenario = Scenario {
            users: 200,
            youtubers: 50,
            subscriptions: 1_000,
            spread: Spread::Zipf { exponent: 1.0 },
            churn: 500,
            offline_share: 0.25,
            ..Scenario::default()
        };
        let plan = scenario.plan();
        assert_eq!(plan, scenario.plan());
        let other = Scenario {
            seed: 2,
            ..scenario.clone()
        };
        assert_ne!(plan, other.plan());
        // Exactly the subscriptions asked for, five per user, no user following anyone twice.
        assert_eq!(
            plan.subscriptions.iter().map(Vec::len).sum::<usize>(),
            1_000
        );
        for follows in &plan.subscriptions {
            assert_eq!(follows.len(), 5);
            assert_eq!(follows.iter().collect::<HashSet<_>>().len(), 5);
        }
        // Zipf: the first YouTuber has far more subscribers than the last.
        let audience = plan.audience(50);
        assert!(audience[0] > 5 * audience[49], "{audience:?}");
        assert_eq!(plan.offline.len(), 50);
        assert!(
            plan.offline
                .iter()
                .all(|w| w.from <= w.until && w.until < 20)
        );
    }

    #[test]
    fn churn_only_makes_changes_the_server_accepts() {
        let scenario = Scenario {
            users: 10,
            youtubers: 3,
            subscriptions: 10,
            churn: 300,
            ..Scenario::default()
        };
        let plan = scenario.plan();
        let mut state: HashSet<(u32, u32)> = plan
            .subscriptions
            .iter()
            .enumerate()
            .flat_map(|(u, f)| f.iter().map(move |&y| (u as u32, y)))
            .collect();
        for change in &plan.churn {
            let key = (change.user, change.youtuber);
            if change.subscribe {
                assert!(state.insert(key));
            } else {
                assert!(state.remove(&key));
            }
        }
    }

    fn with_shares(like_share: f64, comment_share: f64) -> Scenario {
        Scenario {
            like_share,
            comment_share,
            ..Scenario::default()
        }
    }

    #[test]
    fn interactions_are_off_by_default_and_in_the_viral_preset() {
        assert!(!Scenario::default().has_interactions());
        for name in PRESETS.iter().filter(|&&name| name != "viral") {
            assert!(
                !Scenario::preset(name).unwrap().has_interactions(),
                "{name}"
            );
        }
        let viral = Scenario::preset("viral").unwrap();
        assert_eq!(
            (viral.users, viral.youtubers, viral.uploads),
            (10_000, 1, 1)
        );
        assert_eq!((viral.like_share, viral.comment_share), (1.0, 0.2));
        // Everyone received the one video: everyone likes it, a fifth comment.
        let received: Vec<(u32, u32)> = (0..viral.users).map(|user| (user, 0)).collect();
        let plan = viral.interactions(&received);
        let likes = plan
            .iter()
            .filter(|i| i.kind == InteractionKind::Like)
            .count();
        let comments = plan.len() - likes;
        assert_eq!(likes, 10_000);
        assert!((1_800..2_200).contains(&comments), "{comments}");
        // Shuffled: the burst mixes likes and comments from the start.
        assert!(
            plan[..100]
                .iter()
                .any(|i| i.kind == InteractionKind::Comment)
        );
        // A file without the new fields keeps them off.
        let old = Scenario::from_json(r#"{"name":"old","users":7}"#).unwrap();
        assert!(!old.has_interactions());
        let bad = with_shares(0.5, -0.1);
        assert!(bad.validate().unwrap_err().contains("comment_share"));
    }

    #[test]
    fn each_user_reacts_once_per_video_mostly_to_the_newest() {
        let scenario = with_shares(0.3, 0.1);
        // 500 users who each received uploads 0 to 19.
        let received: Vec<(u32, u32)> = (0..500)
            .flat_map(|user| (0..20).map(move |seq| (user, seq)))
            .collect();
        let plan = scenario.interactions(&received);
        assert_eq!(plan, scenario.interactions(&received));
        let unique: HashSet<&Interaction> = plan.iter().collect();
        assert_eq!(unique.len(), plan.len(), "no user likes a video twice");
        let likes: Vec<&Interaction> = plan
            .iter()
            .filter(|i| i.kind == InteractionKind::Like)
            .collect();
        // 30 % of 10,000 received notifications, give or take.
        assert!((2_700..3_300).contains(&likes.len()), "{}", likes.len());
        let newest = likes.iter().filter(|i| i.seq == 19).count();
        let oldest = likes.iter().filter(|i| i.seq == 0).count();
        assert!(newest > 3 * oldest, "newest {newest}, oldest {oldest}");
        let uniform = Scenario {
            interaction_spread: Spread::Uniform,
            ..scenario.clone()
        };
        let likes = uniform.interactions(&received);
        let newest = likes.iter().filter(|i| i.seq == 19).count() as f64;
        let oldest = likes.iter().filter(|i| i.seq == 0).count() as f64;
        assert!(
            (0.7..1.4).contains(&(newest / oldest)),
            "{newest} / {oldest}"
        );
        // Nothing received, nothing to react to; no share, no reaction.
        assert!(scenario.interactions(&[]).is_empty());
        assert!(with_shares(0.0, 0.0).interactions(&received).is_empty());
        let all = with_shares(1.0, 1.0).interactions(&received);
        assert_eq!(all.len(), 2 * received.len());
    }
}
