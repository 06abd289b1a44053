//! The `wasm` load-test script in the worker's wasm engine: it must add
//! `a` and `b` whatever the JSON looks like (the API passes params as sent,
//! the dispatcher as PostgreSQL prints them, with spaces and reordered keys).

use std::sync::Arc;
use std::time::Duration;

use loadtest::script::Lang;
use schemas::Language;
use workers::runtime::wasm::{WasmEngine, WasmLauncher, WasmOptions};
use workers::runtime::{Invocation, Pool};

async fn sum(pool: &Pool, params_json: &str) -> String {
    let invocation = Invocation::new(
        Language::Wasm,
        Lang::Wasm.sum_script().to_owned(),
        params_json.to_owned(),
        "{}".to_owned(),
        Duration::from_secs(10),
    )
    .unwrap();
    let execution = pool.execute(&invocation).await.unwrap();
    execution.outcome.expect("the script succeeds")
}

#[tokio::test]
async fn the_wat_script_adds_a_and_b() {
    let options = WasmOptions {
        concurrency: 2,
        max_memory_mb: 64,
        max_output_bytes: 4096,
    };
    let engine = WasmEngine::new(options, None).unwrap();
    let launcher = WasmLauncher::new(Arc::clone(&engine), Language::Wasm).unwrap();
    let pool = Pool::start(Box::new(launcher), 1).await.unwrap();
    for (params, expected) in [
        (r#"{"a":5,"b":1}"#, "6"),
        (r#"{"b": 1, "a": 41}"#, "42"),
        ("{\"a\" :\n 0 ,\t\"b\": 0}", "0"),
        (r#"{"a": -7, "b": 1}"#, "-6"),
        (r#"{"a": -7, "b": -3}"#, "-10"),
        (
            r#"{"ab": 100, "a": 2, "b": 1000000000000}"#,
            "1000000000002",
        ),
        (r#"{"a": 1}"#, "1"),
        ("{}", "0"),
    ] {
        assert_eq!(sum(&pool, params).await, expected, "{params}");
    }
}
