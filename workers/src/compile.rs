//! Answers compile requests (`<prefix>.compile.<language>`, queue group, so
//! one worker answers each) for the languages the wasm engine serves: the
//! script is compiled and kept, so the first execute here is warm, and the
//! diagnostics go back to the API, which refuses the initialize with them.
//!
//! Compilations take [`CONCURRENT_COMPILES`] slots, at most one per owner at
//! a time: an owner's second request waits behind its first, not in a slot,
//! so a tenant sending slow sources holds one slot, never all of them.

use crate::runtime::wasm::WasmEngine;
use futures::StreamExt;
use schemas::{codec, CompileRequest, CompileResult, Language, Subjects};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Compilations run at once; the rest wait (compilers are CPU-heavy).
const CONCURRENT_COMPILES: usize = 2;

/// What the compile service needs.
pub(crate) struct CompileService {
    pub(crate) client: async_nats::Client,
    pub(crate) engine: Arc<WasmEngine>,
    pub(crate) worker_id: Arc<str>,
    pub(crate) subscriptions: Vec<async_nats::Subscriber>,
}

impl CompileService {
    /// Subscribes to the compile subjects of `languages`.
    pub(crate) async fn subscribe(
        client: async_nats::Client,
        subjects: &Subjects,
        engine: Arc<WasmEngine>,
        worker_id: Arc<str>,
        languages: &[Language],
    ) -> anyhow::Result<Self> {
        let mut subscriptions = Vec::new();
        for &language in languages {
            let subject = subjects.compile(language);
            let group = subjects.compile_queue_group().to_owned();
            subscriptions.push(client.queue_subscribe(subject, group).await?);
        }
        client.flush().await?;
        Ok(Self {
            client,
            engine,
            worker_id,
            subscriptions,
        })
    }

    /// Answers requests until `shutdown`, then lets running compilations finish.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let Self {
            client,
            engine,
            worker_id,
            subscriptions,
        } = self;
        let mut requests = futures::stream::select_all(subscriptions);
        let permits = Arc::new(Semaphore::new(CONCURRENT_COMPILES));
        let owners = Arc::new(Owners::default());
        let tasks = TaskTracker::new();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                message = requests.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let (client, engine, worker_id) =
                (client.clone(), Arc::clone(&engine), Arc::clone(&worker_id));
            let (permits, owners) = (Arc::clone(&permits), Arc::clone(&owners));
            tasks.spawn(async move {
                let request = codec::decode::<CompileRequest>(&message.payload);
                let owner = request
                    .as_ref()
                    .map_or_else(|_| String::new(), |r| r.owner.clone());
                let turn = owners.turn(&owner);
                let _own_turn = turn.lock().await;
                let Ok(_permit) = permits.acquire().await else {
                    return;
                };
                let mut result = compile(&engine, request).await;
                drop(_own_turn);
                owners.done(&owner, turn);
                result.worker_id = worker_id.to_string();
                match codec::encode(&result) {
                    Ok(payload) => {
                        if let Err(e) = client.publish(reply, payload.into()).await {
                            tracing::warn!(error = %e, "answering a compile request");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "encoding a compile result"),
                }
            });
        }
        tasks.close();
        tasks.wait().await;
    }
}

/// One lock per owner with a compilation running or waiting.
#[derive(Default)]
struct Owners(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Owners {
    /// The lock an owner's compilations take in turn.
    fn turn(&self, owner: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut owners = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(owners.entry(owner.to_owned()).or_default())
    }

    /// Forgets the owner's lock once no compilation holds or awaits it.
    fn done(&self, owner: &str, turn: Arc<tokio::sync::Mutex<()>>) {
        let mut owners = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        drop(turn);
        if owners.get(owner).is_some_and(|t| Arc::strong_count(t) == 1) {
            owners.remove(owner);
        }
    }
}

/// Compiles the request's script.
async fn compile(
    engine: &WasmEngine,
    request: Result<CompileRequest, codec::CodecError>,
) -> CompileResult {
    let failure = |message: String, diagnostics: String| CompileResult {
        ok: false,
        message,
        diagnostics,
        worker_id: String::new(),
    };
    let request = match request {
        Ok(request) => request,
        Err(e) => return failure("undecodable compile request".to_owned(), e.to_string()),
    };
    // The hash is the cache key: computed here, not trusted.
    let script_hash = schemas::script_hash(request.language, &request.script);
    let context_json = format!(r#"{{"compile_options":{}}}"#, request.options_json);
    if serde_json::from_str::<serde_json::Value>(&context_json).is_err() {
        return failure(
            "compile_options is not JSON".to_owned(),
            request.options_json,
        );
    }
    let started = std::time::Instant::now();
    match engine
        .compile(
            request.language,
            &script_hash,
            &request.script,
            &context_json,
        )
        .await
    {
        Ok(()) => {
            tracing::info!(language = %request.language, %script_hash, elapsed = ?started.elapsed(), "compiled");
            CompileResult {
                ok: true,
                message: String::new(),
                diagnostics: String::new(),
                worker_id: String::new(),
            }
        }
        Err(e) => failure(e.message, e.diagnostics),
    }
}
