//! The Node.js pool on its own, without NATS: the script contract, failures
//! and recovery.

mod common;

use common::{error_details, result, run};

use schemas::{ErrorCode, Language};
use serde_json::{json, Value};
use std::time::Duration;
use workers::runtime::{
    node::{NodeLauncher, NodeOptions},
    Invocation, Pool,
};

async fn pool(size: usize) -> Pool {
    let launcher = NodeLauncher::new(&NodeOptions::default()).expect("node is installed");
    Pool::start(Box::new(launcher), size)
        .await
        .expect("pool starts")
}

fn invocation(script: &str, params: Value, timeout_ms: u64) -> Invocation {
    common::invocation(Language::Nodejs, script, params, timeout_ms)
}

/// Waits until the pool is back to `size` processes.
async fn full_again(pool: &Pool, size: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.pids().len() < size {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the pool refills");
}

const ADD: &str = "return event.params.a + event.params.b;";

#[tokio::test]
async fn function_body_sees_params() {
    let pool = pool(1).await;
    let execution = run(&pool, ADD, json!({"a": 5, "b": 3})).await;
    assert_eq!(result(&execution), json!(8));
    assert!(execution.elapsed > Duration::ZERO);
    // Cached by hash: a second run gives the same answer.
    assert_eq!(
        result(&run(&pool, ADD, json!({"a": 1, "b": 1})).await),
        json!(2)
    );
}

#[tokio::test]
async fn modules_export_handlers() {
    let pool = pool(1).await;
    let script = "module.exports = async (event) => ({ sum: event.params.a + event.params.b });";
    let execution = run(&pool, script, json!({"a": 2, "b": 2})).await;
    assert_eq!(result(&execution), json!({"sum": 4}));

    let script = "exports.handler = async (event, context) => [context.env, event.context.env];";
    assert_eq!(
        result(&run(&pool, script, json!({})).await),
        json!(["test", "test"])
    );

    let execution = run(&pool, "module.exports = { nothing: 1 };", json!({})).await;
    assert_eq!(
        error_details(&execution)["message"],
        "module does not export a handler"
    );
}

#[tokio::test]
async fn awaits_promises_and_maps_undefined_to_null() {
    let pool = pool(1).await;
    let script = "await new Promise((r) => setTimeout(r, 50)); return 'late';";
    assert_eq!(result(&run(&pool, script, json!({})).await), json!("late"));
    assert_eq!(
        result(&run(&pool, "let x = 1;", json!({})).await),
        Value::Null
    );
}

#[tokio::test]
async fn thrown_errors_report_the_script_line() {
    let pool = pool(1).await;
    let script = "const x = 1;\n\nthrow new Error('boom');";
    let execution = run(&pool, script, json!({})).await;
    let error = execution.outcome.as_ref().unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert_eq!(error.message, "Error: boom");
    let details = error_details(&execution);
    assert_eq!(details["line"], 3);
    assert_eq!(details["name"], "Error");
    assert!(details["stack"].as_str().unwrap().contains("boom"));

    let module = "exports.handler = async () => {\n  return null.x;\n};";
    let details = error_details(&run(&pool, module, json!({})).await);
    assert_eq!(details["name"], "TypeError");
    assert_eq!(details["line"], 2);
}

#[tokio::test]
async fn captures_console_output() {
    let pool = pool(1).await;
    let script = "console.log('hello', {a: 1}); console.error('oops'); \
                  process.stdout.write('stray\\n'); return 1;";
    let execution = run(&pool, script, json!({})).await;
    assert_eq!(result(&execution), json!(1));
    assert_eq!(execution.logs, ["hello { a: 1 }", "oops"]);
    // A job's logs are its own.
    assert!(run(&pool, ADD, json!({"a": 1, "b": 2}))
        .await
        .logs
        .is_empty());

    let script = "for (let i = 0; i < 100000; i++) console.log('x'.repeat(100)); return 'done';";
    let execution = run(&pool, script, json!({})).await;
    assert_eq!(result(&execution), json!("done"));
    assert_eq!(execution.logs.last().unwrap(), "[logs truncated]");
    let bytes: usize = execution.logs.iter().map(String::len).sum();
    assert!(bytes <= 1024 * 1024 + 100, "logs of {bytes} bytes");
}

#[tokio::test]
async fn results_must_be_json_within_the_limit() {
    let pool = pool(1).await;
    let execution = run(&pool, "return 10n;", json!({})).await;
    let details = error_details(&execution);
    assert_eq!(details["name"], "TypeError");
    assert!(details["message"]
        .as_str()
        .unwrap()
        .starts_with("result is not JSON-serialisable"));

    let execution = run(&pool, "const a = {}; a.a = a; return a;", json!({})).await;
    assert_eq!(error_details(&execution)["name"], "TypeError");

    let execution = run(&pool, "return 'x'.repeat(2 * 1024 * 1024);", json!({})).await;
    let error = execution.outcome.unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert!(
        error.message.contains("result too large"),
        "{}",
        error.message
    );
    assert_eq!(
        result(&run(&pool, ADD, json!({"a": 1, "b": 2})).await),
        json!(3)
    );
}

#[tokio::test]
async fn endless_loop_times_out_and_the_pool_recovers() {
    let pool = pool(1).await;
    let before = pool.pids();
    let execution = pool
        .execute(&invocation("while (true) {}", json!({}), 500))
        .await
        .unwrap();
    let error = execution.outcome.unwrap_err();
    assert_eq!(error.code, ErrorCode::Timeout);
    assert_eq!(error.message, "script exceeded its timeout of 500 ms");
    assert_eq!(
        result(&run(&pool, ADD, json!({"a": 5, "b": 3})).await),
        json!(8)
    );
    assert_ne!(pool.pids(), before);
}

#[tokio::test]
async fn child_killed_from_outside_fails_the_job_and_is_replaced() {
    let pool = pool(1).await;
    let pid = pool.pids()[0];
    let script = "require('fs').writeFileSync('/tmp/started', '');\n\
                  await new Promise((r) => setTimeout(r, 5000)); return 1;";
    let job = invocation(script, json!({}), 10_000);
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute(&job).await }
    });
    common::wait_for_scratch_file(pid, "started").await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    let execution = running.await.unwrap().unwrap();
    let error = execution.outcome.unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert_eq!(
        error.message,
        "runtime process exited unexpectedly (signal 9)"
    );
    assert_eq!(
        result(&run(&pool, ADD, json!({"a": 5, "b": 3})).await),
        json!(8)
    );
    assert!(!pool.pids().contains(&pid));
}

#[tokio::test]
async fn process_exit_fails_the_job_and_is_replaced() {
    let pool = pool(1).await;
    let execution = run(&pool, "process.exit(3);", json!({})).await;
    let error = execution.outcome.unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert_eq!(
        error.message,
        "runtime process exited unexpectedly (exit code 3)"
    );
    assert_eq!(
        result(&run(&pool, ADD, json!({"a": 5, "b": 3})).await),
        json!(8)
    );
}

#[tokio::test]
async fn writes_to_the_protocol_fd_cannot_break_the_next_job() {
    let pool = pool(1).await;
    let script = "require('fs').writeSync(1, 'junk\\n'); return 1;";
    let error = run(&pool, script, json!({})).await.outcome.unwrap_err();
    assert_eq!(error.message, "runtime protocol error");
    assert_eq!(
        result(&run(&pool, ADD, json!({"a": 5, "b": 3})).await),
        json!(8)
    );
}

#[tokio::test]
async fn errors_escaping_the_handler_fail_the_job_and_recycle_the_process() {
    let pool = pool(1).await;
    let before = pool.pids();
    let script = "setTimeout(() => { throw new RangeError('late'); }, 10);\n\
                  await new Promise(() => {});";
    let execution = run(&pool, script, json!({})).await;
    assert_eq!(error_details(&execution)["name"], "RangeError");
    full_again(&pool, 1).await;
    assert_ne!(pool.pids(), before);
    assert_eq!(
        result(&run(&pool, ADD, json!({"a": 5, "b": 3})).await),
        json!(8)
    );
}

#[tokio::test]
async fn invalid_params_are_refused_before_running() {
    let error = Invocation::new(
        Language::Nodejs,
        ADD.into(),
        "{not json".into(),
        "{}".into(),
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidParams);
}

#[tokio::test]
async fn runs_jobs_concurrently_on_every_process() {
    let pool = pool(2).await;
    let script = "await new Promise((r) => setTimeout(r, 20)); return event.params.a * 2;";
    let jobs = (0..20).map(|a| {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute(&invocation(script, json!({"a": a}), 10_000))
                .await
        })
    });
    let executions = futures::future::join_all(jobs).await;
    for (a, execution) in executions.into_iter().enumerate() {
        assert_eq!(result(&execution.unwrap().unwrap()), json!(a * 2));
    }
    assert_eq!(pool.busy(), 0);
    // The two that ran the jobs, and maybe the spare started meanwhile.
    assert!((2..=3).contains(&pool.pids().len()), "{:?}", pool.pids());
}

#[tokio::test]
async fn shutdown_stops_every_process() {
    let pool = pool(2).await;
    let pids = pool.pids();
    assert_eq!(pids.len(), 2);
    pool.shutdown(Duration::from_secs(1)).await;
    assert!(pool.pids().is_empty());
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(pool
        .execute(&invocation(ADD, json!({}), 1000))
        .await
        .is_err());
}
