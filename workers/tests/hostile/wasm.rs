//! WebAssembly jobs that try to keep what they were lent: a job asleep in a
//! host call, where epoch interruption does not reach, must give its
//! instance back at its deadline, so that sleepers cannot take every slot
//! of the engine from the jobs behind them.

use super::common::{invocation, result, run};
use schemas::{ErrorCode, Language};
use serde_json::json;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use workers::runtime::{
    wasm::{WasmEngine, WasmLauncher, WasmOptions},
    Pool,
};

/// Sleeps 30 s in `poll_oneoff` on the monotonic clock.
const SLEEP: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;

/// Writes `1` on stdout.
const ONE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "1")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

#[tokio::test]
async fn wasm_sleeping_in_a_host_call_gives_its_instance_back_at_its_timeout() {
    const CONCURRENCY: usize = 4;
    let engine = WasmEngine::new(
        WasmOptions {
            concurrency: CONCURRENCY,
            max_memory_mb: 64,
            max_output_bytes: 64 * 1024,
        },
        None,
    )
    .unwrap();
    let launcher = WasmLauncher::new(Arc::clone(&engine), Language::Wasm).unwrap();
    let pool = Arc::new(Pool::start(Box::new(launcher), CONCURRENCY).await.unwrap());

    // Four rounds of sleepers, more than the engine has instances.
    let sleepers: Vec<_> = (0..4 * CONCURRENCY)
        .map(|_| {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let started = Instant::now();
                let sleeper = invocation(Language::Wasm, SLEEP, json!({}), 300);
                let execution = pool.execute(&sleeper).await.unwrap();
                (execution, started.elapsed())
            })
        })
        .collect();
    for sleeper in sleepers {
        let (execution, took) = sleeper.await.unwrap();
        let error = execution.outcome.expect_err("a sleeper times out");
        assert_eq!(error.code, ErrorCode::Timeout, "{}", error.message);
        // Four rounds of 300 ms, with room for a slow machine, far from
        // the 30 s the sleepers asked for.
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
    }

    // Every instance is free again: the next job runs at once.
    let started = Instant::now();
    assert_eq!(result(&run(&pool, ONE, json!({})).await), json!(1));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
