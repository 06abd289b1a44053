//! The Python pool on its own, without NATS: the script contract, failures
//! and recovery.

mod common;

use common::{error_details, result, run};

use schemas::{ErrorCode, Language};
use serde_json::{json, Value};
use std::time::Duration;
use workers::runtime::{
    python::{PythonLauncher, PythonOptions},
    Invocation, Pool,
};

async fn pool(size: usize) -> Pool {
    let launcher = PythonLauncher::new(&PythonOptions::default()).expect("python3 is installed");
    Pool::start(Box::new(launcher), size)
        .await
        .expect("pool starts")
}

fn invocation(script: &str, params: Value, timeout_ms: u64) -> Invocation {
    common::invocation(Language::Python, script, params, timeout_ms)
}

/// Waits until the pool has `size` processes, none of them in `gone`.
async fn replaced(pool: &Pool, size: usize, gone: &[u32]) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let pids = pool.pids();
            if pids.len() == size && !pids.iter().any(|p| gone.contains(p)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the pool refills");
}

/// Checks that the pool still answers the seed script.
async fn still_serves(pool: &Pool) {
    let execution = run(pool, WORDS, json!({"text": "one two three"})).await;
    assert_eq!(result(&execution), json!(3));
}

/// The seed's example.
const WORDS: &str = "result = len(params[\"text\"].split())";

#[tokio::test]
async fn seed_script_counts_words() {
    let pool = pool(1).await;
    let execution = run(&pool, WORDS, json!({"text": "Hello World"})).await;
    assert_eq!(result(&execution), json!(2));
    assert!(execution.logs.is_empty());
    assert!(execution.elapsed > Duration::ZERO);
    // Compiled once, run again with other params.
    still_serves(&pool).await;
}

#[tokio::test]
async fn modules_define_handle_or_lambda_handler() {
    let pool = pool(1).await;
    let script = "def handle(params):\n    return {\"sum\": params[\"a\"] + params[\"b\"]}\n";
    let execution = run(&pool, script, json!({"a": 2, "b": 2})).await;
    assert_eq!(result(&execution), json!({"sum": 4}));

    let script = "import json\n\ndef lambda_handler(event, context):\n    \
                  return [context[\"env\"], event[\"context\"][\"env\"], event[\"params\"][\"n\"]]\n";
    let execution = run(&pool, script, json!({"n": 7})).await;
    assert_eq!(result(&execution), json!(["test", "test", 7]));

    // Top-level code sees event as well.
    let script = "result = event[\"params\"][\"n\"] * 2";
    assert_eq!(result(&run(&pool, script, json!({"n": 4})).await), json!(8));
}

#[tokio::test]
async fn async_handlers_and_top_level_await_are_run_to_completion() {
    let pool = pool(1).await;
    let script = "import asyncio\n\nasync def handle(params):\n    \
                  await asyncio.sleep(0.05)\n    return params[\"x\"] + 1\n";
    assert_eq!(result(&run(&pool, script, json!({"x": 1})).await), json!(2));

    let script = "import asyncio\n\nasync def lambda_handler(event, context):\n    \
                  await asyncio.sleep(0)\n    return context[\"env\"]\n";
    assert_eq!(result(&run(&pool, script, json!({})).await), json!("test"));

    let script = "import asyncio\nawait asyncio.sleep(0)\nresult = 'late'";
    assert_eq!(result(&run(&pool, script, json!({})).await), json!("late"));
}

#[tokio::test]
async fn missing_or_none_result_is_null() {
    let pool = pool(1).await;
    for script in ["x = 1", "result = None", "def handle(params):\n    pass\n"] {
        assert_eq!(result(&run(&pool, script, json!({})).await), Value::Null);
    }
}

#[tokio::test]
async fn globals_do_not_leak_between_runs() {
    let pool = pool(1).await;
    let script = "seen = globals().get('secret')\nsecret = params['value']\nresult = seen";
    let first = run(&pool, script, json!({"value": "one"})).await;
    assert_eq!(result(&first), Value::Null);
    let second = run(&pool, script, json!({"value": "two"})).await;
    assert_eq!(result(&second), Value::Null);
    let other = "result = 'secret' in globals()";
    assert_eq!(result(&run(&pool, other, json!({})).await), json!(false));
}

#[tokio::test]
async fn prints_are_captured_in_the_logs() {
    let pool = pool(1).await;
    let script = "import sys\nprint('hello', {'a': 1})\nprint('part', end='')\n\
                  print(' two')\nsys.stderr.write('oops\\n')\nresult = 1";
    let execution = run(&pool, script, json!({})).await;
    assert_eq!(result(&execution), json!(1));
    assert_eq!(execution.logs, ["hello {'a': 1}", "part two", "oops"]);
    // A job's logs are its own.
    assert!(run(&pool, WORDS, json!({"text": "a"}))
        .await
        .logs
        .is_empty());

    let script = "for i in range(100000):\n    print('x' * 100)\nresult = 'done'";
    let execution = run(&pool, script, json!({})).await;
    assert_eq!(result(&execution), json!("done"));
    assert_eq!(execution.logs.last().unwrap(), "[logs truncated]");
    assert_eq!(
        execution
            .logs
            .iter()
            .filter(|l| *l == "[logs truncated]")
            .count(),
        1
    );
    let bytes: usize = execution.logs.iter().map(String::len).sum();
    assert!(bytes <= 1024 * 1024 + 100, "logs of {bytes} bytes");
}

#[tokio::test]
async fn exceptions_report_the_script_line_and_stack() {
    let pool = pool(1).await;
    let script = "x = 1\n\ndef inner():\n    raise ValueError('boom ' + str(params['n']))\n\
                  \ninner()\n";
    let execution = run(&pool, script, json!({"n": 7})).await;
    let error = execution.outcome.as_ref().unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert_eq!(error.message, "ValueError: boom 7");
    let details = error_details(&execution);
    assert_eq!(details["name"], "ValueError");
    assert_eq!(details["message"], "boom 7");
    assert_eq!(details["line"], 4);
    let stack = details["stack"].as_str().unwrap();
    assert!(stack.contains("line 6, in <module>"), "{stack}");
    assert!(stack.contains("raise ValueError"), "{stack}");
    assert!(stack.ends_with("ValueError: boom 7"), "{stack}");
    assert!(!stack.contains("<string>"), "runner frames leaked: {stack}");

    let module = "def handle(params):\n    return params['missing']\n";
    let details = error_details(&run(&pool, module, json!({})).await);
    assert_eq!(details["name"], "KeyError");
    assert_eq!(details["line"], 2);
}

#[tokio::test]
async fn huge_errors_are_clipped_and_recursion_is_summarised() {
    let pool = pool(1).await;
    let execution = run(&pool, "raise ValueError('x' * 5_000_000)", json!({})).await;
    let error = execution.outcome.as_ref().unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert!(error.message.starts_with("ValueError: xxx"));
    assert!(
        error.message.len() < 20_000,
        "{} bytes",
        error.message.len()
    );

    let script = "def down(n):\n    return down(n + 1)\n\nresult = down(0)";
    let details = error_details(&run(&pool, script, json!({})).await);
    assert_eq!(details["name"], "RecursionError");
    assert_eq!(details["line"], 2);
    let stack = details["stack"].as_str().unwrap();
    assert!(stack.contains("more times]"), "{stack}");
    assert!(stack.len() < 2_000, "{stack}");
    let stats = pool.stats();
    assert_eq!(
        stats.replaced + stats.recycled,
        0,
        "the process was kept: {stats:?}"
    );
}

#[tokio::test]
async fn syntax_errors_report_their_line() {
    let pool = pool(1).await;
    let execution = run(&pool, "x = 1\ny = (\n", json!({})).await;
    let error = execution.outcome.as_ref().unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert!(
        error.message.starts_with("SyntaxError: "),
        "{}",
        error.message
    );
    assert_eq!(error_details(&execution)["line"], 2);
    still_serves(&pool).await;
}

#[tokio::test]
async fn exit_and_interrupt_fail_only_the_job() {
    let pool = pool(1).await;
    let execution = run(&pool, "import sys\nsys.exit(3)", json!({})).await;
    assert_eq!(execution.outcome.unwrap_err().message, "SystemExit: 3");
    let execution = run(&pool, "raise KeyboardInterrupt('stop')", json!({})).await;
    assert_eq!(
        execution.outcome.unwrap_err().message,
        "KeyboardInterrupt: stop"
    );
    still_serves(&pool).await;
    let stats = pool.stats();
    assert_eq!(
        stats.replaced + stats.recycled,
        0,
        "the process was kept: {stats:?}"
    );
}

#[tokio::test]
async fn results_must_be_json_within_the_limit() {
    let pool = pool(1).await;
    for script in [
        "result = {1, 2}",
        "result = float('nan')",
        "a = []\na.append(a)\nresult = a",
    ] {
        let execution = run(&pool, script, json!({})).await;
        let details = error_details(&execution);
        assert_eq!(details["name"], "TypeError", "{script}");
        assert!(
            details["message"]
                .as_str()
                .unwrap()
                .starts_with("result is not JSON-serialisable: "),
            "{details}"
        );
    }

    let execution = run(&pool, "result = 'x' * (2 * 1024 * 1024)", json!({})).await;
    let error = execution.outcome.unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert!(
        error.message.contains("result too large"),
        "{}",
        error.message
    );
    still_serves(&pool).await;
}

#[tokio::test]
async fn running_out_of_memory_is_memory_limit_and_recycles() {
    let pool = pool(1).await;
    let before = pool.pids();
    let execution = run(&pool, "hog = bytearray(512 * 1024 * 1024)", json!({})).await;
    let error = execution.outcome.as_ref().unwrap_err();
    assert_eq!(error.code, ErrorCode::MemoryLimit);
    assert_eq!(error.code.status(), 507);
    assert_eq!(error_details(&execution)["line"], 1);
    replaced(&pool, 1, &before).await;
    still_serves(&pool).await;
}

#[tokio::test]
async fn endless_loop_times_out_and_the_pool_recovers() {
    let pool = pool(1).await;
    let before = pool.pids();
    let execution = pool
        .execute(&invocation("while True:\n    pass", json!({}), 500))
        .await
        .unwrap();
    let error = execution.outcome.unwrap_err();
    assert_eq!(error.code, ErrorCode::Timeout);
    assert_eq!(error.message, "script exceeded its timeout of 500 ms");
    still_serves(&pool).await;
    assert_ne!(pool.pids(), before);
}

#[tokio::test]
async fn child_killed_from_outside_fails_the_job_and_is_replaced() {
    let pool = pool(1).await;
    let pid = pool.pids()[0];
    let script = "open('/tmp/started', 'w').close()\nimport time\ntime.sleep(5)\nresult = 1";
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
    still_serves(&pool).await;
    assert!(!pool.pids().contains(&pid));
}

#[tokio::test]
async fn os_exit_fails_the_job_and_is_replaced() {
    let pool = pool(1).await;
    let execution = run(&pool, "import os\nos._exit(3)", json!({})).await;
    let error = execution.outcome.unwrap_err();
    assert_eq!(error.code, ErrorCode::RuntimeError);
    assert_eq!(
        error.message,
        "runtime process exited unexpectedly (exit code 3)"
    );
    still_serves(&pool).await;
}

#[tokio::test]
async fn writes_to_fd_1_cannot_break_the_protocol() {
    let pool = pool(1).await;
    let script = "import os, sys\nos.write(1, b'junk\\n')\n\
                  sys.__stdout__.write('more junk\\n')\nsys.__stdout__.flush()\nresult = 1";
    assert_eq!(result(&run(&pool, script, json!({})).await), json!(1));
    still_serves(&pool).await;
    let stats = pool.stats();
    assert_eq!(
        stats.replaced + stats.recycled,
        0,
        "the process was kept: {stats:?}"
    );
}

#[tokio::test]
async fn threads_left_running_recycle_the_process() {
    let pool = pool(1).await;
    let before = pool.pids();
    let script = "import threading, time\n\
                  threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\nresult = 1";
    assert_eq!(result(&run(&pool, script, json!({})).await), json!(1));
    replaced(&pool, 1, &before).await;
    still_serves(&pool).await;
}

#[tokio::test]
async fn runs_jobs_concurrently_on_every_process() {
    let pool = pool(2).await;
    let script = "import time\ntime.sleep(0.02)\nresult = params['a'] * 2";
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

/// Warm cost of a trivial job: `cargo test -p workers --test python_pool --
/// --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_warm_execution_cost() {
    const JOBS: usize = 2000;
    let pool = pool(2).await;
    still_serves(&pool).await;
    let started = std::time::Instant::now();
    let jobs = (0..JOBS).map(|n| {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute(&invocation(WORDS, json!({"text": n.to_string()}), 10_000))
                .await
        })
    });
    for job in futures::future::join_all(jobs).await {
        assert_eq!(result(&job.unwrap().unwrap()), json!(1));
    }
    let elapsed = started.elapsed();
    println!(
        "{JOBS} jobs on 2 python processes: {elapsed:?}, {:.1} µs per job, {:.0} jobs/s",
        elapsed.as_secs_f64() * 1e6 / JOBS as f64,
        JOBS as f64 / elapsed.as_secs_f64()
    );
}
