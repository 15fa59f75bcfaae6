//! The exactly-once checks. Notifications: which (user, upload) pairs must
//! receive the upload, from the subscription state the simulator saw
//! confirmed when the upload was sent, and how what arrived compares.
//!
//! A subscription change confirmed before an upload was sent is honoured by it
//! (the server binds before it replies); one sent after the upload was answered
//! is not. A change in flight in between may land either side, so that pair is
//! left out of the check — neither lost nor unexpected — and counted apart.
//!
//! Likes and comments ([`check_interactions`]): every one the server
//! answered with a plain `done` must reach its creator's inbox once, as an
//! event carrying the request's id; none other may. One never answered may
//! or may not have been applied, and is left out.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{
    creators::Arrival,
    report::{Check, InteractionCheck},
    scenario::{Change, Interaction},
};

/// One upload as the simulator sent it. Times in nanoseconds from the run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadRecord {
    pub youtuber: u32,
    /// `None` if it was never sent.
    pub sent: Option<u64>,
    /// When the server's `done` came back; `None` if it never did.
    pub done: Option<u64>,
}

/// One subscription change as the simulator sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeRecord {
    pub change: Change,
    pub sent: Option<u64>,
    pub done: Option<u64>,
    /// The server accepted it (a refusal changes nothing).
    pub applied: bool,
}

/// What must arrive.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expectations {
    /// (user, upload) pairs that must receive the upload exactly once.
    pub expected: Vec<(u32, u32)>,
    /// Pairs left out of the check.
    pub ambiguous: HashSet<(u32, u32)>,
}

/// Works out the expected and ambiguous pairs. `initial[user]` lists the
/// YouTubers each user followed, confirmed, before the first upload; `changes`
/// are in the order sent (one user's changes all go through one connection,
/// so the server applies them in that order).
pub fn expectations(
    initial: &[Vec<u32>],
    uploads: &[UploadRecord],
    changes: &[ChangeRecord],
) -> Expectations {
    let mut following: HashSet<(u32, u32)> = HashSet::new();
    let mut audience: HashMap<u32, Vec<u32>> = HashMap::new();
    for (user, follows) in initial.iter().enumerate() {
        for &youtuber in follows {
            following.insert((user as u32, youtuber));
            audience.entry(youtuber).or_default().push(user as u32);
        }
    }
    let mut by_pair: HashMap<(u32, u32), Vec<&ChangeRecord>> = HashMap::new();
    for record in changes {
        let pair = (record.change.user, record.change.youtuber);
        let list = by_pair.entry(pair).or_default();
        if list.is_empty() && !following.contains(&pair) {
            audience.entry(pair.1).or_default().push(pair.0);
        }
        list.push(record);
    }
    let mut out = Expectations::default();
    for (seq, upload) in uploads.iter().enumerate() {
        let Some(sent) = upload.sent else { continue };
        let answered = upload.done.unwrap_or(u64::MAX);
        for &user in audience
            .get(&upload.youtuber)
            .map_or(&[][..], Vec::as_slice)
        {
            let pair = (user, upload.youtuber);
            let mut subscribed = following.contains(&pair);
            let mut in_flight = false;
            for record in by_pair.get(&pair).map_or(&[][..], Vec::as_slice) {
                match record.done {
                    Some(done) if done <= sent && record.applied => {
                        subscribed = record.change.subscribe;
                    }
                    Some(done) if done <= sent => {}
                    _ if record.sent.is_some_and(|at| at < answered) => in_flight = true,
                    _ => {}
                }
            }
            let key = (user, seq as u32);
            if in_flight || (subscribed && upload.done.is_none()) {
                out.ambiguous.insert(key);
            } else if subscribed {
                out.expected.push(key);
            }
        }
    }
    out
}

/// The subscriptions after every applied change: what the broker's bindings are at the end.
pub fn final_following(initial: &[Vec<u32>], changes: &[ChangeRecord]) -> HashSet<(u32, u32)> {
    let mut following: HashSet<(u32, u32)> = initial
        .iter()
        .enumerate()
        .flat_map(|(user, follows)| follows.iter().map(move |&y| (user as u32, y)))
        .collect();
    for record in changes.iter().filter(|r| r.applied) {
        let pair = (record.change.user, record.change.youtuber);
        if record.change.subscribe {
            following.insert(pair);
        } else {
            following.remove(&pair);
        }
    }
    following
}

/// How many expected pairs have arrived at least once.
pub fn arrived(expected: &[(u32, u32)], per_pair: &HashMap<(u32, u32), u32>) -> u64 {
    expected
        .iter()
        .filter(|pair| per_pair.contains_key(pair))
        .count() as u64
}

/// Compares what arrived with what was expected.
pub fn check(expectations: &Expectations, per_pair: &HashMap<(u32, u32), u32>) -> Check {
    let expected: HashSet<&(u32, u32)> = expectations.expected.iter().collect();
    let received = arrived(&expectations.expected, per_pair);
    let mut duplicates = 0;
    let mut unexpected = 0;
    for (pair, &copies) in per_pair {
        if expectations.ambiguous.contains(pair) {
            continue;
        }
        duplicates += u64::from(copies.saturating_sub(1));
        if !expected.contains(pair) {
            unexpected += 1;
        }
    }
    let lost = expected.len() as u64 - received;
    if lost > 0 {
        let mut missing: Vec<&(u32, u32)> = expectations
            .expected
            .iter()
            .filter(|pair| !per_pair.contains_key(pair))
            .collect();
        missing.sort_unstable();
        missing.truncate(20);
        tracing::debug!(?missing, "(user, upload) pairs lost, the first 20");
    }
    Check {
        expected: expected.len() as u64,
        received,
        lost,
        duplicates,
        unexpected,
        redelivered: 0,
        republished: 0,
        ambiguous: expectations.ambiguous.len() as u64,
        ok: lost == 0 && duplicates == 0 && unexpected == 0,
    }
}

/// How the server answered a like or a comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Applied: the creator is to hear of it.
    Applied,
    /// Done with a notice, changing nothing (a video liked already): the
    /// creator hears nothing.
    Unchanged,
    Refused,
}

/// One like or comment as the simulator sent it. Times in nanoseconds from
/// the run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InteractionRecord {
    pub interaction: Interaction,
    /// The YouTuber whose video it is, whose inbox must hear of it.
    pub youtuber: u32,
    /// The request's id, which its event carries; `None` if never sent.
    pub id: Option<Uuid>,
    pub sent: Option<u64>,
    pub done: Option<u64>,
    /// `None` if the server never answered.
    pub answer: Option<Answer>,
}

/// Compares the events that reached creators with the likes and comments
/// the server applied.
pub fn check_interactions(
    records: &[InteractionRecord],
    arrivals: &HashMap<Uuid, Arrival>,
) -> InteractionCheck {
    let mut expected: HashMap<Uuid, u32> = HashMap::new();
    let mut unanswered: HashSet<Uuid> = HashSet::new();
    for record in records {
        match (record.id, record.answer) {
            (Some(id), Some(Answer::Applied)) => {
                expected.insert(id, record.youtuber);
            }
            (Some(id), None) => {
                unanswered.insert(id);
            }
            _ => {}
        }
    }
    let mut out = InteractionCheck {
        expected: expected.len() as u64,
        not_checked: unanswered.len() as u64,
        ..InteractionCheck::default()
    };
    for (id, arrival) in arrivals {
        match expected.get(id) {
            Some(&youtuber) if youtuber == arrival.youtuber => {
                out.received += 1;
                out.duplicates += u64::from(arrival.copies.saturating_sub(1));
                out.redelivered += u64::from(arrival.redelivered);
            }
            // At another creator's: lost for its own, and unexpected here.
            Some(_) => out.unexpected += 1,
            None if unanswered.contains(id) => {}
            None => out.unexpected += 1,
        }
    }
    out.lost = out.expected - out.received;
    out.ok = out.lost == 0 && out.duplicates == 0 && out.unexpected == 0;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::InteractionKind;

    fn upload(youtuber: u32, sent: u64, done: u64) -> UploadRecord {
        UploadRecord {
            youtuber,
            sent: Some(sent),
            done: Some(done),
        }
    }

    fn change(user: u32, youtuber: u32, subscribe: bool, sent: u64, done: u64) -> ChangeRecord {
        ChangeRecord {
            change: Change {
                user,
                youtuber,
                subscribe,
            },
            sent: Some(sent),
            done: Some(done),
            applied: true,
        }
    }

    #[test]
    fn confirmed_state_decides_and_changes_in_flight_are_left_out() {
        // User 0 follows YouTuber 0 from the start; user 1 subscribes at 10-20;
        // user 2 subscribes at 35-60, while upload 1 (40-50) is in flight.
        let initial = vec![vec![0], vec![], vec![]];
        let uploads = [upload(0, 30, 35), upload(0, 40, 50), upload(0, 100, 110)];
        let changes = [
            change(1, 0, true, 10, 20),
            change(2, 0, true, 35, 60),
            change(0, 0, false, 70, 80),
        ];
        let found = expectations(&initial, &uploads, &changes);
        let mut expected = found.expected.clone();
        expected.sort_unstable();
        assert_eq!(
            expected,
            vec![(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 2)]
        );
        assert_eq!(found.ambiguous, HashSet::from([(2, 1)]));
        assert_eq!(
            final_following(&initial, &changes),
            HashSet::from([(1, 0), (2, 0)])
        );
    }

    #[test]
    fn an_unanswered_upload_is_not_held_against_anyone() {
        let initial = vec![vec![0]];
        let uploads = [UploadRecord {
            youtuber: 0,
            sent: Some(5),
            done: None,
        }];
        let found = expectations(&initial, &uploads, &[]);
        assert!(found.expected.is_empty());
        assert_eq!(found.ambiguous.len(), 1);
    }

    #[test]
    fn the_check_counts_lost_duplicates_and_unexpected() {
        let found = Expectations {
            expected: vec![(0, 0), (1, 0), (2, 0)],
            ambiguous: HashSet::from([(3, 0)]),
        };
        let per_pair = HashMap::from([((0, 0), 1), ((1, 0), 3), ((3, 0), 2), ((4, 0), 1)]);
        let check = check(&found, &per_pair);
        assert_eq!(check.expected, 3);
        assert_eq!(check.received, 2);
        assert_eq!(check.lost, 1);
        assert_eq!(check.duplicates, 2);
        assert_eq!(check.unexpected, 1);
        assert_eq!(check.ambiguous, 1);
        assert!(!check.ok);
    }

    fn interaction(youtuber: u32, answer: Option<Answer>) -> InteractionRecord {
        InteractionRecord {
            interaction: Interaction {
                user: 0,
                seq: 0,
                kind: InteractionKind::Like,
            },
            youtuber,
            id: Some(Uuid::new_v4()),
            sent: Some(1),
            done: answer.map(|_| 2),
            answer,
        }
    }

    fn arrival(youtuber: u32, copies: u32, redelivered: u32) -> Arrival {
        Arrival {
            youtuber,
            at: 3,
            copies,
            redelivered,
        }
    }

    #[test]
    fn every_applied_interaction_must_reach_its_creator_once() {
        let records = [
            interaction(0, Some(Answer::Applied)),
            interaction(0, Some(Answer::Applied)),
            interaction(1, Some(Answer::Applied)),
            interaction(1, Some(Answer::Applied)),
            interaction(0, Some(Answer::Unchanged)),
            interaction(0, None),
            interaction(0, Some(Answer::Applied)),
        ];
        let id = |n: usize| records[n].id.unwrap();
        let arrivals = HashMap::from([
            (id(0), arrival(0, 1, 2)),
            (id(1), arrival(0, 2, 0)),
            (id(2), arrival(0, 1, 0)),
            (id(4), arrival(0, 1, 0)),
            (id(5), arrival(0, 1, 0)),
            (id(6), arrival(0, 1, 0)),
            (Uuid::new_v4(), arrival(1, 1, 0)),
        ]);
        let check = check_interactions(&records, &arrivals);
        assert_eq!(check.expected, 5);
        // 0, 1 and 6 reached their creator; 2 reached another, 3 none.
        assert_eq!(check.received, 3);
        assert_eq!(check.lost, 2);
        assert_eq!(check.duplicates, 1);
        assert_eq!(check.redelivered, 2);
        // 2 at the wrong creator, 4 that changed nothing, one never sent.
        assert_eq!(check.unexpected, 3);
        assert_eq!(check.not_checked, 1);
        assert!(!check.ok);
        let clean: HashMap<Uuid, Arrival> = [0, 1, 2, 3, 6]
            .map(|n| (id(n), arrival(records[n].youtuber, 1, 0)))
            .into();
        assert!(check_interactions(&records, &clean).ok);
    }
}
