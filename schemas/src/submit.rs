//! Jobs submitted straight onto NATS (`<prefix>.submit.<language_title>`) and
//! the dispatcher's reply. The JSON Schemas of these payloads, for producers
//! in other languages, are in `schemas/json/`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Header that marks a MessagePack payload; anything else is read as JSON.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// What a producer publishes. Without `request_id` or `script_content`, the
/// function registered for the subject's Language-Title runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    #[serde(default)]
    pub params: Option<Value>,
    /// Chosen by the producer to make resubmission idempotent.
    #[serde(default)]
    pub job_id: Option<Uuid>,
    /// Run in this session (its script and context).
    #[serde(default)]
    pub request_id: Option<Uuid>,
    /// Run this script (registered as the subject's Language-Title).
    #[serde(default)]
    pub script_content: Option<String>,
    /// Where the terminal job record is POSTed.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Passed to the script; `timeout_ms` and `memory_mb` set its limits.
    #[serde(default)]
    pub context: Option<Value>,
}

/// The reply to a submission: the job handle or why it was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SubmitReply {
    Accepted { job_id: Uuid, status: String },
    Refused { error: SubmitError },
}

/// Why a submission was refused, with a code of the REST contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitError {
    pub code: crate::ErrorCode,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;
    use serde_json::json;

    #[test]
    fn requests_read_from_json_and_msgpack() {
        let json = json!({"params": {"a": 1}, "callback_url": "https://x/y"});
        let request: SubmitRequest = serde_json::from_value(json).unwrap();
        assert_eq!(request.params, Some(json!({"a": 1})));
        assert_eq!(request.job_id, None);
        let packed = crate::codec::encode(&request).unwrap();
        assert_eq!(
            crate::codec::decode::<SubmitRequest>(&packed).unwrap(),
            request
        );
        assert!(serde_json::from_value::<SubmitRequest>(json!({"parms": {}})).is_err());
    }

    #[test]
    fn replies_are_a_handle_or_an_error() {
        let id = Uuid::nil();
        let accepted = SubmitReply::Accepted {
            job_id: id,
            status: "queued".into(),
        };
        assert_eq!(
            serde_json::to_value(&accepted).unwrap(),
            json!({"job_id": id, "status": "queued"})
        );
        let refused = SubmitReply::Refused {
            error: SubmitError {
                code: ErrorCode::NotFound,
                message: "no such function".into(),
            },
        };
        let value = serde_json::to_value(&refused).unwrap();
        assert_eq!(value["error"]["code"], "NOT_FOUND");
        assert_eq!(
            serde_json::from_value::<SubmitReply>(value).unwrap(),
            refused
        );
    }
}
