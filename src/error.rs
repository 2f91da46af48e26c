//! One error type for the library. Its [`ErrorKind`] carries the one failure
//! policy (retry, failover, and whether the endpoint is blamed) that the stores'
//! retries, the embedding spaces' failover and the chat router all follow; `api/`
//! maps it to a gRPC status in one place.

use std::time::Duration;

/// What went wrong, as far as a caller or a retry loop needs to know.
///
/// # The failure policy
///
/// Every loop that calls a remote endpoint (a store's retries in
/// `stores::resilient`, an embedding space's providers in `embed::space`, the chat
/// router's deployments in `route::failover`) decides with these three methods and
/// nothing else, so they cannot disagree:
///
/// | kind              | [`is_retryable`] (same endpoint, later) | [`failover`] (another endpoint) | [`counts_against_endpoint`] |
/// |-------------------|-----|---------------------|-----|
/// | `InvalidArgument` | no  | `Stop`              | no  |
/// | `NotFound`        | no  | `Next`              | yes |
/// | `AlreadyExists`   | no  | `Stop`              | no  |
/// | `ContextLength`   | no  | `NextLongerContext` | no  |
/// | `Throttled`       | yes | `Next`              | yes (and its `retry_after` is honoured) |
/// | `Unavailable`     | yes | `Next`              | yes |
/// | `Timeout`         | yes | `Next`              | yes |
/// | `Auth`            | no  | `Next`              | yes |
/// | `Unauthenticated` | no  | `Stop`              | no  |
/// | `Forbidden`       | no  | `Stop`              | no  |
/// | `Config`          | no  | `Stop`              | no  |
/// | `Internal`        | no  | `Stop`              | no  |
///
/// The rule behind the table: a failure that is the endpoint's own (down, slow,
/// throttling, missing the model or index, refusing *our* credentials) counts
/// against that endpoint's breaker and lets another endpoint try; a failure of
/// the request itself (bad input, a caller's missing permission, our config, our
/// bug) would repeat everywhere, so it stops the loop, and the endpoint, having
/// answered, is counted healthy.
///
/// `Auth` from an endpoint is the endpoint's failure, not the caller's: the
/// caller's own identity is checked by `auth` (as `Unauthenticated`) before any endpoint is
/// called, and each endpoint has its own credential (an Azure key per resource, an
/// AWS account, a GCP service account), so a 401/403 from one says nothing about
/// the next. Failing over keeps an expired key at one cloud from taking down every
/// request planned through it; counting it opens that endpoint's breaker, so later
/// requests skip it, and the refusal stays visible in the route summary's attempts,
/// the warning log and the breaker state. It is not retried on the same endpoint:
/// the credential will be refused again.
///
/// [`is_retryable`]: ErrorKind::is_retryable
/// [`failover`]: ErrorKind::failover
/// [`counts_against_endpoint`]: ErrorKind::counts_against_endpoint
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or exceeds a limit; retrying will not help.
    InvalidArgument,
    /// A named source, index, space, model or document does not exist.
    NotFound,
    /// What the request would create exists already (an id another document holds):
    /// refused rather than overwritten; the same request will be refused again.
    AlreadyExists,
    /// The prompt does not fit the model's context window: the same model will
    /// refuse it again, a model with a longer context may not.
    ContextLength,
    /// A backend asked us to slow down.
    Throttled,
    /// A backend is down or unreachable.
    Unavailable,
    /// The deadline passed before the work finished.
    Timeout,
    /// An endpoint refused *our* credentials (its key, token or role): the
    /// endpoint's failure, never reported to our caller as UNAUTHENTICATED.
    Auth,
    /// *Our caller* did not prove who it is (no, or a wrong, key or token).
    Unauthenticated,
    /// The caller is known but may not use what it asked for.
    Forbidden,
    /// The configuration is invalid.
    Config,
    /// A bug or an unexpected state on our side.
    Internal,
}

/// What a loop over endpoints does after one of them failed ([`ErrorKind::failover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// Another endpoint for the same request may succeed: try the next.
    Next,
    /// The prompt is too long for this endpoint: only endpoints with a longer
    /// context window may take it (for a set of endpoints serving one model, none).
    NextLongerContext,
    /// The request itself is at fault: every endpoint would refuse it.
    Stop,
}

impl ErrorKind {
    /// Every kind, for tests and documentation that must cover each one.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::ContextLength,
        ErrorKind::Throttled,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Auth,
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::Config,
        ErrorKind::Internal,
    ];

    /// Whether the same endpoint may succeed if the same call is tried again later.
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Timeout => true,
            ErrorKind::InvalidArgument
            | ErrorKind::ContextLength
            | ErrorKind::NotFound
            | ErrorKind::AlreadyExists
            | ErrorKind::Auth
            | ErrorKind::Unauthenticated
            | ErrorKind::Forbidden
            | ErrorKind::Config
            | ErrorKind::Internal => false,
        }
    }

    /// Whether another endpoint may serve the request this endpoint failed.
    pub fn failover(self) -> Failover {
        match self {
            ErrorKind::Throttled
            | ErrorKind::Unavailable
            | ErrorKind::Timeout
            | ErrorKind::NotFound
            | ErrorKind::Auth => Failover::Next,
            ErrorKind::ContextLength => Failover::NextLongerContext,
            ErrorKind::InvalidArgument
            | ErrorKind::AlreadyExists
            | ErrorKind::Unauthenticated
            | ErrorKind::Forbidden
            | ErrorKind::Config
            | ErrorKind::Internal => Failover::Stop,
        }
    }

    /// Whether the failure is the endpoint's, so its circuit breaker counts it;
    /// otherwise the endpoint answered (if only to refuse the request) and is up.
    pub fn counts_against_endpoint(self) -> bool {
        match self {
            ErrorKind::Throttled
            | ErrorKind::Unavailable
            | ErrorKind::Timeout
            | ErrorKind::NotFound
            | ErrorKind::Auth => true,
            ErrorKind::InvalidArgument
            | ErrorKind::AlreadyExists
            | ErrorKind::ContextLength
            | ErrorKind::Unauthenticated
            | ErrorKind::Forbidden
            | ErrorKind::Config
            | ErrorKind::Internal => false,
        }
    }

    /// The kind's one spelling on the wire and in logs: `THROTTLED`,
    /// `CONTEXT_LENGTH`... (the proto's `Attempt.error_kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::ContextLength => "CONTEXT_LENGTH",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::Throttled => "THROTTLED",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::Auth => "AUTH",
            ErrorKind::Unauthenticated => "UNAUTHENTICATED",
            ErrorKind::Forbidden => "FORBIDDEN",
            ErrorKind::Config => "CONFIG",
            ErrorKind::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The library's error: a kind, a lowercase message, and an optional retry hint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// Set when the backend told us how long to wait (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
    /// Written by skyfuse's own limits about the caller's call: it carries no upstream
    /// detail, so the edge shows it as is (see `api::redact`).
    pub local_refusal: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            local_refusal: false,
        }
    }

    /// A caller over one of skyfuse's own limits: `Throttled`, shown to it as is.
    pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        Self {
            local_refusal: true,
            ..Self::throttled(message, Some(retry_after))
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn already_exists(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn throttled(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        Self {
            retry_after: retry_after.map(crate::time_caps::cap_retry_after),
            ..Self::new(ErrorKind::Throttled, message)
        }
    }

    /// Whether the same call may succeed if tried again later
    /// ([`ErrorKind::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Prefix the message with what we were doing, keeping the kind.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        let kind = match error.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                ErrorKind::InvalidArgument
            }
            _ => ErrorKind::Internal,
        };
        Self::new(kind, error.to_string())
    }
}
