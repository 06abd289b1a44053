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
    /// `CACHE_TTL`: 0 (the default here) runs every execute for real.
    pub cache_ttl_seconds: u64,
    /// Requests per minute by class (`RATE_LIMIT_*`); the defaults here are
    /// too high to ever refuse a test's requests.
    pub rate_limit_execute_per_minute: u32,
    pub rate_limit_anonymous_execute_per_minute: u32,
    pub rate_limit_functions_per_minute: u32,
    pub rate_limit_read_per_minute: u32,
    /// `RATE_LIMIT_FAIL_OPEN`.
    pub rate_limit_fail_open: bool,
    /// `RATE_LIMIT_TRUST_FORWARDED_FOR`.
    pub rate_limit_trust_forwarded_for: bool,
    /// How long an expired session stays readable before the dispatcher removes it.
    pub session_retention_seconds: u64,
    /// How often the dispatcher cleans up.
    pub reap_interval_seconds: u64,
    /// `REQUEST_LOG_BUFFER`.
    pub request_log_buffer: usize,
    /// Serve without credentials (`AUTH_DISABLED`); `http` then sends none.
    pub auth_disabled: bool,
    /// JWT algorithms accepted (`AUTH_JWT_ALGORITHMS`); empty: HS256 with [`JWT_SECRET`].
    pub jwt_algorithms: Vec<String>,
    /// The PEM public key of RS* tokens (`AUTH_JWT_PUBLIC_KEY`).
    pub jwt_public_key: Option<String>,
    /// Audiences tokens must name (`AUTH_JWT_AUDIENCE`).
    pub jwt_audience: Vec<String>,
    /// How long a looked-up API key is trusted (`AUTH_API_KEY_CACHE_SECONDS`).
    pub api_key_cache_seconds: u64,
    /// `SUBMIT_OWNER` of the dispatcher, whose direct NATS submissions are;
    /// `None`: the default caller's (`tester`, or `anonymous` with auth off).
    pub submit_owner: Option<String>,
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
            cache_ttl_seconds: 0,
            rate_limit_execute_per_minute: 1_000_000,
            rate_limit_anonymous_execute_per_minute: 1_000_000,
            rate_limit_functions_per_minute: 1_000_000,
            rate_limit_read_per_minute: 1_000_000,
            rate_limit_fail_open: true,
            rate_limit_trust_forwarded_for: false,
            session_retention_seconds: 86_400,
            reap_interval_seconds: 60,
            request_log_buffer: 10_000,
            auth_disabled: false,
            jwt_algorithms: Vec::new(),
            jwt_public_key: None,
            jwt_audience: Vec::new(),
            api_key_cache_seconds: 10,
            submit_owner: None,
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
    /// What the processes were started with, for [`Stack::restart`].
    api_config: api::Config,
    dispatcher_config: dispatcher::Config,
    worker_config: Option<workers::Config>,
    languages: Vec<Language>,
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
        config.cache_ttl = options.cache_ttl_seconds;
        config.rate_limit_execute_per_minute = options.rate_limit_execute_per_minute;
        config.rate_limit_anonymous_execute_per_minute =
            options.rate_limit_anonymous_execute_per_minute;
        config.rate_limit_functions_per_minute = options.rate_limit_functions_per_minute;
        config.rate_limit_read_per_minute = options.rate_limit_read_per_minute;
        config.rate_limit_fail_open = options.rate_limit_fail_open;
        config.rate_limit_trust_forwarded_for = options.rate_limit_trust_forwarded_for;
        config.request_log_buffer = options.request_log_buffer;
        config.auth_disabled = options.auth_disabled;
        config.auth_jwt_secret = Some(JWT_SECRET.to_owned().into());
        config.auth_jwt_algorithms = options.jwt_algorithms;
        config.auth_jwt_public_key = options.jwt_public_key;
        config.auth_jwt_audience = options.jwt_audience;
        config.auth_api_key_cache_seconds = options.api_key_cache_seconds;
        let api_config = config.clone();
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
        dconfig.session_retention_seconds = options.session_retention_seconds;
        dconfig.reap_interval_seconds = options.reap_interval_seconds;
        dconfig.submit_owner = options.submit_owner.clone().unwrap_or_else(|| {
            let owner = if options.auth_disabled {
                api::OWNER_ANONYMOUS
            } else {
                TESTER
            };
            owner.to_owned()
        });
        let dispatcher_config = dconfig.clone();
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
        let mut worker_config = None;
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
            worker_config = Some(wconfig.clone());
            let app = workers::App::build(wconfig).await.expect("worker starts");
            worker_metrics = Some(metrics_url(app.metrics_port()));
            worker = Some(app.handle());
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move { app.run(token).await }));
        }

        let stack = Self {
            base,
            http: client(
                (!options.auth_disabled)
                    .then(|| self::token(TESTER, &[SCOPE_EXECUTE_ALL, SCOPE_READ_FUNCTIONS])),
            ),
            worker,
            database_url,
            prefix,
            dispatcher_metrics,
            worker_metrics,
            shutdown,
            tasks,
            db_name,
            api_config,
            dispatcher_config,
            worker_config,
            languages: options.languages.clone(),
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

    /// Stops the api, the dispatcher and the worker, and starts new ones on
    /// the same database and NATS prefix (the api on a new port; with an
    /// in-process cache, an empty one).
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        self.shutdown = CancellationToken::new();
        let app = api::App::build(self.api_config.clone())
            .await
            .expect("api starts again");
        self.base = format!("http://127.0.0.1:{}", app.port());
        let token = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            app.run(token).await.expect("api runs")
        }));
        let dispatcher = dispatcher::App::build(self.dispatcher_config.clone())
            .await
            .expect("dispatcher starts again");
        let token = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            dispatcher.run(token).await.expect("dispatcher runs")
        }));
        if let Some(wconfig) = self.worker_config.clone() {
            let app = workers::App::build(wconfig)
                .await
                .expect("worker starts again");
            self.worker = Some(app.handle());
            let token = self.shutdown.clone();
            self.tasks
                .push(tokio::spawn(async move { app.run(token).await }));
            for language in self.languages.clone() {
                self.wait_for(&format!("the {language} runtime to be announced"), |h| {
                    h["components"]["runtimes"][language.as_str()]["status"] == "ok"
                })
                .await;
            }
        }
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

    /// An HS256 token for `sub` with `scopes`, valid for an hour.
    pub fn token(&self, sub: &str, scopes: &[&str]) -> String {
        token(sub, scopes)
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

/// The HMAC secret of the stack's tokens.
pub const JWT_SECRET: &str = "e2e-secret-of-at-least-thirty-two-bytes";
/// The owner `stack.http` authenticates as.
pub const TESTER: &str = "tester";
pub const SCOPE_EXECUTE_ALL: &str = "execute:all";
pub const SCOPE_READ_FUNCTIONS: &str = "read:functions";

/// A client that sends `Authorization: Bearer <token>` unless a request says otherwise.
pub fn client(token: Option<String>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// `claims` signed with HS256 and [`JWT_SECRET`].
pub fn sign(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).expect("sign")
}

/// An HS256 token for `sub` with `scopes`, valid for an hour.
fn token(sub: &str, scopes: &[&str]) -> String {
    sign(&json!({"sub": sub, "scope": scopes.join(" "), "exp": now() + 3600}))
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

/// A private redis-server on a free loopback port, killed on drop.
pub struct PrivateRedis {
    child: std::process::Child,
    pub url: String,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(redis);
        panic!("private redis did not start");
    }

    /// Stops it now (as a crash would, for the stack using it).
    pub fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
