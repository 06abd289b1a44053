//! What a submission runs: its session, its own script or the registered
//! function of its Language-Title, with limits from its context.

use super::{Refusal, Submissions};
use schemas::{callback, script_hash, submit::SubmitRequest, ErrorCode, LanguageTitle};
use serde_json::{Map, Value};
use sqlx::PgPool;
use std::{collections::HashMap, sync::Mutex};
use uuid::Uuid;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("functions lock")
}

/// Limits of a job whose context names none, and the largest allowed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_memory_mb: u32,
    pub max_memory_mb: u32,
}

/// A submission ready to be stored.
pub(crate) struct Submission {
    pub(crate) job_id: Uuid,
    pub(crate) owner: String,
    request_id: Option<Uuid>,
    language: String,
    language_title: String,
    script_hash: String,
    params_json: String,
    context_json: String,
    timeout_ms: i64,
    memory_mb: i32,
    callback_url: Option<String>,
    pub(crate) idempotency_key: Option<String>,
}

impl Submissions {
    /// What the submission runs. `functions` remembers the registered
    /// functions looked up for the submissions handled together.
    pub(crate) async fn resolve(
        &self,
        title: &LanguageTitle,
        request: SubmitRequest,
        job_id: Uuid,
        idempotency_key: Option<String>,
        functions: &Mutex<HashMap<String, String>>,
    ) -> Result<Submission, Refusal> {
        let params_json = match request.params {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(v @ Value::Object(_)) => v.to_string(),
            Some(_) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidParams,
                    "params must be a JSON object",
                ))
            }
        };
        if let Some(url) = &request.callback_url {
            self.check_callback(url).await?;
        }
        let language_title = title.to_string();
        let (request_id, script_hash, context, timeout_ms, memory_mb) = match (
            request.request_id,
            request.script_content,
        ) {
            (Some(_), Some(_)) => {
                return Err(Refusal::new(
                    ErrorCode::InvalidRequest,
                    "send request_id or script_content, not both",
                ))
            }
            (Some(id), None) => {
                let session: Option<(String, String, String, i64, i32)> = sqlx::query_as(
                    "SELECT language_title, script_hash, context::text, timeout_ms, memory_mb FROM sessions
                     WHERE request_id = $1 AND owner = $2 AND expires_at > now()",
                )
                .bind(id)
                .bind(&self.owner)
                .fetch_optional(&self.db)
                .await?;
                let (lt, hash, context, timeout, memory) = session.ok_or_else(|| {
                    Refusal::new(
                        ErrorCode::NotFound,
                        format!("session {id} not found or expired"),
                    )
                })?;
                if lt != language_title {
                    return Err(Refusal::new(
                        ErrorCode::InvalidRequest,
                        format!("session {id} runs {lt}, not {language_title}"),
                    ));
                }
                (Some(id), hash, context, timeout, memory)
            }
            (None, script) => {
                let context = match request.context {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(map)) => map,
                    Some(_) => {
                        return Err(Refusal::new(
                            ErrorCode::InvalidRequest,
                            "context must be a JSON object",
                        ))
                    }
                };
                let (timeout, memory) = self.limits.of(&context)?;
                let hash = match script {
                    Some(script) => self.register(title, &script).await?,
                    None => {
                        let known = lock(functions).get(&language_title).cloned();
                        match known {
                            Some(hash) => hash,
                            None => {
                                let hash = self.registered(&language_title).await?;
                                lock(functions).insert(language_title.clone(), hash.clone());
                                hash
                            }
                        }
                    }
                };
                (
                    None,
                    hash,
                    Value::Object(context).to_string(),
                    timeout as i64,
                    memory as i32,
                )
            }
        };
        Ok(Submission {
            job_id,
            owner: self.owner.clone(),
            request_id,
            language: title.language.as_str().to_owned(),
            language_title,
            script_hash,
            params_json,
            context_json: context,
            timeout_ms,
            memory_mb,
            callback_url: request.callback_url,
            idempotency_key,
        })
    }

    /// Stores `script` and registers it as `title` (as `initialize` does).
    async fn register(&self, title: &LanguageTitle, script: &str) -> Result<String, Refusal> {
        if script.trim().is_empty() {
            return Err(Refusal::new(
                ErrorCode::InvalidRequest,
                "script_content is empty",
            ));
        }
        let hash = script_hash(title.language, script);
        let mut tx = self.db.begin().await?;
        // Touching an existing script locks it until the function refers to
        // it, so that the reaper cannot remove it in between.
        sqlx::query("INSERT INTO scripts (hash, language, content) VALUES ($1, $2, $3) ON CONFLICT (hash) DO UPDATE SET created_at = now()")
            .bind(&hash)
            .bind(title.language.as_str())
            .bind(script)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO functions (owner, language_title, language, title, kind, script_hash)
             VALUES ($1, $2, $3, $4, 'dynamic', $5)
             ON CONFLICT (owner, language_title)
             DO UPDATE SET script_hash = EXCLUDED.script_hash, updated_at = now()",
        )
        .bind(&self.owner)
        .bind(title.to_string())
        .bind(title.language.as_str())
        .bind(&title.title)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(hash)
    }

    async fn registered(&self, language_title: &str) -> Result<String, Refusal> {
        let hash: Option<String> = sqlx::query_scalar(
            "SELECT script_hash FROM functions WHERE language_title = $1 AND owner IN ($2, '')
             ORDER BY owner DESC LIMIT 1",
        )
        .bind(language_title)
        .bind(&self.owner)
        .fetch_optional(&self.db)
        .await?;
        hash.ok_or_else(|| {
            Refusal::new(
                ErrorCode::NotFound,
                format!("no function is registered as {language_title}"),
            )
        })
    }

    async fn check_callback(&self, url: &str) -> Result<(), Refusal> {
        let refuse = |m: String| Refusal::new(ErrorCode::InvalidRequest, m);
        let target = callback::CallbackTarget::parse(url).map_err(refuse)?;
        if self.callback_allow_private {
            return Ok(());
        }
        let addrs: Vec<_> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|_| refuse(format!("cannot resolve {}", target.host)))?
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !callback::is_public(a.ip())) {
            return Err(refuse(
                "callback_url must resolve to public addresses only".into(),
            ));
        }
        Ok(())
    }
}

impl Limits {
    fn of(&self, context: &Map<String, Value>) -> Result<(u64, u32), Refusal> {
        let invalid = |m: String| Refusal::new(ErrorCode::InvalidRequest, m);
        let timeout = match context.get("timeout_ms") {
            None | Some(Value::Null) => self.default_timeout_ms,
            Some(v) => v
                .as_u64()
                .filter(|ms| (1..=self.max_timeout_ms).contains(ms))
                .ok_or_else(|| {
                    invalid(format!(
                        "context.timeout_ms must be an integer from 1 to {}",
                        self.max_timeout_ms
                    ))
                })?,
        };
        let memory = match context.get("memory_mb") {
            None | Some(Value::Null) => self.default_memory_mb,
            Some(v) => v
                .as_u64()
                .filter(|mb| (16..=u64::from(self.max_memory_mb)).contains(mb))
                .map(|mb| mb as u32)
                .ok_or_else(|| {
                    invalid(format!(
                        "context.memory_mb must be an integer from 16 to {}",
                        self.max_memory_mb
                    ))
                })?,
        };
        Ok((timeout, memory))
    }
}

/// Inserts the jobs in one statement; returns the ids of those inserted
/// (the others' id or idempotency key exists already).
pub(crate) async fn insert(db: &PgPool, all: &[&Submission]) -> Result<Vec<Uuid>, sqlx::Error> {
    if all.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&Submission) -> String| all.iter().map(|s| f(s)).collect::<Vec<_>>();
    let optional =
        |f: fn(&Submission) -> Option<String>| all.iter().map(|s| f(s)).collect::<Vec<_>>();
    sqlx::query_scalar(
        "INSERT INTO jobs (job_id, owner, request_id, language, language_title, script_hash,
                           params, context, timeout_ms, memory_mb, callback_url, idempotency_key)
         SELECT id, owner, request, language, lt, hash, params::json, context::json,
                timeout, memory, callback, idem
         FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[], $9::bigint[], $10::int[], $11::text[], $12::text[])
              AS t(id, owner, request, language, lt, hash, params, context, timeout, memory,
                   callback, idem)
         ON CONFLICT DO NOTHING RETURNING job_id",
    )
    .bind(all.iter().map(|s| s.job_id).collect::<Vec<_>>())
    .bind(column(|s| s.owner.clone()))
    .bind(all.iter().map(|s| s.request_id).collect::<Vec<_>>())
    .bind(column(|s| s.language.clone()))
    .bind(column(|s| s.language_title.clone()))
    .bind(column(|s| s.script_hash.clone()))
    .bind(column(|s| s.params_json.clone()))
    .bind(column(|s| s.context_json.clone()))
    .bind(all.iter().map(|s| s.timeout_ms).collect::<Vec<_>>())
    .bind(all.iter().map(|s| s.memory_mb).collect::<Vec<_>>())
    .bind(optional(|s| s.callback_url.clone()))
    .bind(optional(|s| s.idempotency_key.clone()))
    .fetch_all(db)
    .await
}
