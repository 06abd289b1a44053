//! What a user sees of the worker's sandbox through the API.

use crate::support::{assert_error, Stack, ADD};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_script_over_its_memory_limit_gets_507_and_the_next_one_runs() {
    let stack = Stack::start().await;
    let bomb = stack
        .session(
            "nodejs-bomb",
            "const a = []; while (true) a.push(new Array(100000).fill(1.5));",
        )
        .await;
    let (s, body) = stack.execute(&bomb, json!({})).await;
    assert_error(s, &body, StatusCode::INSUFFICIENT_STORAGE, "MEMORY_LIMIT");

    let ok = stack.session("nodejs-ok", ADD).await;
    let (s, body) = stack.execute(&ok, json!({"a": 5, "b": 3})).await;
    assert_eq!((s, &body["result"]), (StatusCode::OK, &json!(8)), "{body}");
}

#[tokio::test]
async fn scripts_get_no_network_and_no_environment() {
    let stack = Stack::start().await;
    let probe = stack
        .session(
            "nodejs-probe",
            "const socket = await new Promise((resolve) => {
               const s = require('net').connect(5432, '127.0.0.1');
               s.on('connect', () => resolve('connected'));
               s.on('error', (e) => resolve(e.code));
             });
             return { socket, env: process.env, uid: process.getuid() };",
        )
        .await;
    let (s, body) = stack.execute(&probe, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let mut result = body["result"].clone();
    let uid = result["uid"].take().as_u64().unwrap();
    assert!(uid >= 2_000_000_000, "a sandbox uid of its own, not {uid}");
    assert_eq!(
        result,
        json!({"socket": "ECONNREFUSED", "env": {}, "uid": null})
    );
}
