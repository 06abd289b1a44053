//! Everything the lambda-microservice processes say to each other, as plain data.
//!
//! - [`language`]: the runtimes a script can be written for and the
//!   `Language-Title` header that names a script (`nodejs-calculator`).
//! - [`job`]: the execute job the API publishes and the result a worker replies with.
//! - [`events`]: job statuses and what workers report about asynchronous jobs.
//! - [`submit`]: jobs published straight onto NATS by producers, and the reply.
//! - [`error`]: the error codes of the REST contract and their HTTP statuses.
//! - [`subjects`]: NATS subject and stream names, all under one configurable prefix.
//! - [`streams`]: the JetStream stream and consumer definitions kept in `nats/jetstream.json`.
//! - [`heartbeat`]: what a worker announces about its runtimes.
//! - [`callback`]: which callback URLs may be called.
//! - [`compile`]: the compile request the API sends a worker at initialize.
//! - [`codec`]: MessagePack encoding (`rmp_serde::to_vec_named`, so fields can be added).
//! - [`redact`]: masks secrets (passwords in URLs, tokens, API keys) in what is logged.
//!
//! With the `jetstream` feature, [`jetstream`] creates those streams and consumers
//! idempotently on a live server; with `service`, [`service`] holds the logging
//! set-up, shutdown signal and metrics endpoint every binary shares.

pub mod callback;
pub mod codec;
pub mod compile;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod job;
pub mod language;
pub mod redact;
pub mod streams;
pub mod subjects;
pub mod submit;

#[cfg(feature = "jetstream")]
pub mod jetstream;

#[cfg(feature = "service")]
pub mod service;

pub use compile::{CompileRequest, CompileResult};
pub use error::ErrorCode;
pub use events::{JobEvent, JobStatus};
pub use heartbeat::{RuntimeStatus, WorkerHeartbeat};
pub use job::{script_hash, Job, JobError, JobResult};
pub use language::{Language, LanguageTitle, LanguageTitleError};
pub use subjects::Subjects;
