//! The JetStream definitions of `nats/jetstream.json`, compiled in so that
//! every service creates the same objects without needing the file at run time.

use serde::Deserialize;

/// The definitions file, as shipped in the repository.
pub const DEFINITIONS_JSON: &str = include_str!("../../nats/jetstream.json");

/// Every JetStream object the services create.
#[derive(Debug, Clone, Deserialize)]
pub struct Definitions {
    pub jobs_stream: StreamDef,
    pub worker_consumer: ConsumerDef,
    pub events_stream: StreamDef,
    pub events_consumer: ConsumerDef,
}

/// Settings of a stream; its name and subjects follow the subject prefix.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamDef {
    pub description: String,
    /// `workqueue`, `limits` or `interest`.
    pub retention: String,
    /// `file` or `memory`.
    pub storage: String,
    pub max_age_seconds: u64,
    pub max_messages: i64,
    pub max_bytes: i64,
    pub max_message_size: i32,
    /// `new` (refuse publishes when full) or `old`.
    pub discard: String,
    pub duplicate_window_seconds: u64,
}

/// Settings of a durable pull consumer.
#[derive(Debug, Clone, Deserialize)]
pub struct ConsumerDef {
    pub description: String,
    pub ack_wait_seconds: u64,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
    /// Delays of the redeliveries of unacknowledged messages, one per
    /// delivery (the last repeats); the first replaces `ack_wait_seconds`.
    #[serde(default)]
    pub backoff_seconds: Vec<u64>,
}

impl Definitions {
    /// The definitions shipped in `nats/jetstream.json`.
    pub fn shipped() -> Self {
        serde_json::from_str(DEFINITIONS_JSON).expect("nats/jetstream.json is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_definitions_parse() {
        let defs = Definitions::shipped();
        assert_eq!(defs.jobs_stream.retention, "workqueue");
        assert!(defs.worker_consumer.max_deliver > 1);
        // JetStream refuses a backoff list as long as the deliveries, and
        // uses its first delay as the ack wait.
        let backoff = &defs.worker_consumer.backoff_seconds;
        assert!((backoff.len() as i64) < defs.worker_consumer.max_deliver);
        assert!(backoff.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(backoff[0], defs.worker_consumer.ack_wait_seconds);
        assert_eq!(defs.events_stream.storage, "file");
        assert_eq!(defs.events_consumer.max_deliver, -1);
    }
}
