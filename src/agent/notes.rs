//! Log-once bookkeeping: a condition that persists (missing config, full network, unreachable
//! store) is logged when it starts and when it ends, not at every resync.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Notes(HashMap<&'static str, String>);

impl Notes {
    /// Records `message` under `topic`; true if it is new (not the same as last time).
    pub fn raise(&mut self, topic: &'static str, message: String) -> bool {
        if self.0.get(topic) == Some(&message) {
            return false;
        }
        self.0.insert(topic, message);
        true
    }

    /// Clears `topic`; true if it had been raised.
    pub fn clear(&mut self, topic: &'static str) -> bool {
        self.0.remove(topic).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_once_per_distinct_message() {
        let mut n = Notes::default();
        assert!(n.raise("store", "down".into()));
        assert!(!n.raise("store", "down".into()));
        assert!(n.raise("store", "down: other".into()));
        assert!(n.clear("store"));
        assert!(!n.clear("store"));
        assert!(n.raise("store", "down".into()));
    }
}
