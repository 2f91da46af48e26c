//! One embedding space served by one or more providers of the same model.
//!
//! Inputs are split into batches the providers accept; each batch goes to the first
//! provider whose breaker lets it through, and moves on to the next one only when the
//! failure policy says another endpoint may succeed ([`ErrorKind::failover`]: the
//! provider is throttled, down, slow, missing the model or refused our credentials),
//! never when the input is at fault. Vectors are then brought to the space's shape.

use std::sync::Arc;

use async_trait::async_trait;

use crate::breaker::{BreakerSettings, CircuitBreaker};
use crate::config::Metric;
use crate::embed::normalize::shape_vector;
use crate::embed::{EmbedRequest, Embedder, EmbeddingProvider, EmbeddingSpace, Purpose};
use crate::error::{Error, ErrorKind, Failover, Result};
use crate::telemetry::{spans, trace};

/// A provider of the space's model, with the model's id there.
pub struct Serving {
    pub provider: Arc<dyn EmbeddingProvider>,
    pub model: String,
    breaker: Arc<CircuitBreaker>,
}

impl Serving {
    pub fn new(provider: Arc<dyn EmbeddingProvider>, model: impl Into<String>) -> Self {
        Self {
            provider,
            model: model.into(),
            breaker: Arc::new(CircuitBreaker::new(BreakerSettings::default())),
        }
    }
}

/// Which provider locations (cloud, region) may see a text, and why not: a search's
/// residency restriction. None: any.
pub type Within =
    std::sync::Arc<dyn Fn(&str, &str) -> std::result::Result<(), String> + Send + Sync>;

pub struct SpaceEmbedder {
    space: EmbeddingSpace,
    metric: Metric,
    matryoshka: bool,
    servings: Vec<Serving>,
    batch_size: usize,
}

impl SpaceEmbedder {
    pub fn new(
        space: EmbeddingSpace,
        metric: Metric,
        matryoshka: bool,
        servings: Vec<Serving>,
    ) -> Result<Self> {
        let batch_size = servings
            .iter()
            .map(|serving| serving.provider.max_batch())
            .min()
            .ok_or_else(|| Error::config(format!("space {:?} has no provider", space.id)))?
            .max(1);
        Ok(Self {
            space,
            metric,
            matryoshka,
            servings,
            batch_size,
        })
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn is_matryoshka(&self) -> bool {
        self.matryoshka
    }

    /// Embeds at `dims`, which may exceed the space's own for a Matryoshka model (one
    /// query embedding shared by spaces of the same model at smaller sizes).
    pub async fn embed_at(
        &self,
        texts: &[String],
        purpose: Purpose,
        dims: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.embed_within(texts, purpose, dims, None).await
    }

    /// [`Self::embed_at`] by the providers `within` admits only; the others are
    /// passed over and named in the error when none could embed.
    pub async fn embed_within(
        &self,
        texts: &[String],
        purpose: Purpose,
        dims: usize,
        within: Option<&Within>,
    ) -> Result<Vec<Vec<f32>>> {
        if dims != self.space.dims && !self.matryoshka {
            return Err(Error::internal(format!(
                "space {:?} is not Matryoshka: it embeds at {} dimensions only",
                self.space.id, self.space.dims
            )));
        }
        let normalize = self.metric == Metric::Cosine;
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.batch_size) {
            let embedded = self.embed_batch(batch, purpose, dims, within).await?;
            if embedded.len() != batch.len() {
                return Err(Error::unavailable(format!(
                    "space {:?}: the provider returned {} vectors for {} texts",
                    self.space.id,
                    embedded.len(),
                    batch.len()
                )));
            }
            for vector in embedded {
                vectors.push(shape_vector(vector, dims, self.matryoshka, normalize)?);
            }
        }
        Ok(vectors)
    }

    async fn embed_batch(
        &self,
        texts: &[String],
        purpose: Purpose,
        dims: usize,
        within: Option<&Within>,
    ) -> Result<Vec<Vec<f32>>> {
        let mut failures = Vec::new();
        let mut last_kind = ErrorKind::Unavailable;
        let mut retry_after = None;
        // Whether every provider tried refused for skyfuse's own load (the local model's
        // queue is full): then the call is refused as overloaded, not as a provider outage.
        let mut only_local_refusals = true;
        for serving in &self.servings {
            let provider = serving.provider.id();
            if let Some(within) = within {
                let (cloud, region) = serving.provider.location();
                if let Err(why) = within(cloud, region) {
                    failures.push(format!("{provider} may not see it: {why}"));
                    only_local_refusals = false;
                    continue;
                }
            }
            let Some(permit) = serving.breaker.try_acquire() else {
                failures.push(format!("{provider}: circuit open"));
                only_local_refusals = false;
                continue;
            };
            let request = EmbedRequest {
                model: &serving.model,
                texts,
                purpose,
                dims: self.matryoshka.then_some(dims),
            };
            let span = spans::embeddings(&self.space.id, &serving.model, provider, dims);
            let embedded = trace::run_in(span.as_ref(), serving.provider.embed(request)).await;
            if let Some(span) = span {
                spans::end_with(span, &embedded);
            }
            let error = match embedded {
                Ok(vectors) => {
                    permit.succeeded();
                    return Ok(vectors);
                }
                Err(error) => error,
            };
            permit.failed(&error);
            match error.kind.failover() {
                Failover::Next => {
                    tracing::warn!(space = %self.space.id, provider, %error, "embedding provider failed; trying the next");
                    failures.push(format!("{provider}: {error}"));
                    last_kind = error.kind;
                    retry_after = error.retry_after.or(retry_after);
                    only_local_refusals &= error.local_refusal;
                }
                // The input is at fault: another provider of the same model would
                // refuse it too (every serving has the same model, so none has a
                // longer context either).
                Failover::NextLongerContext | Failover::Stop => {
                    return Err(error.context(format!("space {:?}, {provider}", self.space.id)));
                }
            }
        }
        let mut error = Error::new(
            last_kind,
            format!(
                "space {:?}: no provider of {} could embed ({})",
                self.space.id,
                self.space.model,
                failures.join("; ")
            ),
        );
        error.retry_after = retry_after;
        error.local_refusal = only_local_refusals && !failures.is_empty();
        Err(error)
    }
}

#[async_trait]
impl Embedder for SpaceEmbedder {
    fn space(&self) -> &EmbeddingSpace {
        &self.space
    }

    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Vec<f32>>> {
        self.embed_at(texts, purpose, self.space.dims).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A provider whose answers a test scripts: a vector per text derived from the
    /// text's length, or a scripted failure. Counts calls and remembers requests.
    pub(crate) struct ScriptedProvider {
        pub id: &'static str,
        pub native_dims: usize,
        pub max_batch: usize,
        pub failure: Mutex<Option<Error>>,
        pub calls: AtomicUsize,
        pub requests: Mutex<Vec<(String, usize, Option<usize>)>>,
    }

    impl ScriptedProvider {
        pub(crate) fn new(id: &'static str, native_dims: usize) -> Arc<Self> {
            Arc::new(Self {
                id,
                native_dims,
                max_batch: 16,
                failure: Mutex::new(None),
                calls: AtomicUsize::new(0),
                requests: Mutex::new(Vec::new()),
            })
        }

        pub(crate) fn fail_with(&self, error: Option<Error>) {
            *self.failure.lock().unwrap() = error;
        }

        pub(crate) fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl EmbeddingProvider for ScriptedProvider {
        fn id(&self) -> &str {
            self.id
        }

        fn location(&self) -> (&str, &str) {
            ("test", "test-1")
        }

        fn max_batch(&self) -> usize {
            self.max_batch
        }

        async fn embed(&self, request: EmbedRequest<'_>) -> Result<Vec<Vec<f32>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.requests.lock().unwrap().push((
                request.model.to_string(),
                request.texts.len(),
                request.dims,
            ));
            if let Some(error) = self.failure.lock().unwrap().clone() {
                return Err(error);
            }
            let dims = request.dims.unwrap_or(self.native_dims);
            Ok(request
                .texts
                .iter()
                .map(|text| {
                    (0..dims)
                        .map(|i| (text.len() + i + 1) as f32)
                        .collect::<Vec<f32>>()
                })
                .collect())
        }
    }

    pub(crate) fn space(id: &str, dims: usize) -> EmbeddingSpace {
        EmbeddingSpace {
            id: id.into(),
            model: "test-embed".into(),
            dims,
        }
    }

    fn texts(n: usize) -> Vec<String> {
        (0..n).map(|i| "x".repeat(i + 1)).collect()
    }

    #[tokio::test]
    async fn fails_over_to_the_same_model_elsewhere_and_batches_by_the_smallest_limit() {
        let primary = ScriptedProvider::new("bedrock-us", 4);
        let backup = ScriptedProvider::new("oci-fra", 4);
        primary.fail_with(Some(Error::throttled("429", None)));
        let embedder = SpaceEmbedder::new(
            space("cohere", 4),
            Metric::Cosine,
            false,
            vec![
                Serving::new(primary.clone(), "cohere.embed-english-v3"),
                Serving::new(backup.clone(), "cohere.embed-english-v3.0"),
            ],
        )
        .unwrap();
        let vectors = embedder.embed(&texts(20), Purpose::Document).await.unwrap();
        assert_eq!(vectors.len(), 20);
        let norm: f32 = vectors[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "cosine spaces are normalized");
        let sent = backup.requests.lock().unwrap().clone();
        assert_eq!(
            sent,
            vec![
                ("cohere.embed-english-v3.0".to_string(), 16, None),
                ("cohere.embed-english-v3.0".to_string(), 4, None)
            ]
        );
        assert_eq!(primary.calls(), 2, "one attempt per batch");
    }

    /// A cosine space of 4 dimensions served by `primary`, then `backup`, both model "m".
    fn primary_then_backup(
        id: &str,
        primary: &Arc<ScriptedProvider>,
        backup: &Arc<ScriptedProvider>,
    ) -> SpaceEmbedder {
        SpaceEmbedder::new(
            space(id, 4),
            Metric::Cosine,
            false,
            vec![
                Serving::new(primary.clone(), "m"),
                Serving::new(backup.clone(), "m"),
            ],
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_open_breaker_skips_the_provider_and_bad_input_does_not_fail_over() {
        let primary = ScriptedProvider::new("azure-east", 4);
        let backup = ScriptedProvider::new("azure-west", 4);
        primary.fail_with(Some(Error::unavailable("503")));
        let embedder = primary_then_backup("te3", &primary, &backup);
        for _ in 0..5 {
            embedder.embed(&texts(1), Purpose::Query).await.unwrap();
        }
        assert_eq!(primary.calls(), 3, "opened after three failures");
        assert_eq!(backup.calls(), 5);

        backup.fail_with(Some(Error::invalid("input too long")));
        let error = embedder.embed(&texts(1), Purpose::Query).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(error.message.contains("azure-west"), "{error}");
    }

    /// The space follows the one failure policy: it moves to the next provider
    /// only on `Failover::Next`, and blames a provider's breaker only for what
    /// `ErrorKind::counts_against_endpoint` says is the provider's failure.
    #[tokio::test]
    async fn failover_and_breaker_follow_the_failure_policy_for_every_kind() {
        for kind in ErrorKind::ALL {
            let primary = ScriptedProvider::new("primary", 4);
            let backup = ScriptedProvider::new("backup", 4);
            primary.fail_with(Some(Error::new(kind, "scripted")));
            let embedder = primary_then_backup("s", &primary, &backup);
            // The default breaker opens after three failures.
            for _ in 0..3 {
                let result = embedder.embed(&texts(1), Purpose::Query).await;
                assert_eq!(result.is_ok(), kind.failover() == Failover::Next, "{kind}");
            }
            assert_eq!(primary.calls(), 3, "{kind}");
            let expected_backup_calls = if kind.failover() == Failover::Next {
                3
            } else {
                0
            };
            assert_eq!(backup.calls(), expected_backup_calls, "{kind}");
            assert_eq!(
                embedder.servings[0].breaker.is_open(),
                kind.counts_against_endpoint(),
                "{kind}"
            );
        }
    }

    #[tokio::test]
    async fn when_no_provider_answers_the_error_names_each_and_keeps_the_retry_hint() {
        let only = ScriptedProvider::new("vertex", 4);
        only.fail_with(Some(Error::throttled(
            "quota",
            Some(std::time::Duration::from_secs(7)),
        )));
        let embedder = SpaceEmbedder::new(
            space("gecko", 4),
            Metric::Cosine,
            false,
            vec![Serving::new(only, "m")],
        )
        .unwrap();
        let error = embedder.embed(&texts(1), Purpose::Query).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert_eq!(error.retry_after, Some(std::time::Duration::from_secs(7)));
        assert!(error.message.contains("vertex: quota"), "{error}");
    }

    #[tokio::test]
    async fn a_matryoshka_space_asks_for_its_size_and_a_fixed_one_refuses_a_wrong_size() {
        let provider = ScriptedProvider::new("openai", 8);
        let matryoshka = SpaceEmbedder::new(
            space("te3-256", 2),
            Metric::Dot,
            true,
            vec![Serving::new(provider.clone(), "m")],
        )
        .unwrap();
        let vectors = matryoshka
            .embed_at(&texts(1), Purpose::Query, 4)
            .await
            .unwrap();
        assert_eq!(
            vectors[0],
            vec![2.0, 3.0, 4.0, 5.0],
            "dot spaces keep magnitude"
        );
        assert_eq!(provider.requests.lock().unwrap()[0].2, Some(4));

        let fixed = SpaceEmbedder::new(
            space("minilm-2", 2),
            Metric::Cosine,
            false,
            vec![Serving::new(provider, "m")],
        )
        .unwrap();
        let error = fixed.embed(&texts(1), Purpose::Query).await.unwrap_err();
        assert!(error.message.contains("8-dimensional"), "{error}");
    }
}
