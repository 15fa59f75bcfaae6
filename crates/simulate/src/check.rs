//! The exactly-once check: which (user, upload) pairs must receive the upload,
//! from the subscription state the simulator saw confirmed when the upload was
//! sent, and how what arrived compares.
//!
//! A subscription change confirmed before an upload was sent is honoured by it
//! (the server binds before it replies); one sent after the upload was answered
//! is not. A change in flight in between may land either side, so that pair is
//! left out of the check — neither lost nor unexpected — and counted apart.

use std::collections::{HashMap, HashSet};

use super::{report::Check, scenario::Change};

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
    Check {
        expected: expected.len() as u64,
        received,
        lost,
        duplicates,
        unexpected,
        redelivered: 0,
        ambiguous: expectations.ambiguous.len() as u64,
        ok: lost == 0 && duplicates == 0 && unexpected == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
