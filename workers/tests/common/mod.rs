//! Helpers shared by the runtime test files.
// Each test binary uses some of these; helpers are `pub` across its modules.
#![allow(dead_code, unreachable_pub)]

use schemas::Language;
use serde_json::{json, Value};
use std::{path::Path, time::Duration};
use workers::runtime::{Execution, Invocation, Pool};

/// A job of `language` with a test context, as the worker would build it.
pub fn invocation(language: Language, script: &str, params: Value, timeout_ms: u64) -> Invocation {
    Invocation::new(
        language,
        script.to_owned(),
        params.to_string(),
        json!({"env": "test"}).to_string(),
        Duration::from_millis(timeout_ms),
    )
    .unwrap()
}

/// Runs `script` with a 10 s timeout on `pool`.
pub async fn run(pool: &Pool, script: &str, params: Value) -> Execution {
    let invocation = invocation(pool.language(), script, params, 10_000);
    pool.execute(&invocation).await.unwrap()
}

/// The result of a job that must have succeeded.
pub fn result(execution: &Execution) -> Value {
    let json = execution.outcome.as_ref().expect("the script succeeded");
    serde_json::from_str(json).unwrap()
}

/// The details of a job that must have failed.
pub fn error_details(execution: &Execution) -> Value {
    let error = execution.outcome.as_ref().expect_err("the script failed");
    serde_json::from_str(error.details_json.as_deref().unwrap()).unwrap()
}

/// `pid` and every process below it.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = |p: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split(' ').nth(1)?.parse::<u32>().ok()
    };
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![pid];
    let mut grew = true;
    while grew {
        grew = false;
        for &p in &all {
            if !found.contains(&p) && parent_of(p).is_some_and(|parent| found.contains(&parent)) {
                found.push(p);
                grew = true;
            }
        }
    }
    found
}

/// Waits until a script running under the runtime process `pid` has created
/// `/tmp/<name>`. Sandboxed, its /tmp is visible from here only through the
/// /proc entry of the process (the launcher's grandchild).
pub async fn wait_for_scratch_file(pid: u32, name: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !descendants(pid)
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}/root/tmp/{name}")).exists())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/tmp/{name} did not appear under process {pid}"));
}
