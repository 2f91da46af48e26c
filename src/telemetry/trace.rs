//! OpenTelemetry traces: one trace per call at an entrance, exported over OTLP.
//!
//! Each [`Service`](crate::service::Service) owns its tracer (no global provider, so
//! two services in one process, as in tests, never mix their traces). The entrance
//! opens a server span and runs the call within its [`Context`]; that context also
//! carries the tracer, so the code below it (fan-out, embeddings, chat attempts, the
//! HTTP calls to clouds) opens child spans and sends `traceparent` on without any
//! parameter threaded through. With tracing off there is no such context: a child
//! span is one thread-local lookup that finds nothing.

use std::future::Future;
use std::time::Duration;

use futures::future::Either;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter,
};

use crate::config::{OtlpProtocol, TracesConfig};
use crate::error::{Error, Result};

/// The traces of one service: off, or a provider exporting to a collector.
#[derive(Debug, Default)]
pub struct Tracing {
    exporting: Option<(SdkTracerProvider, SdkTracer)>,
}

/// The tracer a trace's spans come from, carried in its [`Context`].
#[derive(Clone, Debug)]
struct ActiveTracer(SdkTracer);

impl Tracing {
    /// Tracing as `[telemetry.traces]` says; off when absent. `env` resolves the
    /// headers' `env:` locations.
    pub fn from_config(
        config: Option<&TracesConfig>,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Self> {
        let Some(config) = config else {
            return Ok(Self::default());
        };
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(Error::config(format!(
                "telemetry.traces.sample_ratio must be between 0 and 1, got {}",
                config.sample_ratio
            )));
        }
        let headers = export_headers(config, env)?;
        let exporter = OwnRuntimeExporter::new(config, headers)?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(config.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("skyfuse");
        Ok(Self {
            exporting: Some((provider, tracer)),
        })
    }

    /// The server span of one gRPC call (`rpc` as `skyfuse.v1.GenerationService/Answer`),
    /// child of the caller's `traceparent` when its metadata has one. None when
    /// tracing is off (and then the metadata is not even read).
    pub fn grpc_call<T>(
        &self,
        rpc: &'static str,
        request: &tonic::Request<T>,
    ) -> Option<CallTrace> {
        self.exporting.as_ref()?;
        let headers = request.metadata().clone().into_headers();
        self.entrance(
            rpc.to_owned(),
            vec![
                KeyValue::new("rpc.system.name", "grpc"),
                KeyValue::new("rpc.method", rpc),
            ],
            &headers,
        )
    }

    /// The server span of one HTTP call (`POST /v1/chat/completions`).
    pub fn http_call(
        &self,
        method: &'static str,
        route: &'static str,
        headers: &http::HeaderMap,
    ) -> Option<CallTrace> {
        self.exporting.as_ref()?;
        self.entrance(
            format!("{method} {route}"),
            vec![
                KeyValue::new("http.request.method", method),
                KeyValue::new("http.route", route),
            ],
            headers,
        )
    }

    fn entrance(
        &self,
        name: String,
        attributes: Vec<KeyValue>,
        headers: &http::HeaderMap,
    ) -> Option<CallTrace> {
        let (_, tracer) = self.exporting.as_ref()?;
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Some(CallTrace(
            parent
                .with_span(span)
                .with_value(ActiveTracer(tracer.clone())),
        ))
    }

    /// Sends every finished span now; waits for the collector (call off the runtime's
    /// worker threads, e.g. in `spawn_blocking`).
    pub fn flush(&self) -> Result<()> {
        match &self.exporting {
            Some((provider, _)) => provider
                .force_flush()
                .map_err(|error| Error::unavailable(format!("exporting traces: {error}"))),
            None => Ok(()),
        }
    }

    /// Flushes and stops the exporter (at shutdown).
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.exporting
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "traces: the last batch was not exported");
        }
    }
}

/// One call's trace at an entrance: its server span, which ends when this drops (a
/// streamed answer keeps it until its stream ends).
#[derive(Debug)]
pub struct CallTrace(Context);

impl CallTrace {
    /// Marks the call failed with its status code name (`NOT_FOUND`, `429`...).
    pub fn fail(&self, code: &str, message: &str) {
        let span = self.0.span();
        span.set_attribute(KeyValue::new("error.type", code.to_owned()));
        span.set_status(Status::error(message.to_owned()));
    }
}

/// Runs `call` within `trace` when there is one: the spans it opens hang under it.
pub fn within<F: Future>(trace: Option<&CallTrace>, call: F) -> impl Future<Output = F::Output> {
    match trace {
        Some(trace) => Either::Left(call.with_context(trace.0.clone())),
        None => Either::Right(call),
    }
}

/// A span under the current trace; ends when [`ChildSpan::end`] is called or it drops.
#[derive(Debug)]
pub struct ChildSpan {
    context: Context,
}

/// Opens a span under the current one, named and described by `describe` (called
/// only when the span will be recorded). None outside a trace, or when the trace
/// is not sampled: then nothing is built at all.
pub fn child(
    kind: SpanKind,
    describe: impl FnOnce() -> (String, Vec<KeyValue>),
) -> Option<ChildSpan> {
    let parent = Context::map_current(|current| {
        let sampled =
            current.get::<ActiveTracer>().is_some() && current.span().span_context().is_sampled();
        sampled.then(|| current.clone())
    })?;
    let tracer = &parent.get::<ActiveTracer>()?.0;
    let (name, attributes) = describe();
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    Some(ChildSpan {
        context: parent.with_span(span),
    })
}

impl ChildSpan {
    /// Runs `work` with this span current: its own children and cloud calls hang
    /// under it.
    pub fn run<F: Future>(&self, work: F) -> impl Future<Output = F::Output> {
        work.with_context(self.context.clone())
    }

    pub fn set(&self, attribute: KeyValue) {
        self.context.span().set_attribute(attribute);
    }

    /// Marks the span failed: `error.type` (a stable, low-cardinality kind) and the
    /// message as its status.
    pub fn fail(&self, error_type: &str, message: &str) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new("error.type", error_type.to_owned()));
        span.set_status(Status::error(message.to_owned()));
    }

    pub fn end(self) {
        self.context.span().end();
    }
}

/// Runs `work` under `span` when there is one.
pub fn run_in<F: Future>(span: Option<&ChildSpan>, work: F) -> impl Future<Output = F::Output> {
    match span {
        Some(span) => Either::Left(span.run(work)),
        None => Either::Right(work),
    }
}

/// `work`, carrying the current trace along when it is handed to another task
/// (`tokio::spawn` does not): its spans stay in the trace that started it.
pub fn carry<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let current = Context::map_current(|current| {
        current
            .get::<ActiveTracer>()
            .is_some()
            .then(|| current.clone())
    });
    match current {
        Some(context) => Either::Left(work.with_context(context)),
        None => Either::Right(work),
    }
}

/// Adds `traceparent` (W3C Trace Context) for the current span to a cloud call, so
/// the provider's own traces join ours. Nothing outside a trace.
pub fn inject_traceparent(headers: &mut http::HeaderMap) {
    Context::map_current(|current| {
        if current.get::<ActiveTracer>().is_some() && current.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(current, &mut HeaderInjector(headers));
        }
    });
}

/// The `traceparent` value for the current span, for clients that take headers as
/// strings (qdrant-client's per-call headers). None outside a trace.
pub fn current_traceparent() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject_traceparent(&mut headers);
    headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// A request builder with `traceparent` for the current span (unchanged outside a
/// trace), for cloud calls built with reqwest's builder (the secret managers).
pub fn with_traceparent(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let mut headers = http::HeaderMap::new();
    inject_traceparent(&mut headers);
    if headers.is_empty() {
        request
    } else {
        request.headers(headers)
    }
}

/// The OTLP exporters speak tonic and async reqwest, which need a Tokio reactor, while
/// the SDK's batch processor exports from a plain thread of its own: each export runs
/// on this exporter's own small runtime, whatever runtime the service is on.
#[derive(Debug)]
struct OwnRuntimeExporter {
    exporter: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Runtime,
}

/// `[telemetry.traces] headers`, resolved and checked as HTTP headers; a message
/// names the header, never its value.
fn export_headers(
    config: &TracesConfig,
    env: &std::collections::HashMap<String, String>,
) -> Result<http::HeaderMap> {
    let mut headers = http::HeaderMap::new();
    for (name, location) in &config.headers {
        let key = format!("telemetry.traces.headers.{name}");
        let header_name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::config(format!("{key}: not an HTTP header name")))?;
        let value = location.resolve(env).map_err(|error| error.context(&key))?;
        let mut header_value = http::HeaderValue::from_str(value.expose()).map_err(|_| {
            Error::config(format!(
                "{key}: the value holds characters not allowed in a header"
            ))
        })?;
        header_value.set_sensitive(true);
        headers.insert(header_name, header_value);
    }
    Ok(headers)
}

/// `ca_file`'s PEM, read and checked at startup; a message names the file.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|error| {
        Error::config(format!(
            "telemetry.traces.ca_file {}: {error}",
            path.display()
        ))
    })?;
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certificates = CertificateDer::pem_slice_iter(&pem).collect::<Vec<_>>();
    if certificates.is_empty() || certificates.iter().any(|parsed| parsed.is_err()) {
        return Err(Error::config(format!(
            "telemetry.traces.ca_file {}: not a PEM certificate",
            path.display()
        )));
    }
    Ok(pem)
}

/// The client posting OTLP/HTTP batches: trusting `ca_file` besides the usual roots.
fn http_exporter_client(config: &TracesConfig, timeout: Duration) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = &config.ca_file {
        let certificate = reqwest::Certificate::from_pem(&read_ca_file(path)?)
            .map_err(|error| Error::config(format!("telemetry.traces.ca_file: {error}")))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|error| Error::internal(format!("traces: cannot build a client: {error}")))
}

/// tonic builds its TLS from rustls's process-wide provider, which rustls cannot pick
/// alone when two are compiled in: aws-lc-rs, the one skyfuse's own TLS uses. Keeps
/// a provider someone installed first.
fn default_to_aws_lc() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// TLS for an `https` OTLP/gRPC collector: the system's roots, plus `ca_file`.
fn grpc_tls_config(config: &TracesConfig) -> Result<tonic::transport::ClientTlsConfig> {
    default_to_aws_lc();
    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(path) = &config.ca_file {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read_ca_file(path)?));
    }
    Ok(tls)
}

impl OwnRuntimeExporter {
    fn new(config: &TracesConfig, headers: http::HeaderMap) -> Result<Self> {
        let timeout = Duration::from_millis(config.export_timeout_ms);
        let endpoint = url::Url::parse(&config.endpoint).map_err(|error| {
            Error::config(format!(
                "telemetry.traces.endpoint {:?}: {error}",
                config.endpoint
            ))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(Error::config(format!(
                "telemetry.traces.endpoint {:?}: an http:// or https:// URL, such as http://127.0.0.1:4317",
                config.endpoint
            )));
        }
        if config.ca_file.is_some() && endpoint.scheme() != "https" {
            return Err(Error::config(format!(
                "telemetry.traces.ca_file is set but the endpoint {:?} is not https://",
                config.endpoint
            )));
        }
        let http_client = match config.protocol {
            OtlpProtocol::HttpProtobuf => Some(http_exporter_client(config, timeout)?),
            OtlpProtocol::Grpc => None,
        };
        let grpc_tls = match config.protocol {
            OtlpProtocol::Grpc if endpoint.scheme() == "https" => Some(grpc_tls_config(config)?),
            _ => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Error::internal(format!("traces: cannot start a runtime: {error}")))?;
        // tonic's channel starts its tasks on the runtime it is built in.
        let _entered = runtime.enter();
        let built = match config.protocol {
            OtlpProtocol::Grpc => {
                let builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.as_str())
                    .with_metadata(tonic::metadata::MetadataMap::from_headers(headers))
                    .with_timeout(timeout);
                match grpc_tls {
                    Some(tls) => builder.with_tls_config(tls).build(),
                    None => builder.build(),
                }
            }
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(http_client.unwrap_or_default())
                .with_endpoint(http_traces_url(endpoint))
                .with_headers(
                    headers
                        .iter()
                        .filter_map(|(name, value)| {
                            Some((name.to_string(), value.to_str().ok()?.to_string()))
                        })
                        .collect(),
                )
                .with_timeout(timeout)
                .build(),
        };
        drop(_entered);
        match built {
            Ok(exporter) => Ok(Self { exporter, runtime }),
            Err(error) => {
                // Built from async code (Service::build): a runtime may not be dropped
                // there the ordinary way.
                runtime.shutdown_background();
                Err(Error::config(format!(
                    "telemetry.traces: cannot build the exporter: {error}"
                )))
            }
        }
    }
}

/// OTLP/HTTP posts traces to `/v1/traces`; a bare collector address gets that path.
fn http_traces_url(mut endpoint: url::Url) -> String {
    if endpoint.path() == "/" || endpoint.path().is_empty() {
        endpoint.set_path("/v1/traces");
    }
    endpoint.to_string()
}

impl SpanExporter for OwnRuntimeExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.runtime.block_on(self.exporter.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_collector_address_gets_the_traces_path() {
        let url = |text: &str| url::Url::parse(text).unwrap();
        assert_eq!(
            http_traces_url(url("http://127.0.0.1:4318")),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            http_traces_url(url("http://127.0.0.1:4318/custom/v1/traces")),
            "http://127.0.0.1:4318/custom/v1/traces"
        );
    }

    #[test]
    fn outside_a_trace_nothing_is_opened_or_sent() {
        assert!(child(SpanKind::Client, || panic!("not asked")).is_none());
        let mut headers = http::HeaderMap::new();
        inject_traceparent(&mut headers);
        assert!(headers.is_empty());
        assert!(
            Tracing::default()
                .http_call("POST", "/v1/chat/completions", &headers)
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_bad_collector_address_is_a_config_error_at_startup() {
        for endpoint in ["127.0.0.1:4317", "localhost:4317", "not a url"] {
            let config = TracesConfig {
                endpoint: endpoint.into(),
                protocol: OtlpProtocol::Grpc,
                sample_ratio: 1.0,
                service_name: "skyfuse".into(),
                export_timeout_ms: 1000,
                headers: Default::default(),
                ca_file: None,
            };
            let error = Tracing::from_config(Some(&config), &Default::default()).unwrap_err();
            assert!(
                error.message.contains("telemetry.traces"),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn a_sample_ratio_outside_zero_to_one_is_a_config_error() {
        let config = TracesConfig {
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.5,
            service_name: "skyfuse".into(),
            export_timeout_ms: 1000,
            headers: Default::default(),
            ca_file: None,
        };
        let error = Tracing::from_config(Some(&config), &Default::default()).unwrap_err();
        assert!(error.message.contains("sample_ratio"), "{}", error.message);
    }

    fn traces_config(endpoint: &str, protocol: OtlpProtocol) -> TracesConfig {
        TracesConfig {
            endpoint: endpoint.into(),
            protocol,
            sample_ratio: 1.0,
            service_name: "skyfuse".into(),
            export_timeout_ms: 2000,
            headers: Default::default(),
            ca_file: None,
        }
    }

    #[tokio::test]
    async fn otlp_http_exports_carry_the_configured_headers_resolved_at_startup() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (sender, receiver) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buffer = [0u8; 4096];
            while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                let read = socket.read(&mut buffer).await.unwrap_or(0);
                if read == 0 {
                    break;
                }
                head.extend_from_slice(&buffer[..read]);
            }
            let _ = sender.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let mut config = traces_config(&format!("http://{address}"), OtlpProtocol::HttpProtobuf);
        config.headers.insert(
            "x-honeycomb-team".into(),
            crate::config::SecretLocation::try_from("env:OTLP_KEY".to_string()).unwrap(),
        );
        let env = [("OTLP_KEY".to_string(), "hc-key-123".to_string())]
            .into_iter()
            .collect();
        let tracing = std::sync::Arc::new(Tracing::from_config(Some(&config), &env).unwrap());
        drop(tracing.http_call("POST", "/v1/search", &http::HeaderMap::new()));
        let flushing = tracing.clone();
        // The answer comes before the body is read: only the request head matters.
        let _ = tokio::task::spawn_blocking(move || flushing.flush()).await;
        let head = receiver.await.unwrap();
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(head.contains("x-honeycomb-team: hc-key-123"), "{head}");
    }

    #[tokio::test]
    async fn tls_and_header_mistakes_are_config_errors_at_startup() {
        let no_env = Default::default();
        let mut plain_with_ca = traces_config("http://127.0.0.1:4317", OtlpProtocol::Grpc);
        let _ca_folder = with_ca_file(&mut plain_with_ca, "unused");
        let error = Tracing::from_config(Some(&plain_with_ca), &no_env).unwrap_err();
        assert!(error.message.contains("not https://"), "{}", error.message);
        let mut not_pem = traces_config("https://collector.example:4317", OtlpProtocol::Grpc);
        let _not_pem_folder = with_ca_file(&mut not_pem, "not a certificate");
        let error = Tracing::from_config(Some(&not_pem), &no_env).unwrap_err();
        assert!(error.message.contains("ca_file"), "{}", error.message);
        let mut missing_ca = traces_config("https://collector.example", OtlpProtocol::HttpProtobuf);
        missing_ca.ca_file = Some("/nonexistent/ca.pem".into());
        let error = Tracing::from_config(Some(&missing_ca), &no_env).unwrap_err();
        assert!(error.message.contains("ca_file"), "{}", error.message);
        let mut unset = traces_config("http://127.0.0.1:4318", OtlpProtocol::HttpProtobuf);
        unset.headers.insert(
            "authorization".into(),
            crate::config::SecretLocation::try_from("env:UNSET_OTLP_KEY".to_string()).unwrap(),
        );
        let error = Tracing::from_config(Some(&unset), &no_env).unwrap_err();
        assert!(
            error
                .message
                .contains("telemetry.traces.headers.authorization"),
            "{}",
            error.message
        );
    }

    /// A collector CA (its PEM) and a `localhost` server certificate it signed, with
    /// its key (PEM).
    fn collector_certificates() -> (String, String, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "collector CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        (ca.pem(), server.pem(), server_key.serialize_pem())
    }

    /// `config` with `ca_file` set to a file holding `ca_pem`; the folder lives as long
    /// as the returned guard.
    fn with_ca_file(config: &mut TracesConfig, ca_pem: &str) -> tempfile::TempDir {
        let directory = tempfile::tempdir().unwrap();
        let ca_file = directory.path().join("collector-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        config.ca_file = Some(ca_file);
        directory
    }

    #[tokio::test]
    async fn an_https_collector_signed_by_the_ca_file_receives_the_batch() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ca_pem, server_pem, server_key_pem) = collector_certificates();
        let server_config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(server_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(server_key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, receiver) = tokio::sync::oneshot::channel::<String>();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let Ok(mut stream) = acceptor.accept(socket).await else {
                return;
            };
            let mut head = Vec::new();
            let mut buffer = [0u8; 4096];
            while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap_or(0);
                if read == 0 {
                    break;
                }
                head.extend_from_slice(&buffer[..read]);
            }
            let _ = sender.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let mut config = traces_config(
            &format!("https://localhost:{port}"),
            OtlpProtocol::HttpProtobuf,
        );
        let _ca_folder = with_ca_file(&mut config, &ca_pem);
        let tracing =
            std::sync::Arc::new(Tracing::from_config(Some(&config), &Default::default()).unwrap());
        drop(tracing.http_call("POST", "/v1/search", &http::HeaderMap::new()));
        let flushing = tracing.clone();
        let _ = tokio::task::spawn_blocking(move || flushing.flush()).await;
        let head = receiver.await.expect("the TLS handshake succeeded");
        assert!(head.starts_with("post /v1/traces "), "{head}");
    }

    #[tokio::test]
    async fn an_otlp_grpc_collector_over_tls_signed_by_the_ca_file_receives_the_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
            TraceService, TraceServiceServer,
        };
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        };
        /// Sends the names of the first batch's spans, with the request's api key.
        struct Collector(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Vec<String>>>>);
        #[tonic::async_trait]
        impl TraceService for Collector {
            async fn export(
                &self,
                request: tonic::Request<ExportTraceServiceRequest>,
            ) -> std::result::Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>
            {
                let key = request
                    .metadata()
                    .get("x-api-key")
                    .and_then(|value| value.to_str().ok())
                    .map(|key| format!("x-api-key={key}"));
                let names = request
                    .into_inner()
                    .resource_spans
                    .into_iter()
                    .flat_map(|resource| resource.scope_spans)
                    .flat_map(|scope| scope.spans)
                    .map(|span| span.name)
                    .chain(key);
                if let Some(sender) = self.0.lock().unwrap().take() {
                    let _ = sender.send(names.collect());
                }
                Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
            }
        }
        let (ca_pem, server_pem, server_key_pem) = collector_certificates();
        default_to_aws_lc();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let server = tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(server_pem, server_key_pem),
            ))
            .unwrap()
            .add_service(TraceServiceServer::new(Collector(std::sync::Mutex::new(
                Some(sender),
            ))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        let mut config = traces_config(&format!("https://localhost:{port}"), OtlpProtocol::Grpc);
        config.headers.insert(
            "x-api-key".into(),
            crate::config::SecretLocation::try_from("env:OTLP_KEY".to_string()).unwrap(),
        );
        let _ca_folder = with_ca_file(&mut config, &ca_pem);
        let env = [("OTLP_KEY".to_string(), "grpc-key-7".to_string())]
            .into_iter()
            .collect();
        let tracing = std::sync::Arc::new(Tracing::from_config(Some(&config), &env).unwrap());
        drop(tracing.http_call("POST", "/v1/search", &http::HeaderMap::new()));
        let flushing = tracing.clone();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .unwrap()
            .expect("the batch was exported over TLS");
        let received = receiver.await.unwrap();
        assert_eq!(received, ["POST /v1/search", "x-api-key=grpc-key-7"]);
    }
}
