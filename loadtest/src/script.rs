//! The trivial per-language scripts a load test installs as its session.

use clap::ValueEnum;

/// A runtime language of the API (`Language-Title: <lang>-<title>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Nodejs,
    Python,
    Rust,
    Wasm,
}

impl Lang {
    /// The name the API uses, as in the `Language-Title` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Nodejs => "nodejs",
            Lang::Python => "python",
            Lang::Rust => "rust",
            Lang::Wasm => "wasm",
        }
    }

    /// A script that returns `params.a + params.b`, as small as the language allows,
    /// so the load test measures the platform rather than the script.
    pub fn sum_script(self) -> anyhow::Result<&'static str> {
        match self {
            Lang::Nodejs => Ok("return event.params.a + event.params.b;"),
            Lang::Python => Ok(r#"result = params["a"] + params["b"]"#),
            Lang::Rust => Ok(
                r#"fn handler(params: Value, _context: Value) -> Result<Value, String> {
    Ok(json!(params["a"].as_i64().unwrap_or(0) + params["b"].as_i64().unwrap_or(0)))
}"#,
            ),
            // A hand-written WASI module would have to parse JSON itself; the
            // rust language measures the same wasm pool.
            Lang::Wasm => anyhow::bail!(
                "loadtest has no script for `wasm` yet (supported: nodejs, python, rust; \
                 rust runs on the same wasm pool); add one to Lang::sum_script in \
                 loadtest/src/script.rs"
            ),
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_languages_say_so() {
        assert!(Lang::Nodejs.sum_script().is_ok());
        assert!(Lang::Python.sum_script().is_ok());
        assert!(Lang::Rust.sum_script().unwrap().contains("fn handler"));
        let err = Lang::Wasm.sum_script().unwrap_err().to_string();
        assert!(err.contains("no script for `wasm`"), "{err}");
    }
}
