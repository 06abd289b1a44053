//! The `sync` flow: one session, then synchronous executes as fast as the API answers.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::json;

use crate::load::{run_phase, LoadArgs};
use crate::report::{ErrorKind, RunInfo, Summary};
use crate::script::Lang;

/// `a` sent by every request under `--same-params`.
const SAME_A: u64 = 41;

/// Options of `loadtest sync`.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Runtime to load; its script returns `params.a + params.b`.
    #[arg(long, env = "LOADTEST_LANG", value_enum, default_value_t = Lang::Nodejs)]
    pub lang: Lang,
    /// Send identical params every time, to measure the result cache instead of the runtime.
    #[arg(long, env = "LOADTEST_SAME_PARAMS")]
    pub same_params: bool,
}

#[derive(Deserialize)]
struct Initialized {
    request_id: String,
}

#[derive(Deserialize)]
struct Executed {
    result: serde_json::Value,
}

/// Creates the session, runs the optional warmup, then measures; prints the
/// summary (and writes `--json`) before returning it.
pub async fn run(args: SyncArgs) -> anyhow::Result<Summary> {
    let load = &args.load;
    anyhow::ensure!(
        !load.duration.is_zero(),
        "--duration must be longer than 0s"
    );
    let script = args.lang.sum_script()?;
    let client = load.client()?;
    let request_id = initialize(&client, load, args.lang, script).await?;
    eprintln!("session {request_id} ({}) initialised", args.lang);

    let url = load.endpoint(&format!("/api/v1/execute/{request_id}"));
    let same_params = args.same_params;
    let seq = Arc::new(AtomicU64::new(0));
    let op = move |n: u64| {
        let (client, url) = (client.clone(), url.clone());
        let a = if same_params { SAME_A } else { n };
        async move { execute(&client, &url, a).await }
    };

    if !load.warmup.is_zero() {
        let warm = run_phase(
            "warmup",
            load.concurrency,
            load.warmup,
            seq.clone(),
            op.clone(),
        );
        anyhow::ensure!(!warm.await?.interrupted, "interrupted during warmup");
    }
    let phase = run_phase("sync", load.concurrency, load.duration, seq, op).await?;

    let run = RunInfo {
        flow: "sync".into(),
        lang: args.lang.to_string(),
        concurrency: usize::from(load.concurrency),
    };
    let summary = phase.recorder.summary(run, phase.elapsed);
    println!("{summary}");
    if let Some(path) = &load.json {
        summary.write_json(path)?;
    }
    Ok(summary)
}

/// `POST /api/v1/initialize` with the language's sum script; returns the `request_id`.
async fn initialize(
    client: &reqwest::Client,
    load: &LoadArgs,
    lang: Lang,
    script: &str,
) -> anyhow::Result<String> {
    let url = load.endpoint("/api/v1/initialize");
    let response = client
        .post(&url)
        .header("Language-Title", format!("{lang}-loadtest"))
        .json(&json!({ "context": {}, "script_content": script }))
        .send()
        .await
        .with_context(|| format!("POST {url}: is the API running?"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("POST {url} answered {status}: {body}");
    }
    let body: Initialized = response
        .json()
        .await
        .with_context(|| format!("POST {url}: no request_id in the answer"))?;
    Ok(body.request_id)
}

/// One `POST /api/v1/execute/{id}` with `{a, b: 1}`; anything but `result == a + 1` fails.
async fn execute(client: &reqwest::Client, url: &str, a: u64) -> Result<(), ErrorKind> {
    let response = client
        .post(url)
        .json(&json!({ "params": { "a": a, "b": 1 } }))
        .send()
        .await
        .map_err(|e| ErrorKind::from_reqwest(&e))?;
    let status = response.status();
    if !status.is_success() {
        // Read the body so the connection goes back to the pool instead of being closed.
        let _ = response.bytes().await;
        return Err(ErrorKind::Status(status.as_u16()));
    }
    let body: Executed = response.json().await.map_err(|_| ErrorKind::BadBody)?;
    if body.result.as_f64() == Some((a + 1) as f64) {
        Ok(())
    } else {
        Err(ErrorKind::WrongResult)
    }
}
