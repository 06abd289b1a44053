//! How a pool keeps its runtimes: a process runs one function (owner,
//! script) only, scopes never share globals, the pool holds at most its
//! slots and spares, processes are recycled after a number of jobs, stopped
//! when idle and started again on demand.

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
    // One function, whose sessions (scopes) share its process but not its
    // globals; what each run does is in its params.
    let pollute = "if (event.params.step === 'pollute') { globalThis.secret = 's3cr3t'; \
                   Object.prototype.polluted = 'yes'; Array.prototype.push = () => 'hijacked'; return 'done'; } \
                   if (event.params.step === 'look') return [typeof secret, ({}).polluted === undefined, [].push(1)]; \
                   return secret;";
    assert_eq!(
        run_params(&pool, "session-a", pollute, json!({"step": "pollute"})).await,
        "done"
    );
    assert_eq!(
        run_params(&pool, "session-b", pollute, json!({"step": "look"})).await,
        json!(["undefined", true, 1]),
        "another session sees none of it"
    );
    assert_eq!(
        run_params(&pool, "session-a", pollute, json!({"step": "read"})).await,
        "s3cr3t",
        "a session keeps its own globals between runs"
    );
}

/// Runs `script` with `params` for owner `o` in `scope`.
async fn run_params(pool: &Pool, scope: &str, script: &str, params: Value) -> Value {
    let invocation = Invocation::new(
        Language::Nodejs,
        script.to_owned(),
        params.to_string(),
        "{}".into(),
        Duration::from_secs(10),
    )
    .unwrap()
    .for_owner("o", scope);
    let execution = pool.execute(&invocation).await.unwrap();
    serde_json::from_str(execution.outcome.as_ref().expect("the script succeeded")).unwrap()
}

#[tokio::test]
async fn a_process_runs_one_function_only() {
    let pool = pool(PoolPolicy::new(1)).await;
    let alice = run(&pool, "alice", "a", PID).await;
    assert_eq!(
        run(&pool, "alice", "a2", PID).await,
        alice,
        "the function's process is reused, in another scope too"
    );
    let bob = run(&pool, "bob", "b", PID).await;
    assert_ne!(bob, alice, "another owner's function gets another process");
    // The same owner, another script: another function.
    let other = "return process.instanceId ??= Math.random(); // another script";
    let alice_other = run(&pool, "alice", "a", other).await;
    assert_ne!(alice_other, alice);
    assert_ne!(alice_other, bob);
    assert!(
        pool.pids().len() <= 2,
        "one slot and one spare: {:?}",
        pool.pids()
    );
    assert!(pool.stats().evicted >= 1, "{:?}", pool.stats());
}

#[tokio::test]
async fn many_functions_round_robin_stay_within_slots_and_spares() {
    let pool = pool(PoolPolicy::new(2)).await;
    for round in 0..3 {
        for function in 0..5 {
            let script = format!("return {function}; // function {function}");
            assert_eq!(
                run(&pool, "o", "s", &script).await,
                json!(function),
                "round {round}"
            );
            assert!(pool.pids().len() <= 3, "{:?}", pool.pids());
        }
    }
    let stats = pool.stats();
    assert!(stats.evicted >= 10, "{stats:?}");
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
    // The one started for the job, and the spare it asked for.
    assert!((1..=2).contains(&pool.pids().len()), "started on demand");
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
    // The process that ran it, and maybe the spare it asked for.
    assert!((1..=2).contains(&pool.warm()), "{}", pool.warm());
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
        stats.started, 3,
        "only the prewarmed processes and one spare ran: {stats:?}"
    );
}
