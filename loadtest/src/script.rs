//! The trivial per-language scripts a load test registers: each returns
//! `params.a + params.b`, so the load test measures the platform, not the script.

use clap::ValueEnum;

/// A runtime language of the API (`Language-Title: <lang>-<title>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Nodejs,
    Python,
    Rust,
    Wasm,
}

/// A WASI command that reads the event JSON on stdin, finds the integers
/// after the keys `"a"` and `"b"` (wherever they are, whatever the spacing)
/// and writes their sum as JSON on stdout.
const WAT_SUM: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0: iovec, 16: byte count, ..1000: the result's digits, 1024..: stdin
  (func $space (param $c i32) (result i32)
    (i32.or
      (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
      (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))))
  (func $skip_space (param $p i32) (result i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (call $space (i32.load8_u (local.get $p)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))
  (func $number_at (param $p i32) (result i64)
    (local $negative i32) (local $n i64) (local $digit i32)
    (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 45))
      (then
        (local.set $negative (i32.const 1))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))))
    (block $done
      (loop $next
        (local.set $digit (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
        (br_if $done (i32.ge_u (local.get $digit) (i32.const 10)))
        (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 10))
                               (i64.extend_i32_u (local.get $digit))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (if (result i64) (local.get $negative)
      (then (i64.sub (i64.const 0) (local.get $n)))
      (else (local.get $n))))
  ;; The integer after the first `"<key>":` below $end; 0 when there is none.
  (func $value_of (param $key i32) (param $end i32) (result i64)
    (local $p i32) (local $q i32)
    (local.set $p (i32.const 1024))
    (block $absent
      (loop $scan
        (br_if $absent (i32.ge_u (i32.add (local.get $p) (i32.const 2)) (local.get $end)))
        (if (i32.and
              (i32.and (i32.eq (i32.load8_u (local.get $p)) (i32.const 34))
                       (i32.eq (i32.load8_u offset=1 (local.get $p)) (local.get $key)))
              (i32.eq (i32.load8_u offset=2 (local.get $p)) (i32.const 34)))
          (then
            (local.set $q (call $skip_space (i32.add (local.get $p) (i32.const 3))))
            (if (i32.eq (i32.load8_u (local.get $q)) (i32.const 58))
              (then (return (call $number_at
                (call $skip_space (i32.add (local.get $q) (i32.const 1)))))))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan)))
    (i64.const 0))
  ;; Writes $v in decimal so that it ends at 1000; returns where it starts.
  (func $decimal (param $v i64) (result i32)
    (local $p i32) (local $u i64)
    (local.set $p (i32.const 1000))
    (local.set $u (if (result i64) (i64.lt_s (local.get $v) (i64.const 0))
      (then (i64.sub (i64.const 0) (local.get $v)))
      (else (local.get $v))))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i64.store8 (local.get $p) (i64.add (i64.rem_u (local.get $u) (i64.const 10)) (i64.const 48)))
      (local.set $u (i64.div_u (local.get $u) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $u) (i64.const 0))))
    (if (i64.lt_s (local.get $v) (i64.const 0))
      (then
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (i32.store8 (local.get $p) (i32.const 45))))
    (local.get $p))
  (func (export "_start")
    (local $total i32) (local $n i32) (local $end i32) (local $start i32)
    (loop $read
      (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $total)))
      (i32.store (i32.const 4) (i32.sub (i32.const 100000) (local.get $total)))
      (i32.store (i32.const 16) (i32.const 0))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (local.set $n (i32.load (i32.const 16)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $read (i32.gt_u (local.get $n) (i32.const 0))))
    (local.set $end (i32.add (i32.const 1024) (local.get $total)))
    (local.set $start (call $decimal (i64.add
      (call $value_of (i32.const 97) (local.get $end))
      (call $value_of (i32.const 98) (local.get $end)))))
    (i32.store (i32.const 0) (local.get $start))
    (i32.store (i32.const 4) (i32.sub (i32.const 1000) (local.get $start)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

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

    /// The Language-Title a load test registers its script as.
    pub fn language_title(self) -> String {
        format!("{}-{}", self.as_str(), crate::api::TITLE)
    }

    /// A script that returns `params.a + params.b`, as small as the language allows.
    pub fn sum_script(self) -> &'static str {
        match self {
            Lang::Nodejs => "return event.params.a + event.params.b;",
            Lang::Python => r#"result = params["a"] + params["b"]"#,
            Lang::Rust => {
                r#"fn handler(params: Value, _context: Value) -> Result<Value, String> {
    Ok(json!(params["a"].as_i64().unwrap_or(0) + params["b"].as_i64().unwrap_or(0)))
}"#
            }
            Lang::Wasm => WAT_SUM,
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The params of request or job number `n` (`b` is always 1), and the result
/// they must produce. Every run of the load generator sends params of its own
/// (`run`), so results cached by an earlier run answer nothing. Under `same`
/// every request of a run sends the same params, so a result cache can answer
/// all but the first.
pub fn params(n: u64, same: bool) -> (serde_json::Value, u64) {
    const SAME_A: u64 = 41;
    let a = if same { SAME_A } else { n };
    (
        serde_json::json!({ "a": a, "b": 1, "run": run_id() }),
        a + 1,
    )
}

/// This process's run, distinct from every earlier one.
fn run_id() -> u64 {
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RUN.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    })
}

/// Whether a script's result is `expected` (JSON numbers may come back as floats).
pub fn is_expected(result: &serde_json::Value, expected: u64) -> bool {
    result.as_u64() == Some(expected) || result.as_f64() == Some(expected as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_language_has_a_script_under_its_own_title() {
        for lang in Lang::value_variants() {
            assert!(!lang.sum_script().is_empty());
            assert_eq!(lang.language_title(), format!("{lang}-loadtest"));
        }
        assert!(Lang::Rust.sum_script().contains("fn handler"));
        assert!(Lang::Wasm.sum_script().starts_with("(module"));
    }

    #[test]
    fn params_are_distinct_unless_the_cache_is_measured() {
        let (seven, expected) = params(7, false);
        assert_eq!(
            (&seven["a"], &seven["b"], expected),
            (&json!(7), &json!(1), 8)
        );
        assert!(seven["run"].as_u64().is_some_and(|run| run > 0));
        assert_ne!(params(7, false).0, params(8, false).0);
        assert_eq!(params(7, true), params(8, true));
    }

    #[test]
    fn results_compare_as_numbers() {
        assert!(is_expected(&json!(8), 8));
        assert!(is_expected(&json!(8.0), 8));
        assert!(!is_expected(&json!(9), 8));
        assert!(!is_expected(&json!("8"), 8));
        assert!(!is_expected(&json!(null), 8));
    }
}
