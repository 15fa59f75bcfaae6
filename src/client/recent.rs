//! The ids a reader remembers as seen: a copy comes again within seconds (a
//! redelivery, the other source of a session, a server sending again what
//! it could not record as sent), so the latest ones are enough, and a
//! reader that runs for months stays small.

use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

/// How many ids are remembered.
const REMEMBERED: usize = 10_000;

/// The latest ids, at most [`REMEMBERED`].
#[derive(Default)]
pub(crate) struct Recent {
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
}

impl Recent {
    /// Adds `id`; whether it was not there.
    pub(crate) fn insert(&mut self, id: Uuid) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        true
    }

    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_is_forgotten_past_the_bound() {
        let mut recent = Recent::default();
        let first = Uuid::from_u128(0);
        assert!(recent.insert(first));
        assert!(!recent.insert(first), "once");
        for n in 1..=REMEMBERED as u128 {
            recent.insert(Uuid::from_u128(n));
        }
        assert!(!recent.contains(&first));
        assert!(recent.contains(&Uuid::from_u128(REMEMBERED as u128)));
    }
}
