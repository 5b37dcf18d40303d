//! Metrics collections, on a thread of their own, one at a time.
//!
//! A collection reads every slot of the pinned per-CPU STATS map, a syscall each, and can block
//! (the fault injection blocks it for seconds on purpose). It must not run on the runtime, nor
//! on tokio's blocking pool: validation and rendering wait for a thread of that pool, and a
//! scrape there holds one for as long as its collection blocks, even after its client gave up.
//! Enough scrapes at once (more than the pool's 512 threads; or scrapes that time out and come
//! again while a collection hangs) and an etcd change waits behind them, which is the seed
//! post-mortem's failure. On its own thread, a blocked collection delays scrapes and nothing
//! else.
//!
//! At most one collection is in flight. A scrape that arrives meanwhile waits for it and is
//! served its result: scrapes at once cost one collection, and no answer is older than one
//! collection before its request.

use std::{
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc},
};

use axum::body::Bytes;
use futures::{FutureExt as _, future::Shared};
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

/// Why a scrape got no exposition.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(super) enum ScrapeError {
    #[error("a collector failed to encode its metrics")]
    Encode,
    #[error("a collector panicked")]
    Panicked,
    #[error("the collection thread is gone")]
    Gone,
}

/// A collection's outcome: the text exposition, shared by every scrape that waited for it.
type Outcome = Result<Bytes, ScrapeError>;

/// A collection requested from the thread; every scrape that joins it polls a clone.
type Collection = Shared<oneshot::Receiver<Outcome>>;

/// The scrapes' side of the collection thread.
#[derive(Debug)]
pub(super) struct Scraper {
    requests: mpsc::Sender<oneshot::Sender<Outcome>>,
    /// The collection in flight, if any: a scrape joins it rather than start another.
    in_flight: Arc<Mutex<Option<Collection>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Scraper {
    /// Starts the collection thread. It ends when the scraper is dropped.
    pub(super) fn spawn(registry: Arc<Registry>) -> std::io::Result<Self> {
        let (requests, rx) = mpsc::channel::<oneshot::Sender<Outcome>>();
        let in_flight: Arc<Mutex<Option<Collection>>> = Arc::default();
        let done = in_flight.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                while let Ok(reply) = rx.recv() {
                    let outcome = collect(&registry);
                    // Cleared before the reply: a scrape from now on starts a new collection
                    // instead of joining one that is over.
                    *lock(&done) = None;
                    let _ = reply.send(outcome);
                }
            })?;
        Ok(Self {
            requests,
            in_flight,
        })
    }

    /// The exposition of the collection in flight, or of a new one when none is.
    pub(super) async fn scrape(&self) -> Outcome {
        let collection = {
            let mut in_flight = lock(&self.in_flight);
            match in_flight.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let (reply, rx) = oneshot::channel();
                    // Sent under the lock: the thread clears `in_flight` only after it is set.
                    self.requests.send(reply).map_err(|_| ScrapeError::Gone)?;
                    let c = rx.shared();
                    *in_flight = Some(c.clone());
                    c
                }
            }
        };
        collection.await.map_err(|_| ScrapeError::Gone)?
    }
}

/// Encodes every metric of `registry` (the data-plane collector reads the STATS map here).
fn collect(registry: &Registry) -> Outcome {
    let mut out = String::new();
    // A panicking collector fails this scrape, not the thread and every later scrape.
    let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        prometheus_client::encoding::text::encode(&mut out, registry)
    }));
    match encoded {
        Ok(Ok(())) => Ok(Bytes::from(out)),
        Ok(Err(std::fmt::Error)) => Err(ScrapeError::Encode),
        Err(_) => Err(ScrapeError::Panicked),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::counter::ConstCounter,
    };

    use super::*;

    /// A collector that blocks each collection until the test opens the gate once, and
    /// counts the collections in the metric it encodes.
    #[derive(Debug)]
    struct Gate {
        collections: Arc<AtomicUsize>,
        open: Mutex<mpsc::Receiver<()>>,
    }

    impl Collector for Gate {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let n = self.collections.fetch_add(1, Ordering::SeqCst) + 1;
            // Bounded, so that a wrong test fails instead of hanging.
            let _ = lock(&self.open).recv_timeout(Duration::from_secs(10));
            let c = ConstCounter::new(n as u64);
            c.encode(encoder.encode_descriptor("collections", "", None, c.metric_type())?)
        }
    }

    fn gated() -> (Scraper, Arc<AtomicUsize>, mpsc::Sender<()>) {
        let collections = Arc::new(AtomicUsize::new(0));
        let (open, rx) = mpsc::channel();
        let mut r = Registry::default();
        r.register_collector(Box::new(Gate {
            collections: collections.clone(),
            open: Mutex::new(rx),
        }));
        let scraper = Scraper::spawn(Arc::new(r)).expect("thread");
        (scraper, collections, open)
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scrapes_at_once_share_one_collection() {
        let (scraper, collections, open) = gated();
        let scraper = Arc::new(scraper);
        let scrapes: Vec<_> = (0..10)
            .map(|_| {
                let s = scraper.clone();
                tokio::spawn(async move { s.scrape().await })
            })
            .collect();
        until(|| collections.load(Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        open.send(()).unwrap();
        for s in scrapes {
            let text = s.await.unwrap().unwrap();
            assert!(
                std::str::from_utf8(&text)
                    .unwrap()
                    .contains("collections_total 1\n"),
                "{text:?}"
            );
        }
        assert_eq!(collections.load(Ordering::SeqCst), 1);

        // The next scrape collects again.
        open.send(()).unwrap();
        let text = scraper.scrape().await.unwrap();
        assert!(
            std::str::from_utf8(&text)
                .unwrap()
                .contains("collections_total 2\n")
        );
    }

    #[test]
    fn a_blocked_collection_leaves_the_blocking_pool_free() {
        // One blocking thread: on the pool, a single blocked scrape would hold all of it.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (scraper, collections, open) = gated();
            let scraper = Arc::new(scraper);
            let scrapes: Vec<_> = (0..4)
                .map(|_| {
                    let s = scraper.clone();
                    tokio::spawn(async move { s.scrape().await })
                })
                .collect();
            until(|| collections.load(Ordering::SeqCst) == 1).await;
            let pooled =
                tokio::time::timeout(Duration::from_secs(2), tokio::task::spawn_blocking(|| 7))
                    .await;
            assert_eq!(pooled.ok().and_then(Result::ok), Some(7));
            open.send(()).unwrap();
            for s in scrapes {
                assert!(s.await.unwrap().is_ok());
            }
        });
    }
}
