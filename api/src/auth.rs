//! Who is calling: every `/api/v1` request carries a [`Caller`], put in the
//! request's extensions by [`authenticate`]. Handlers take it as an extractor;
//! its `owner` scopes sessions, jobs and dynamic functions, its `scopes` say
//! what it may run and read.
//!
//! A caller proves who it is with `Authorization: Bearer <JWT>` ([`jwt`]) or
//! `X-API-Key` ([`api_keys`]); without either, or with a bad one, the answer
//! is `401 UNAUTHORIZED` with a `WWW-Authenticate` header. `AUTH_DISABLED`
//! makes every request the [`Caller::anonymous`] one. [`admin`] is the
//! command line that creates API keys and development tokens.

pub mod admin;
pub mod api_keys;
pub mod jwt;

use crate::{error::ApiError, AppState, Config, OWNER_ANONYMOUS};
use anyhow::Context as _;
use api_keys::ApiKeys;
use axum::{
    extract::{FromRequestParts, Request, State},
    http::{header, request::Parts, HeaderMap, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};
use jwt::JwtVerifier;
use schemas::{ErrorCode, Language};
use sqlx::PgPool;

/// The scope that allows running scripts of every language.
pub const SCOPE_EXECUTE_ALL: &str = "execute:all";
/// The scope that allows reading the functions catalogue.
pub const SCOPE_READ_FUNCTIONS: &str = "read:functions";

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Whose sessions, jobs and functions these are (a JWT's `sub`, an API key's owner).
    pub owner: String,
    /// What the caller may do (`execute:all`, `execute:<language>`, `read:functions`).
    pub scopes: Vec<String>,
    /// False when the caller presented no credentials (auth disabled).
    pub authenticated: bool,
}

impl Caller {
    /// The caller when authentication is disabled: one owner, every scope.
    pub fn anonymous() -> Self {
        Self {
            owner: OWNER_ANONYMOUS.to_owned(),
            scopes: vec![SCOPE_EXECUTE_ALL.into(), SCOPE_READ_FUNCTIONS.into()],
            authenticated: false,
        }
    }

    /// Whether the caller holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Whether the caller may run scripts of `language`.
    pub fn may_execute(&self, language: Language) -> bool {
        self.scopes.iter().any(|s| {
            s == SCOPE_EXECUTE_ALL
                || s.strip_prefix("execute:")
                    .is_some_and(|l| l == language.as_str())
        })
    }

    /// `403 FORBIDDEN` unless the caller may run scripts of `language`.
    pub fn require_execute(&self, language: Language) -> Result<(), ApiError> {
        if self.may_execute(language) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("running {language} scripts needs the scope {SCOPE_EXECUTE_ALL} or execute:{language}"),
        ))
    }

    /// `403 FORBIDDEN` unless the caller holds `scope`.
    pub fn require_scope(&self, scope: &str) -> Result<(), ApiError> {
        if self.has_scope(scope) {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this needs the scope {scope}"),
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "authentication required"))
    }
}

/// Why a request's credentials were refused; the message is safe to show
/// (it never repeats the credential).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token> or X-API-Key")]
    Missing,
    #[error("{0}")]
    InvalidToken(String),
    #[error("the API key is unknown or revoked")]
    InvalidApiKey,
    /// The credential store could not be asked (answered 503, not 401).
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// Checks credentials: JWTs with the configured keys, API keys in PostgreSQL.
pub struct Authenticator {
    disabled: bool,
    jwt: Option<JwtVerifier>,
    api_keys: ApiKeys,
}

impl Authenticator {
    /// From the `AUTH_*` settings; a setting that cannot work is an error here,
    /// at start, rather than a refused request later.
    pub fn from_config(config: &Config, db: PgPool) -> anyhow::Result<Self> {
        let jwt = JwtVerifier::from_config(config).context("configuring JWT authentication")?;
        let api_keys = ApiKeys::new(
            db,
            std::time::Duration::from_secs(config.auth_api_key_cache_seconds),
        );
        if config.auth_disabled {
            tracing::warn!(
                "AUTH_DISABLED=true: authentication is OFF; every request is the anonymous caller with every scope"
            );
        } else if jwt.is_none() {
            tracing::info!("no AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY: only API keys are accepted");
        }
        Ok(Self {
            disabled: config.auth_disabled,
            jwt,
            api_keys,
        })
    }

    /// The caller the headers prove.
    pub async fn caller(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        if self.disabled {
            return Ok(Caller::anonymous());
        }
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = bearer(value).ok_or_else(|| {
                AuthError::InvalidToken("the Authorization header must be Bearer <token>".into())
            })?;
            let Some(jwt) = &self.jwt else {
                return Err(AuthError::InvalidToken(
                    "this server accepts no tokens; use an API key".into(),
                ));
            };
            return jwt.verify(token);
        }
        if let Some(value) = headers.get("x-api-key") {
            let key = value.to_str().map_err(|_| AuthError::InvalidApiKey)?.trim();
            return self
                .api_keys
                .lookup(key)
                .await?
                .ok_or(AuthError::InvalidApiKey);
        }
        Err(AuthError::Missing)
    }
}

fn bearer(value: &HeaderValue) -> Option<&str> {
    let value = value.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Paths under `/api/v1` that answer without credentials.
fn is_open(path: &str) -> bool {
    path == "/openapi.json" || path == "/api/v1/openapi.json"
}

/// Identifies the caller of every `/api/v1` request, or answers 401.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    match state.auth.caller(request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(AuthError::Store(e)) => ApiError::from(e).into_response(),
        Err(refusal) => unauthorized(&refusal),
    }
}

/// `401 UNAUTHORIZED` with the contract's body and a `WWW-Authenticate` challenge.
fn unauthorized(refusal: &AuthError) -> Response {
    let message = refusal.to_string();
    tracing::debug!(reason = %message, "credentials refused");
    let challenge = match refusal {
        AuthError::InvalidToken(_) | AuthError::InvalidApiKey => {
            let description: String = message
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .filter(|c| *c != '"' && *c != '\\')
                .collect();
            format!(
                r#"Bearer realm="lambda", error="invalid_token", error_description="{description}""#
            )
        }
        _ => r#"Bearer realm="lambda""#.to_owned(),
    };
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
