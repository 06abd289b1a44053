//! The administrator's commands of the `api` binary:
//!
//! - `api keys create --owner alice --scopes execute:all,read:functions` prints
//!   a new API key (the only time it is shown) on stdout, its record on stderr;
//! - `api keys list [--owner alice]` and `api keys revoke <id>`;
//! - `api token --sub alice [--scopes …] [--ttl-seconds 3600]` prints an HS256
//!   token signed with `AUTH_JWT_SECRET`, for development and tests.

use super::api_keys::{self, KeyInfo};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use uuid::Uuid;

/// Administration of `api`: API keys and development tokens.
#[derive(Parser)]
#[command(name = "api", about = "lambda-microservice API administration")]
pub struct Admin {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list and revoke API keys (X-API-Key).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print an HS256 token signed with AUTH_JWT_SECRET.
    Token(TokenArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (it is shown only this once).
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// Whose sessions and jobs the key's callers see.
        #[arg(long)]
        owner: String,
        /// Comma-separated: execute:all, execute:<language>, read:functions.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A note on what the key is for.
        #[arg(long)]
        description: Option<String>,
    },
    /// List keys (never the keys themselves).
    List {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        owner: Option<String>,
    },
    /// Revoke a key by its id.
    Revoke {
        #[command(flatten)]
        db: DbArgs,
        id: Uuid,
    },
}

#[derive(clap::Args)]
struct DbArgs {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@127.0.0.1:5432/lambda"
    )]
    database_url: String,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The owner the token names.
    #[arg(long)]
    sub: String,
    /// Comma-separated scopes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "execute:all,read:functions"
    )]
    scopes: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    secret: String,
    /// The audience claim (the first of AUTH_JWT_AUDIENCE).
    #[arg(long, env = "AUTH_JWT_AUDIENCE", value_delimiter = ',')]
    audience: Vec<String>,
    /// The issuer claim (the first of AUTH_JWT_ISSUER).
    #[arg(long, env = "AUTH_JWT_ISSUER", value_delimiter = ',')]
    issuer: Vec<String>,
}

/// When the command line names an administration command, that command.
pub fn from_args() -> Option<Admin> {
    let first = std::env::args().nth(1)?;
    matches!(first.as_str(), "keys" | "token").then(Admin::parse)
}

impl Admin {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Keys(keys) => keys.run().await,
            Command::Token(args) => {
                println!("{}", mint(&args)?);
                Ok(())
            }
        }
    }
}

impl KeysCommand {
    async fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Create {
                db,
                owner,
                scopes,
                description,
            } => {
                let db = crate::connect_db(&db.database_url).await?;
                let (info, key) =
                    api_keys::create(&db, &owner, &scopes, description.as_deref()).await?;
                eprintln!("{}", describe(&info));
                eprintln!("the key is printed once, below; only its SHA-256 is stored");
                println!("{key}");
            }
            Self::List { db, owner } => {
                let db = crate::connect_db(&db.database_url).await?;
                for info in api_keys::list(&db, owner.as_deref()).await? {
                    println!("{}", describe(&info));
                }
            }
            Self::Revoke { db, id } => {
                let db = crate::connect_db(&db.database_url).await?;
                anyhow::ensure!(
                    api_keys::revoke(&db, id).await?,
                    "no active key has the id {id}"
                );
                eprintln!("revoked {id}");
            }
        }
        Ok(())
    }
}

fn describe(info: &KeyInfo) -> String {
    format!(
        "{}  {}…  owner={}  scopes={}  created={}{}{}",
        info.id,
        info.prefix,
        info.owner,
        info.scopes.join(","),
        info.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
        info.revoked_at
            .map(|t| format!("  revoked={}", t.format("%Y-%m-%dT%H:%M:%SZ")))
            .unwrap_or_default(),
        info.description
            .as_deref()
            .map(|d| format!("  ({d})"))
            .unwrap_or_default(),
    )
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    anyhow::ensure!(!args.secret.is_empty(), "AUTH_JWT_SECRET is empty");
    for scope in &args.scopes {
        api_keys::check_scope(scope)?;
    }
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "sub": args.sub,
        "scope": args.scopes.join(" "),
        "iat": now,
        "exp": now + args.ttl_seconds,
    });
    if let Some(aud) = args.audience.first() {
        claims["aud"] = aud.as_str().into();
    }
    if let Some(iss) = args.issuer.first() {
        claims["iss"] = iss.as_str().into();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(args.secret.as_bytes()),
    )
    .context("signing the token")
}
