//! Load generator for lambda-microservice's user flows.
//!
//! Each flow is a subcommand of the `loadtest` binary built on the same parts:
//! [`load`] drives `--concurrency` closed-loop workers for `--duration` (after an
//! unrecorded `--warmup`) and prints progress; [`report`] records latencies in an
//! HDR histogram and errors by kind, and prints and writes the [`report::Summary`];
//! [`script`] holds the trivial per-language scripts; [`duration`] parses `30s`,
//! `500ms`, `2m`. The flows so far: [`sync`] (session + synchronous executes).

pub mod duration;
pub mod load;
pub mod report;
pub mod script;
pub mod sync;
