//! How a pool keeps its runtimes: owners never share a process, scopes never
//! share globals, processes are recycled after a number of jobs, stopped when
//! idle and started again on demand.

use schemas::Language;
use serde_json::{json, Value};
use std::time::Duration;
use workers::runtime::{
    node::{NodeLauncher, NodeOptions},
    Invocation, Pool, PoolPolicy,
};

async fn pool(policy: PoolPolicy) -> Pool {
    let launcher = NodeLauncher::new(&NodeOptions::default()).expect("node is installed");
    Pool::start_with(Box::new(launcher), policy)
        .await
        .expect("pool starts")
}

/// Runs `script` for `owner` in `scope` and returns its result.
async fn run(pool: &Pool, owner: &str, scope: &str, script: &str) -> Value {
    let invocation = Invocation::new(
        Language::Nodejs,
        script.to_owned(),
        "{}".into(),
        "{}".into(),
        Duration::from_secs(10),
    )
    .unwrap()
    .for_owner(owner, scope);
    let execution = pool.execute(&invocation).await.unwrap();
    serde_json::from_str(execution.outcome.as_ref().expect("the script succeeded")).unwrap()
}

/// An identity of the process that runs it (inside the sandbox every
/// process has the same pid): a random number kept on the shared `process`.
const PID: &str = "return process.instanceId ??= Math.random();";

async fn eventually(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn scopes_do_not_share_globals_or_prototypes() {
    let pool = pool(PoolPolicy::new(1)).await;
    let pollute = "globalThis.secret = 's3cr3t'; Object.prototype.polluted = 'yes'; \
                   Array.prototype.push = () => 'hijacked'; return 'done';";
    assert_eq!(run(&pool, "o", "session-a", pollute).await, "done");
    let look = "return [typeof secret, ({}).polluted === undefined, [].push(1)];";
    assert_eq!(
        run(&pool, "o", "session-b", look).await,
        json!(["undefined", true, 1]),
        "another session sees none of it"
    );
    assert_eq!(
        run(&pool, "o", "session-a", "return secret;").await,
        "s3cr3t",
        "a session keeps its own globals between runs"
    );
}

#[tokio::test]
async fn a_process_never_runs_two_owners_code() {
    let pool = pool(PoolPolicy::new(1)).await;
    let alice = run(&pool, "alice", "a", PID).await;
    assert_eq!(
        run(&pool, "alice", "a2", PID).await,
        alice,
        "the owner's process is reused"
    );
    let bob = run(&pool, "bob", "b", PID).await;
    assert_ne!(bob, alice, "another owner gets a fresh process");
    assert_eq!(pool.pids().len(), 1, "alice's process was stopped");
    assert_eq!(run(&pool, "bob", "b", PID).await, bob);
}

#[tokio::test]
async fn processes_are_recycled_after_max_uses() {
    let pool = pool(PoolPolicy {
        max_uses: 3,
        ..PoolPolicy::new(1)
    })
    .await;
    let first = run(&pool, "o", "s", PID).await;
    assert_eq!(run(&pool, "o", "s", PID).await, first);
    assert_eq!(run(&pool, "o", "s", PID).await, first);
    assert_ne!(
        run(&pool, "o", "s", PID).await,
        first,
        "replaced after 3 jobs"
    );
}

#[tokio::test]
async fn idle_processes_stop_and_start_again_on_demand() {
    let pool = pool(PoolPolicy {
        idle_timeout: Duration::from_millis(200),
        ..PoolPolicy::new(2)
    })
    .await;
    assert_eq!(pool.pids().len(), 2, "prewarmed");
    eventually("idle processes to stop", || pool.pids().is_empty()).await;
    assert_eq!(run(&pool, "o", "s", "return 1;").await, 1);
    assert_eq!(pool.pids().len(), 1, "started on demand");
}

#[tokio::test]
async fn without_prewarm_the_first_job_starts_a_process() {
    let pool = pool(PoolPolicy {
        prewarm: 0,
        ..PoolPolicy::new(2)
    })
    .await;
    assert!(pool.pids().is_empty());
    assert_eq!(run(&pool, "o", "s", "return 6 * 7;").await, 42);
    assert_eq!(pool.warm(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_pools_keep_their_warm_processes() {
    // Jobs queue for the slots; as one ends the next takes its slot at
    // once. No healthy process may be stopped as surplus meanwhile (and
    // then started again cold for the next job).
    let pool = pool(PoolPolicy::new(2)).await;
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    assert_eq!(run(&pool, "o", "s", "return 1;").await, 1, "task {task}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.surplus, 0, "{stats:?}");
    assert_eq!(
        stats.started, 2,
        "only the prewarmed processes ran: {stats:?}"
    );
}
