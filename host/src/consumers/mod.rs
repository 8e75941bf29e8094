//! Local consumers (`[consumers.NAME]`): results handed to something on the
//! device itself (a local broker's topics, a local web hook) as they are
//! committed, whatever the upstream sync does.
//!
//! Each consumer reads the results the outbox keeps (`outbox.local_max_bytes`)
//! after its own cursor, in completion order, a page at a time, and moves
//! the cursor past what it delivered; one kind is one file behind
//! [`Consumer`].
//!
//! Invariants:
//! * at least once: the cursor moves only past results the consumer took
//!   (a broker's PUBACK, a web hook's 2xx); it is saved at most once a
//!   second and at shutdown, so a crash delivers at most that second's
//!   results again. Every result carries its id for de-duplication;
//! * one consumer never holds up another, the pipelines or the upstream
//!   sync: a consumer that is down falls behind (its lag is a metric) and
//!   catches up from its cursor when back, within what the outbox keeps;
//!   what was deleted before it was taken is counted `missed`;
//! * one result a consumer refuses for good (a web hook's 4xx) is skipped
//!   alone and counted `refused`; other failures are retried with backoff
//!   (100 ms doubling to `max_backoff_ms`);
//! * a new consumer starts after the newest result kept when it first runs
//!   (it is not sent the past it was configured after).

mod mqtt;
mod webhook;

use crate::completions::Completions;
use crate::config::{Config, ConsumerConfig};
use crate::ingest::IngestError;
use crate::ingest::Running;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::watch;

/// Results a consumer is given at once.
pub const PAGE: u32 = 64;

/// How often a moving cursor is saved.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// How long a consumer's shutdown may take (its last delivery, its cursor).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A result kept on the device, as a consumer gets it.
#[derive(Debug, Clone)]
pub struct Kept {
    /// Its position in the kept results.
    pub pos: i64,
    /// Its id (`<device>/<pipeline>/<seq>`): the same in every delivery.
    pub id: String,
    /// Its pipeline.
    pub pipeline: String,
    /// When its input was accepted, ms since the Unix epoch.
    pub accepted_at_ms: i64,
    /// The result record (JSON), as it goes upstream.
    pub body: Vec<u8>,
}

/// What became of a page handed to [`Consumer::deliver`].
#[derive(Debug, Default)]
pub struct Taken {
    /// How many results at the front of the page were handled (delivered
    /// or refused): the cursor moves past them.
    pub done: usize,
    /// Of those, the ones refused for good, with why.
    pub refused: Vec<(String, String)>,
    /// Why the rest were not (`None`: all were handled).
    pub failure: Option<String>,
}

/// A delivery in progress.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Taken> + Send + 'a>>;

/// One kind of local consumer.
pub trait Consumer: Send {
    /// What it is, for log lines (`mqtt 127.0.0.1:1883`).
    fn describe(&self) -> String;

    /// Hand `results` over, in order; say how many were taken.
    fn deliver<'a>(&'a mut self, results: &'a [Kept]) -> Delivery<'a>;
}

/// Start every consumer of `config`, reading `outbox`, woken by
/// `completions` after each commit.
pub fn start(
    config: &Config,
    outbox: &Arc<Outbox>,
    completions: &Completions,
    metrics: &Arc<Metrics>,
    runtime: &Handle,
) -> Result<Vec<Running>, IngestError> {
    let mut running = Vec::new();
    for (name, settings) in &config.consumers {
        let consumer: Box<dyn Consumer> = match (&settings.mqtt, &settings.webhook) {
            (Some(mqtt), _) => Box::new(mqtt::MqttConsumer::new(
                name,
                mqtt,
                &config.device.id,
                runtime,
            )?),
            (_, Some(webhook)) => Box::new(webhook::WebhookConsumer::new(name, webhook)?),
            (None, None) => unreachable!("the configuration was checked"),
        };
        let describe = format!("consumer {name} ({})", consumer.describe());
        let (stop, stopped) = watch::channel(false);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let reader = Reader {
            name: name.clone(),
            settings: settings.clone(),
            outbox: outbox.clone(),
            metrics: metrics.clone(),
        };
        let commits = completions.commits();
        runtime.spawn(async move {
            reader.run(consumer, commits, stopped).await;
            let _ = done_tx.send(());
        });
        running.push(Running::new(
            describe,
            move || {
                let _ = stop.send(true);
            },
            move || {
                let _ = done_rx.recv_timeout(SHUTDOWN_GRACE);
            },
        ));
    }
    Ok(running)
}

/// One consumer's cursor over the kept results.
struct Reader {
    name: String,
    settings: ConsumerConfig,
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
}

/// The fields of a record a consumer needs.
#[derive(serde::Deserialize)]
struct Head {
    id: String,
    pipeline: String,
    accepted_at_ms: i64,
}

impl Reader {
    async fn run(
        self,
        mut consumer: Box<dyn Consumer>,
        mut commits: watch::Receiver<u64>,
        mut stop: watch::Receiver<bool>,
    ) {
        let name = self.name.as_str();
        let Some(mut cursor) = self.first_cursor(&mut stop).await else {
            return;
        };
        let mut saved = cursor;
        let mut last_save = Instant::now();
        let mut backoff = Backoff::new(self.settings.max_backoff_ms);
        while !*stop.borrow() {
            // Marked seen before reading: a commit after the read wakes us.
            commits.borrow_and_update();
            let outbox = self.outbox.clone();
            let page =
                match tokio::task::spawn_blocking(move || outbox.local_after(cursor, PAGE)).await {
                    Ok(Ok(page)) => page,
                    Ok(Err(e)) => {
                        tracing::error!(consumer = name, "cannot read the kept results: {e}");
                        backoff.wait(&mut stop).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(consumer = name, "reading the kept results failed: {e}");
                        return;
                    }
                };
            if let Some(first) = page.first.filter(|&f| f > cursor.saturating_add(1)) {
                let missed = u64::try_from(first - cursor - 1).unwrap_or(0);
                tracing::warn!(
                    consumer = name,
                    "{missed} result(s) were deleted from the kept results (outbox.local_max_bytes, local_max_age_secs) before this consumer took them"
                );
                self.metrics.consumer_event(name, "missed", missed);
                cursor = first - 1;
            }
            let newest = page.last.unwrap_or(cursor);
            self.metrics
                .consumer_lag(name, u64::try_from(newest - cursor).unwrap_or(0));
            if page.items.is_empty() {
                if cursor != saved {
                    saved = self.save(cursor, saved).await;
                    last_save = Instant::now();
                }
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = commits.changed() => {}
                    // Results can also be deleted (the bounds) or kept by
                    // another process; a slow look now and then catches both.
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                continue;
            }
            let page_end = page.items.last().map_or(cursor, |(pos, _)| *pos);
            let results = self.wanted(page.items);
            let mut from = 0;
            while from < results.len() {
                let taken = consumer.deliver(&results[from..]).await;
                let handled = &results[from..from + taken.done.min(results.len() - from)];
                self.account(handled, &taken.refused);
                from += handled.len();
                if let Some(last) = handled.last() {
                    cursor = last.pos;
                }
                if let Some(why) = taken.failure {
                    self.metrics.consumer_event(name, "failed", 1);
                    backoff.failed(name, &consumer.describe(), &why);
                    if !backoff.wait(&mut stop).await {
                        break;
                    }
                } else {
                    backoff.reset(name);
                }
            }
            if from == results.len() {
                cursor = page_end;
            }
            if last_save.elapsed() >= SAVE_EVERY {
                saved = self.save(cursor, saved).await;
                last_save = Instant::now();
            }
        }
        self.save(cursor, saved).await;
    }

    /// The stored cursor, or (a new consumer) the newest kept position.
    async fn first_cursor(&self, stop: &mut watch::Receiver<bool>) -> Option<i64> {
        let mut backoff = Backoff::new(self.settings.max_backoff_ms);
        loop {
            let (outbox, name) = (self.outbox.clone(), self.name.clone());
            let found = tokio::task::spawn_blocking(move || -> Result<i64, String> {
                if let Some(pos) = outbox.cursor(&name).map_err(|e| e.to_string())? {
                    return Ok(pos);
                }
                // Not the newest kept: with none kept (all aged out) a
                // new consumer would count the past as missed.
                let newest = outbox.local_newest().map_err(|e| e.to_string())?;
                outbox
                    .save_cursor(&name, newest)
                    .map_err(|e| e.to_string())?;
                Ok(newest)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match found {
                Ok(pos) => return Some(pos),
                Err(why) => {
                    backoff.failed(&self.name, "its cursor", &why);
                    if !backoff.wait(stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The page's results of this consumer's pipelines, in order.
    fn wanted(&self, items: Vec<(i64, Vec<u8>)>) -> Vec<Kept> {
        items
            .into_iter()
            .filter_map(|(pos, body)| {
                let Ok(head) = serde_json::from_slice::<Head>(&body) else {
                    tracing::warn!(consumer = %self.name, pos, "a kept result is not a result record; skipped");
                    return None;
                };
                let pipelines = &self.settings.pipelines;
                (pipelines.is_empty() || pipelines.contains(&head.pipeline)).then_some(Kept {
                    pos,
                    id: head.id,
                    pipeline: head.pipeline,
                    accepted_at_ms: head.accepted_at_ms,
                    body,
                })
            })
            .collect()
    }

    /// Count what was handled: delivered (with its latency) or refused.
    fn account(&self, handled: &[Kept], refused: &[(String, String)]) {
        let now = sluice_types::now_ms();
        let latencies: Vec<Duration> = handled
            .iter()
            .filter(|k| !refused.iter().any(|(id, _)| *id == k.id))
            .map(|k| Duration::from_millis(u64::try_from(now - k.accepted_at_ms).unwrap_or(0)))
            .collect();
        self.metrics.consumer_delivered(&self.name, &latencies);
        for (id, why) in refused {
            tracing::warn!(consumer = %self.name, "result {id} refused for good, skipped: {why}");
        }
        self.metrics
            .consumer_event(&self.name, "refused", refused.len() as u64);
    }

    /// Save `cursor` if it moved from `saved`; what is saved now.
    async fn save(&self, cursor: i64, saved: i64) -> i64 {
        if cursor == saved {
            return saved;
        }
        let (outbox, name) = (self.outbox.clone(), self.name.clone());
        match tokio::task::spawn_blocking(move || outbox.save_cursor(&name, cursor)).await {
            Ok(Ok(())) => cursor,
            Ok(Err(e)) => {
                tracing::error!(consumer = %self.name, "cannot save its cursor: {e}");
                saved
            }
            Err(e) => {
                tracing::error!(consumer = %self.name, "saving its cursor failed: {e}");
                saved
            }
        }
    }
}

/// Waits between failed attempts: 100 ms doubling to a bound; the first
/// failure of a run is logged as a warning, the rest at most once a minute.
struct Backoff {
    next: Duration,
    max: Duration,
    failures: u64,
    logged: Option<Instant>,
}

impl Backoff {
    fn new(max_ms: u64) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max: Duration::from_millis(max_ms.max(100)),
            failures: 0,
            logged: None,
        }
    }

    fn failed(&mut self, consumer: &str, what: &str, why: &str) {
        self.failures += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                consumer,
                failures = self.failures,
                "cannot deliver to {what}: {why}; trying again in {:?}",
                self.next
            );
            self.logged = Some(Instant::now());
        }
    }

    /// Wait before the next attempt; false when told to stop meanwhile.
    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = stop.changed() => false,
            _ = tokio::time::sleep(wait) => !*stop.borrow(),
        }
    }

    fn reset(&mut self, consumer: &str) {
        if self.failures > 0 {
            tracing::info!(
                consumer,
                "delivering again after {} failed attempt(s)",
                self.failures
            );
        }
        *self = Backoff::new(self.max.as_millis() as u64);
    }
}
