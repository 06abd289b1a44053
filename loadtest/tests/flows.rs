//! Each flow run briefly against a whole stack (api, dispatcher and a worker
//! serving Node.js and wasm, on a fresh database and NATS prefix, against the
//! machine's PostgreSQL, Redis and NATS): every job must come back with the
//! right result, and the summaries must say so.

use std::time::Duration;

use clap::Parser as _;
use loadtest::cli::{Cli, Flow};
use schemas::{Language, Subjects};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn admin_url() -> String {
    env_or(
        "TEST_ADMIN_DATABASE_URL",
        "postgres://postgres:postgres@127.0.0.1:5432/postgres",
    )
}

fn nats_url() -> String {
    env_or("TEST_NATS_URL", "nats://127.0.0.1:4222")
}

/// The api, a dispatcher and a worker on their own database and NATS prefix.
struct Stack {
    base: String,
    prefix: String,
    db_name: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Stack {
    async fn start() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let (db_name, prefix) = (format!("lt_{id}"), format!("t{}", &id[..16]));
        let admin = sqlx::PgPool::connect(&admin_url()).await.expect("admin db");
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let database_url = admin_url().rsplit_once('/').unwrap().0.to_owned() + "/" + &db_name;
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut config = api::Config::from_defaults();
        config.bind_addr = "127.0.0.1:0".parse().unwrap();
        config.database_url = database_url.clone();
        config.redis_url = Some(env_or("TEST_REDIS_URL", "redis://127.0.0.1:6379"));
        config.nats_url = nats_url();
        config.nats_prefix = prefix.clone();
        // As the local start runs it, which the load generator is aimed at.
        config.auth_disabled = true;
        config.rate_limit_disabled = true;
        let app = api::App::build(config).await.expect("api starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            app.run(token).await.expect("api runs")
        }));

        let mut config = dispatcher::Config::from_defaults();
        config.database_url = database_url;
        config.nats_url = nats_url();
        config.nats_prefix = prefix.clone();
        let app = dispatcher::App::build(config)
            .await
            .expect("dispatcher starts");
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            app.run(token).await.expect("dispatcher runs")
        }));

        let mut config = workers::Config::from_env();
        config.nats_url = nats_url();
        config.nats_prefix = prefix.clone();
        config.languages = vec![Language::Nodejs, Language::Wasm];
        config.nodejs_pool_size = 2;
        config.wasm_concurrency = 2;
        config.heartbeat_ms = 200;
        config.worker_id = format!("loadtest-{prefix}");
        let app = workers::App::build(config).await.expect("worker starts");
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { app.run(token).await }));

        let stack = Self {
            base,
            prefix,
            db_name,
            shutdown,
            tasks,
        };
        stack.wait_for_runtimes().await;
        stack
    }

    /// Waits until `/health` lists live Node.js and wasm runtimes.
    async fn wait_for_runtimes(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let url = format!("{}/health", self.base);
        loop {
            let health: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
            let runtimes = &health["components"]["runtimes"];
            if runtimes["nodejs"]["status"] == "ok" && runtimes["wasm"]["status"] == "ok" {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "runtimes not announced: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The flow a `loadtest` command line asks for, aimed at this stack.
    fn flow(&self, line: &str, json: &std::path::Path) -> Flow {
        let mut args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        args.insert(0, "loadtest".into());
        args.extend(["--url".into(), self.base.clone()]);
        args.extend(["--json".into(), json.display().to_string()]);
        if args[1] == "nats" {
            args.extend(["--nats-url".into(), nats_url()]);
            args.extend(["--nats-prefix".into(), self.prefix.clone()]);
        }
        Cli::try_parse_from(args)
            .expect("a valid command line")
            .flow
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        let admin = sqlx::PgPool::connect(&admin_url()).await.expect("admin db");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.db_name
        ))
        .execute(&admin)
        .await
        .expect("drop test database");
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.expect("nats"));
        let subjects = Subjects::new(&self.prefix);
        let _ = js.delete_stream(subjects.jobs_stream()).await;
        let _ = js.delete_stream(subjects.events_stream()).await;
    }
}

/// A fresh path for a `--json` summary.
fn json_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("loadtest-{}.json", Uuid::new_v4()))
}

fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).expect("--json wrote the summary");
    std::fs::remove_file(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_runs_every_language_script_with_distinct_params() {
    let stack = Stack::start().await;
    for lang in ["nodejs", "wasm"] {
        let path = json_path();
        let line = format!("sync --lang {lang} --concurrency 4 --duration 1s");
        let Flow::Sync(args) = stack.flow(&line, &path) else {
            unreachable!()
        };
        let summary = loadtest::sync::run(args).await.expect("sync runs");
        assert!(summary.requests >= 10, "{summary}");
        assert_eq!(summary.error_count(), 0, "{summary}");
        assert!(summary.latency_ms.p50 > 0.0, "{summary}");
        let json = read_json(&path);
        assert_eq!(json["flow"], "sync");
        assert_eq!(json["lang"], lang);
        assert_eq!(json["requests"], summary.requests);
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_waits_for_every_job_and_checks_its_result() {
    let stack = Stack::start().await;
    let path = json_path();
    let line = "batch --lang nodejs --jobs 300 --batch-size 120 --concurrency 2 --poll-interval 100ms --timeout 60s";
    let Flow::Batch(args) = stack.flow(line, &path) else {
        unreachable!()
    };
    let summary = loadtest::batch::run(args).await.expect("batch runs");
    assert_eq!(
        (summary.accepted, summary.terminal, summary.succeeded),
        (300, 300, 300),
        "{summary}"
    );
    assert_eq!(summary.error_count(), 0, "{summary}");
    assert!(summary.submit_s > 0.0 && summary.submit_s <= summary.end_to_end_s);
    assert!(summary.throughput_jobs_s > 0.0, "{summary}");
    assert!(summary.latency_ms.p50 > 0.0, "{summary}");
    let json = read_json(&path);
    assert_eq!(json["flow"], "batch");
    assert_eq!(json["succeeded"], 300);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_collects_a_terminal_record_for_every_publish() {
    let stack = Stack::start().await;
    for line in [
        "nats --lang wasm --jobs 300 --concurrency 32 --timeout 60s",
        "nats --lang nodejs --jobs 200 --no-reply --session --timeout 60s",
    ] {
        let path = json_path();
        let Flow::Nats(args) = stack.flow(line, &path) else {
            unreachable!()
        };
        let summary = loadtest::nats::run(args).await.expect("nats runs");
        let jobs = summary.jobs;
        assert_eq!(
            (summary.accepted, summary.terminal, summary.succeeded),
            (jobs, jobs, jobs),
            "{line}: {summary}"
        );
        assert_eq!(summary.error_count(), 0, "{line}: {summary}");
        assert!(summary.throughput_jobs_s > 0.0, "{summary}");
        assert!(summary.latency_ms.max >= summary.latency_ms.p50);
        let json = read_json(&path);
        assert_eq!(json["flow"], "nats");
        assert_eq!(json["terminal"], jobs);
    }

    // No dispatcher listens under another prefix: every submission fails,
    // and the summary says how.
    let path = json_path();
    let Flow::Nats(mut args) = stack.flow("nats --lang nodejs --jobs 5 --timeout 5s", &path) else {
        unreachable!()
    };
    args.nats_prefix = format!("{}-nobody", stack.prefix);
    let summary = loadtest::nats::run(args).await.expect("nats runs");
    assert_eq!((summary.accepted, summary.succeeded), (0, 0), "{summary}");
    assert_eq!(summary.errors["no_responders"], 5, "{summary}");
    std::fs::remove_file(&path).unwrap();
    stack.stop().await;
}
