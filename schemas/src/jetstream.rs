//! Creates the JetStream objects of [`crate::streams`] on a live server.
//! Every call is idempotent: services run it on each start, in any order.

use crate::{
    streams::{ConsumerDef, Definitions, StreamDef},
    Language, Subjects,
};
use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, stream};
use std::time::Duration;

/// Creates or updates the jobs stream.
pub async fn ensure_jobs_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> anyhow::Result<()> {
    let def = Definitions::shipped().jobs_stream;
    let config = stream_config(&def, subjects.jobs_stream(), subjects.all_jobs())?;
    js.create_or_update_stream(config)
        .await
        .with_context(|| format!("creating stream {}", subjects.jobs_stream()))?;
    Ok(())
}

/// Creates or updates the durable consumer the workers of `language` share,
/// creating the stream first if needed.
pub async fn ensure_worker_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    language: Language,
) -> anyhow::Result<consumer::PullConsumer> {
    ensure_jobs_stream(js, subjects).await?;
    let def = Definitions::shipped().worker_consumer;
    let stream = js
        .get_stream(subjects.jobs_stream())
        .await
        .context("opening the jobs stream")?;
    let name = subjects.worker_consumer(language);
    stream
        .create_consumer(consumer_config(&def, &name, subjects.jobs(language)))
        .await
        .with_context(|| format!("creating consumer {name}"))
}

/// Creates or updates the stream of job events workers report.
pub async fn ensure_events_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> anyhow::Result<()> {
    let def = Definitions::shipped().events_stream;
    let config = stream_config(&def, subjects.events_stream(), subjects.all_events())?;
    js.create_or_update_stream(config)
        .await
        .with_context(|| format!("creating stream {}", subjects.events_stream()))?;
    Ok(())
}

/// Creates or updates the durable consumer dispatchers record events with,
/// creating the stream first if needed.
pub async fn ensure_events_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> anyhow::Result<consumer::PullConsumer> {
    ensure_events_stream(js, subjects).await?;
    let def = Definitions::shipped().events_consumer;
    let stream = js
        .get_stream(subjects.events_stream())
        .await
        .context("opening the events stream")?;
    let name = subjects.events_consumer();
    stream
        .create_consumer(consumer_config(&def, &name, subjects.all_events()))
        .await
        .with_context(|| format!("creating consumer {name}"))
}

fn stream_config(def: &StreamDef, name: String, subject: String) -> anyhow::Result<stream::Config> {
    let retention = match def.retention.as_str() {
        "workqueue" => stream::RetentionPolicy::WorkQueue,
        "limits" => stream::RetentionPolicy::Limits,
        "interest" => stream::RetentionPolicy::Interest,
        other => bail!("unknown retention '{other}'"),
    };
    let storage = match def.storage.as_str() {
        "file" => stream::StorageType::File,
        "memory" => stream::StorageType::Memory,
        other => bail!("unknown storage '{other}'"),
    };
    let discard = match def.discard.as_str() {
        "new" => stream::DiscardPolicy::New,
        "old" => stream::DiscardPolicy::Old,
        other => bail!("unknown discard policy '{other}'"),
    };
    Ok(stream::Config {
        name,
        description: Some(def.description.clone()),
        subjects: vec![subject],
        retention,
        storage,
        discard,
        max_age: Duration::from_secs(def.max_age_seconds),
        max_messages: def.max_messages,
        max_bytes: def.max_bytes,
        max_message_size: def.max_message_size,
        duplicate_window: Duration::from_secs(def.duplicate_window_seconds),
        ..Default::default()
    })
}

fn consumer_config(
    def: &ConsumerDef,
    name: &str,
    filter_subject: String,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(def.description.clone()),
        filter_subject,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(def.ack_wait_seconds),
        max_deliver: def.max_deliver,
        max_ack_pending: def.max_ack_pending,
        backoff: def
            .backoff_seconds
            .iter()
            .copied()
            .map(Duration::from_secs)
            .collect(),
        ..Default::default()
    }
}
