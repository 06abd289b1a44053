//! Compiling a script ahead of its first run: at initialize the API asks one
//! worker of the language (core NATS request on `<prefix>.compile.<language>`,
//! answered by one member of a queue group) to compile a `rust` or `wasm`
//! script, so that a script that does not compile is refused there, with the
//! compiler's diagnostics, and the first execute finds it compiled.

use crate::Language;
use serde::{Deserialize, Serialize};

/// Compile this script (and keep the result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileRequest {
    /// `script_hash(language, script)`, the key the compiled artifact is kept by.
    pub script_hash: String,
    pub language: Language,
    pub script: String,
    /// The session's `compile_options` as JSON text (`{}` when none); workers
    /// honour only what they allow (an `opt_level`), never pass it through.
    #[serde(default = "empty_object")]
    pub options_json: String,
    /// Whose script it is: a worker compiles one script per owner at a
    /// time, so one tenant's slow sources cannot take every compile slot.
    #[serde(default)]
    pub owner: String,
}

/// Whether the script compiled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileResult {
    pub ok: bool,
    /// What went wrong, in a sentence (empty when `ok`).
    #[serde(default)]
    pub message: String,
    /// The compiler's or validator's output (empty when `ok`).
    #[serde(default)]
    pub diagnostics: String,
    #[serde(default)]
    pub worker_id: String,
}

fn empty_object() -> String {
    "{}".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn requests_and_results_round_trip() {
        let request = CompileRequest {
            script_hash: crate::script_hash(Language::Rust, "fn handler() {}"),
            language: Language::Rust,
            script: "fn handler() {}".to_owned(),
            options_json: r#"{"opt_level":"2"}"#.to_owned(),
            owner: "tenant-a".to_owned(),
        };
        assert_eq!(
            decode::<CompileRequest>(&encode(&request).unwrap()).unwrap(),
            request
        );
        let result = CompileResult {
            ok: false,
            message: "the Rust source does not compile".to_owned(),
            diagnostics: "error: expected item".to_owned(),
            worker_id: "w1".to_owned(),
        };
        assert_eq!(
            decode::<CompileResult>(&encode(&result).unwrap()).unwrap(),
            result
        );
    }

    #[test]
    fn options_default_to_an_empty_object() {
        #[derive(Serialize)]
        struct Old<'a> {
            script_hash: &'a str,
            language: Language,
            script: &'a str,
        }
        let old = Old {
            script_hash: "h",
            language: Language::Wasm,
            script: "(module)",
        };
        let request: CompileRequest = decode(&encode(&old).unwrap()).unwrap();
        assert_eq!(request.options_json, "{}");
    }
}
