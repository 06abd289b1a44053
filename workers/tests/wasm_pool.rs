//! The wasm engine and the Rust compiler on their own, without NATS: the
//! `wasm` and `rust` script contracts, limits, failures and caching.

mod common;

use base64::Engine as _;
use common::{invocation, result, run};
use schemas::{ErrorCode, Language};
use serde_json::{json, Value};
use std::{sync::Arc, time::Duration};
use workers::runtime::{
    rust::{RustCompiler, RustOptions},
    wasm::{WasmEngine, WasmLauncher, WasmOptions},
    Execution, Pool,
};

/// Reads all of stdin into memory at 1024 and writes it back to stdout.
const ECHO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start")
    (local $total i32) (local $n i32)
    (loop $read
      (i32.store (i32.const 0) (i32.add (i32.const 1024) (local.get $total)))
      (i32.store (i32.const 4) (i32.sub (i32.const 100000) (local.get $total)))
      (i32.store (i32.const 16) (i32.const 0))
      (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
      (local.set $n (i32.load (i32.const 16)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $read (i32.gt_u (local.get $n) (i32.const 0))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (local.get $total))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

/// A module that writes `stderr_text` to fd 2, `stdout_text` to fd 1, then
/// runs `tail` (e.g. a `proc_exit` call or `unreachable`). The texts are WAT
/// strings, where `\n` is one byte.
fn writer(stdout_text: &str, stderr_text: &str, tail: &str) -> String {
    let out_len = stdout_text.replace("\\n", "\n").len();
    let err_len = stderr_text.replace("\\n", "\n").len();
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "{stdout_text}")
  (data (i32.const 2048) "{stderr_text}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 2048))
    (i32.store (i32.const 4) (i32.const {err_len}))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const {out_len}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
    {tail}))"#
    )
}

const SPIN: &str = r#"(module (func (export "_start") (loop $forever (br $forever))))"#;

const MEMORY_BOMB: &str = r#"(module
  (memory 1)
  (func (export "_start")
    (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable))"#;

const ADD: &str = r#"fn handler(params: Value, _context: Value) -> Result<Value, String> {
    Ok(json!(params["a"].as_i64().unwrap() + params["b"].as_i64().unwrap()))
}"#;

async fn engine(rust: bool) -> Arc<WasmEngine> {
    let compiler = match rust {
        true => Some(Arc::new(
            RustCompiler::new(RustOptions::default())
                .await
                .expect("Debian's rustc is installed (scripts/lib.sh ensure_rust_wasm)"),
        )),
        false => None,
    };
    WasmEngine::new(
        WasmOptions {
            concurrency: 4,
            max_memory_mb: 256,
            max_output_bytes: 64 * 1024,
        },
        compiler,
    )
    .unwrap()
}

async fn pool(engine: &Arc<WasmEngine>, language: Language) -> Pool {
    let launcher = WasmLauncher::new(Arc::clone(engine), language).unwrap();
    Pool::start(Box::new(launcher), 2).await.unwrap()
}

fn error(execution: &Execution) -> (ErrorCode, String, Value) {
    let error = execution.outcome.as_ref().expect_err("the script failed");
    let details = error
        .details_json
        .as_deref()
        .map_or(Value::Null, |d| serde_json::from_str(d).unwrap());
    (error.code, error.message.clone(), details)
}

#[tokio::test]
async fn wat_module_reads_the_event_and_writes_the_result() {
    let engine = engine(false).await;
    let pool = pool(&engine, Language::Wasm).await;
    let execution = run(&pool, ECHO, json!({"a": 5, "b": [1, "x"]})).await;
    assert_eq!(
        result(&execution),
        json!({"params": {"a": 5, "b": [1, "x"]}, "context": {"env": "test"}})
    );
}

#[tokio::test]
async fn base64_binary_module_runs() {
    let engine = engine(false).await;
    let pool = pool(&engine, Language::Wasm).await;
    let binary = wat::parse_str(ECHO).unwrap();
    assert!(binary.starts_with(b"\0asm"));
    let script = base64::engine::general_purpose::STANDARD.encode(&binary);
    let execution = run(&pool, &script, json!({"n": 1})).await;
    assert_eq!(result(&execution)["params"], json!({"n": 1}));
}

#[tokio::test]
async fn stderr_becomes_logs_and_exits_and_traps_are_runtime_errors() {
    let engine = engine(false).await;
    let pool = pool(&engine, Language::Wasm).await;

    let ok = run(&pool, &writer("42", "hello from wasm\\n", ""), json!({})).await;
    assert_eq!(result(&ok), json!(42));
    assert_eq!(ok.logs, ["hello from wasm"]);

    let exit = "(call $proc_exit (i32.const 3))";
    let failed = run(&pool, &writer("", "boom\\n", exit), json!({})).await;
    let (code, message, details) = error(&failed);
    assert_eq!((code, message.as_str()), (ErrorCode::RuntimeError, "boom"));
    assert_eq!(details["exit_code"], 3);

    let trapped = run(&pool, &writer("", "", "unreachable"), json!({})).await;
    let (code, message, _) = error(&trapped);
    assert_eq!(code, ErrorCode::RuntimeError);
    assert!(message.contains("unreachable"), "{message}");

    let not_json = run(&pool, &writer("hello", "", ""), json!({})).await;
    let (code, message, details) = error(&not_json);
    assert_eq!(
        (code, message.as_str()),
        (ErrorCode::RuntimeError, "result is not JSON")
    );
    assert_eq!(details["stdout"], "hello");

    // A clean exit with code 0 is a success.
    let exit_zero = "(call $proc_exit (i32.const 0))";
    let zero = run(&pool, &writer("[1]", "", exit_zero), json!({})).await;
    assert_eq!(result(&zero), json!([1]));
}

#[tokio::test]
async fn an_endless_loop_times_out_and_the_next_job_runs() {
    let engine = engine(false).await;
    let pool = pool(&engine, Language::Wasm).await;
    let started = std::time::Instant::now();
    let spin = invocation(Language::Wasm, SPIN, json!({}), 300);
    let execution = pool.execute(&spin).await.unwrap();
    assert_eq!(error(&execution).0, ErrorCode::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    let after = run(&pool, ECHO, json!({"again": true})).await;
    assert_eq!(result(&after)["params"]["again"], true);
}

#[tokio::test]
async fn growing_memory_past_the_limit_is_a_memory_limit_error() {
    let engine = engine(false).await;
    let pool = pool(&engine, Language::Wasm).await;
    let bomb = invocation(Language::Wasm, MEMORY_BOMB, json!({}), 10_000).with_memory_mb(32);
    let execution = pool.execute(&bomb).await.unwrap();
    let (code, message, _) = error(&execution);
    assert_eq!(code, ErrorCode::MemoryLimit, "{message}");
    assert!(message.contains("32 MiB"), "{message}");
    assert_eq!(code.status(), 507);

    let after = run(&pool, ECHO, json!({})).await;
    assert!(after.outcome.is_ok());
}

#[tokio::test]
async fn invalid_modules_do_not_compile() {
    let engine = engine(false).await;
    for script in [
        "(module (func (export \"_start\") (result i32)))",
        "(module (func $broken",
        "bm90IHdhc20=",
        "(module (func (export \"main\")))",
        "(module (import \"env\" \"secret\" (func)) (func (export \"_start\")))",
    ] {
        let hash = schemas::script_hash(Language::Wasm, script);
        let refused = engine
            .compile(Language::Wasm, &hash, script, "{}")
            .await
            .expect_err(script);
        assert!(!refused.diagnostics.is_empty(), "{script}: {refused:?}");
        // Executing it answers COMPILE_ERROR, not a crash.
        let pool = pool(&engine, Language::Wasm).await;
        let execution = run(&pool, script, json!({})).await;
        assert_eq!(error(&execution).0, ErrorCode::CompileError, "{script}");
    }
    let hash = schemas::script_hash(Language::Wasm, ECHO);
    engine
        .compile(Language::Wasm, &hash, ECHO, "{}")
        .await
        .unwrap();
}

#[tokio::test]
async fn rust_handlers_compile_run_and_fail_like_the_contract_says() {
    let engine = engine(true).await;
    let pool = pool(&engine, Language::Rust).await;

    let sum = run(&pool, ADD, json!({"a": 5, "b": 3})).await;
    assert_eq!(result(&sum), json!(8));

    let bad = r#"fn handler(_p: Value, _c: Value) -> Result<Value, String> {
        eprintln!("about to fail");
        Err("bad".to_string())
    }"#;
    let failed = run(&pool, bad, json!({})).await;
    let (code, message, _) = error(&failed);
    assert_eq!((code, message.as_str()), (ErrorCode::RuntimeError, "bad"));
    assert_eq!(failed.logs, ["about to fail", "bad"]);

    let context = r#"use serde_json::Value;
    fn handler(params: Value, context: Value) -> Result<Value, String> {
        Ok(json!({"env": context["env"], "n": params["n"]}))
    }"#;
    let seen = run(&pool, context, json!({"n": 7})).await;
    assert_eq!(result(&seen), json!({"env": "test", "n": 7}));

    // A panic is a runtime error that says why.
    let panicked = run(&pool, ADD, json!({"a": 1})).await;
    let (code, message, details) = error(&panicked);
    assert_eq!(code, ErrorCode::RuntimeError);
    assert!(message.contains("panicked at"), "{message}");
    assert!(message.contains("None"), "{message}");
    assert!(
        details["trap"].as_str().unwrap().contains("unreachable"),
        "{details}"
    );
}

#[tokio::test]
async fn rust_compile_errors_carry_the_diagnostics() {
    let engine = engine(true).await;
    let source =
        "fn handler(params: Value, context: Value) -> Result<Value, String> { Ok(params + ) }";
    let hash = schemas::script_hash(Language::Rust, source);
    let refused = engine
        .compile(Language::Rust, &hash, source, "{}")
        .await
        .unwrap_err();
    assert!(
        refused.diagnostics.contains("error"),
        "{}",
        refused.diagnostics
    );
    assert!(
        refused.diagnostics.contains("expected expression"),
        "{}",
        refused.diagnostics
    );

    let undefined = "fn handler(p: Value, c: Value) -> Result<Value, String> { Ok(nope(p)) }";
    let hash = schemas::script_hash(Language::Rust, undefined);
    let refused = engine
        .compile(Language::Rust, &hash, undefined, "{}")
        .await
        .unwrap_err();
    assert!(
        refused.diagnostics.contains("nope"),
        "{}",
        refused.diagnostics
    );
}

#[tokio::test]
async fn the_rust_compile_cache_is_reused() {
    let engine = engine(true).await;
    let compiler = Arc::clone(engine.rust().unwrap());
    // A source no earlier run has compiled, so the first compile is a miss.
    let source = format!("// {}\n{ADD}", uuid::Uuid::new_v4());
    let hash = schemas::script_hash(Language::Rust, &source);
    let before = compiler.compilations();
    compiler.compile(&hash, &source, "{}").await.unwrap();
    assert_eq!(compiler.compilations(), before + 1);
    let artifact = compiler.artifacts_dir().join(format!("{hash}-Os.wasm"));
    let modified = std::fs::metadata(&artifact).unwrap().modified().unwrap();

    // Again, and from a new compiler (a restarted worker): served from disk.
    compiler.compile(&hash, &source, "{}").await.unwrap();
    let restarted = RustCompiler::new(RustOptions::default()).await.unwrap();
    restarted.compile(&hash, &source, "{}").await.unwrap();
    assert_eq!(compiler.compilations(), before + 1);
    assert_eq!(restarted.compilations(), 0);
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().modified().unwrap(),
        modified
    );

    // Another allowed opt_level is another artifact.
    compiler
        .compile(&hash, &source, r#"{"compile_options":{"opt_level":"1"}}"#)
        .await
        .unwrap();
    assert_eq!(compiler.compilations(), before + 2);
    std::fs::remove_file(artifact).unwrap();
    std::fs::remove_file(compiler.artifacts_dir().join(format!("{hash}-O1.wasm"))).unwrap();
}

#[tokio::test]
async fn a_compilation_past_its_timeout_is_stopped() {
    let compiler = RustCompiler::new(RustOptions {
        timeout: Duration::from_secs(1),
        ..RustOptions::default()
    })
    .await
    .unwrap();
    compiler.prepare().await.unwrap();
    // Thousands of functions to optimise take far longer than a second.
    let padding: String = (0..4000)
        .map(|i| format!("pub fn pad{i}(x: u64) -> Value {{ json!({{\"i\": x * {i}, \"a\": [x, {i}, {{\"s\": \"{i}\"}}]}}) }}\n"))
        .collect();
    let source = format!("// {}\n{ADD}\n{padding}", uuid::Uuid::new_v4());
    let hash = schemas::script_hash(Language::Rust, &source);
    let started = std::time::Instant::now();
    let refused = compiler.compile(&hash, &source, "{}").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        refused.diagnostics.contains("compilation exceeded"),
        "{}",
        refused.diagnostics
    );
}

#[tokio::test]
async fn rust_source_cannot_read_the_workers_secrets() {
    let engine = engine(true).await;
    let pool = pool(&engine, Language::Rust).await;
    let secret = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let first_line = secret.lines().next().unwrap_or("root:");
    for source in [
        r#"const S: &str = include_str!("/etc/shadow");
           fn handler(_p: Value, _c: Value) -> Result<Value, String> { Ok(json!(S)) }"#,
        r#"#[path = "/etc/shadow"] mod shadow;
           fn handler(_p: Value, _c: Value) -> Result<Value, String> { Ok(json!(1)) }"#,
    ] {
        let execution = run(&pool, source, json!({})).await;
        let error = execution
            .outcome
            .expect_err("reading /etc/shadow must fail");
        assert_eq!(error.code, ErrorCode::CompileError);
        let details = error.details_json.unwrap_or_default();
        assert!(!details.contains(first_line), "leaked: {details}");
        assert!(details.contains("/etc/shadow"), "{details}");
    }
}

/// Warm cost of a trivial wasm job through the pool (not asserted).
/// `cargo test -p workers --release --test wasm_pool -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_warm_wasm_jobs() {
    const JOBS: u32 = 2_000;
    let engine = engine(false).await;
    let pool = pool(&engine, Language::Wasm).await;
    let script = writer("1", "", "");
    let job = invocation(Language::Wasm, &script, json!({}), 10_000);
    pool.execute(&job).await.unwrap();
    let started = std::time::Instant::now();
    for _ in 0..JOBS {
        let execution = pool.execute(&job).await.unwrap();
        assert!(execution.outcome.is_ok());
    }
    let sequential = started.elapsed() / JOBS;

    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (pool, job) = (pool.clone(), job.clone());
            tokio::spawn(async move {
                for _ in 0..JOBS / 2 {
                    assert!(pool.execute(&job).await.unwrap().outcome.is_ok());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let parallel = started.elapsed() / JOBS;
    println!("warm wasm job: {sequential:?} each one at a time, {parallel:?} each with 2 at once");
}
