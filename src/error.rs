//! One error type for the library. Its [`ErrorKind`] decides retryability in one
//! exhaustive match; `api/` maps it to a gRPC status in one place.

use std::time::Duration;

/// What went wrong, as far as a caller or a retry loop needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or exceeds a limit; retrying will not help.
    InvalidArgument,
    /// A named source, index, space, model or document does not exist.
    NotFound,
    /// The prompt does not fit the model's context window: the same model will
    /// refuse it again, a model with a longer context may not.
    ContextLength,
    /// A backend asked us to slow down.
    Throttled,
    /// A backend is down or unreachable.
    Unavailable,
    /// The deadline passed before the work finished.
    Timeout,
    /// Credentials were missing or refused.
    Auth,
    /// The caller is known but may not use what it asked for.
    Forbidden,
    /// The configuration is invalid.
    Config,
    /// A bug or an unexpected state on our side.
    Internal,
}

/// The library's error: a kind, a lowercase message, and an optional retry hint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// Set when the backend told us how long to wait (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
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
            retry_after,
            ..Self::new(ErrorKind::Throttled, message)
        }
    }

    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self.kind {
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Timeout => true,
            ErrorKind::InvalidArgument
            | ErrorKind::ContextLength
            | ErrorKind::NotFound
            | ErrorKind::Auth
            | ErrorKind::Forbidden
            | ErrorKind::Config
            | ErrorKind::Internal => false,
        }
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
