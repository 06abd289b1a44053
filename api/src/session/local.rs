//! Sessions this API process read recently, kept in its own memory so that
//! an execute costs no cache round trip.
//!
//! Safe to keep because a session never changes after `initialize` except for
//! its expiry, which only moves forward: a copy that still looks active is
//! active, and one that looks expired is checked against PostgreSQL by
//! [`super::load_active`]. Bounded by the bytes of the scripts and contexts
//! it holds; the oldest entries go first.

use super::Session;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};
use uuid::Uuid;

/// Recently read sessions, at most `budget` bytes of them.
pub struct LocalSessions {
    inner: Mutex<Inner>,
    budget: usize,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Uuid, Arc<Session>>,
    /// Insertion order, oldest first (may name sessions already gone).
    order: VecDeque<Uuid>,
    bytes: usize,
}

fn weight(session: &Session) -> usize {
    session.script.len() + session.context_json.len() + session.owner.len() + 256
}

impl LocalSessions {
    /// Holds at most `budget` bytes of sessions (0 holds none).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            budget,
        }
    }

    /// The session, if it is held here (expired or not: the caller checks).
    pub fn get(&self, id: Uuid) -> Option<Arc<Session>> {
        let inner = self.inner.lock().expect("sessions lock");
        inner.sessions.get(&id).cloned()
    }

    /// Keeps `session` (replacing an older copy), evicting the oldest
    /// entries beyond the budget.
    pub fn put(&self, session: Arc<Session>) {
        let size = weight(&session);
        if size > self.budget {
            return;
        }
        let mut inner = self.inner.lock().expect("sessions lock");
        let id = session.request_id;
        match inner.sessions.insert(id, session) {
            Some(old) => inner.bytes = inner.bytes - weight(&old) + size,
            None => {
                inner.bytes += size;
                inner.order.push_back(id);
            }
        }
        while inner.bytes > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.sessions.remove(&oldest) {
                inner.bytes -= weight(&gone);
            }
        }
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("sessions lock").sessions.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};
    use schemas::Language;

    fn session(script_bytes: usize, expires_in: Duration) -> Arc<Session> {
        Arc::new(Session {
            request_id: Uuid::now_v7(),
            owner: "o".into(),
            language: Language::Nodejs,
            language_title: "nodejs-t".into(),
            script_hash: "h".into(),
            script: "x".repeat(script_bytes),
            context_json: "{}".into(),
            timeout_ms: 1000,
            memory_mb: 64,
            retain: false,
            created_at: Utc::now(),
            expires_at: Utc::now() + expires_in,
        })
    }

    #[test]
    fn keeps_sessions_within_the_byte_budget_oldest_out_first() {
        let local = LocalSessions::new(3 * (1000 + 256 + 3));
        let all: Vec<_> = (0..4).map(|_| session(1000, Duration::hours(1))).collect();
        for s in &all {
            local.put(s.clone());
        }
        assert_eq!(local.len(), 3);
        assert!(
            local.get(all[0].request_id).is_none(),
            "the oldest went first"
        );
        for s in &all[1..] {
            assert_eq!(local.get(s.request_id).unwrap().script.len(), 1000);
        }
        // Putting a held session again does not count it twice.
        local.put(all[3].clone());
        assert_eq!(local.len(), 3);
        assert!(local.get(all[1].request_id).is_some());
    }

    #[test]
    fn a_session_larger_than_the_budget_is_not_held() {
        let local = LocalSessions::new(100);
        let big = session(1000, Duration::hours(1));
        local.put(big.clone());
        assert!(local.is_empty());
    }
}
