//! What a worker announces about itself every few seconds, so that the API
//! knows which languages can be served right now.

use crate::Language;
use serde::{Deserialize, Serialize};

/// Published by every worker on `<prefix>.workers.heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub worker_id: String,
    pub runtimes: Vec<RuntimeStatus>,
    /// How long the API should consider this heartbeat fresh, in milliseconds.
    pub ttl_ms: u64,
    /// Set on the last heartbeat of a worker that is shutting down.
    #[serde(default)]
    pub stopping: bool,
}

/// One runtime pool of a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeStatus {
    pub language: Language,
    /// Warm processes (or instance slots) the pool keeps.
    pub capacity: u32,
    /// Those running a job now.
    pub busy: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn heartbeat_round_trips() {
        let hb = WorkerHeartbeat {
            worker_id: "w1".into(),
            runtimes: vec![RuntimeStatus {
                language: Language::Nodejs,
                capacity: 4,
                busy: 1,
            }],
            ttl_ms: 6000,
            stopping: false,
        };
        assert_eq!(
            decode::<WorkerHeartbeat>(&encode(&hb).unwrap()).unwrap(),
            hb
        );
    }
}
