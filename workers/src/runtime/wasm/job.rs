//! One run of a linked module: a fresh store with the job's deadline, memory
//! limit and in-memory stdio; `_start` called; the outcome read back.
//!
//! The deadline holds two ways: epoch interruption traps code that computes
//! past it, and the whole run is a future dropped at it, so that a job asleep
//! in a host call (a WASI `poll_oneoff`) is abandoned too. Dropping the future
//! drops the store, which gives the instance's pool slot back at once.

use crate::runtime::Report;
use schemas::{ErrorCode, JobError};
use serde_json::{json, value::RawValue};
use std::time::Duration;
use wasmtime::{Engine, InstancePre, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{
    p1::WasiP1Ctx,
    p2::pipe::{MemoryInputPipe, MemoryOutputPipe},
    I32Exit, WasiCtxBuilder,
};

/// The program name a module sees as `argv[0]`.
const PROGRAM_NAME: &str = "handler";
/// Most table elements a job may grow its tables to.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// How much of a non-JSON stdout is shown back.
const SHOWN_STDOUT: usize = 1024;
/// Deepest nesting of arrays and objects a result may have, as in the
/// Node.js and Python runners.
const MAX_DEPTH: usize = 100;

/// The store data of one job.
pub(crate) struct JobState {
    pub(crate) wasi: WasiP1Ctx,
    limits: MemoryLimit,
}

/// Denies growing linear memory past the job's limit, and remembers that it
/// did, so that the failure is reported as `MEMORY_LIMIT`.
struct MemoryLimit {
    max_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            wasmtime::bail!("memory limit of {} MiB exceeded", self.max_bytes >> 20);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// What one run needs besides the module.
pub(super) struct JobSpec {
    pub(super) engine: Engine,
    /// The event JSON fed on stdin.
    pub(super) input: Vec<u8>,
    pub(super) timeout: Duration,
    pub(super) epoch_tick: Duration,
    pub(super) memory_bytes: usize,
    pub(super) max_output_bytes: usize,
}

/// Runs `_start` of `pre` in a fresh store. Compute-bound: drive it on a
/// blocking thread, not on the async runtime's workers.
pub(super) async fn run(pre: &InstancePre<JobState>, spec: JobSpec) -> Report {
    let stdout = MemoryOutputPipe::new(spec.max_output_bytes);
    let stderr = MemoryOutputPipe::new(spec.max_output_bytes);
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(spec.input))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .arg(PROGRAM_NAME)
        .build_p1();
    let mut store = Store::new(
        &spec.engine,
        JobState {
            wasi,
            limits: MemoryLimit {
                max_bytes: spec.memory_bytes,
                exceeded: false,
            },
        },
    );
    store.limiter(|state| &mut state.limits);
    let ticks = spec.timeout.as_nanos() / spec.epoch_tick.as_nanos().max(1) + 1;
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.epoch_deadline_trap();

    // Past the epoch deadline by two ticks: code that computes is trapped by
    // the epoch first; only a job stuck in a host call reaches this.
    let bound = spec.timeout + spec.epoch_tick * 2;
    let running = async move {
        let called = match pre.instantiate_async(&mut store).await {
            Ok(instance) => match instance.get_typed_func::<(), ()>(&mut store, "_start") {
                Ok(start) => start.call_async(&mut store, ()).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        (called, store.data().limits.exceeded)
    };
    let Ok((called, memory_exceeded)) = tokio::time::timeout(bound, running).await else {
        return Report {
            outcome: Err(timeout_error(spec.timeout)),
            logs: lines(&stderr.contents()),
            reusable: true,
        };
    };

    let logs = lines(&stderr.contents());
    let outcome = match called {
        Ok(()) => result(&stdout.contents()),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => result(&stdout.contents()),
            Some(I32Exit(code)) => Err(exit_error(*code, &logs)),
            None if memory_exceeded => Err(JobError::new(
                ErrorCode::MemoryLimit,
                format!(
                    "the script exceeded its memory limit of {} MiB",
                    spec.memory_bytes >> 20
                ),
            )),
            None if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                Err(timeout_error(spec.timeout))
            }
            None => Err(trap_error(&e, &logs, spec.max_output_bytes)),
        },
    };
    Report {
        outcome,
        logs,
        reusable: true,
    }
}

/// The error of a job that ran out of time.
pub(super) fn timeout_error(timeout: Duration) -> JobError {
    JobError::new(
        ErrorCode::Timeout,
        format!("the script ran longer than {} ms", timeout.as_millis()),
    )
}

/// The result on stdout, which must be one JSON value that every reader
/// can take back: no lone surrogate escapes, no deeper than [`MAX_DEPTH`].
fn result(stdout: &[u8]) -> Result<String, JobError> {
    let text = String::from_utf8_lossy(stdout);
    let text = text.trim();
    // First: past the nesting limit, the JSON parser would only say "not JSON".
    readable(text).map_err(|why| JobError::new(ErrorCode::RuntimeError, why))?;
    RawValue::from_string(text.to_owned())
        .map(|raw| raw.get().to_owned())
        .map_err(|e| {
            let shown: String = text.chars().take(SHOWN_STDOUT).collect();
            JobError::new(ErrorCode::RuntimeError, "result is not JSON")
                .with_details(&json!({ "stdout": shown, "error": e.to_string() }))
        })
}

/// Checks what a JSON parser lets pass as text but no reader can decode: a
/// `\uD800`–`\uDFFF` escape that is not half of a pair, and nesting past
/// [`MAX_DEPTH`]. Whether `json` is JSON at all is left to the parser.
fn readable(json: &str) -> Result<(), String> {
    let bytes = json.as_bytes();
    let hex = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let lone =
        || "result holds a lone surrogate (half of a UTF-16 pair): not valid Unicode".to_owned();
    let (mut depth, mut in_string, mut i) = (0usize, false, 0);
    while i < bytes.len() {
        match (in_string, bytes[i]) {
            (_, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "result nested too deeply: more than {MAX_DEPTH} levels"
                    ));
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            (true, b'\\') => {
                if bytes.get(i + 1) == Some(&b'u') {
                    match hex(i + 2) {
                        Some(0xD800..=0xDBFF) => {
                            let paired = bytes.get(i + 6..i + 8) == Some(b"\\u")
                                && matches!(hex(i + 8), Some(0xDC00..=0xDFFF));
                            if !paired {
                                return Err(lone());
                            }
                            i += 6;
                        }
                        Some(0xDC00..=0xDFFF) => return Err(lone()),
                        _ => {}
                    }
                }
                // The escaped character is never a quote that ends the string.
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// A non-zero exit: the last line on stderr says why, if there is one.
fn exit_error(code: i32, logs: &[String]) -> JobError {
    let message = logs
        .iter()
        .rev()
        .find(|line| !line.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| format!("the script exited with code {code}"));
    JobError::new(ErrorCode::RuntimeError, message).with_details(&json!({ "exit_code": code }))
}

/// A trap or a failed instantiation.
fn trap_error(error: &wasmtime::Error, logs: &[String], max_output_bytes: usize) -> JobError {
    let last_log = logs.iter().rev().find(|line| !line.trim().is_empty());
    // A Rust panic prints why on stderr, then aborts with a trap.
    let panic = logs.iter().rev().find(|line| line.contains("panicked at"));
    let message = match (error.downcast_ref::<Trap>(), panic) {
        (Some(_), Some(panic)) => panic.clone(),
        (Some(trap), None) => trap.to_string(),
        (None, _) if error.to_string().contains("beyond capacity") => {
            format!("the script wrote more than {max_output_bytes} bytes")
        }
        (None, _) => error.to_string(),
    };
    JobError::new(ErrorCode::RuntimeError, message)
        .with_details(&json!({ "trap": format!("{error:#}"), "stderr": last_log }))
}

/// Captured stderr as log lines.
fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::readable;

    #[test]
    fn what_no_reader_can_decode_is_refused() {
        for ok in [
            r#""a\u0000b""#,
            r#"["\ud83d\ude00", "\\ud800", {"k": "\"[["}]"#,
            &format!("{}1{}", "[".repeat(100), "]".repeat(100)),
        ] {
            assert_eq!(readable(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            (r#""\ud800""#, "lone surrogate"),
            (r#""\udc00\ud800""#, "lone surrogate"),
            (r#"{"a": "\ud83d x"}"#, "lone surrogate"),
            (
                &format!("{}1{}", "[".repeat(101), "]".repeat(101)),
                "nested too deeply",
            ),
        ] {
            let refused = readable(bad).expect_err(bad);
            assert!(refused.contains(why), "{bad}: {refused}");
        }
    }
}
