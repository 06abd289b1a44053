//! End-to-end tests: the API, a worker and the dispatcher against the real
//! PostgreSQL, Redis and NATS, each test with its own database and NATS prefix.

#![allow(unreachable_pub)] // test modules share helpers through `pub`

mod auth;
mod containment;
mod dashboard;
mod errors;
mod execution;
mod functions;
mod job_faults;
mod jobs;
mod limits;
mod metrics;
mod openapi;
mod poison;
mod python;
mod request_logs;
mod resilience;
mod sandbox;
mod sessions;
mod support;
mod wasm;
