//! Query embedding on its own workers: one per core, each running one batch of queries at
//! a time on its core alone, taking whatever queries are waiting when it is free.
//!
//! Alone, a short query is a few dozen tokens: its products are too small to split well
//! across cores (measured: one query over two cores costs more core time than over one),
//! and every parallel loop of a forward pass wakes and parks the other core. So a query is
//! not split under load; queries run side by side, one per core, and the queries that arrive while
//! the workers are busy go through the next passes together (continuous batching: nothing
//! waits for a batch to fill, a lone query starts at once). A text's vector does not depend
//! on its batch (sequences are stacked without padding, see `forward.rs`). Only a batch
//! that has the machine to itself (no other worker busy, nothing waiting) is split across
//! every core, which is the quickest answer to a lone query.
//!
//! The queue is bounded by the time it would take to drain, not by a count: when the
//! queries already waiting would take longer than [`MAX_EXPECTED_WAIT`] at the measured
//! cost per query, a new one is refused at once with `Throttled` and a retry-after (the
//! edge answers `RESOURCE_EXHAUSTED`), instead of joining a queue that only turns into
//! tail latency. A query whose caller has gone (deadline, disconnect) is dropped from its
//! batch unembedded.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::LocalEmbedderInner;
use crate::error::{Error, Result};

/// Queries embedded in one forward pass at most: past this a batch's products are as
/// efficient as they get, and a larger batch only delays its first member.
const MAX_BATCH: usize = 16;
/// The longest a new query may expect to wait for the queue ahead of it.
const MAX_EXPECTED_WAIT: Duration = Duration::from_millis(250);
/// Weight of the latest batch in the moving average of the cost per query.
const COST_SMOOTHING: f64 = 0.2;

/// One query waiting for its vector.
struct Job {
    text: String,
    reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// The queue in front of one model's worker threads, started on first use.
#[derive(Default)]
pub(super) struct QueryBatcher {
    sender: OnceLock<mpsc::Sender<Job>>,
    load: Arc<QueueLoad>,
}

/// What admission reads: queries waiting and the measured cost of one.
#[derive(Default)]
struct QueueLoad {
    waiting: AtomicUsize,
    /// Workers running a batch now.
    busy_workers: AtomicUsize,
    /// Moving average of a batch's wall time per query, in nanoseconds (0: none yet).
    nanos_per_query: AtomicU64,
}

impl QueueLoad {
    /// Counts a new query in, or refuses it when the queries ahead of it would take
    /// longer than [`MAX_EXPECTED_WAIT`].
    fn admit(&self) -> Result<()> {
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let expected_wait = self.expected_wait(waiting);
        if expected_wait <= MAX_EXPECTED_WAIT {
            return Ok(());
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Err(Error::rate_limited(
            format!(
                "the server is busy: {waiting} queries are waiting for the embedding model (about {} ms); retry later",
                expected_wait.as_millis()
            ),
            expected_wait,
        ))
    }

    fn expected_wait(&self, waiting: usize) -> Duration {
        Duration::from_nanos(self.nanos_per_query.load(Ordering::Relaxed)) * waiting as u32
    }

    fn record(&self, batch_size: usize, took: Duration) {
        let latest = took.as_nanos() as f64 / batch_size.max(1) as f64;
        let previous = self.nanos_per_query.load(Ordering::Relaxed) as f64;
        let average = if previous == 0.0 {
            latest
        } else {
            previous + COST_SMOOTHING * (latest - previous)
        };
        self.nanos_per_query
            .store(average as u64, Ordering::Relaxed);
    }
}

impl QueryBatcher {
    /// The vector of `text`, embedded with whatever other queries are waiting.
    pub(super) async fn embed(
        &self,
        model: &Arc<LocalEmbedderInner>,
        text: &str,
    ) -> Result<Vec<f32>> {
        self.load.admit()?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            text: text.to_string(),
            reply,
        };
        let sent = self.sender(model).send(job);
        if sent.is_err() {
            self.load.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::internal("the query embedding worker has stopped"));
        }
        answer
            .await
            .map_err(|_| Error::internal("the query embedding worker has stopped"))?
    }

    fn sender(&self, model: &Arc<LocalEmbedderInner>) -> &mpsc::Sender<Job> {
        self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::channel();
            let receiver = Arc::new(Mutex::new(receiver));
            let workers = std::thread::available_parallelism().map_or(1, usize::from);
            // For a query that has every core to itself: splitting it is slower per
            // core but the fastest answer when nothing else waits.
            let wide = rayon::ThreadPoolBuilder::new()
                .num_threads(workers)
                .thread_name(|index| format!("skyfuse-query-embed-wide-{index}"))
                .build()
                .ok()
                .map(Arc::new);
            for worker in 0..workers {
                let (model, receiver) = (Arc::clone(model), Arc::clone(&receiver));
                let (load, wide) = (Arc::clone(&self.load), wide.clone());
                // A pool of one thread: the forward pass's parallel loops and products
                // run inline on it. If no worker starts, the receiver is dropped with the
                // closures and every send fails with the "stopped" error above.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("skyfuse-query-embed-{worker}"))
                    .build();
                if let Ok(pool) = pool {
                    pool.spawn(move || run_worker(&model, &receiver, &load, wide.as_deref()));
                }
            }
            sender
        })
    }
}

/// Embeds batches until every sender is gone (the embedder was dropped).
fn run_worker(
    model: &LocalEmbedderInner,
    receiver: &Mutex<mpsc::Receiver<Job>>,
    load: &QueueLoad,
    wide: Option<&rayon::ThreadPool>,
) {
    while let Some(mut jobs) = next_batch(receiver) {
        load.waiting.fetch_sub(jobs.len(), Ordering::AcqRel);
        jobs.retain(|job| !job.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let started = Instant::now();
        let texts: Vec<&str> = jobs.iter().map(|job| job.text.as_str()).collect();
        let others_busy = load.busy_workers.fetch_add(1, Ordering::AcqRel);
        let embedded = match wide {
            Some(wide) if others_busy == 0 && load.waiting.load(Ordering::Acquire) == 0 => {
                wide.install(|| model.embed_blocking(&texts))
            }
            _ => model.embed_blocking(&texts),
        };
        load.busy_workers.fetch_sub(1, Ordering::AcqRel);
        match embedded {
            Ok(vectors) => {
                load.record(jobs.len(), started.elapsed());
                for (job, vector) in jobs.into_iter().zip(vectors) {
                    let _ = job.reply.send(Ok(vector));
                }
            }
            // One text the tokenizer refuses must not fail the others: answer each alone.
            Err(_) if jobs.len() > 1 => {
                for job in jobs {
                    let vector =
                        model
                            .embed_blocking(&[job.text.as_str()])
                            .and_then(|mut vectors| {
                                vectors
                                    .pop()
                                    .ok_or_else(|| Error::internal("the model returned no vector"))
                            });
                    let _ = job.reply.send(vector);
                }
            }
            Err(error) => {
                for job in jobs {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The next waiting query and those queued behind it; `None` once every sender is gone.
/// The lock is held while waiting: an idle worker waits for it instead of on the queue.
fn next_batch(receiver: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
    let receiver = receiver
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut jobs = vec![receiver.recv().ok()?];
    while jobs.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_query_is_refused_when_the_queue_ahead_would_take_too_long() {
        let load = QueueLoad::default();
        for _ in 0..1000 {
            load.admit()
                .expect("no cost measured yet: nothing to refuse on");
        }
        let load = QueueLoad::default();
        load.record(4, Duration::from_millis(40)); // 10 ms per query
        for _ in 0..=25 {
            load.admit().expect("up to 250 ms of queue is admitted");
        }
        let refusal = load.admit().unwrap_err();
        assert_eq!(refusal.kind, ErrorKind::Throttled);
        assert!(refusal.local_refusal);
        assert_eq!(refusal.retry_after, Some(Duration::from_millis(260)));
        assert!(
            refusal.message.contains("26 queries are waiting"),
            "{}",
            refusal.message
        );
        assert_eq!(
            load.waiting.load(Ordering::Acquire),
            26,
            "a refusal is not counted"
        );
    }

    #[test]
    fn the_cost_per_query_follows_recent_batches() {
        let load = QueueLoad::default();
        load.record(1, Duration::from_millis(10));
        load.record(10, Duration::from_millis(10));
        let nanos = load.nanos_per_query.load(Ordering::Relaxed);
        assert_eq!(
            nanos, 8_200_000,
            "moved a fifth of the way from 10 ms to 1 ms"
        );
    }
}
