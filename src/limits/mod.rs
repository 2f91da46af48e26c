//! Global limits: how many calls the server serves at once ([`concurrency`]) and
//! how much each caller may ask for per minute ([`rate`]). Both refuse at once with
//! `RESOURCE_EXHAUSTED` (HTTP 429) and a `retry-after` hint instead of queueing.

pub mod concurrency;
pub mod rate;

pub use concurrency::{CallLimit, CallLimitLayer, Protocol};
pub use rate::{Limited, Quota, RateKind, RateLimitStatus, RateLimiter, RateLimits, RateRefusal};
