//! The facade's own threads: one current-thread runtime each, all accepting from
//! the facade's listener, each serving the connections it accepted to their end
//! with an upstream connection pool of its own. A request, its upstream call and
//! its stream of tokens then stay on one thread. On the shared multi-thread runtime
//! each request handed work between workers and woke a parked one: on two cores
//! shared with the upstream that was most of the facade's tail latency and CPU at
//! moderate rates (docs/benchmarks.md).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::future::try_join_all;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::connection::{self, AcceptOptions};
use super::server::{ServeOptions, drained, serve_facade};
use crate::error::{Error, Result};

/// Serves the facade on `threads` threads until `draining` turns true and their
/// connections are done. Dropping the returned future stops the threads at once
/// (the caller's grace period ran out): their runtimes close what is left.
pub(super) fn serve_on_threads(
    app: axum::Router,
    listener: TcpListener,
    accept: AcceptOptions,
    options: ServeOptions,
    threads: usize,
    draining: watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<()>>> {
    let address = listener.local_addr()?;
    let listener = listener.into_std()?;
    let mut running = Vec::with_capacity(threads);
    for index in 0..threads {
        let listener = listener.try_clone()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel();
        let thread = Thread {
            app: app.clone(),
            accept: accept.clone(),
            options: options.clone(),
            draining: draining.clone(),
        };
        std::thread::Builder::new()
            .name(format!("skyfuse-facade-{index}"))
            .spawn(move || {
                let _ = done.send(thread.run(listener, address, stopped));
            })
            .map_err(|error| Error::internal(format!("cannot start a facade thread: {error}")))?;
        running.push((stop, finished));
    }
    Ok(async move {
        // Held until every thread is done: dropping them stops the threads.
        let (_stops, finished): (Vec<_>, Vec<_>) = running.into_iter().unzip();
        let ended = |finished: oneshot::Receiver<Result<()>>| async move {
            finished
                .await
                .unwrap_or_else(|_| Err(Error::internal("a facade thread ended unexpectedly")))
        };
        try_join_all(finished.into_iter().map(ended))
            .await
            .map(|_| ())
    })
}

/// How often a facade thread's timer anchor fires; see [`Thread::run`].
const TIMER_ANCHOR: Duration = Duration::from_millis(500);

/// What one facade thread serves with.
struct Thread {
    app: axum::Router,
    accept: AcceptOptions,
    options: ServeOptions,
    draining: watch::Receiver<bool>,
}

impl Thread {
    fn run(
        self,
        listener: std::net::TcpListener,
        address: SocketAddr,
        stopped: oneshot::Receiver<()>,
    ) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Error::internal(format!("facade thread runtime: {error}")))?;
        crate::cloud::http_client::own_pool_for_this_thread()?;
        runtime.block_on(async move {
            // tokio wakes its own driver (an eventfd write, then one more epoll_wait)
            // whenever a timer is set to fire before the driver's next wake-up, even
            // from the thread that runs the driver (tokio-rs/tokio#5207); hyper sets one
            // per request (the header read timeout). A timer always due within
            // TIMER_ANCHOR keeps every longer one from doing so, for one wake-up a tick.
            tokio::spawn(async {
                let mut anchor = tokio::time::interval(TIMER_ANCHOR);
                loop {
                    anchor.tick().await;
                }
            });
            let listener = TcpListener::from_std(listener)
                .map_err(|error| Error::internal(format!("facade listener {address}: {error}")))?;
            let connections =
                connection::accept(listener, self.accept, drained(self.draining.clone()));
            let served = serve_facade(self.app, connections, &self.options, drained(self.draining));
            tokio::select! {
                served = served => served,
                // The server stopped waiting: end now, cutting off what is left.
                _ = stopped => Ok(()),
            }
        })
    }
}
