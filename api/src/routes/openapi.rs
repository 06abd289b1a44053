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
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
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

/// Declares the two ways to authenticate.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
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
