//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of this API,
//! generated from the `#[utoipa::path]` attributes on the handlers and the
//! schemas in [`bodies`]; and `GET /api/v1/docs`, a page that renders it.
//!
//! The page is self-contained (no script or style from elsewhere), so it
//! works where the browser reaches nothing but this service. Both are
//! served without credentials: they describe the API, they hold no data.

pub(crate) mod bodies;

pub(crate) use bodies::ErrorBody;

use super::{execute, functions, health, jobs, sessions};
use crate::AppState;
use axum::{
    http::header,
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use std::sync::OnceLock;
use utoipa::{
    openapi::{
        header::Header,
        schema::{ObjectBuilder, Type},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
        Content, Ref, ResponseBuilder,
    },
    Modify, OpenApi,
};

/// The security scheme of `Authorization: Bearer <JWT>`.
pub(crate) const BEARER: &str = "bearer";
/// The security scheme of `X-API-Key`.
pub(crate) const API_KEY: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lambda-microservice",
        description = "Register a script once (`initialize`), then run it many times with \
                       different parameters, synchronously (`execute`) or as asynchronous jobs. \
                       Every error is `{\"error\":{\"code\",\"message\",\"details\"}}`."
    ),
    paths(
        health::health,
        crate::metrics::serve,
        sessions::initialize,
        sessions::get_session,
        execute::execute,
        functions::list,
        functions::detail,
        jobs::submit,
        jobs::submit_batch,
        jobs::list,
        jobs::show,
        jobs::cancel,
        jobs::retry,
        openapi_json,
        docs,
    ),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("api_key" = [])),
    tags(
        (name = "sessions", description = "Register scripts and follow sessions"),
        (name = "execute", description = "Run a session's script"),
        (name = "functions", description = "The catalogue of predefined and registered functions"),
        (name = "jobs", description = "Asynchronous jobs and batches"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// Declares the two ways to authenticate, and the answers every operation
/// that needs credentials may give: 401, 403 and 429.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                if !is_public(operation) {
                    add_guard_answers(&mut operation.responses);
                }
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (HS256 or RS256, `exp` required); `sub` is the owner, `scope` \
                         holds execute:all, execute:<language> or read:functions",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key issued to an owner",
            ))),
        );
    }
}

/// Whether an operation declares that it needs no credentials (`security(())`).
fn is_public(operation: &utoipa::openapi::path::Operation) -> bool {
    operation.security.as_ref().is_some_and(|requirements| {
        serde_json::to_value(requirements).is_ok_and(|v| v == serde_json::json!([{}]))
    })
}

fn add_guard_answers(responses: &mut utoipa::openapi::Responses) {
    let error = || Content::new(Some(Ref::from_schema_name("ErrorBody")));
    let answers = [
        ("401", "UNAUTHORIZED: no or bad credentials", None),
        ("403", "FORBIDDEN: the credentials lack the scope", None),
        (
            "429",
            "RATE_LIMITED: the caller's limit is used up",
            Some("Seconds until a request is accepted again"),
        ),
    ];
    for (status, description, retry_after) in answers {
        let mut answer = ResponseBuilder::new()
            .description(description)
            .content("application/json", error());
        if let Some(header) = retry_after {
            let mut retry = Header::new(ObjectBuilder::new().schema_type(Type::Integer));
            retry.description = Some(header.to_owned());
            answer = answer.header("Retry-After", retry);
        }
        responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| answer.build().into());
    }
}

/// The document, serialised once.
pub(crate) fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/docs", get(docs))
}

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// A page that renders the OpenAPI document.
#[utoipa::path(
    get,
    path = "/api/v1/docs",
    tag = "operations",
    security(()),
    responses((status = 200, description = "An HTML page", content_type = "text/html"))
)]
async fn docs() -> Html<&'static str> {
    Html(include_str!("openapi/docs.html"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn every_documented_error_code_is_one_of_the_contract() {
        let doc: Value = serde_json::from_str(document()).unwrap();
        let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
        let codes = codes.as_array().expect("ErrorCode is an enum");
        for code in codes {
            let parsed: schemas::ErrorCode = serde_json::from_value(code.clone()).unwrap();
            assert_eq!(parsed.as_str(), code);
        }
    }
}
