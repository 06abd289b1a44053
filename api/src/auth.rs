//! Who is calling: every `/api/v1` request carries a [`Caller`], put in the
//! request's extensions by [`authenticate`]. Handlers take it as an extractor;
//! its `owner` scopes sessions, jobs and dynamic functions.

use crate::{error::ApiError, AppState, OWNER_ANONYMOUS};
use axum::{
    extract::{FromRequestParts, Request, State},
    http::request::Parts,
    middleware::Next,
    response::Response,
};
use schemas::ErrorCode;

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
            scopes: vec!["execute:all".into(), "read:functions".into()],
            authenticated: false,
        }
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

/// Identifies the caller of every `/api/v1` request.
pub async fn authenticate(
    State(_state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(Caller::anonymous());
    next.run(request).await
}
