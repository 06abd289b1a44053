//! A dispatcher per test: a fresh database and a unique NATS prefix, driven
//! one step at a time or run in the background.

#![allow(dead_code, unreachable_pub)] // each test binary uses part of it

pub mod services;

use async_nats::jetstream;
use dispatcher::{App, Config};
use schemas::{codec, script_hash, JobEvent, JobResult, Language, Subjects};
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

pub fn admin_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub const SCRIPT: &str = "return event.params.n * 2;";
pub const TITLE: &str = "nodejs-double";

pub struct Harness {
    pub db: PgPool,
    pub config: Config,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    db_name: String,
    admin_url: String,
}

impl Harness {
    /// A fresh database (migrated, with the function `nodejs-double`
    /// registered) and prefix on the machine's NATS.
    pub async fn new() -> Self {
        Self::on(nats_url(), admin_url()).await
    }

    /// The same, on the NATS server at `nats_url` and the PostgreSQL at `admin_url`.
    pub async fn on(nats_url: String, admin_url: String) -> Self {
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("ld_{id}");
        let admin = PgPool::connect(&admin_url).await.expect("admin db");
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        let mut config = Config::from_defaults();
        config.database_url = admin_url.rsplit_once('/').unwrap().0.to_owned() + "/" + &db_name;
        config.nats_url = nats_url.clone();
        config.nats_prefix = format!("d{}", &id[..16]);
        config.sweep_after_seconds = 0;
        config.callback_allow_private = true;
        let app = App::build(config.clone()).await.expect("dispatcher builds");
        let db = app.db().clone();
        let hash = script_hash(Language::Nodejs, SCRIPT);
        sqlx::query("INSERT INTO scripts (hash, language, content) VALUES ($1, 'nodejs', $2)")
            .bind(&hash)
            .bind(SCRIPT)
            .execute(&db)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO functions (owner, language_title, language, title, kind, script_hash)
             VALUES ('anonymous', $1, 'nodejs', 'double', 'dynamic', $2)",
        )
        .bind(TITLE)
        .bind(&hash)
        .execute(&db)
        .await
        .unwrap();
        let client = async_nats::connect(nats_url).await.expect("nats");
        Self {
            db,
            subjects: Subjects::new(&config.nats_prefix),
            config,
            js: jetstream::new(client.clone()),
            client,
            db_name,
            admin_url,
        }
    }

    /// A dispatcher on this harness's database and prefix.
    pub async fn app(&self) -> App {
        App::build(self.config.clone())
            .await
            .expect("dispatcher builds")
    }

    /// Stores a queued job of `nodejs-double` (never published); returns its id.
    pub async fn insert_job(&self, n: i64) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO jobs (job_id, owner, language, language_title, script_hash, params,
                               context, timeout_ms, memory_mb, updated_at)
             VALUES ($1, 'anonymous', 'nodejs', $2, $3, jsonb_build_object('n', $4::bigint), '{}',
                     5000, 128, now() - interval '1 hour')",
        )
        .bind(id)
        .bind(TITLE)
        .bind(script_hash(Language::Nodejs, SCRIPT))
        .bind(n)
        .execute(&self.db)
        .await
        .unwrap();
        id
    }

    /// Publishes an event as a worker would.
    pub async fn report(&self, job_id: Uuid, attempt: u32, result: Option<JobResult>) {
        let event = JobEvent {
            job_id,
            attempt,
            worker_id: format!("w{attempt}"),
            result,
        };
        self.js
            .publish(
                self.subjects.events(Language::Nodejs),
                codec::encode(&event).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The job's record as the API would answer it.
    pub async fn record(&self, id: Uuid) -> Value {
        sqlx::query_scalar("SELECT job_record(j) FROM jobs j WHERE job_id = $1")
            .bind(id)
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    /// Messages now in the jobs stream.
    pub async fn jobs_in_stream(&self) -> u64 {
        let mut stream = self
            .js
            .get_stream(self.subjects.jobs_stream())
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until a running dispatcher answers submissions (an invalid one
    /// is answered, and recorded as refused).
    pub async fn until_submissions_answered(&self) {
        eventually(
            "the dispatcher to subscribe",
            Duration::from_secs(10),
            || async {
                self.client
                    .request(self.subjects.submit("nodejs-x"), "{".into())
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    /// Removes the database and the streams.
    pub async fn stop(self) {
        self.db.close().await;
        let admin = PgPool::connect(&self.admin_url).await.expect("admin db");
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.db_name
        ))
        .execute(&admin)
        .await
        .unwrap();
        let _ = self.js.delete_stream(self.subjects.jobs_stream()).await;
        let _ = self.js.delete_stream(self.subjects.events_stream()).await;
    }
}

/// Polls `check` every 20 ms until it holds, for `within` at most.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
