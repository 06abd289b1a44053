//! Faults while asynchronous jobs run: a worker killed with SIGKILL, a NATS
//! server restarted with jobs in its streams. Every accepted job still ends
//! with exactly one, correct, result.

use crate::support::{nats_url, Options, Stack};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Submits `count` jobs of `title` with params `{"i": 0..count}`; returns the batch id.
async fn submit(stack: &Stack, title: &str, count: usize) -> String {
    let jobs: Vec<Value> = (0..count)
        .map(|i| json!({"language_title": title, "params": {"i": i}}))
        .collect();
    let (status, body) = stack
        .post_json("/api/v1/jobs/batch", &[], json!({"jobs": jobs}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["batch_id"].as_str().unwrap().to_owned()
}

async fn count(stack: &Stack, batch: &str, status: &str) -> u64 {
    let (_, list) = stack
        .get(&format!(
            "/api/v1/jobs?batch_id={batch}&status={status}&per_page=1"
        ))
        .await;
    list["total"].as_u64().unwrap()
}

/// Waits until every job of the batch is terminal; returns them all.
async fn all_finished(stack: &Stack, batch: &str, count: usize, within: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (_, list) = stack
            .get(&format!("/api/v1/jobs?batch_id={batch}&per_page=1000"))
            .await;
        let jobs = list["jobs"].as_array().unwrap().clone();
        assert_eq!(jobs.len(), count);
        if jobs
            .iter()
            .all(|j| !matches!(j["status"].as_str(), Some("queued" | "running")))
        {
            return jobs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs still open: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts every job succeeded with `expected(i)`; returns the attempts per job.
async fn assert_results(stack: &Stack, jobs: &[Value], expected: impl Fn(u64) -> u64) -> Vec<u64> {
    let mut attempts = Vec::new();
    for job in jobs {
        assert_eq!(job["status"], "succeeded", "{job}");
        let (_, one) = stack
            .get(&format!("/api/v1/jobs/{}", job["job_id"].as_str().unwrap()))
            .await;
        assert_eq!(one, *job, "the record does not change once terminal");
        attempts.push(job["attempts"].as_u64().unwrap());
    }
    // The record names no params: compare the results as a multiset.
    let mut results: Vec<u64> = jobs.iter().map(|j| j["result"].as_u64().unwrap()).collect();
    results.sort_unstable();
    let mut want: Vec<u64> = (0..jobs.len() as u64).map(expected).collect();
    want.sort_unstable();
    assert_eq!(results, want);
    attempts
}

/// The `workers` binary of this build.
fn workers_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "-q", "-p", "workers", "--bin", "workers"])
        .status()
        .expect("cargo build");
    assert!(built.success());
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("workers")
}

fn spawn_worker(binary: &PathBuf, prefix: &str, id: &str) -> Child {
    Command::new(binary)
        .env("NATS_URL", nats_url())
        .env("NATS_PREFIX", prefix)
        .env("WORKER_NODEJS_POOL_SIZE", "2")
        .env("WORKER_HEARTBEAT_MS", "200")
        .env("WORKER_ID", id)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("workers starts")
}

#[tokio::test]
async fn jobs_survive_a_worker_killed_mid_job() {
    let binary = workers_binary();
    let stack = Stack::start_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let (s, init) = stack
        .initialize(
            "nodejs-steady",
            "await new Promise(r => setTimeout(r, 200)); return event.params.i + 1;",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let mut first = spawn_worker(&binary, &stack.prefix, "first");
    stack
        .wait_for("the first worker", |h| {
            h["components"]["runtimes"]["nodejs"]["status"] == "ok"
        })
        .await;
    let batch = submit(&stack, "nodejs-steady", 20).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(&stack, &batch, "running").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap(); // SIGKILL: no goodbye, no nak
    first.wait().unwrap();

    let mut second = spawn_worker(&binary, &stack.prefix, "second");
    // Jobs the killed worker held come back after the consumer's ack wait (30 s).
    let jobs = all_finished(&stack, &batch, 20, Duration::from_secs(90)).await;
    let attempts = assert_results(&stack, &jobs, |i| i + 1).await;
    assert!(
        attempts.iter().any(|&a| a >= 2),
        "some job was redelivered: {attempts:?}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    second.wait().unwrap();
    stack.stop().await;
}

/// A nats-server with JetStream on a free port and a store of its own.
struct PrivateNats {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateNats {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("lt-nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Self {
            dir,
            port,
            child: None,
        };
        nats.resume().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn resume(&mut self) {
        // The store limit is set explicitly: by default it follows the free
        // disk space, which may be less than the streams ask for.
        let config = self.dir.join("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:{}
jetstream {{ store_dir: \"{}\", max_file_store: 64GB }}
",
            self.port,
            self.dir.join("store").display()
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn jobs_survive_a_nats_restart() {
    let mut nats = PrivateNats::start().await;
    let stack = Stack::start_with(Options {
        nats_url: Some(nats.url()),
        ..Options::default()
    })
    .await;
    let (s, init) = stack
        .initialize(
            "nodejs-triple",
            "await new Promise(r => setTimeout(r, 10)); return event.params.i * 3;",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{init}");
    let batch = submit(&stack, "nodejs-triple", 400).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(&stack, &batch, "succeeded").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nats.pause();
    nats.resume().await;
    let jobs = all_finished(&stack, &batch, 400, Duration::from_secs(90)).await;
    assert_results(&stack, &jobs, |i| i * 3).await;
    stack.stop().await;
}
