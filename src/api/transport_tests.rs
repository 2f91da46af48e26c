//! The transport's contract with the auth layer: a verified client certificate
//! reaches gRPC and HTTP handlers as [`PeerCertificate`], and in-process requests
//! carry [`InProcess`]. Real mutual-TLS handshakes on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::connection::{AcceptOptions, ConnectionCap, ConnectionInfo, accept, mark_grpc_request};
use super::tls::{GRPC_ALPN, HTTP_ALPN, ReloadingTls};
use crate::auth::{InProcess, PeerCertificate};
use crate::config::{ClientAuth, TlsConfig};

struct Pki {
    _dir: tempfile::TempDir,
    files: TlsConfig,
    server_ca: CertificateDer<'static>,
    client_cert: CertificateDer<'static>,
    client_key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params.extended_key_usages = vec![usage];
    (params.signed_by(&key, issuer).unwrap(), key)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("server CA");
    let client_ca = ca("client CA");
    let (server, server_key) = leaf(
        &server_ca,
        vec!["localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(&client_ca, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("server.crt"), server.pem()).unwrap();
    std::fs::write(path("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(path("clients.pem"), client_ca.pem()).unwrap();
    Pki {
        files: TlsConfig {
            cert_file: path("server.crt"),
            key_file: path("server.key"),
            client_ca_file: Some(path("clients.pem")),
            client_auth: Some(ClientAuth::Required),
        },
        _dir: dir,
        server_ca: server_ca.der().clone(),
        client_cert: client.der().clone(),
        client_key: client_key.serialize_pem(),
    }
}

impl Pki {
    fn client(&self, alpn: &[u8]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.server_ca.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![self.client_cert.clone()],
            PrivateKeyDer::from_pem_slice(self.client_key.as_bytes()).unwrap(),
        )
        .unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn listen(
        &self,
        alpn: &[&[u8]],
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::Receiver<super::connection::Connection>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let options = AcceptOptions {
            key: "server.listen",
            max_connections: ConnectionCap::new(8),
            handshake_timeout: Duration::from_secs(30),
            tcp_keepalive: None,
            tls: Some(Arc::new(ReloadingTls::load(&self.files, alpn).unwrap())),
        };
        (address, accept(listener, options, std::future::pending()))
    }
}

/// Answers SERVING when the request carries the expected client certificate.
struct ExpectsCertificate(Vec<u8>);

#[tonic::async_trait]
impl Health for ExpectsCertificate {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let seen = request.extensions().get::<PeerCertificate>();
        let matches = seen.is_some_and(|certificate| *certificate.0 == *self.0)
            && request.extensions().get::<InProcess>().is_none();
        Ok(tonic::Response::new(HealthCheckResponse {
            status: if matches { 1 } else { 2 },
        }))
    }

    type WatchStream =
        tokio_stream::wrappers::ReceiverStream<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

#[tokio::test]
async fn a_grpc_handler_sees_the_verified_client_certificate() {
    let pki = pki();
    let (address, connections) = pki.listen(GRPC_ALPN).await;
    let incoming =
        tokio_stream::wrappers::ReceiverStream::new(connections).map(Ok::<_, std::io::Error>);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(tower::util::MapRequestLayer::new(mark_grpc_request))
            .add_service(HealthServer::new(ExpectsCertificate(
                pki.client_cert.to_vec(),
            )))
            .serve_with_incoming(incoming),
    );
    let connector = pki.client(b"h2");
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(address).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        response.into_inner().status,
        1,
        "the handler saw the certificate"
    );
}

#[tokio::test]
async fn an_http_handler_sees_the_verified_client_certificate() {
    let pki = pki();
    let (address, connections) = pki.listen(HTTP_ALPN).await;
    let app = axum::Router::new().route(
        "/whoami",
        axum::routing::get(|request: axum::extract::Request| async move {
            request
                .extensions()
                .get::<PeerCertificate>()
                .map(|certificate| hex::encode(&certificate.0))
                .unwrap_or_else(|| "none".into())
        }),
    );
    let options = super::server::ServeOptions::for_tests();
    tokio::spawn(async move {
        super::server::serve_facade(app, connections, &options, std::future::pending()).await
    });
    let tcp = TcpStream::connect(address).await.unwrap();
    let mut tls = pki
        .client(b"http/1.1")
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with(&hex::encode(&pki.client_cert)),
        "{response}"
    );
}

#[test]
fn in_process_requests_are_marked_and_network_ones_are_not() {
    let marked = |info: ConnectionInfo| {
        let mut request = axum::http::Request::new(());
        request.extensions_mut().insert(info);
        mark_grpc_request(request)
    };
    let in_process = marked(ConnectionInfo {
        peer_certificate: None,
        in_process: true,
    });
    assert!(in_process.extensions().get::<InProcess>().is_some());
    assert!(in_process.extensions().get::<PeerCertificate>().is_none());
    let (_, pipe) = tokio::io::duplex(64);
    let from_the_cli = marked(
        super::connection::Connection::in_process(pipe)
            .info()
            .clone(),
    );
    assert!(from_the_cli.extensions().get::<InProcess>().is_some());
    let network = marked(ConnectionInfo::default());
    assert!(network.extensions().get::<InProcess>().is_none());
}
