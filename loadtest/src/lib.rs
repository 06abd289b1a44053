//! Load generator for lambda-microservice's three user flows, each a
//! subcommand of the `loadtest` binary ([`cli`]):
//!
//! - [`sync`]: one session, then synchronous executes from `--concurrency`
//!   closed-loop workers for `--duration`, driven by [`load`];
//! - [`batch`]: jobs submitted in batches over REST, polled until terminal;
//! - [`nats`]: jobs published straight onto NATS, their terminal records collected.
//!
//! [`api`] holds the options every flow shares (URL, credentials, `--json`)
//! and registers the function under test; [`script`] the trivial
//! per-language scripts; [`report`] records latencies in an HDR histogram
//! and errors by kind, summarised for `sync`, and [`jobs`] the summary of
//! the asynchronous flows; [`duration`] parses `30s`, `500ms`, `2m`.

pub mod api;
pub mod batch;
pub mod cli;
pub mod duration;
pub mod jobs;
pub mod load;
pub mod nats;
pub mod report;
pub mod script;
pub mod sync;
