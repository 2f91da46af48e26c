//! Accepted connections for both edges: the accept loop (a cap on open connections,
//! TCP keepalive, the TLS handshake in each connection's own task under a timeout),
//! the stream type both servers read (TCP, TLS or the CLI's in-process pipe) and
//! what it tells a request about its caller ([`ConnectionInfo::mark`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::tls::ReloadingTls;
use crate::auth::{InProcess, PeerCertificate};

/// What a connection says about its caller; copied into each request's extensions.
#[derive(Debug, Clone, Default)]
pub(super) struct ConnectionInfo {
    /// The verified client leaf certificate (mutual TLS).
    pub peer_certificate: Option<PeerCertificate>,
    /// The CLI's in-process transport: the operator.
    pub in_process: bool,
}

impl ConnectionInfo {
    /// Puts [`PeerCertificate`] and [`InProcess`] into a request's extensions.
    pub fn mark(&self, extensions: &mut axum::http::Extensions) {
        if let Some(certificate) = &self.peer_certificate {
            extensions.insert(certificate.clone());
        }
        if self.in_process {
            extensions.insert(InProcess);
        }
    }
}

/// Copies the connection's [`ConnectionInfo`] (which tonic puts into every
/// request's extensions) into the auth types handlers read.
pub(super) fn mark_grpc_request<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    if let Some(info) = request.extensions().get::<ConnectionInfo>().cloned() {
        info.mark(request.extensions_mut());
    }
    request
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    InProcess(DuplexStream),
}

/// One accepted connection; holds its place under the connection cap until dropped.
pub(super) struct Connection {
    stream: Stream,
    info: ConnectionInfo,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Connection {
    /// The server half of an in-process pipe.
    pub fn in_process(stream: DuplexStream) -> Self {
        Self {
            stream: Stream::InProcess(stream),
            info: ConnectionInfo {
                peer_certificate: None,
                in_process: true,
            },
            _slot: None,
        }
    }

    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::InProcess(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::InProcess(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::InProcess(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Tcp(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
            Stream::InProcess(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream).poll_flush(cx),
            Stream::InProcess(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::InProcess(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// How many connections a listener keeps open at once: one count for every loop
/// accepting from it (the facade accepts on each of its threads).
#[derive(Clone)]
pub(super) struct ConnectionCap {
    limit: usize,
    slots: Arc<Semaphore>,
}

impl ConnectionCap {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            slots: Arc::new(Semaphore::new(limit)),
        }
    }
}

/// How a listener accepts.
#[derive(Clone)]
pub(super) struct AcceptOptions {
    /// `server.listen` or `facade.listen`, for the log.
    pub key: &'static str,
    pub max_connections: ConnectionCap,
    pub handshake_timeout: Duration,
    pub tcp_keepalive: Option<Duration>,
    pub tls: Option<Arc<ReloadingTls>>,
}

/// Accepts on `listener` until `stop` resolves or the returned receiver is
/// dropped. The loop itself only accepts: connections over the cap are closed at
/// once, and each other one finishes its handshake in its own task before it is
/// handed over, so a slow or silent client never holds up the next one.
pub(super) fn accept(
    listener: TcpListener,
    options: AcceptOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> mpsc::Receiver<Connection> {
    let (ready, connections) = mpsc::channel(64);
    tokio::spawn(async move {
        let slots = options.max_connections.slots.clone();
        tokio::pin!(stop);
        loop {
            let (stream, remote) = tokio::select! {
                () = &mut stop => break,
                () = ready.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait a moment rather than spin.
                        tracing::warn!(%error, listener = options.key, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    listener = options.key,
                    %remote,
                    limit = options.max_connections.limit,
                    "connection refused: server.max_connections are open"
                );
                drop(stream);
                continue;
            };
            let options = options.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                if let Some(connection) = establish(stream, remote, slot, &options).await {
                    let _ = ready.send(connection).await;
                }
            });
        }
    });
    connections
}

/// Socket options, then the TLS handshake (or, in plaintext, the first bytes)
/// within the handshake timeout; None: the client gave up or was too slow.
async fn establish(
    stream: TcpStream,
    remote: SocketAddr,
    slot: OwnedSemaphorePermit,
    options: &AcceptOptions,
) -> Option<Connection> {
    // Without it Nagle's algorithm meets delayed ACKs and a small response waits ~40 ms.
    let _ = stream.set_nodelay(true);
    if let Some(idle) = options.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(idle);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    }
    let handshake = async {
        match &options.tls {
            None => stream
                .readable()
                .await
                .map(|()| (Stream::Tcp(stream), None)),
            Some(tls) => {
                let stream = tls.acceptor().accept(stream).await?;
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| PeerCertificate(Arc::from(leaf.as_ref())));
                Ok((Stream::Tls(Box::new(stream)), peer))
            }
        }
    };
    match tokio::time::timeout(options.handshake_timeout, handshake).await {
        Ok(Ok((stream, peer_certificate))) => Some(Connection {
            stream,
            info: ConnectionInfo {
                peer_certificate,
                in_process: false,
            },
            _slot: Some(slot),
        }),
        Ok(Err(error)) => {
            tracing::debug!(%error, %remote, listener = options.key, "handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, listener = options.key, "handshake timed out");
            None
        }
    }
}
