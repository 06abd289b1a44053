//! The `sync` flow: one session, then synchronous executes as fast as the API answers.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use crate::api::{self, CommonArgs};
use crate::load::{run_phase, LoadArgs};
use crate::report::{Answer, ErrorKind, RunInfo, Summary};
use crate::script::{self, Lang};

/// Options of `loadtest sync`.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Runtime to load; its script returns `params.a + params.b`.
    #[arg(long, env = "LOADTEST_LANG", value_enum, default_value_t = Lang::Nodejs)]
    pub lang: Lang,
    /// Send identical params every time, to measure the result cache instead of the runtime.
    #[arg(long, alias = "same-params", env = "LOADTEST_CACHE")]
    pub cache: bool,
}

#[derive(Deserialize)]
struct Executed {
    result: serde_json::Value,
    #[serde(default)]
    cached: bool,
}

/// Creates the session, runs the optional warmup, then measures; prints the
/// summary (and writes `--json`) before returning it.
pub async fn run(args: SyncArgs) -> anyhow::Result<Summary> {
    let load = &args.load;
    anyhow::ensure!(
        !load.duration.is_zero(),
        "--duration must be longer than 0s"
    );
    let client = args.common.client(usize::from(load.concurrency))?;
    let request_id = api::register(&client, &args.common, args.lang).await?;
    eprintln!("session {request_id} ({}) initialised", args.lang);

    let url = args
        .common
        .endpoint(&format!("/api/v1/execute/{request_id}"));
    let same = args.cache;
    let seq = Arc::new(AtomicU64::new(0));
    let op = move |n: u64| {
        let (client, url) = (client.clone(), url.clone());
        async move { execute(&client, &url, n, same).await }
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
    if let Some(path) = &args.common.json {
        summary.write_json(path)?;
    }
    Ok(summary)
}

/// One `POST /api/v1/execute/{id}` with request `n`'s params; anything but
/// their sum as `result` fails.
async fn execute(
    client: &reqwest::Client,
    url: &str,
    n: u64,
    same: bool,
) -> Result<Answer, ErrorKind> {
    let (params, expected) = script::params(n, same);
    let response = client
        .post(url)
        .json(&json!({ "params": params }))
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
    if script::is_expected(&body.result, expected) {
        Ok(Answer {
            cached: body.cached,
        })
    } else {
        Err(ErrorKind::WrongResult)
    }
}
