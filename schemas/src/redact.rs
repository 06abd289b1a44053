//! Masking of secrets in text that is logged or stored: passwords in URLs
//! (`scheme://user:password@host`), secret-named parameters (`token=…`,
//! `password=…`, `"api_key": "…"`), bearer tokens, and the values of
//! credential headers. What is masked becomes [`MASK`].

use std::borrow::Cow;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Headers whose whole value is a credential.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
];

/// A parameter, header or field whose name ends like one of these holds a secret.
const SECRET_SUFFIXES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "private_key",
    "signature",
    "credentials",
];

/// Whether a parameter or field called `name` holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "key" | "sig" | "auth" | "pass")
        || name.ends_with("authorization")
        || SECRET_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The value of header `name` as it may be logged: credential headers keep
/// only their scheme (`Bearer ***`), other values are passed through [`text`].
pub fn header(name: &str, value: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if SECRET_HEADERS.contains(&lower.as_str()) || is_secret_name(&lower) {
        return match value.split_once(' ') {
            Some((scheme, _)) if lower.ends_with("authorization") => format!("{scheme} {MASK}"),
            _ => MASK.to_owned(),
        };
    }
    text(value).into_owned()
}

/// `text` with every secret it contains masked; borrowed when there is none.
pub fn text(text: &str) -> Cow<'_, str> {
    if !might_hold_secret(text) {
        return Cow::Borrowed(text);
    }
    let masked = mask_bearer(&mask_parameters(&mask_userinfo(text)));
    if masked == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(masked)
    }
}

/// A quick test that lets most log lines through untouched: every secret
/// this module masks comes with one of these markers.
fn might_hold_secret(text: &str) -> bool {
    const MARKERS: &[&str] = &[
        "://",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "sig",
        "auth",
        "credential",
        "bearer",
    ];
    // Case-insensitive, without a lowercased copy: this runs on every
    // header and path of every logged request.
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, first)| {
        let first = first.to_ascii_lowercase();
        MARKERS.iter().any(|m| {
            m.as_bytes()[0] == first
                && bytes
                    .get(i..i + m.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(m.as_bytes()))
        })
    })
}

/// Characters that end a URL's authority, a parameter value or a token.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '&' | ',' | ';' | '<' | '>' | '\\' | '`')
}

/// `scheme://user:password@host` → `scheme://user:***@host`, and
/// `scheme://token@host` → `scheme://***@host`.
fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let authority_len = tail
            .find(|c: char| ends_value(c) || matches!(c, '/' | '?' | '#'))
            .unwrap_or(tail.len());
        let authority = &tail[..authority_len];
        match authority.rfind('@') {
            Some(at) if at > 0 => {
                let userinfo = &authority[..at];
                if let Some((user, _)) = userinfo.split_once(':') {
                    out.push_str(user);
                    out.push(':');
                }
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_len..];
    }
    out.push_str(rest);
    out
}

/// `name=value`, `name: value` and `"name": "value"` with a secret name →
/// the value masked.
fn mask_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    let mut copied = 0;
    while let Some((i, c)) = chars.next() {
        if c != '=' && c != ':' {
            continue;
        }
        let name = key_before(&text[..i]);
        if name.is_empty() || !is_secret_name(name) {
            continue;
        }
        // The value: after optional spaces and an opening quote, up to the
        // closing quote (when quoted) or the first delimiter.
        let after = &text[i + 1..];
        let trimmed = after.trim_start_matches(' ');
        let start = i + 1 + (after.len() - trimmed.len());
        if trimmed.starts_with("//") || trimmed.starts_with(MASK) {
            continue;
        }
        // `Authorization: Bearer <token>` keeps its scheme.
        let (value_start, value_len) = match trimmed.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let inner = &trimmed[1..];
                let len = closing_quote(inner, q).unwrap_or(inner.len());
                let skip = scheme_len(name, &inner[..len]).unwrap_or(0);
                (start + 1 + skip, len - skip)
            }
            Some(_) => {
                let skip = scheme_len(name, trimmed).unwrap_or(0);
                let token = &trimmed[skip..];
                (start + skip, token.find(ends_value).unwrap_or(token.len()))
            }
            None => continue,
        };
        if value_len == 0 {
            continue;
        }
        out.push_str(&text[copied..value_start]);
        out.push_str(MASK);
        copied = value_start + value_len;
        while chars.peek().is_some_and(|(j, _)| *j < copied) {
            chars.next();
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// For an authorization value `Scheme credentials`, the length of `Scheme `.
fn scheme_len(name: &str, value: &str) -> Option<usize> {
    if !name.to_ascii_lowercase().ends_with("authorization") {
        return None;
    }
    let scheme = value.split(' ').next()?;
    let is_scheme = !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic());
    (is_scheme && value.len() > scheme.len()).then_some(scheme.len() + 1)
}

/// The parameter name just before a `=` or `:` (without surrounding quotes).
fn key_before(text: &str) -> &str {
    let text = text.strip_suffix(['"', '\'']).unwrap_or(text);
    let start = text
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map_or(0, |i| i + 1);
    &text[start..]
}

/// Where an escaped JSON-or-shell string closed by `quote` ends.
fn closing_quote(inner: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == quote && !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// `Bearer <token>` → `Bearer ***`.
fn mask_bearer(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("bearer ") {
        let start = from + found + "bearer ".len();
        let token_len = text[start..].find(ends_value).unwrap_or(text.len() - start);
        from = start + token_len;
        if token_len == 0 || text[start..].starts_with(MASK) {
            continue;
        }
        out.push_str(&text[copied..start]);
        out.push_str(MASK);
        copied = start + token_len;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(
            text("connecting to postgres://app:s3cret@db:5432/lambda"),
            "connecting to postgres://app:***@db:5432/lambda"
        );
        assert_eq!(
            text("redis://:hunter2@cache:6379/0 and nats://tok123@nats:4222"),
            "redis://:***@cache:6379/0 and nats://***@nats:4222"
        );
        assert_eq!(
            text(r#"{"url":"http://u:p%40ss@example.com/hook?x=1"}"#),
            r#"{"url":"http://u:***@example.com/hook?x=1"}"#
        );
    }

    #[test]
    fn urls_without_credentials_are_untouched() {
        for plain in [
            "nats://127.0.0.1:4222",
            "http://example.com/a@b",
            "GET /api/v1/jobs?status=queued&batch_id=1",
            "request_id=0192 took 3 ms",
            "no secrets here",
        ] {
            assert!(matches!(text(plain), Cow::Borrowed(_)), "{plain}");
        }
    }

    #[test]
    fn secret_parameters_are_masked() {
        assert_eq!(
            text("/api/v1/execute/x?token=abc123&async=true"),
            "/api/v1/execute/x?token=***&async=true"
        );
        assert_eq!(
            text("https://h/cb?access_token=a.b.c&password=pw#frag"),
            "https://h/cb?access_token=***&password=***"
        );
        assert_eq!(
            text(r#"{"api_key": "k-1", "user": "bob", "db_password":"x\"y"}"#),
            r#"{"api_key": "***", "user": "bob", "db_password":"***"}"#
        );
        assert_eq!(text("password: hunter2 next"), "password: *** next");
        assert_eq!(text("max_tokens=5"), "max_tokens=5");
    }

    #[test]
    fn bearer_tokens_are_masked() {
        assert_eq!(
            text("sent Authorization: Bearer eyJhbGciOi.x.y to it"),
            "sent Authorization: Bearer *** to it"
        );
        assert_eq!(text("bearer abc"), "bearer ***");
        assert_eq!(
            text(r#"{"authorization":"Basic dXNlcjpwYXNz"}"#),
            r#"{"authorization":"Basic ***"}"#
        );
    }

    #[test]
    fn credential_headers_keep_only_their_scheme() {
        assert_eq!(header("Authorization", "Bearer abc.def"), "Bearer ***");
        assert_eq!(header("authorization", "abc"), "***");
        assert_eq!(header("X-API-Key", "key-1"), "***");
        assert_eq!(header("x-auth-token", "t"), "***");
        assert_eq!(
            header("X-Callback-Url", "http://u:pw@127.0.0.1/hook"),
            "http://u:***@127.0.0.1/hook"
        );
        assert_eq!(header("user-agent", "curl/8.5"), "curl/8.5");
    }

    #[test]
    fn masking_is_idempotent() {
        let once = text("postgres://a:b@h/d?password=c Bearer t").into_owned();
        assert_eq!(text(&once), once);
    }
}
