//! Attacks on transport: see docs/security/transport.md. Real TLS handshakes on
//! 127.0.0.1 with certificates made by rcgen in the test.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use skyfuse::api::{Listeners, serve};
use skyfuse::config::Config;
use skyfuse::service::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A certificate authority made for one test.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A leaf certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Leaf {
        self.leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "skyfuse",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name`.
    fn client(&self, name: &str) -> Leaf {
        self.leaf(Vec::new(), name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: Vec<String>, common: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, common);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Writes the server's certificate files (and the client CA) into `dir`.
fn write_server_files(dir: &Path, server: &Leaf, client_ca: Option<&Ca>) {
    write_atomically(&dir.join("server.crt"), &server.cert);
    write_atomically(&dir.join("server.key"), &server.key);
    if let Some(ca) = client_ca {
        write_atomically(&dir.join("clients.pem"), &ca.pem());
    }
}

/// As a renewal tool does: a new file renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn tls_table(client_auth: Option<&str>) -> String {
    let mut table = "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n".to_string();
    if let Some(client_auth) = client_auth {
        table.push_str(&format!(
            "client_ca_file = \"clients.pem\"\nclient_auth = \"{client_auth}\"\n"
        ));
    }
    table
}

/// A chat deployment so the facade can start; never called by these tests.
const FACADE: &str = r#"
[server]
data_dir = "data"
[facade]
listen = "127.0.0.1:0"
[routing]
default_model = "llama"
[[provider]]
id = "nowhere"
kind = "openai_compat"
base_url = "http://127.0.0.1:9"
[[deployment]]
provider = "nowhere"
model = "llama"
"#;

/// A running server started as production starts it; stopped when dropped.
struct Running {
    grpc: SocketAddr,
    http: Option<SocketAddr>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `toml` (paths from `dir`) with gRPC bound to `grpc_host`:0.
async fn try_start(toml: &str, dir: &Path, grpc_host: &str) -> skyfuse::error::Result<Running> {
    let config = Config::parse(toml, dir)?;
    let with_facade = config.facade.listen.is_some();
    let service = Arc::new(Service::build(config, &Default::default()).await?);
    let grpc_listener = TcpListener::bind((grpc_host, 0)).await?;
    let grpc = grpc_listener.local_addr()?;
    let openai = match with_facade {
        true => Some(TcpListener::bind("127.0.0.1:0").await?),
        false => None,
    };
    let http = openai
        .as_ref()
        .map(|listener| listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, mut starting) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let served = serve(
            service,
            Listeners {
                grpc: grpc_listener,
                openai,
                metrics: None,
            },
            async {
                let _ = stopped.await;
            },
        )
        .await;
        let _ = started.send(served);
    });
    // A startup error ends `serve` in its first poll, before it waits on anything
    // (tests run on a current-thread runtime, so yielding runs it).
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    if let Ok(served) = starting.try_recv() {
        served?;
    }
    Ok(Running {
        grpc,
        http,
        _stop: stop,
    })
}

async fn start(toml: &str, dir: &Path) -> Running {
    try_start(toml, dir, "127.0.0.1")
        .await
        .unwrap_or_else(|error| panic!("server did not start: {error}"))
}

/// A TLS client trusting `server_ca`, presenting `identity` if given.
fn client_config(
    server_ca: &Ca,
    identity: Option<&Leaf>,
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.pem().as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A gRPC channel over TLS to `address`, checking the server is `localhost`.
async fn tls_channel(
    address: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = tokio_rustls::TlsConnector::from(tls.clone());
            async move {
                let tcp = TcpStream::connect(address).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
        .await
}

/// The health check over `channel`: the simplest call every server answers.
async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|response| response.into_inner().status)
}

/// A health check over a fresh TLS connection; Err: the connection or call failed.
async fn tls_health(address: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<i32, String> {
    let channel = tls_channel(address, tls)
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    health(channel).await.map_err(|status| {
        // The TLS alert is at the bottom of the source chain.
        let mut text = format!("{:?}: {}", status.code(), status.message());
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        text
    })
}

const SERVING: i32 = 1;

#[tokio::test]
async fn grpc_and_the_facade_are_served_over_tls_and_plaintext_to_them_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("server CA");
    write_server_files(dir.path(), &ca.server(), None);
    let server = start(&format!("{FACADE}{}", tls_table(None)), dir.path()).await;

    assert_eq!(
        tls_health(server.grpc, client_config(&ca, None, b"h2")).await,
        Ok(SERVING)
    );

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .resolve("localhost", server.http.unwrap())
        .build()
        .unwrap();
    let url = format!(
        "https://localhost:{}/v1/models",
        server.http.unwrap().port()
    );
    let models = http.get(&url).send().await.unwrap();
    assert_eq!(models.status(), 200);
    assert_eq!(
        models.json::<serde_json::Value>().await.unwrap()["data"][0]["id"],
        "llama"
    );

    // Plaintext gRPC to the TLS port: no call gets through.
    let plain = Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect_lazy();
    let refused = health(plain).await.unwrap_err();
    // The server closes the connection in the handshake: refused, or broken mid-call.
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ),
        "{refused:?}"
    );
    // Plaintext HTTP to the TLS facade: no response.
    let plain_http = reqwest::get(format!("http://{}/v1/models", server.http.unwrap())).await;
    assert!(plain_http.is_err(), "{plain_http:?}");

    // And TLS still works afterwards.
    assert_eq!(
        tls_health(server.grpc, client_config(&ca, None, b"h2")).await,
        Ok(SERVING)
    );
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn mutual_tls_required_refuses_clients_without_a_certificate_or_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("another CA");
    write_server_files(dir.path(), &server_ca.server(), Some(&client_ca));
    let server = start(
        &format!(
            "[server]\ndata_dir = \"data\"\n{}",
            tls_table(Some("required"))
        ),
        dir.path(),
    )
    .await;

    let anonymous = tls_health(server.grpc, client_config(&server_ca, None, b"h2")).await;
    eprintln!("observed without a certificate: {anonymous:?}");
    let anonymous = anonymous.expect_err("no client certificate");
    assert!(
        anonymous.ends_with("received fatal alert: CertificateRequired"),
        "{anonymous}"
    );
    let stranger = stranger_ca.client("mallory");
    let foreign = tls_health(
        server.grpc,
        client_config(&server_ca, Some(&stranger), b"h2"),
    )
    .await;
    eprintln!("observed with another CA's certificate: {foreign:?}");
    let foreign = foreign.expect_err("a certificate from another CA");
    assert!(
        foreign.ends_with("received fatal alert: UnknownCA"),
        "{foreign}"
    );

    let alice = client_ca.client("alice");
    assert_eq!(
        tls_health(server.grpc, client_config(&server_ca, Some(&alice), b"h2")).await,
        Ok(SERVING)
    );
}

#[tokio::test]
async fn mutual_tls_optional_admits_clients_without_a_certificate_but_not_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    write_server_files(dir.path(), &server_ca.server(), Some(&client_ca));
    let server = start(
        &format!(
            "[server]\ndata_dir = \"data\"\n{}",
            tls_table(Some("optional"))
        ),
        dir.path(),
    )
    .await;

    assert_eq!(
        tls_health(server.grpc, client_config(&server_ca, None, b"h2")).await,
        Ok(SERVING)
    );
    let stranger = Ca::new("another CA").client("mallory");
    let foreign = tls_health(
        server.grpc,
        client_config(&server_ca, Some(&stranger), b"h2"),
    )
    .await;
    eprintln!("observed with another CA's certificate: {foreign:?}");
    let foreign = foreign.expect_err("a certificate from another CA");
    assert!(
        foreign.ends_with("received fatal alert: UnknownCA"),
        "{foreign}"
    );
}

#[tokio::test]
async fn a_rewritten_certificate_is_served_to_new_connections_and_a_broken_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    write_server_files(dir.path(), &old_ca.server(), None);
    let server = start(
        &format!("[server]\ndata_dir = \"data\"\n{}", tls_table(None)),
        dir.path(),
    )
    .await;
    let trusts_old = || client_config(&old_ca, None, b"h2");
    assert_eq!(tls_health(server.grpc, trusts_old()).await, Ok(SERVING));

    // A half-written renewal: the old certificate stays in service.
    write_atomically(
        &dir.path().join("server.crt"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    );
    assert_eq!(tls_health(server.grpc, trusts_old()).await, Ok(SERVING));

    // The renewal lands: new connections get the new certificate.
    let new_ca = Ca::new("new CA");
    write_server_files(dir.path(), &new_ca.server(), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tls_health(server.grpc, client_config(&new_ca, None, b"h2")).await == Ok(SERVING) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let old = tls_health(server.grpc, trusts_old()).await;
    assert!(
        old.is_err(),
        "the old certificate is no longer served: {old:?}"
    );
}

#[tokio::test]
async fn an_anonymous_server_refuses_to_listen_beyond_loopback_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // In the config: refused before anything starts, naming the key and the ways out.
    let message = try_start(
        "[server]\ndata_dir = \"data\"\nlisten = \"0.0.0.0:50051\"\n",
        dir.path(),
        "127.0.0.1",
    )
    .await
    .err()
    .expect("refused")
    .to_string();
    assert!(
        message.contains("server.listen: 0.0.0.0:50051 is not a loopback address"),
        "{message}"
    );
    assert!(
        message.contains("server.allow_anonymous = true"),
        "{message}"
    );

    // A socket bound beyond loopback by the caller (as `serve --listen` does): refused too.
    let message = try_start("[server]\ndata_dir = \"data\"\n", dir.path(), "0.0.0.0")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("server.listen: 0.0.0.0:"), "{message}");
    assert!(
        message.contains("no identities are configured"),
        "{message}"
    );

    // The operator says so: it serves.
    let allowed =
        "[server]\ndata_dir = \"data\"\nallow_anonymous = true\nlisten = \"0.0.0.0:50051\"\n";
    let server = try_start(allowed, dir.path(), "0.0.0.0").await.unwrap();
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.grpc.port()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(channel).await.unwrap(), SERVING);
}

/// The facade's POST with a body typed `content_type`, Host `host`.
async fn raw_request(address: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

fn post(host: &str, content_type: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get_models(host: &str) -> String {
    format!(
        "GET /v1/models HTTP/1.1\r\nHost: {host}\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n"
    )
}

#[tokio::test]
async fn the_facade_refuses_simple_cross_site_requests_and_foreign_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &FACADE.replace(
            "[facade]\n",
            "[facade]\nallowed_hosts = [\"rag.internal\"]\n",
        ),
        dir.path(),
    )
    .await;
    let http = server.http.unwrap();
    let body = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}]}"#;

    // A form or fetch with text/plain needs no preflight: refused before any handler.
    let response = raw_request(http, &post("127.0.0.1", "text/plain", body)).await;
    assert!(response.starts_with("HTTP/1.1 415"), "{response}");
    assert!(
        response.contains("the request body must be sent with Content-Type: application/json"),
        "{response}"
    );

    // DNS rebinding: the page's own name arrives as Host.
    let response = raw_request(http, &get_models("evil.example:8080")).await;
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(response.contains("host_not_allowed"), "{response}");
    assert!(
        !response.contains("llama"),
        "nothing about what exists: {response}"
    );

    // Loopback names and allowed hosts are served, and no CORS header is sent.
    for host in ["127.0.0.1", "localhost:8080", "[::1]:8080", "rag.internal"] {
        let response = raw_request(http, &get_models(host)).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{host}: {response}");
        assert!(
            !response
                .to_ascii_lowercase()
                .contains("access-control-allow"),
            "{response}"
        );
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_the_facade_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &FACADE.replace("[server]\n", "[server]\nheader_read_timeout_ms = 300\n"),
        dir.path(),
    )
    .await;
    let http = server.http.unwrap();

    // Headers that never end: the server closes the connection.
    let mut slow = TcpStream::connect(http).await.unwrap();
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow connection was never closed");
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("200 OK"), "{rest}");

    let response = raw_request(http, &get_models("127.0.0.1")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_the_server_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        "[server]\ndata_dir = \"data\"\nmax_connections = 2\n",
        dir.path(),
    )
    .await;
    // Two connections hold both places (each said something, so each is handed over).
    let channel = Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(channel.clone()).await.unwrap(), SERVING);
    let mut holder = TcpStream::connect(server.grpc).await.unwrap();
    holder
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();

    // A third is accepted and closed at once; the accept loop goes on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut third = TcpStream::connect(server.grpc).await.unwrap();
        let _ = third.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buffer = [0u8; 64];
        // Closed by the server: done; else the holder was not counted yet: try again.
        let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buffer)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the third connection was never closed"
        );
    }
    // The established channel is unaffected; once the holder leaves, new ones get in.
    assert_eq!(health(channel).await.unwrap(), SERVING);
    drop(holder);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let fresh = Endpoint::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .connect_lazy();
        if health(fresh).await.is_ok_and(|status| status == SERVING) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GET /v1/models on a kept-alive connection: the status line, with the body read
/// to its end so the connection can ask again.
async fn models_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a content-length");
            if received.len() >= end + 4 + length {
                return text.lines().next().unwrap_or_default().to_owned();
            }
        }
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed mid-response: {text}");
        received.extend_from_slice(&buffer[..read]);
    }
}

#[tokio::test]
async fn facade_connections_over_the_cap_are_closed_whichever_thread_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = FACADE
        .replace("[server]\n", "[server]\nmax_connections = 2\n")
        .replace("[facade]\n", "[facade]\nthreads = 2\n");
    let server = start(&config, dir.path()).await;
    let http = server.http.unwrap();
    // Two connections, each answered, hold both places between the two threads.
    let mut first = TcpStream::connect(http).await.unwrap();
    let mut second = TcpStream::connect(http).await.unwrap();
    assert_eq!(models_on(&mut first).await, "HTTP/1.1 200 OK");
    assert_eq!(models_on(&mut second).await, "HTTP/1.1 200 OK");

    // A third is closed unanswered, whichever thread accepted it.
    for _ in 0..4 {
        let mut third = TcpStream::connect(http).await.unwrap();
        let _ = third
            .write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(60), third.read(&mut buffer))
            .await
            .expect("the third connection was neither answered nor closed");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a connection over the cap was served: {}",
            String::from_utf8_lossy(&buffer)
        );
    }

    // The connections in place still serve; once one leaves, a new one gets in.
    assert_eq!(models_on(&mut first).await, "HTTP/1.1 200 OK");
    drop(second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut fresh = TcpStream::connect(http).await.unwrap();
        let _ = fresh
            .write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let mut buffer = [0u8; 64];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_secs(2), fresh.read(&mut buffer)).await
            && buffer[..read].starts_with(b"HTTP/1.1 200")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Listening TCP sockets this process holds (by socket inode).
fn listening_sockets() -> std::collections::BTreeSet<u64> {
    let mut listening = std::collections::BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `st` 0A is LISTEN; field 9 is the inode.
            if fields.get(3) == Some(&"0A")
                && let Some(inode) = fields.get(9).and_then(|inode| inode.parse().ok())
            {
                listening.insert(inode);
            }
        }
    }
    let mine: std::collections::BTreeSet<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    listening.intersection(&mine).copied().collect()
}

/// Runs in a child process of its own (other tests of this binary open listeners).
#[tokio::test]
#[ignore = "run by the_cli_in_process_mode_opens_no_network_port in a child process"]
async fn cli_in_process_child() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse("[server]\ndata_dir = \"data\"\n", dir.path()).unwrap();
    // The check must be able to see a listener: this one is ours.
    let canary = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let before = listening_sockets();
    assert_eq!(before.len(), 1, "the canary is seen: {before:?}");
    drop(canary);

    let before = listening_sockets();
    let channel = skyfuse::client::start_embedded(config, &Default::default())
        .await
        .unwrap();
    assert_eq!(health(channel.clone()).await.unwrap(), SERVING);
    let after = listening_sockets();
    assert_eq!(
        before, after,
        "the embedded service opened a listening socket"
    );
    assert!(after.is_empty(), "{after:?}");
}

#[test]
fn the_cli_in_process_mode_opens_no_network_port() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "transport::cli_in_process_child",
            "--ignored",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the check: {stdout}"
    );
}
