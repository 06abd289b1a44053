//! A whole stack per test: a fresh PostgreSQL database, a unique NATS prefix,
//! the API on port 0, a worker, and a dispatcher. `stop` removes it all.

use reqwest::StatusCode;
use schemas::{Language, Subjects};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Where tests create and drop their databases.
pub fn admin_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// How a test wants its stack.
pub struct Options {
    pub redis_url: Option<String>,
    pub worker: bool,
    pub session_expiry_seconds: u64,
    pub max_script_size: usize,
    /// What the worker serves (when there is one).
    pub languages: Vec<Language>,
    /// Accept callback URLs on this machine (`CALLBACK_ALLOW_PRIVATE`).
    pub callback_allow_private: bool,
    /// The NATS server, when not the machine's.
    pub nats_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            redis_url: Some(redis_url()),
            worker: true,
            session_expiry_seconds: 3600,
            max_script_size: 1024 * 1024,
            languages: vec![Language::Nodejs],
            callback_allow_private: true,
            nats_url: None,
        }
    }
}

pub struct Stack {
    pub base: String,
    pub http: reqwest::Client,
    pub worker: Option<workers::AppHandle>,
    pub database_url: String,
    pub prefix: String,
    /// Where the dispatcher serves `/metrics`.
    pub dispatcher_metrics: String,
    /// Where the worker serves `/metrics` (when there is one).
    pub worker_metrics: Option<String>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    db_name: String,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("lt_{id}");
        let prefix = format!("t{}", &id[..16]);
        let admin = sqlx::PgPool::connect(&admin_url()).await.expect("admin db");
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let database_url = admin_url().rsplit_once('/').unwrap().0.to_owned() + "/" + &db_name;

        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let nats_url = options.nats_url.unwrap_or_else(nats_url);

        let mut config = api::Config::from_defaults();
        config.bind_addr = "127.0.0.1:0".parse().unwrap();
        config.database_url = database_url.clone();
        config.redis_url = options.redis_url;
        config.nats_url = nats_url.clone();
        config.nats_prefix = prefix.clone();
        config.session_expiry_seconds = options.session_expiry_seconds;
        config.max_script_size = options.max_script_size;
        config.queue_wait_ms = 3000;
        config.callback_allow_private = options.callback_allow_private;
        let app = api::App::build(config).await.expect("api starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            app.run(token).await.expect("api runs")
        }));

        let mut dconfig = dispatcher::Config::from_defaults();
        dconfig.database_url = database_url.clone();
        dconfig.nats_url = nats_url.clone();
        dconfig.sweep_after_seconds = 5;
        dconfig.sweep_interval_ms = 1000;
        dconfig.nats_prefix = prefix.clone();
        dconfig.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        let dispatcher = dispatcher::App::build(dconfig)
            .await
            .expect("dispatcher starts");
        let dispatcher_metrics = metrics_url(dispatcher.metrics_port());
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            dispatcher.run(token).await.expect("dispatcher runs")
        }));

        let mut worker = None;
        let mut worker_metrics = None;
        if options.worker {
            let mut wconfig = workers::Config::from_env();
            wconfig.nats_url = nats_url.clone();
            wconfig.nats_prefix = prefix.clone();
            wconfig.languages = options.languages.clone();
            wconfig.nodejs_pool_size = 2;
            wconfig.python_pool_size = 2;
            wconfig.wasm_concurrency = 2;
            wconfig.heartbeat_ms = 200;
            wconfig.worker_id = format!("test-{prefix}");
            wconfig.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
            let app = workers::App::build(wconfig).await.expect("worker starts");
            worker_metrics = Some(metrics_url(app.metrics_port()));
            worker = Some(app.handle());
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move { app.run(token).await }));
        }

        let stack = Self {
            base,
            http: reqwest::Client::new(),
            worker,
            database_url,
            prefix,
            dispatcher_metrics,
            worker_metrics,
            shutdown,
            tasks,
            db_name,
        };
        if options.worker {
            for language in &options.languages {
                stack
                    .wait_for(&format!("the {language} runtime to be announced"), |h| {
                        h["components"]["runtimes"][language.as_str()]["status"] == "ok"
                    })
                    .await;
            }
        }
        stack
    }

    /// Polls `/health` until `check` holds (10 s at most).
    pub async fn wait_for(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, health) = self.get("/health").await;
            if check(&health) {
                return health;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        read(response).await
    }

    /// POSTs raw bytes with the given headers.
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request.send().await.expect("POST")).await
    }

    /// POSTs a JSON body with extra headers.
    pub async fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (StatusCode, Value) {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.post_raw(path, &all, body.to_string()).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        read(response).await
    }

    /// Polls a job until `check` holds (`within` at most); returns its record.
    pub async fn wait_job(
        &self,
        id: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, job) = self.get(&format!("/api/v1/jobs/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{job}");
            if check(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job never got there: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `initialize` with a Language-Title, a script and a context.
    pub async fn initialize(
        &self,
        title: &str,
        script: &str,
        context: Value,
    ) -> (StatusCode, Value) {
        let body = json!({"context": context, "script_content": script});
        self.post_raw(
            "/api/v1/initialize",
            &[
                ("Language-Title", title),
                ("Content-Type", "application/json"),
            ],
            body.to_string(),
        )
        .await
    }

    /// `initialize` that must succeed; returns the request id.
    pub async fn session(&self, title: &str, script: &str) -> String {
        let (status, body) = self.initialize(title, script, json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["request_id"].as_str().expect("request_id").to_owned()
    }

    pub async fn execute(&self, request_id: &str, params: Value) -> (StatusCode, Value) {
        self.post_raw(
            &format!("/api/v1/execute/{request_id}"),
            &[("Content-Type", "application/json")],
            json!({"params": params}).to_string(),
        )
        .await
    }

    /// Live Node.js child processes of the worker.
    pub fn node_pids(&self) -> Vec<u32> {
        self.worker
            .as_ref()
            .expect("worker")
            .runtime_pids(Language::Nodejs)
    }

    /// Stops every process of the stack and removes its database and stream.
    pub async fn stop(self) {
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
        let client = async_nats::connect(nats_url()).await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let subjects = Subjects::new(&self.prefix);
        let _ = js.delete_stream(subjects.jobs_stream()).await;
        let _ = js.delete_stream(subjects.events_stream()).await;
    }
}

/// The `/metrics` URL of a process serving metrics on `port`.
fn metrics_url(port: Option<u16>) -> String {
    format!(
        "http://127.0.0.1:{}/metrics",
        port.expect("metrics are served")
    )
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: not JSON ({content_type}): {text}"));
    (status, body)
}

/// Asserts the contract's error shape and code.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The seed's quick-start script.
pub const ADD: &str = "return event.params.a + event.params.b;";
