//! Authentication and tenants: JWTs (HS256, RS256), API keys, scopes, and
//! owners who see only their own sessions and jobs.
//!
//! `keys/` holds an RSA key pair made for these tests only.

use crate::support::{assert_error, client, now, sign, Options, Stack, ADD, JWT_SECRET, TESTER};
use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const RS_PRIVATE: &str = include_str!("keys/rs256-private.pem");
const RS_PUBLIC: &str = include_str!("keys/rs256-public.pem");

/// A stack without a worker: enough for everything but execute.
fn no_worker() -> Options {
    Options {
        worker: false,
        ..Options::default()
    }
}

/// GETs `path` with `headers` and nothing else (no default credentials).
async fn get_with(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client(None).get(stack.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("GET")
}

/// Asserts a 401 with the JSON error and a Bearer challenge.
async fn assert_unauthorized(response: reqwest::Response) {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let status = response.status();
    let body: Value = response.json().await.expect("JSON error body");
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(challenge.starts_with("Bearer realm="), "{challenge:?}");
}

async fn with_bearer(stack: &Stack, token: &str) -> reqwest::Response {
    let header = format!("Bearer {token}");
    get_with(stack, "/api/v1/functions", &[("Authorization", &header)]).await
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn requests_without_credentials_are_refused_and_operations_stay_open() {
    let stack = Stack::start_with(no_worker()).await;
    for path in ["/api/v1/functions", "/api/v1/jobs", "/api/v1/sessions/x"] {
        assert_unauthorized(get_with(&stack, path, &[]).await).await;
    }
    let response = client(None)
        .post(stack.url("/api/v1/initialize"))
        .header("Language-Title", "nodejs-add")
        .json(&json!({"script_content": ADD}))
        .send()
        .await
        .unwrap();
    assert_unauthorized(response).await;
    for (scheme, path) in [
        ("Basic dGVzdGVyOnB3", "/api/v1/functions"),
        ("Bearer", "/api/v1/functions"),
        ("Bearer not-a-jwt", "/api/v1/functions"),
    ] {
        assert_unauthorized(get_with(&stack, path, &[("Authorization", scheme)]).await).await;
    }
    assert_eq!(get_with(&stack, "/health", &[]).await.status(), 200);
    assert_eq!(get_with(&stack, "/metrics", &[]).await.status(), 200);
    // The default client of every other test authenticates.
    let (status, body) = stack.get("/api/v1/functions").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stack.stop().await;
}

#[tokio::test]
async fn forged_expired_and_premature_tokens_are_refused() {
    let stack = Stack::start_with(no_worker()).await;
    let scope = "read:functions";
    let good = json!({"sub": "alice", "scope": scope, "exp": now() + 600});
    assert_eq!(with_bearer(&stack, &sign(&good)).await.status(), 200);

    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-thirty-two-bytes!!"),
    )
    .unwrap();
    assert_unauthorized(with_bearer(&stack, &other_secret).await).await;

    // The right signature over other claims.
    let signed = sign(&good);
    let forged = format!(
        "{}.{}.{}",
        signed.split('.').next().unwrap(),
        b64(&json!({"sub": "root", "scope": scope, "exp": now() + 600})),
        signed.rsplit('.').next().unwrap()
    );
    assert_unauthorized(with_bearer(&stack, &forged).await).await;

    // Unsigned tokens, with and without a signature part.
    for alg in ["none", "None", "NONE"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        let unsigned = format!("{header}.{}.", b64(&good));
        assert_unauthorized(with_bearer(&stack, &unsigned).await).await;
        let with_sig = format!(
            "{header}.{}.{}",
            b64(&good),
            signed.rsplit('.').next().unwrap()
        );
        assert_unauthorized(with_bearer(&stack, &with_sig).await).await;
    }

    let expired = json!({"sub": "alice", "scope": scope, "exp": now() - 3600});
    let premature =
        json!({"sub": "alice", "scope": scope, "exp": now() + 7200, "nbf": now() + 3600});
    let no_exp = json!({"sub": "alice", "scope": scope});
    let no_sub = json!({"scope": scope, "exp": now() + 600});
    let audience = json!({"sub": "alice", "scope": scope, "exp": now() + 600, "aud": "elsewhere"});
    for claims in [expired, premature, no_exp, no_sub, audience] {
        let response = with_bearer(&stack, &sign(&claims)).await;
        assert_unauthorized(response).await;
    }
    stack.stop().await;
}

#[tokio::test]
async fn the_audience_is_checked_when_configured() {
    let stack = Stack::start_with(Options {
        jwt_audience: vec!["lambda-api".into()],
        ..no_worker()
    })
    .await;
    let claims = |aud: Option<&str>| {
        let mut c = json!({"sub": "alice", "scope": "read:functions", "exp": now() + 600});
        if let Some(aud) = aud {
            c["aud"] = aud.into();
        }
        sign(&c)
    };
    assert_eq!(
        with_bearer(&stack, &claims(Some("lambda-api")))
            .await
            .status(),
        200
    );
    assert_unauthorized(with_bearer(&stack, &claims(Some("other"))).await).await;
    assert_unauthorized(with_bearer(&stack, &claims(None)).await).await;
    stack.stop().await;
}

#[tokio::test]
async fn rs256_tokens_are_verified_with_the_public_key_and_never_as_hmac() {
    let stack = Stack::start_with(Options {
        jwt_algorithms: vec!["RS256".into()],
        jwt_public_key: Some(RS_PUBLIC.to_owned()),
        ..no_worker()
    })
    .await;
    let claims = json!({"sub": "alice", "scope": "read:functions", "exp": now() + 600});
    let rsa = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(with_bearer(&stack, &rsa).await.status(), 200);

    // HS256 keyed with the public key, the classic algorithm confusion.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
    )
    .unwrap();
    assert_unauthorized(with_bearer(&stack, &confused).await).await;
    // HS256 with the server's HMAC secret: HS256 is not on the allow-list.
    assert_unauthorized(with_bearer(&stack, &sign(&claims)).await).await;
    // An RS256 header over an HMAC signature.
    let parts: Vec<&str> = confused.split('.').collect();
    let relabelled = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        parts[1],
        parts[2]
    );
    assert_unauthorized(with_bearer(&stack, &relabelled).await).await;
    stack.stop().await;
}

#[tokio::test]
async fn scopes_limit_what_a_caller_may_run_and_read() {
    let stack = Stack::start().await;
    let python_only = client(Some(stack.token(TESTER, &["execute:python"])));
    let nodejs_only = client(Some(stack.token(TESTER, &["execute:nodejs"])));

    let response = python_only
        .post(stack.url("/api/v1/initialize"))
        .header("Language-Title", "nodejs-add")
        .json(&json!({"script_content": ADD}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json().await.unwrap(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );

    let request_id = stack.session("nodejs-add", ADD).await;
    let execute = stack.url(&format!("/api/v1/execute/{request_id}"));
    let params = json!({"params": {"a": 5, "b": 3}});
    let response = python_only
        .post(&execute)
        .json(&params)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json().await.unwrap(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    let response = python_only
        .post(stack.url("/api/v1/jobs"))
        .json(&json!({"request_id": request_id, "params": {"a": 1, "b": 2}}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json().await.unwrap(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    let response = python_only
        .post(stack.url("/api/v1/jobs/batch"))
        .json(&json!({"jobs": [{"request_id": request_id}, {"language_title": "nodejs-add"}]}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json().await.unwrap(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    let response = python_only
        .get(stack.url("/api/v1/functions"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json().await.unwrap(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );

    // execute:nodejs is enough for a nodejs session.
    let response = nodejs_only
        .post(&execute)
        .json(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"], 8, "{body}");
    stack.stop().await;
}

#[tokio::test]
async fn owners_see_and_touch_only_their_own_sessions_and_jobs() {
    let stack = Stack::start().await;
    let bob = client(Some(stack.token("bob", &["execute:all", "read:functions"])));

    let request_id = stack.session("nodejs-mine", ADD).await;
    let (status, job) = stack
        .post_json(
            "/api/v1/jobs",
            &[],
            json!({"request_id": request_id, "params": {"a": 1, "b": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["job_id"].as_str().unwrap().to_owned();

    let not_found = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.expect("JSON");
        assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    };
    let url = |p: String| stack.url(&p);
    not_found(
        bob.get(url(format!("/api/v1/sessions/{request_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let params = json!({"params": {"a": 1, "b": 2}});
    let execute = url(format!("/api/v1/execute/{request_id}"));
    not_found(bob.post(&execute).json(&params).send().await.unwrap()).await;
    not_found(
        bob.post(format!("{execute}?async=true"))
            .json(&params)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let foreign = json!({"request_id": request_id, "params": {}});
    not_found(
        bob.post(url("/api/v1/jobs".into()))
            .json(&foreign)
            .send()
            .await
            .unwrap(),
    )
    .await;
    not_found(
        bob.get(url(format!("/api/v1/jobs/{job_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    not_found(
        bob.delete(url(format!("/api/v1/jobs/{job_id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    not_found(
        bob.post(url(format!("/api/v1/jobs/{job_id}/retry")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The function tester registered by initializing is not bob's either.
    not_found(
        bob.get(url("/api/v1/functions/nodejs-mine".into()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let response = bob
        .post(url("/api/v1/initialize".into()))
        .header("Language-Title", "nodejs-mine")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    not_found(response).await;
    let listed: Value = bob
        .get(url("/api/v1/jobs".into()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 0, "{listed}");

    // Tester's own view is intact, and the job ran as tester's.
    let done = stack
        .wait_job(&job_id, Duration::from_secs(20), |j| {
            j["status"] == "succeeded"
        })
        .await;
    assert_eq!(done["result"], 3, "{done}");
    let (status, session) = stack.get(&format!("/api/v1/sessions/{request_id}")).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let db = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let owner: String = sqlx::query_scalar("SELECT owner FROM jobs WHERE job_id = $1::uuid")
        .bind(&job_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(owner, TESTER);

    // Bob's session of the same Language-Title is bob's alone.
    let response = bob
        .post(url("/api/v1/initialize".into()))
        .header("Language-Title", "nodejs-mine")
        .json(&json!({"script_content": "return 'bob';"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let bobs = body["request_id"].as_str().expect("request_id").to_owned();
    let (status, body) = stack.get(&format!("/api/v1/sessions/{bobs}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let body: Value = bob
        .post(url(format!("/api/v1/execute/{bobs}")))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["result"], "bob", "{body}");
    let (status, body) = stack.execute(&request_id, json!({"a": 2, "b": 2})).await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!(4)),
        "{body}"
    );
    db.close().await;
    stack.stop().await;
}

/// Runs the `api` binary's administration command with the stack's database.
async fn admin(stack: &Stack, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .args(args)
        .env("DATABASE_URL", &stack.database_url)
        .env("AUTH_JWT_SECRET", JWT_SECRET)
        .env_remove("AUTH_JWT_AUDIENCE")
        .env_remove("AUTH_JWT_ISSUER")
        .output()
        .await
        .expect("run api");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

#[tokio::test]
async fn api_keys_authenticate_are_stored_hashed_and_can_be_revoked() {
    let stack = Stack::start_with(Options {
        api_key_cache_seconds: 1,
        ..Options::default()
    })
    .await;
    let (ok, key, err) = admin(
        &stack,
        &[
            "keys",
            "create",
            "--owner",
            "carol",
            "--scopes",
            "execute:nodejs,read:functions",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(key.starts_with("lmk_") && key.len() > 40, "{key:?}");
    let (ok, _, err) = admin(
        &stack,
        &["keys", "create", "--owner", "carol", "--scopes", "run:all"],
    )
    .await;
    assert!(!ok, "an unknown scope is refused: {err}");

    let carol = {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-api-key", key.parse().unwrap());
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap()
    };
    let body: Value = carol
        .post(stack.url("/api/v1/initialize"))
        .header("Language-Title", "nodejs-add")
        .json(&json!({"script_content": ADD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request_id = body["request_id"].as_str().expect("request_id").to_owned();
    let response = carol
        .post(stack.url(&format!("/api/v1/execute/{request_id}")))
        .json(&json!({"params": {"a": 20, "b": 22}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["result"], 42);
    // The key's owner is a tenant like a token's sub.
    let carol_jwt = client(Some(stack.token("carol", &["execute:all"])));
    let status = carol_jwt
        .get(stack.url(&format!("/api/v1/sessions/{request_id}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let (status, body) = stack.get(&format!("/api/v1/sessions/{request_id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    // Scopes of a key hold as a token's do.
    let response = carol
        .post(stack.url("/api/v1/initialize"))
        .header("Language-Title", "python-add")
        .json(&json!({"script_content": "result = 1"}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json().await.unwrap(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );

    // Only the key's SHA-256 is stored.
    let db = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let secret_part = &key["lmk_".len()..];
    assert!(
        !rows[0].contains(secret_part),
        "the table holds the key: {}",
        rows[0]
    );
    let hash: String = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(hash, api::auth::api_keys::hash_key(&key));
    db.close().await;

    // Unknown keys, then the revoked one.
    for bad in ["lmk_0000", "nope", &format!("{key}x")] {
        let response = get_with(&stack, "/api/v1/functions", &[("X-API-Key", bad)]).await;
        assert_unauthorized(response).await;
    }
    let (ok, listing, err) = admin(&stack, &["keys", "list", "--owner", "carol"]).await;
    assert!(ok, "{err}");
    assert!(!listing.contains(secret_part), "{listing}");
    let id = listing
        .split_whitespace()
        .next()
        .expect("key id")
        .to_owned();
    let (ok, _, err) = admin(&stack, &["keys", "revoke", &id]).await;
    assert!(ok, "{err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = carol
            .get(stack.url("/api/v1/functions"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::UNAUTHORIZED {
            assert_unauthorized(response).await;
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked key still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.stop().await;
}

#[tokio::test]
async fn the_token_command_mints_a_working_development_token() {
    let stack = Stack::start_with(no_worker()).await;
    let (ok, minted, err) = admin(
        &stack,
        &["token", "--sub", "dave", "--scopes", "read:functions"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(with_bearer(&stack, &minted).await.status(), StatusCode::OK);
    let response = client(Some(minted))
        .post(stack.url("/api/v1/initialize"))
        .header("Language-Title", "nodejs-add")
        .json(&json!({"script_content": ADD}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(
        status,
        &response.json().await.unwrap(),
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    stack.stop().await;
}

#[tokio::test]
async fn with_auth_disabled_every_request_is_the_anonymous_caller() {
    let stack = Stack::start_with(Options {
        auth_disabled: true,
        ..Options::default()
    })
    .await;
    let request_id = stack.session("nodejs-add", ADD).await;
    let (status, body) = stack.execute(&request_id, json!({"a": 1, "b": 1})).await;
    assert_eq!(
        (status, &body["result"]),
        (StatusCode::OK, &json!(2)),
        "{body}"
    );
    let db = sqlx::PgPool::connect(&stack.database_url).await.unwrap();
    let owner: String = sqlx::query_scalar("SELECT owner FROM sessions")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(owner, "anonymous");
    db.close().await;
    stack.stop().await;
}
