//! Turns what a caller asks for (a session or a registered function, plus
//! params, context and a callback) into a [`NewJob`], looking each session,
//! function and callback host up once per request however many jobs name it.

use crate::{
    auth::Caller,
    error::{ApiError, ApiResult},
    jobs::{self, NewJob},
    routes::sessions::Limits,
    session::{self, Session},
    AppState,
};
use axum::http::HeaderMap;
use schemas::{ErrorCode, LanguageTitle};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use uuid::Uuid;

/// One job as a caller describes it: a session (`request_id`) or a
/// registered function (`language_title`), plus params.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct JobSpec {
    /// A session's id (or give `language_title`).
    #[serde(default)]
    request_id: Option<String>,
    /// A registered function (or give `request_id`).
    #[serde(default)]
    #[schema(example = "nodejs-calculator")]
    language_title: Option<String>,
    /// The script's `params`: a JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Value>,
    /// With `language_title`: the context (`timeout_ms`, `memory_mb`, …).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    context: Option<Value>,
    /// Where the terminal job record is POSTed (`X-Callback-Url` otherwise).
    #[serde(default)]
    callback_url: Option<String>,
}

type Function = (String, String); // script hash, script

/// Resolves job specs for one request.
pub(crate) struct Resolver<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    default_callback: Option<String>,
    sessions: HashMap<Uuid, Session>,
    functions: HashMap<String, Function>,
    callbacks: HashMap<String, Result<(), String>>,
}

impl<'a> Resolver<'a> {
    /// A resolver; `X-Callback-Url` is the callback of jobs naming none.
    pub(crate) fn new(
        state: &'a AppState,
        caller: &'a Caller,
        headers: &HeaderMap,
    ) -> ApiResult<Self> {
        Ok(Self {
            state,
            caller,
            default_callback: header_text(headers, "x-callback-url")?,
            sessions: HashMap::new(),
            functions: HashMap::new(),
            callbacks: HashMap::new(),
        })
    }

    /// The job `spec` describes, or why it cannot run.
    pub(crate) async fn resolve(
        &mut self,
        spec: JobSpec,
        batch_id: Option<Uuid>,
    ) -> ApiResult<NewJob> {
        let params_json = params_json(spec.params)?;
        let callback_url = spec.callback_url.or_else(|| self.default_callback.clone());
        if let Some(url) = &callback_url {
            self.check_callback(url).await?;
        }
        let mut job = match (spec.request_id, spec.language_title) {
            (Some(id), None) => {
                let session = self.session(&id).await?;
                session_job(session, params_json)
            }
            (None, Some(lt)) => {
                let context = match spec.context {
                    None | Some(Value::Null) => Map::new(),
                    Some(Value::Object(map)) => map,
                    Some(_) => {
                        return Err(ApiError::invalid_request("context must be a JSON object"))
                    }
                };
                self.function_job(&lt, context, params_json).await?
            }
            _ => {
                return Err(ApiError::invalid_request(
                    "a job names exactly one of request_id and language_title",
                ))
            }
        };
        self.caller.require_execute(job.language)?;
        job.batch_id = batch_id;
        job.callback_url = callback_url;
        Ok(job)
    }

    /// Runs a session's script: the session's context and limits apply.
    pub(crate) async fn session(&mut self, raw: &str) -> ApiResult<Session> {
        let not_found = || ApiError::not_found(format!("session {raw} not found"));
        let id: Uuid = raw.parse().map_err(|_| not_found())?;
        if let Some(session) = self.sessions.get(&id) {
            return Ok(session.clone());
        }
        let session = session::load_active(self.state, &self.caller.owner, id, raw).await?;
        self.sessions.insert(id, session.clone());
        Ok(session)
    }

    async fn function_job(
        &mut self,
        raw: &str,
        context: Map<String, Value>,
        params_json: String,
    ) -> ApiResult<NewJob> {
        let lt: LanguageTitle = raw
            .parse()
            .map_err(|e: schemas::LanguageTitleError| ApiError::invalid_request(e.to_string()))?;
        let name = lt.to_string();
        if !self.functions.contains_key(&name) {
            let found: Option<Function> = sqlx::query_as(
                "SELECT sc.hash, sc.content FROM functions f JOIN scripts sc ON sc.hash = f.script_hash
                 WHERE f.language_title = $1 AND f.owner IN ($2, '')
                 ORDER BY f.owner DESC LIMIT 1",
            )
            .bind(&name)
            .bind(&self.caller.owner)
            .fetch_optional(&self.state.db)
            .await?;
            let found = found.ok_or_else(|| {
                ApiError::not_found(format!("no function is registered as {name}"))
            })?;
            self.functions.insert(name.clone(), found);
        }
        let (script_hash, script) = self.functions[&name].clone();
        let Limits {
            timeout_ms,
            memory_mb,
            ..
        } = Limits::from_context(&context, self.state)?;
        Ok(NewJob {
            job_id: Uuid::now_v7(),
            batch_id: None,
            owner: self.caller.owner.clone(),
            request_id: None,
            language: lt.language,
            language_title: name,
            script_hash,
            script,
            params_json,
            context_json: Value::Object(context).to_string(),
            timeout_ms,
            memory_mb,
            callback_url: None,
            idempotency_key: None,
            generation: 0,
        })
    }

    async fn check_callback(&mut self, url: &str) -> ApiResult<()> {
        if !self.callbacks.contains_key(url) {
            let allow = self.state.config.callback_allow_private;
            let checked = jobs::check_callback_url(url, allow)
                .await
                .map_err(|e| e.message);
            self.callbacks.insert(url.to_owned(), checked);
        }
        self.callbacks[url]
            .clone()
            .map_err(ApiError::invalid_request)
    }
}

/// The job of running `session`'s script with `params_json`.
pub(crate) fn session_job(session: Session, params_json: String) -> NewJob {
    NewJob {
        job_id: Uuid::now_v7(),
        batch_id: None,
        owner: session.owner,
        request_id: Some(session.request_id),
        language: session.language,
        language_title: session.language_title,
        script_hash: session.script_hash,
        script: session.script,
        params_json,
        context_json: session.context_json,
        timeout_ms: session.timeout_ms,
        memory_mb: session.memory_mb,
        callback_url: None,
        idempotency_key: None,
        generation: 0,
    }
}

/// `params` as JSON text: an object, `{}` when absent.
pub(crate) fn params_json(params: Option<Value>) -> ApiResult<String> {
    match params {
        None | Some(Value::Null) => Ok("{}".to_owned()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidParams,
            "params must be a JSON object",
        )),
    }
}

/// A header's text, if present; non-ASCII values are refused.
pub(crate) fn header_text(headers: &HeaderMap, name: &str) -> ApiResult<Option<String>> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_owned())
                .map_err(|_| ApiError::invalid_request(format!("{name} must be ASCII")))
        })
        .transpose()
}
