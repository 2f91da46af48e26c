//! The floor under the facade: two pass-through proxies built from the parts it is
//! made of, which forward each request's body to one upstream and its answer back
//! untouched (no authentication, routing, metering or re-encoding).
//!
//! `--stack hyper`: hyper's HTTP/1 server and client connections alone, one upstream
//! connection per client connection. `--stack axum-hyper`: an axum route and
//! hyper-util's pooled client, the parts the facade is built from. `--stack
//! axum-reqwest`: an axum route and a reqwest client, what the facade used until
//! 5 Dec (reqwest's layers cost ~9 µs of CPU a request here). All serve on
//! `--threads` threads (default 2), each a current-thread runtime accepting from the
//! same listener, the facade's own runtime shape.
//!
//!   cargo bench --bench proxy_floor -- --port 18099 --upstream 127.0.0.1:18085 --stack hyper
//!
//! `scripts/measure-facade.sh` runs them beside nginx's proxy and the facade: what
//! skyfuse adds over the axum-hyper floor is its own work; what that floor adds
//! over the hyper one is axum's and the pool's.

#[path = "flags/mod.rs"]
mod flags;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| flags::value(&args, name);
    let (Some(port), Some(upstream)) = (arg("--port"), arg("--upstream")) else {
        // `cargo bench` runs every bench with `--bench`: nothing to do unasked.
        eprintln!(
            "usage: proxy_floor --port P --upstream HOST:PORT [--stack hyper|axum-hyper|axum-reqwest] [--threads N]"
        );
        return;
    };
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().expect("--port P");
    let upstream: SocketAddr = upstream.parse().expect("--upstream HOST:PORT");
    let stack = arg("--stack").unwrap_or_else(|| "hyper".into());
    let threads: usize = arg("--threads")
        .and_then(|threads| threads.parse().ok())
        .unwrap_or(2);
    let listener = std::net::TcpListener::bind(address).expect("the port is free");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let serving: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.try_clone().expect("a copy of the listener");
            let stack = stack.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    match stack.as_str() {
                        "hyper" => hyper_proxy(listener, upstream).await,
                        "axum-reqwest" => axum_reqwest_proxy(listener, upstream).await,
                        "axum-hyper" => axum_hyper_proxy(listener, upstream).await,
                        other => panic!("unknown --stack {other:?}"),
                    }
                })
            })
        })
        .collect();
    println!("{stack} floor proxy on {address} in front of {upstream}");
    for thread in serving {
        let _ = thread.join();
    }
}

async fn hyper_proxy(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let host: hyper::header::HeaderValue = upstream.to_string().parse().expect("a host header");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let host = host.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                return;
            };
            let _ = server.set_nodelay(true);
            let Ok((sender, connection)) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(server)).await
            else {
                return;
            };
            tokio::spawn(connection);
            let sender = std::sync::Arc::new(tokio::sync::Mutex::new(sender));
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let (sender, host) = (sender.clone(), host.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let mut forwarded = hyper::Request::from_parts(parts, Full::new(body));
                    forwarded.headers_mut().insert(hyper::header::HOST, host);
                    let answer = sender.lock().await.send_request(forwarded).await?;
                    let (parts, body) = answer.into_parts();
                    let body = body.collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(hyper::Response::from_parts(parts, Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(client), service)
                .await;
        });
    }
}

#[derive(Clone)]
struct Forward {
    http: reqwest::Client,
    url: reqwest::Url,
}

async fn axum_reqwest_proxy(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let forward = Forward {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("a client"),
        url: reqwest::Url::parse(&format!("http://{upstream}/v1/chat/completions")).expect("a url"),
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(pass_on))
        .with_state(forward);
    axum::serve(listener, app).await.expect("serving");
}

async fn pass_on(State(forward): State<Forward>, body: Bytes) -> axum::response::Response {
    let sent = forward
        .http
        .post(forward.url.clone())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(error) => {
            return (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response();
        }
    };
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            if let Some(content_type) = content_type {
                response.headers_mut().insert("content-type", content_type);
            }
            response
        }
        Err(error) => (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

#[derive(Clone)]
struct HyperForward {
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    uri: hyper::Uri,
}

async fn axum_hyper_proxy(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let forward = HyperForward {
        http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
        uri: format!("http://{upstream}/v1/chat/completions")
            .parse()
            .expect("a uri"),
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(pass_on_hyper))
        .with_state(forward);
    axum::serve(listener, app).await.expect("serving");
}

async fn pass_on_hyper(
    State(forward): State<HyperForward>,
    body: Bytes,
) -> axum::response::Response {
    let request = hyper::Request::post(forward.uri.clone())
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("a request");
    let answer = match forward.http.request(request).await {
        Ok(answer) => answer,
        Err(error) => {
            return (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response();
        }
    };
    let (parts, body) = answer.into_parts();
    match body.collect().await {
        Ok(bytes) => {
            axum::response::Response::from_parts(parts, axum::body::Body::from(bytes.to_bytes()))
        }
        Err(error) => (axum::http::StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
