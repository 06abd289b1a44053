//! The line protocol between a runtime process and its runner (`runner.js`,
//! `runner.py`): one JSON object per line each way. Requests are assembled from the job's JSON text without
//! parsing it again; the result JSON text of a response is taken as is.

use crate::runtime::Invocation;
use schemas::{ErrorCode, JobError};
use serde::Deserialize;
use serde_json::{json, value::RawValue};

/// The first line a runner writes once it is ready for requests.
#[derive(Debug, Deserialize)]
pub(super) struct Hello {
    pub(super) ready: bool,
}

/// One request line, without the trailing newline.
pub(super) fn request_line(id: u64, invocation: &Invocation) -> String {
    let quoted = |text: &str| serde_json::to_string(text).expect("a string serialises");
    let script = quoted(&invocation.script);
    let hash = quoted(&invocation.script_hash);
    let scope = quoted(&invocation.scope);
    let params = single_line(invocation.params.get());
    let context = single_line(invocation.context.get());
    let mut line = String::with_capacity(script.len() + params.len() + context.len() + 160);
    line.push_str(&format!(
        "{{\"id\":{id},\"scope\":{scope},\"hash\":{hash},\"script\":"
    ));
    line.push_str(&script);
    line.push_str(",\"params\":");
    line.push_str(&params);
    line.push_str(",\"context\":");
    line.push_str(&context);
    line.push('}');
    line
}

/// Valid JSON can hold line breaks only as whitespace between tokens (inside
/// strings they must be escaped), so they can be blanked without changing it.
fn single_line(json: &str) -> std::borrow::Cow<'_, str> {
    if json.contains(['\n', '\r']) {
        json.replace(['\n', '\r'], " ").into()
    } else {
        json.into()
    }
}

/// One response line.
#[derive(Debug, Deserialize)]
pub(super) struct Response<'a> {
    pub(super) id: u64,
    ok: bool,
    /// `None` also when the result is JSON `null`.
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<ScriptError>,
    #[serde(default)]
    pub(super) logs: Vec<String>,
    /// The runner asks to be replaced (an error escaped the script).
    #[serde(default)]
    pub(super) recycle: bool,
}

/// What the runner reports about an error the script threw.
#[derive(Debug, Deserialize, PartialEq)]
struct ScriptError {
    /// Set only when the error is not a `RUNTIME_ERROR`: `MEMORY_LIMIT` when
    /// the script ran out of memory. Other codes are not the runner's to give.
    #[serde(default)]
    code: Option<ErrorCode>,
    name: String,
    message: String,
    #[serde(default)]
    stack: Option<String>,
    #[serde(default)]
    line: Option<u32>,
}

impl Response<'_> {
    /// The job's result JSON, or its error in the terms of the contract.
    pub(super) fn outcome(&self) -> Result<String, JobError> {
        if self.ok {
            return Ok(self.result.map_or("null", RawValue::get).to_owned());
        }
        let Some(e) = &self.error else {
            return Err(JobError::new(
                ErrorCode::RuntimeError,
                "runtime protocol error: a failure without an error",
            ));
        };
        let details = json!({
            "name": e.name,
            "message": e.message,
            "line": e.line,
            "stack": e.stack,
        });
        let code = match e.code {
            Some(ErrorCode::MemoryLimit) => ErrorCode::MemoryLimit,
            _ => ErrorCode::RuntimeError,
        };
        Err(JobError::new(code, format!("{}: {}", e.name, e.message)).with_details(&details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Language;
    use std::time::Duration;

    #[test]
    fn request_keeps_json_text_on_one_line() {
        let invocation = Invocation::new(
            Language::Nodejs,
            "return 1;\n// \"quoted\"".into(),
            "{\n  \"a\": \"x\\ny\",\r\n  \"b\": [1, 2]\n}".into(),
            "{}".into(),
            Duration::from_secs(1),
        )
        .unwrap();
        let line = request_line(7, &invocation);
        assert!(!line.contains(['\n', '\r']));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["id"], 7);
        assert_eq!(parsed["script"], "return 1;\n// \"quoted\"");
        assert_eq!(parsed["hash"], invocation.script_hash.as_str());
        assert_eq!(parsed["params"], json!({"a": "x\ny", "b": [1, 2]}));
    }

    #[test]
    fn success_keeps_result_text() {
        let line = r#"{"id":3,"ok":true,"result":{"b": 1.50,"a":[]},"logs":["hi"]}"#;
        let response: Response = serde_json::from_str(line).unwrap();
        assert_eq!(response.id, 3);
        assert_eq!(response.outcome().unwrap(), r#"{"b": 1.50,"a":[]}"#);
        assert_eq!(response.logs, ["hi"]);
        let null: Response = serde_json::from_str(r#"{"id":4,"ok":true,"result":null}"#).unwrap();
        assert_eq!(null.outcome().unwrap(), "null");
    }

    #[test]
    fn failure_becomes_runtime_error_with_details() {
        let line = r#"{"id":1,"ok":false,"error":{"name":"Error","message":"boom","stack":"Error: boom","line":2},"logs":[],"recycle":true}"#;
        let response: Response = serde_json::from_str(line).unwrap();
        assert!(response.recycle);
        let error = response.outcome().unwrap_err();
        assert_eq!(error.code, ErrorCode::RuntimeError);
        assert_eq!(error.message, "Error: boom");
        let details: serde_json::Value =
            serde_json::from_str(error.details_json.as_deref().unwrap()).unwrap();
        assert_eq!(details["line"], 2);
        assert_eq!(details["stack"], "Error: boom");
    }

    #[test]
    fn only_memory_limit_overrides_the_code() {
        let line = r#"{"id":1,"ok":false,"error":{"code":"MEMORY_LIMIT","name":"MemoryError","message":"out of memory","line":3},"recycle":true}"#;
        let response: Response = serde_json::from_str(line).unwrap();
        let error = response.outcome().unwrap_err();
        assert_eq!(error.code, ErrorCode::MemoryLimit);
        assert_eq!(error.message, "MemoryError: out of memory");

        let line = r#"{"id":2,"ok":false,"error":{"code":"TIMEOUT","name":"Error","message":"x"}}"#;
        let response: Response = serde_json::from_str(line).unwrap();
        assert_eq!(
            response.outcome().unwrap_err().code,
            ErrorCode::RuntimeError
        );
    }
}
