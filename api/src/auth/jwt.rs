//! `Authorization: Bearer <JWT>`: HMAC (HS*) tokens checked with
//! `AUTH_JWT_SECRET`, RSA (RS*) tokens with `AUTH_JWT_PUBLIC_KEY(_FILE)`.
//!
//! Only the algorithms of `AUTH_JWT_ALGORITHMS` are accepted, each with the
//! key of its own family: `none` never parses, and an HS256 token signed with
//! the RSA public key as its secret is refused because the HMAC key is the
//! configured secret (or there is none). `exp` is required; `nbf`, `aud` and
//! `iss` are checked; `sub` is the owner.

use super::{AuthError, Caller};
use crate::Config;
use anyhow::{bail, Context as _};
use jsonwebtoken::{errors::ErrorKind, Algorithm, AlgorithmFamily, DecodingKey, Validation};
use secrecy::ExposeSecret as _;
use serde::Deserialize;

/// The algorithms this API can be configured to accept.
const SUPPORTED: [Algorithm; 6] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
];

/// Verifies bearer tokens.
pub struct JwtVerifier {
    /// Each accepted algorithm with the key of its family.
    keys: Vec<(Algorithm, DecodingKey)>,
    validation: Validation,
}

/// The claims a token must or may carry besides the validated ones.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    /// Space-separated (RFC 8693) or a list.
    #[serde(default)]
    scope: Option<Scopes>,
    #[serde(default)]
    scopes: Option<Scopes>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    Text(String),
    List(Vec<String>),
}

impl Scopes {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::Text(text) => text.split_whitespace().map(str::to_owned).collect(),
            Self::List(list) => list,
        }
    }
}

impl JwtVerifier {
    /// The verifier the `AUTH_JWT_*` settings describe; `None` when no key is set.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let secret = config
            .auth_jwt_secret
            .as_ref()
            .map(|s| s.expose_secret())
            .filter(|s| !s.is_empty());
        let public_key = public_key_pem(config)?;
        let mut algorithms = Vec::new();
        for name in config.auth_jwt_algorithms.iter().map(|a| a.trim()) {
            if name.is_empty() {
                continue;
            }
            if name.eq_ignore_ascii_case("none") {
                bail!("AUTH_JWT_ALGORITHMS: unsigned tokens (none) are never accepted");
            }
            let algorithm: Algorithm = name
                .parse()
                .ok()
                .filter(|a| SUPPORTED.contains(a))
                .with_context(|| {
                    format!("AUTH_JWT_ALGORITHMS: {name} is not one of HS256, HS384, HS512, RS256, RS384, RS512")
                })?;
            algorithms.push(algorithm);
        }
        if algorithms.is_empty() {
            if secret.is_some() {
                algorithms.push(Algorithm::HS256);
            }
            if public_key.is_some() {
                algorithms.push(Algorithm::RS256);
            }
        }
        if algorithms.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for algorithm in algorithms {
            let key = match algorithm.family() {
                AlgorithmFamily::Hmac => {
                    let secret = secret.with_context(|| {
                        format!(
                            "AUTH_JWT_ALGORITHMS has {algorithm:?} but AUTH_JWT_SECRET is not set"
                        )
                    })?;
                    if secret.len() < 32 {
                        tracing::warn!(
                            "AUTH_JWT_SECRET is shorter than 32 bytes; use a longer random secret"
                        );
                    }
                    DecodingKey::from_secret(secret.as_bytes())
                }
                _ => {
                    let pem = public_key.as_deref().with_context(|| {
                        format!("AUTH_JWT_ALGORITHMS has {algorithm:?} but AUTH_JWT_PUBLIC_KEY(_FILE) is not set")
                    })?;
                    DecodingKey::from_rsa_pem(pem.as_bytes())
                        .context("AUTH_JWT_PUBLIC_KEY is not an RSA public key in PEM")?
                }
            };
            keys.push((algorithm, key));
        }
        let mut validation = Validation::new(keys[0].0);
        validation.leeway = config.auth_jwt_leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if !config.auth_jwt_audience.is_empty() {
            validation.set_audience(&config.auth_jwt_audience);
            validation.required_spec_claims.insert("aud".into());
        }
        if !config.auth_jwt_issuer.is_empty() {
            validation.set_issuer(&config.auth_jwt_issuer);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Some(Self { keys, validation }))
    }

    /// The caller a token names, if its signature and claims hold.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let invalid = |m: &str| AuthError::InvalidToken(m.to_owned());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token is malformed or its algorithm is not accepted"))?;
        let (algorithm, key) = self
            .keys
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or_else(|| invalid("the token's algorithm is not accepted"))?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![*algorithm];
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| AuthError::InvalidToken(reason(e.kind()).to_owned()))?;
        let owner = data.claims.sub.unwrap_or_default();
        if owner.trim().is_empty() || owner.len() > 256 {
            return Err(invalid("the token's sub is empty or too long"));
        }
        let scopes = data
            .claims
            .scope
            .into_iter()
            .chain(data.claims.scopes)
            .flat_map(Scopes::into_vec)
            .collect();
        Ok(Caller {
            owner,
            scopes,
            authenticated: true,
        })
    }
}

/// What the caller is told; never the token or the key.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the token's audience is not accepted",
        ErrorKind::InvalidIssuer => "the token's issuer is not accepted",
        ErrorKind::InvalidSignature => "the token's signature is invalid",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
        ErrorKind::MissingRequiredClaim(_) => {
            "the token lacks a required claim (exp, sub, aud, iss)"
        }
        ErrorKind::InvalidClaimFormat(_) => "a claim of the token is malformed",
        _ => "the token is malformed",
    }
}

fn public_key_pem(config: &Config) -> anyhow::Result<Option<String>> {
    let inline = config
        .auth_jwt_public_key
        .as_deref()
        .filter(|k| !k.trim().is_empty())
        // A PEM in one environment line may carry its newlines as `\n`.
        .map(|k| k.replace("\\n", "\n"));
    match (inline, &config.auth_jwt_public_key_file) {
        (Some(_), Some(_)) => {
            bail!("set AUTH_JWT_PUBLIC_KEY or AUTH_JWT_PUBLIC_KEY_FILE, not both")
        }
        (Some(pem), None) => Ok(Some(pem)),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading AUTH_JWT_PUBLIC_KEY_FILE {}", path.display()))
            .map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(algorithms: &[&str], secret: Option<&str>, public_key: Option<&str>) -> Config {
        let mut config = Config::from_defaults();
        config.auth_jwt_algorithms = algorithms.iter().map(|a| a.to_string()).collect();
        config.auth_jwt_secret = secret.map(|s| s.to_owned().into());
        config.auth_jwt_public_key = public_key.map(str::to_owned);
        config
    }

    fn error(config: &Config) -> String {
        match JwtVerifier::from_config(config) {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    #[test]
    fn unsigned_and_unknown_algorithms_are_refused_at_start() {
        for alg in ["none", "NONE"] {
            assert!(error(&config(&[alg], Some(SECRET), None)).contains("never accepted"));
        }
        assert!(error(&config(&["ES256"], Some(SECRET), None)).contains("ES256"));
    }

    #[test]
    fn every_listed_algorithm_needs_its_key() {
        assert!(error(&config(&["HS256"], None, None)).contains("AUTH_JWT_SECRET"));
        assert!(error(&config(&["RS256"], Some(SECRET), None)).contains("AUTH_JWT_PUBLIC_KEY"));
        assert!(error(&config(&["RS256"], None, Some("not a pem"))).contains("PEM"));
    }

    #[test]
    fn without_a_list_the_configured_keys_choose() {
        assert!(JwtVerifier::from_config(&config(&[], None, None))
            .unwrap()
            .is_none());
        let verifier = JwtVerifier::from_config(&config(&[""], Some(SECRET), None))
            .unwrap()
            .unwrap();
        let algorithms: Vec<_> = verifier.keys.iter().map(|(a, _)| *a).collect();
        assert_eq!(algorithms, [Algorithm::HS256]);
    }

    #[test]
    fn scopes_come_from_scope_text_or_a_scopes_list() {
        let verifier = JwtVerifier::from_config(&config(&[], Some(SECRET), None))
            .unwrap()
            .unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 60;
        let claims = serde_json::json!({
            "sub": "alice", "exp": exp,
            "scope": "execute:python read:functions", "scopes": ["execute:wasm"],
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let caller = verifier.verify(&token).unwrap();
        assert_eq!(caller.owner, "alice");
        assert_eq!(
            caller.scopes,
            ["execute:python", "read:functions", "execute:wasm"]
        );
        assert!(caller.authenticated);
        assert!(caller.may_execute(schemas::Language::Wasm));
        assert!(!caller.may_execute(schemas::Language::Nodejs));
    }
}
