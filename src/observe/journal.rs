//! The recent events of a node, as the dashboard lists them: a bounded ring,
//! newest last.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Events kept.
pub const JOURNAL_LEN: usize = 200;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// When it happened.
    pub at: SystemTime,
    /// What kind: `join`, `leave`, `connected`, `stored`, `repair`, `trim`,
    /// `put`, `get`.
    pub kind: &'static str,
    /// One line for a person.
    pub text: String,
}

/// The ring of recent events. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Journal {
    entries: Arc<Mutex<VecDeque<Entry>>>,
}

impl Journal {
    /// Records an event, dropping the oldest beyond [`JOURNAL_LEN`].
    pub fn record(&self, kind: &'static str, text: impl Into<String>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == JOURNAL_LEN {
            entries.pop_front();
        }
        entries.push_back(Entry {
            at: SystemTime::now(),
            kind,
            text: text.into(),
        });
    }

    /// The events kept, oldest first.
    pub fn recent(&self) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_events() {
        let j = Journal::default();
        for i in 0..JOURNAL_LEN + 5 {
            j.record("join", format!("event {i}"));
        }
        let recent = j.recent();
        assert_eq!(recent.len(), JOURNAL_LEN);
        assert_eq!(recent[0].text, "event 5");
        assert_eq!(
            recent.last().map(|e| e.text.as_str()),
            Some(format!("event {}", JOURNAL_LEN + 4).as_str())
        );
    }
}
