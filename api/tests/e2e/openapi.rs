//! `GET /api/v1/openapi.json` and `GET /api/v1/docs`: the document covers
//! every route the router serves, declares both ways to authenticate, and
//! describes the answers the API really gives.

use crate::support::{Options, Stack, ADD};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every route the router serves, as (method, path template).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/health"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/docs"),
    ("post", "/api/v1/initialize"),
    ("get", "/api/v1/sessions/{request_id}"),
    ("post", "/api/v1/execute/{request_id}"),
    ("get", "/api/v1/functions"),
    ("get", "/api/v1/functions/{language_title}"),
    ("post", "/api/v1/jobs"),
    ("get", "/api/v1/jobs"),
    ("post", "/api/v1/jobs/batch"),
    ("get", "/api/v1/jobs/{job_id}"),
    ("delete", "/api/v1/jobs/{job_id}"),
    ("post", "/api/v1/jobs/{job_id}/retry"),
];

async fn document(stack: &Stack) -> Value {
    let response = stack
        .http
        .get(stack.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_document_covers_every_route_and_both_credentials() {
    let stack = Stack::start_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let doc = document(&stack).await;

    assert_openapi_3(&doc);
    assert_eq!(doc["info"]["title"], "lambda-microservice");

    for (method, path) in ROUTES {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} documents no answer"
        );
    }
    // And nothing is documented that is not served.
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    assert_eq!(documented, ROUTES.len());
    for (method, path) in ROUTES {
        let url = stack.url(&path.replace(['{', '}'], ""));
        let response = stack
            .http
            .request(method.to_uppercase().parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        assert_ne!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let text = response.text().await.unwrap();
        assert!(!text.contains("no such route"), "{method} {path}: {text}");
    }

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-API-Key");
    assert_eq!(doc["security"], json!([{"bearer": []}, {"api_key": []}]));
    // Health, metrics and the documentation need no credentials; every
    // other operation may answer 401, 403 and 429.
    let public = [
        "/health",
        "/metrics",
        "/api/v1/openapi.json",
        "/api/v1/docs",
    ];
    for (method, path) in ROUTES {
        let operation = &doc["paths"][path][method];
        let guarded = ["401", "403", "429"].map(|s| operation["responses"][s].is_object());
        if public.contains(path) {
            assert_eq!(operation["security"], json!([{}]), "{path}");
            assert_eq!(guarded, [false; 3], "{method} {path}");
        } else {
            assert!(operation["security"].is_null(), "{method} {path}");
            assert_eq!(guarded, [true; 3], "{method} {path}");
        }
    }
    let limited = &doc["paths"]["/api/v1/execute/{request_id}"]["post"]["responses"]["429"];
    assert!(limited["headers"]["Retry-After"].is_object(), "{limited}");
    stack.stop().await;
}

#[tokio::test]
async fn the_docs_page_is_served_and_loads_nothing_from_elsewhere() {
    let stack = Stack::start_with(Options {
        worker: false,
        ..Options::default()
    })
    .await;
    let response = stack
        .http
        .get(stack.url("/api/v1/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains(r#"fetch("openapi.json")"#), "{page}");
    assert!(!page.contains("<script src"), "no script from elsewhere");
    assert!(!page.contains("<link"), "no style sheet from elsewhere");
    assert!(!page.contains("http://") && !page.contains("https://"));
    stack.stop().await;
}

#[tokio::test]
async fn real_answers_have_the_documented_shape() {
    let stack = Stack::start().await;
    let doc = document(&stack).await;
    let check = |method: &str, path: &str, status: StatusCode, body: &Value| {
        let schema = &doc["paths"][path][method]["responses"][status.as_str()]["content"]
            ["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {path} {status} is not documented"
        );
        if let Err(e) = conforms(&doc, schema, body, &format!("{method} {path} {status}")) {
            panic!("{e}");
        }
    };

    let (s, body) = stack.get("/health").await;
    check("get", "/health", s, &body);
    let (s, body) = stack
        .initialize("nodejs-shape", ADD, json!({"retain_session": false}))
        .await;
    check("post", "/api/v1/initialize", s, &body);
    let id = body["request_id"].as_str().unwrap().to_owned();
    let (s, body) = stack.execute(&id, json!({"a": 1, "b": 2})).await;
    check("post", "/api/v1/execute/{request_id}", s, &body);
    let (s, body) = stack.get(&format!("/api/v1/sessions/{id}")).await;
    check("get", "/api/v1/sessions/{request_id}", s, &body);
    let (s, body) = stack.get("/api/v1/functions").await;
    check("get", "/api/v1/functions", s, &body);
    let (s, body) = stack.get("/api/v1/functions/nodejs-calculator").await;
    check("get", "/api/v1/functions/{language_title}", s, &body);

    let (s, body) = stack
        .post_json(
            "/api/v1/jobs",
            &[],
            json!({"request_id": id, "params": {"a": 2, "b": 2}}),
        )
        .await;
    check("post", "/api/v1/jobs", s, &body);
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let record = stack
        .wait_job(&job_id, std::time::Duration::from_secs(20), |j| {
            j["status"] == "succeeded"
        })
        .await;
    check("get", "/api/v1/jobs/{job_id}", StatusCode::OK, &record);
    let (s, body) = stack
        .post_json(
            "/api/v1/jobs/batch",
            &[],
            json!({"jobs": [{"request_id": id, "params": {}}, {"params": 5}]}),
        )
        .await;
    check("post", "/api/v1/jobs/batch", s, &body);
    let (s, body) = stack.get("/api/v1/jobs?status=succeeded").await;
    check("get", "/api/v1/jobs", s, &body);
    let (s, body) = stack.delete(&format!("/api/v1/jobs/{job_id}")).await;
    check("delete", "/api/v1/jobs/{job_id}", s, &body);
    let (s, body) = stack
        .post_json(&format!("/api/v1/jobs/{job_id}/retry"), &[], json!({}))
        .await;
    check("post", "/api/v1/jobs/{job_id}/retry", s, &body);

    // Errors, too.
    let (s, body) = stack.get("/api/v1/sessions/nope").await;
    check("get", "/api/v1/sessions/{request_id}", s, &body);
    let thrower = stack
        .session("nodejs-shape-thrower", "throw new Error('x');")
        .await;
    let (s, body) = stack.execute(&thrower, json!({})).await;
    check("post", "/api/v1/execute/{request_id}", s, &body);
    let response = crate::support::client(None)
        .get(stack.url("/api/v1/functions"))
        .send()
        .await
        .unwrap();
    let s = response.status();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    check(
        "get",
        "/api/v1/functions",
        s,
        &response.json().await.unwrap(),
    );
    stack.stop().await;
}

/// Asserts the structure OpenAPI 3 requires of what this document uses:
/// version and info, path templates whose parameters are declared, answers
/// keyed by status, references and security schemes that resolve, known tags.
fn assert_openapi_3(doc: &Value) {
    let version = doc["openapi"].as_str().expect("openapi");
    let parts: Vec<&str> = version.split('.').collect();
    assert!(parts.len() == 3 && parts[0] == "3", "openapi {version}");
    assert!(parts.iter().all(|p| p.parse::<u32>().is_ok()), "{version}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("schemes");
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let requirements_resolve = |security: &Value| {
        for requirement in security.as_array().expect("a list of requirements") {
            for scheme in requirement.as_object().unwrap().keys() {
                assert!(schemes.contains_key(scheme), "unknown scheme {scheme}");
            }
        }
    };
    requirements_resolve(&doc["security"]);
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        assert!(path.starts_with('/'), "{path}");
        let templated: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().unwrap() {
            assert!(
                ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
                    .contains(&method.as_str()),
                "{path}: {method}"
            );
            let id = op["operationId"].as_str().expect("operationId");
            assert!(operation_ids.insert(id.to_owned()), "duplicate {id}");
            let params = op["parameters"].as_array().map_or(&[][..], Vec::as_slice);
            for name in &templated {
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == *name && p["in"] == "path" && p["required"] == true),
                    "{method} {path}: {name} is not a declared path parameter"
                );
            }
            for p in params {
                assert!(
                    ["query", "header", "path", "cookie"].contains(&p["in"].as_str().unwrap()),
                    "{p}"
                );
            }
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}");
            for status in responses.keys() {
                assert!(
                    status.len() == 3 && status.parse::<u16>().is_ok(),
                    "{method} {path}: {status}"
                );
            }
            for tag in op["tags"].as_array().into_iter().flatten() {
                assert!(tags.contains(&tag.as_str().unwrap()), "{tag}");
            }
            if !op["security"].is_null() {
                requirements_resolve(&op["security"]);
            }
        }
    }
    // Every reference points at a schema that exists.
    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(!all.is_empty());
    for reference in all {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{reference}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{reference} does not resolve"
        );
    }
}

/// Whether `value` has the shape of `schema`: the right JSON type, the
/// required properties, no property the schema does not name, enum members.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let named =
        |reference: &str| &doc["components"]["schemas"][reference.rsplit('/').next().unwrap()];
    if let Some(reference) = schema["$ref"].as_str() {
        return conforms(doc, named(reference), value, at);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return match options.iter().any(|o| conforms(doc, o, value, at).is_ok()) {
            true => Ok(()),
            false => Err(format!("{at}: {value} fits none of {schema}")),
        };
    }
    if let Some(parts) = schema["allOf"].as_array() {
        // Flattened structs: the union of the parts' properties.
        let mut merged = json!({"type": "object", "properties": {}, "required": []});
        for part in parts {
            let part = part["$ref"].as_str().map_or(part, named);
            for (k, v) in part["properties"].as_object().into_iter().flatten() {
                merged["properties"][k] = v.clone();
            }
            for r in part["required"].as_array().into_iter().flatten() {
                merged["required"].as_array_mut().unwrap().push(r.clone());
            }
        }
        return conforms(doc, &merged, value, at);
    }
    if let Some(members) = schema["enum"].as_array() {
        return match members.contains(value) {
            true => Ok(()),
            false => Err(format!("{at}: {value} is not one of {members:?}")),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()), // any JSON
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
    if !fits {
        return Err(format!("{at}: {value} is {actual}, documented {types:?}"));
    }
    match value {
        Value::Object(map) => {
            for required in schema["required"].as_array().into_iter().flatten() {
                let key = required.as_str().unwrap();
                if !map.contains_key(key) {
                    return Err(format!("{at}: {key} is missing from {value}"));
                }
            }
            let properties = schema["properties"].as_object();
            let additional = &schema["additionalProperties"];
            for (key, v) in map {
                let at = format!("{at}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(s) => conforms(doc, s, v, &at)?,
                    None if additional.is_object() => conforms(doc, additional, v, &at)?,
                    None => return Err(format!("{at} is not documented (in {value})")),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}
