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

/// Gives the calling thread clients of its own (same settings as [`client`] and
/// [`super::upstream::client`]): connections it opens are driven by this thread's
/// runtime, and requests sent from it ([`for_this_thread`], [`super::upstream::send`])
/// use them.
pub fn own_pool_for_this_thread() -> Result<()> {
    let own = client()?;
    THREAD_POOL.with(|pool| {
        let _ = pool.set(own);
    });
    super::upstream::own_client_for_this_thread()
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
    use std::time::Duration;

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

    /// Runs `rounds` on a new thread with a current-thread runtime, as a facade thread
    /// runs, with a pool of its own when `own_pool`.
    async fn on_a_thread<T: Send + 'static>(
        own_pool: bool,
        rounds: impl AsyncFnOnce() -> T + Send + 'static,
    ) -> T {
        let thread = std::thread::spawn(move || {
            if own_pool {
                own_pool_for_this_thread().unwrap();
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(rounds())
        });
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap()
    }

    /// The same connection twice in a row, once the first is back in its pool.
    async fn kept_alive(client: &reqwest::Client, url: &str) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = port_of(client, url).await;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let port = port_of(client, url).await;
            if port == last {
                return true;
            }
            last = port;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_with_its_own_pool_never_sends_on_the_shared_pools_connections() {
        let url = port_server().await;
        let shared = client().unwrap();
        assert!(kept_alive(&shared, &url).await);
        let shared_ports = on_a_thread(true, async move || {
            let own = for_this_thread(&shared);
            assert!(
                kept_alive(&own, &url).await,
                "its own pool keeps connections"
            );
            let mut seen = Vec::new();
            for _ in 0..5 {
                let (own_port, shared_port) =
                    (port_of(&own, &url).await, port_of(&shared, &url).await);
                assert_ne!(own_port, shared_port, "a shared connection was used");
                seen.push(shared_port);
            }
            seen
        })
        .await;
        assert_eq!(shared_ports.len(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_without_its_own_pool_sends_through_the_shared_one() {
        let url = port_server().await;
        let shared = client().unwrap();
        let shared_again = on_a_thread(false, async move || {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while tokio::time::Instant::now() < deadline {
                let chosen = port_of(&for_this_thread(&shared), &url).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                if port_of(&shared, &url).await == chosen {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(shared_again, "never the shared pool's connection");
    }
}
