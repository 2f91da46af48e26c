//! The HTTP client cloud calls go through: one connection pool for the process, and
//! a pool of its own for each facade thread, so that a facade request and its
//! upstream connection are served by the same thread (`api::facade_threads`).

use std::cell::OnceCell;
use std::time::Duration;

use crate::error::{Error, Result};

/// A new client with the service's settings. It follows no redirect: requests carry
/// credentials (`api-key`, `x-amz-security-token`, signatures) that must not go to
/// another host, so a 3xx is the endpoint's error, named by its status.
pub fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|error| Error::config(format!("cannot build http client: {error}")))
}

thread_local! {
    static THREAD_POOL: OnceCell<reqwest::Client> = const { OnceCell::new() };
}

/// Gives the calling thread a client of its own (same settings as [`client`]):
/// connections it opens are driven by this thread's runtime, and requests sent from
/// it ([`for_this_thread`]) use them.
pub fn own_pool_for_this_thread() -> Result<()> {
    let own = client()?;
    THREAD_POOL.with(|pool| {
        let _ = pool.set(own);
    });
    Ok(())
}

/// The client to send with from here: the thread's own when it has one, else `shared`.
pub fn for_this_thread(shared: &reqwest::Client) -> reqwest::Client {
    THREAD_POOL
        .with(|pool| pool.get().cloned())
        .unwrap_or_else(|| shared.clone())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;

    use super::*;

    /// The client port of each request: equal ports, one kept-alive connection.
    async fn port_server() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.port().to_string()
            }),
        );
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        });
        format!("http://{address}/")
    }

    async fn port_of(client: &reqwest::Client, url: &str) -> String {
        client.get(url).send().await.unwrap().text().await.unwrap()
    }

    /// Runs `work` on a new thread with a current-thread runtime, as a facade thread.
    async fn on_a_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        let thread = std::thread::spawn(work);
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_with_its_own_pool_keeps_its_own_connections() {
        let url = port_server().await;
        let shared = client().unwrap();
        let shared_port = port_of(&shared, &url).await;
        assert_eq!(port_of(&shared, &url).await, shared_port, "kept alive");

        let (own, other) = (shared.clone(), shared.clone());
        let (own_url, other_url) = (url.clone(), url.clone());
        let own_ports = on_a_thread(move || {
            own_pool_for_this_thread().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let first = port_of(&for_this_thread(&own), &own_url).await;
                let second = port_of(&for_this_thread(&own), &own_url).await;
                (first, second)
            })
        })
        .await;
        assert_ne!(own_ports.0, shared_port, "a connection of its own");
        assert_eq!(own_ports.0, own_ports.1, "kept alive in its own pool");

        let without_pool = on_a_thread(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(port_of(&for_this_thread(&other), &other_url))
        })
        .await;
        assert_eq!(without_pool, shared_port, "the shared pool's connection");
    }
}
