//! The functions catalogue: the predefined functions shipped in `functions/`
//! and the caller's registered ones.

use crate::support::{assert_error, Options, Stack};
use reqwest::StatusCode;
use schemas::Language;
use serde_json::json;

#[tokio::test]
async fn predefined_functions_are_listed_and_run_without_a_script() {
    let stack = Stack::start_with(Options {
        languages: vec![Language::Nodejs, Language::Python],
        ..Options::default()
    })
    .await;
    let (s, list) = stack.get("/api/v1/functions").await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 3);
    assert_eq!(
        (list["page"].as_u64(), list["per_page"].as_u64()),
        (Some(1), Some(20))
    );
    let titles: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["language_title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        [
            "nodejs-calculator",
            "python-textprocessor",
            "rust-validator"
        ]
    );
    let calculator = &list["functions"][0];
    assert_eq!(calculator["language"], "nodejs");
    assert_eq!(calculator["title"], "calculator");
    assert_eq!(calculator["type"], "predefined");
    assert!(calculator["description"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));

    let (s, detail) = stack.get("/api/v1/functions/python-textprocessor").await;
    assert_eq!(s, StatusCode::OK, "{detail}");
    assert!(detail["script_content"]
        .as_str()
        .unwrap()
        .contains("def handle"));
    assert_eq!(detail["params_schema"]["required"], json!(["text"]));
    assert!(!detail["examples"].as_array().unwrap().is_empty());

    // Every example of the runnable functions gives the result it promises.
    for title in ["nodejs-calculator", "python-textprocessor"] {
        let (_, detail) = stack.get(&format!("/api/v1/functions/{title}")).await;
        let (s, init) = stack
            .post_raw("/api/v1/initialize", &[("Language-Title", title)], "{}")
            .await;
        assert_eq!(s, StatusCode::OK, "{init}");
        let id = init["request_id"].as_str().unwrap();
        for example in detail["examples"].as_array().unwrap() {
            let (s, body) = stack.execute(id, example["params"].clone()).await;
            assert_eq!(s, StatusCode::OK, "{title}: {body}");
            assert_eq!(body["result"], example["result"], "{title}: {example}");
        }
    }
    stack.stop().await;
}

#[tokio::test]
async fn the_catalogue_filters_pages_and_shows_registered_functions() {
    let stack = Stack::start().await;
    stack.session("nodejs-mine", "return 1;").await;
    let (_, list) = stack.get("/api/v1/functions?type=dynamic").await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["functions"][0]["language_title"], "nodejs-mine");
    assert_eq!(list["functions"][0]["type"], "dynamic");
    let (_, list) = stack.get("/api/v1/functions?language=nodejs").await;
    assert_eq!(list["total"], 2, "{list}");
    let (_, list) = stack.get("/api/v1/functions?per_page=2&page=2").await;
    assert_eq!(
        (
            list["total"].as_u64(),
            list["functions"].as_array().unwrap().len()
        ),
        (Some(4), 2)
    );
    let (_, detail) = stack.get("/api/v1/functions/nodejs-mine").await;
    assert_eq!(detail["script_content"], "return 1;");

    let (s, b) = stack.get("/api/v1/functions?language=ruby").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack.get("/api/v1/functions?type=other").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack.get("/api/v1/functions?page=x").await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (s, b) = stack.get("/api/v1/functions/nodejs-nothing").await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NOT_FOUND");
    stack.stop().await;
}
