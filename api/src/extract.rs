//! Request extraction that answers every malformed input with the contract's
//! JSON errors instead of axum's plain-text rejections.

use crate::error::ApiError;
use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
};
use schemas::ErrorCode;
use serde::de::DeserializeOwned;

/// A JSON object body. The content type is not required (`curl -d` sends
/// form encoding by default); the body must be a JSON object.
pub struct JsonObject<T>(pub T);

impl<S, T> FromRequest<S> for JsonObject<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body is too large")
            } else {
                ApiError::invalid_request(format!("cannot read request body: {rejection}"))
            }
        })?;
        parse_object(&bytes).map(JsonObject)
    }
}

/// Parses `bytes` as a JSON object into `T`. An empty body counts as `{}`.
pub fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let text = bytes.trim_ascii_start();
    let text: &[u8] = if text.is_empty() { b"{}" } else { text };
    if text[0] != b'{' {
        return Err(ApiError::invalid_request(
            "request body must be a JSON object",
        ));
    }
    serde_json::from_slice(text).map_err(|err| {
        let kind = if err.is_data() {
            "invalid request body"
        } else {
            "malformed JSON"
        };
        ApiError::invalid_request(format!("{kind}: {err}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        n: i32,
    }

    #[test]
    fn objects_only() {
        assert_eq!(parse_object::<Body>(b" {\"n\":2}").unwrap().n, 2);
        assert_eq!(parse_object::<Body>(b"").unwrap().n, 0);
        for bad in [&b"[1]"[..], b"\"x\"", b"{\"n\":", b"{\"n\":\"x\"}", b"null"] {
            let err = parse_object::<Body>(bad).err().unwrap();
            assert_eq!(err.code, ErrorCode::InvalidRequest);
        }
    }
}
