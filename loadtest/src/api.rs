//! Talking to the API: the options every flow shares (where it is, how to
//! authenticate, where to write the JSON summary), the HTTP client, and the
//! registration of the function a load test runs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use serde_json::json;

use crate::duration::parse_duration;
use crate::script::Lang;

/// Title under which every flow registers its script (`<lang>-loadtest`).
pub const TITLE: &str = "loadtest";

/// Options every flow shares.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Base URL of the API.
    #[arg(long, env = "LOADTEST_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// A JWT, sent as `Authorization: Bearer <token>` when the API has auth on.
    #[arg(long, env = "LOADTEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An API key, sent as `X-API-Key` when the API has auth on.
    #[arg(long, env = "LOADTEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Give up on one request after this long (counted as a `timeout` error).
    #[arg(long, env = "LOADTEST_REQUEST_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Also write the summary as JSON to this file.
    #[arg(long, env = "LOADTEST_JSON")]
    pub json: Option<PathBuf>,
}

impl CommonArgs {
    /// `url` joined with an absolute path such as `/api/v1/initialize`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// One HTTP/1.1 keep-alive client whose idle pool keeps `connections`
    /// connections, sending the credentials with every request.
    pub fn client(&self, connections: usize) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(self.request_timeout)
            .default_headers(self.auth_headers()?)
            .build()
            .context("building the HTTP client")
    }

    /// `Authorization: Bearer` and `X-API-Key`, for the credentials given.
    pub fn auth_headers(&self) -> anyhow::Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("--token is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        if let Some(key) = &self.api_key {
            let mut value =
                HeaderValue::from_str(key).context("--api-key is not a valid header value")?;
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        Ok(headers)
    }
}

#[derive(Deserialize)]
struct Initialized {
    request_id: String,
}

/// `POST /api/v1/initialize` of `<lang>-loadtest` with the language's sum
/// script: registers it as that Language-Title's function and opens a
/// session on it, whose `request_id` is returned.
pub async fn register(
    client: &reqwest::Client,
    common: &CommonArgs,
    lang: Lang,
) -> anyhow::Result<String> {
    let url = common.endpoint("/api/v1/initialize");
    let response = client
        .post(&url)
        .header("Language-Title", lang.language_title())
        .json(&json!({ "context": {}, "script_content": lang.sum_script() }))
        .send()
        .await
        .with_context(|| format!("POST {url}: is the API running?"))?;
    let body: Initialized = success(response, &url)
        .await?
        .json()
        .await
        .with_context(|| format!("POST {url}: no request_id in the answer"))?;
    Ok(body.request_id)
}

/// The response if it is a success; otherwise an error with its status and body.
pub async fn success(response: reqwest::Response, url: &str) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    anyhow::bail!("{url} answered {status}: {body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        common: CommonArgs,
    }

    fn parse(args: &[&str]) -> CommonArgs {
        Args::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .unwrap()
            .common
    }

    #[test]
    fn credentials_become_headers_only_when_given() {
        let none = parse(&[]);
        assert!(none.auth_headers().unwrap().is_empty());

        let both = parse(&["--token", "e.y.j", "--api-key", "k-123"]);
        let headers = both.auth_headers().unwrap();
        assert_eq!(headers[AUTHORIZATION], "Bearer e.y.j");
        assert_eq!(headers["x-api-key"], "k-123");
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert!(headers["x-api-key"].is_sensitive());

        let bad = parse(&["--api-key", "line\nbreak"]);
        assert!(bad.auth_headers().is_err());
    }

    #[test]
    fn endpoints_join_without_double_slashes() {
        let common = parse(&["--url", "http://h:1/"]);
        assert_eq!(common.endpoint("/api/v1/jobs"), "http://h:1/api/v1/jobs");
    }
}
