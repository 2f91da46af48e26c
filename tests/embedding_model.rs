//! The in-process all-MiniLM-L6-v2 against published and reference values.
//!
//! Needs the real model: `scripts/fetch-model.sh` puts it in `models/all-MiniLM-L6-v2`,
//! or point `SKYFUSE_MODEL_DIR` at a copy. The reference fixture comes from
//! sentence-transformers via `scripts/minilm_reference.py`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use skyfuse::config::LocalPrecision;
use skyfuse::embed::local::{DEFAULT_MODEL_DIR, LocalEmbedder, MODEL_DIR_ENV};
use skyfuse::embed::{Embedder, EmbeddingSpace, Purpose};
use skyfuse::error::ErrorKind;

const DIMS: usize = 384;

fn model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(directory) if !directory.is_empty() => PathBuf::from(directory),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR),
    }
}

fn minilm_space() -> EmbeddingSpace {
    EmbeddingSpace {
        id: "minilm".to_owned(),
        model: "all-MiniLM-L6-v2".to_owned(),
        dims: DIMS,
    }
}

/// One embedder for the whole test binary: loading takes a moment.
fn embedder() -> &'static LocalEmbedder {
    static EMBEDDER: OnceLock<LocalEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let directory = model_dir();
        assert!(
            directory.join("model.safetensors").is_file(),
            "the embedding model is missing at {}: run scripts/fetch-model.sh or set {MODEL_DIR_ENV}",
            directory.display()
        );
        LocalEmbedder::load(minilm_space(), &directory, LocalPrecision::F32).unwrap_or_else(|error| {
            panic!(
                "cannot load the embedding model from {}: {error}",
                directory.display()
            )
        })
    })
}

fn embed(texts: &[&str]) -> Vec<Vec<f32>> {
    embedder()
        .embed_blocking(texts)
        .expect("embedding succeeds")
}

fn cosine(left: &[f32], right: &[f32]) -> f32 {
    let dot: f32 = left.iter().zip(right).map(|(a, b)| a * b).sum();
    dot / (norm(left) * norm(right))
}

fn norm(vector: &[f32]) -> f32 {
    vector.iter().map(|value| value * value).sum::<f32>().sqrt()
}

fn assert_unit_vector(vector: &[f32], what: &str) {
    assert_eq!(vector.len(), DIMS, "{what}: dims");
    assert!(
        vector.iter().all(|value| value.is_finite()),
        "{what}: non-finite value"
    );
    let length = norm(vector);
    assert!((length - 1.0).abs() < 1e-5, "{what}: norm {length}");
}

/// The value sentence-transformers' documentation publishes for this pair.
#[test]
fn published_cosine_for_the_bread_pair() {
    let vectors = embed(&["A man is eating food.", "A man is eating a piece of bread."]);
    let similarity = cosine(&vectors[0], &vectors[1]);
    assert!(
        (similarity - 0.7553).abs() <= 0.001,
        "cosine {similarity}, published 0.7553"
    );
}

#[test]
fn vectors_have_384_dims_and_unit_norm() {
    let texts = [
        "A man is riding a horse.",
        "Glucocorticoids reduce inflammation in asthma.",
        "x",
    ];
    let vectors = embed(&texts);
    assert_eq!(vectors.len(), texts.len());
    for (vector, text) in vectors.iter().zip(texts) {
        assert_unit_vector(vector, text);
    }
}

#[test]
fn empty_input_gives_empty_output() {
    assert!(embed(&[]).is_empty());
}

/// Alone, a short text takes the few-token path of the model; in this batch (well over 48
/// tokens) it takes the many-token path: both must agree.
#[test]
fn batch_keeps_order_and_equals_one_at_a_time() {
    let texts = [
        "Mean pooling averages the token vectors of the last layer over the attention mask, and the result is normalized to unit length before it is stored in the index or compared with a query.",
        "The girl is carrying a baby.",
        "A man is eating food.",
        "Vitamin D deficiency is associated with a higher risk of tuberculosis in adults living in northern latitudes.",
        "",
        "A cheetah is running behind its prey.",
        "short",
    ];
    let batch = embed(&texts);
    assert_eq!(batch.len(), texts.len());
    for (index, text) in texts.iter().enumerate() {
        let alone = embed(&[text]).remove(0);
        let largest_difference = batch[index]
            .iter()
            .zip(&alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0_f32, f32::max);
        assert!(
            largest_difference <= 1e-4,
            "text {index} ({text:?}) differs by {largest_difference} between batch and alone"
        );
    }
    // Order: each text is closest to itself, not to its neighbour in the batch.
    for (index, vector) in batch.iter().enumerate() {
        let best = batch
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| cosine(vector, a).total_cmp(&cosine(vector, b)))
            .map(|(position, _)| position);
        assert_eq!(best, Some(index), "text {index} is out of place");
    }
}

/// More texts than one tokenizer call and one forward pass take, so the internal
/// grouping and batching boundaries are crossed; results stay in order.
#[test]
fn many_texts_cross_internal_batches_in_order() {
    let texts: Vec<String> = (0..300)
        .map(|index| format!("document number {index} about topic {}", index % 17))
        .collect();
    let borrowed: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = embed(&borrowed);
    assert_eq!(batch.len(), texts.len());
    for index in [0, 1, 255, 256, 257, 299] {
        let alone = embed(&[borrowed[index]]).remove(0);
        let similarity = cosine(&batch[index], &alone);
        assert!(
            similarity > 0.9999,
            "text {index}: batch vs alone cosine {similarity}"
        );
    }
}

#[test]
fn empty_huge_and_odd_inputs_do_not_fail() {
    let ten_thousand_words = (0..10_000)
        .map(|index| format!("word{}", index % 101))
        .collect::<Vec<_>>()
        .join(" ");
    let one_giant_word = "a".repeat(200_000);
    let texts = [
        "",
        " ",
        "\n\t\r",
        ten_thousand_words.as_str(),
        one_giant_word.as_str(),
        "\u{0000}\u{0001}\u{feff}\u{200b}",
        "\u{0301}\u{0301}\u{0301}",
        "🚀🚀🚀 👩‍👩‍👧‍👦 🇫🇷",
        "東京タワー 서울 Ελληνικά العربية हिन्दी",
        "\u{fffd}\u{10ffff}",
    ];
    let vectors = embed(&texts);
    assert_eq!(vectors.len(), texts.len());
    for (index, vector) in vectors.iter().enumerate() {
        assert_unit_vector(vector, &format!("odd input {index}"));
    }
}

/// Truncation at 256 tokens: what follows the first 256 tokens does not matter.
#[test]
fn text_is_truncated_at_256_tokens() {
    let prefix = (0..400)
        .map(|index| format!("alpha{}", index % 7))
        .collect::<Vec<_>>()
        .join(" ");
    let with_other_ending = format!("{prefix} completely different ending about volcanoes");
    let vectors = embed(&[prefix.as_str(), with_other_ending.as_str()]);
    let largest_difference = vectors[0]
        .iter()
        .zip(&vectors[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0_f32, f32::max);
    assert!(
        largest_difference <= 1e-6,
        "difference {largest_difference}"
    );
}

/// The reference fixture and its texts, `<long_text>` built exactly as
/// scripts/minilm_reference.py builds it.
fn reference_fixture() -> (serde_json::Value, Vec<String>) {
    let fixture_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&fixture_path).expect("reference fixture is readable"),
    )
    .expect("reference fixture is json");
    let long_text = (0..2000)
        .map(|index| format!("word{} sentence{}.", index % 97, index % 13))
        .collect::<Vec<_>>()
        .join(" ");
    let texts = fixture["sentences"]
        .as_array()
        .expect("sentences")
        .iter()
        .map(|sentence| match sentence["text"].as_str().expect("text") {
            "<long_text>" => long_text.clone(),
            text => text.to_owned(),
        })
        .collect();
    (fixture, texts)
}

#[test]
fn matches_sentence_transformers_reference_fixture() {
    let (fixture, owned_texts) = reference_fixture();
    let texts: Vec<&str> = owned_texts.iter().map(String::as_str).collect();
    let sentences = fixture["sentences"].as_array().expect("sentences");
    let vectors = embed(&texts);

    for (index, sentence) in sentences.iter().enumerate() {
        let expected: Vec<f32> = sentence["first_dims"]
            .as_array()
            .expect("first_dims")
            .iter()
            .map(|value| value.as_f64().expect("number") as f32)
            .collect();
        for (dimension, (&actual, &wanted)) in vectors[index].iter().zip(&expected).enumerate() {
            assert!(
                (actual - wanted).abs() <= 1e-4,
                "sentence {index} ({:?}) dim {dimension}: {actual} vs reference {wanted}",
                texts[index]
            );
        }
        assert_unit_vector(&vectors[index], &format!("reference sentence {index}"));
    }
    for pair in fixture["cosine_pairs"].as_array().expect("cosine_pairs") {
        let left = pair["a"].as_u64().expect("a") as usize;
        let right = pair["b"].as_u64().expect("b") as usize;
        let wanted = pair["cosine"].as_f64().expect("cosine") as f32;
        let actual = cosine(&vectors[left], &vectors[right]);
        assert!(
            (actual - wanted).abs() <= 1e-4,
            "cosine({left}, {right}) = {actual}, reference {wanted}"
        );
    }
}

#[tokio::test]
async fn async_embed_matches_blocking_and_reports_the_space() {
    let embedder = embedder().clone();
    assert_eq!(embedder.space(), &minilm_space());
    let texts = vec!["A man is eating food.".to_owned(), "".to_owned()];
    let from_async = embedder
        .embed(&texts, Purpose::Query)
        .await
        .expect("async embedding succeeds");
    let from_documents = embedder
        .embed(&texts, Purpose::Document)
        .await
        .expect("async embedding succeeds");
    let from_blocking = embed(&["A man is eating food.", ""]);
    assert_eq!(from_async, from_blocking);
    assert_eq!(from_documents, from_blocking);
    assert!(
        embedder
            .embed(&[], Purpose::Query)
            .await
            .expect("empty")
            .is_empty()
    );
}

/// Queries that arrive together share forward passes (`embed/local/batcher.rs`); each
/// must get the vector it gets alone, in its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queries_each_get_the_vector_they_get_alone() {
    let embedder = embedder().clone();
    let queries: Vec<String> = (0..24)
        .map(|index| match index % 3 {
            0 => format!("does protein {index} regulate cell growth?"),
            1 => format!("vitamin D deficiency and risk number {index}"),
            _ => String::new(),
        })
        .collect();
    let tasks: Vec<_> = queries
        .iter()
        .map(|query| {
            let (embedder, query) = (embedder.clone(), query.clone());
            tokio::spawn(async move { embedder.embed(&[query], Purpose::Query).await })
        })
        .collect();
    for (query, task) in queries.iter().zip(tasks) {
        let batched = task.await.expect("task").expect("query embedded");
        let alone = embed(&[query.as_str()]);
        assert_eq!(batched.len(), 1);
        let largest_difference = batched[0]
            .iter()
            .zip(&alone[0])
            .map(|(left, right)| (left - right).abs())
            .fold(0.0_f32, f32::max);
        assert!(
            largest_difference < 1e-5,
            "{query:?}: batched and alone differ by {largest_difference}"
        );
    }
}

#[test]
fn missing_model_dir_is_a_config_error_that_says_how_to_fix_it() {
    let missing = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/does-not-exist");
    let error = LocalEmbedder::load(minilm_space(), &missing, LocalPrecision::Auto)
        .expect_err("load must fail");
    assert_eq!(error.kind, ErrorKind::Config);
    // The exact command, with the folder it must fill.
    let command = format!("SKYFUSE_MODEL_DIR={} ", missing.display());
    assert!(
        error.message.contains(&command) && error.message.contains("scripts/fetch-model.sh"),
        "{}",
        error.message
    );
}

#[test]
fn the_cli_from_any_folder_looks_for_the_model_in_the_skyfuse_home_and_says_how_to_fetch_it() {
    let home = tempfile::tempdir().expect("temp dir");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skyfuse"))
        .args(["search", "anything"])
        .current_dir(elsewhere.path())
        .env("SKYFUSE_HOME", home.path())
        .env_remove(MODEL_DIR_ENV)
        .env_remove("SKYFUSE_CONFIG")
        .output()
        .expect("skyfuse runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let model_dir = home.path().join(DEFAULT_MODEL_DIR);
    let command = format!("SKYFUSE_MODEL_DIR={} ", model_dir.display());
    assert!(
        stderr.contains(&command) && stderr.contains("scripts/fetch-model.sh"),
        "{stderr}"
    );
    // Nothing was written where the command ran.
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
}

#[test]
fn missing_or_malformed_files_are_config_errors() {
    let real = model_dir();
    let scratch = tempfile::tempdir().expect("temp dir");
    // Only a config: the weights are missing.
    std::fs::copy(real.join("config.json"), scratch.path().join("config.json")).expect("copy");
    let error = LocalEmbedder::load(minilm_space(), scratch.path(), LocalPrecision::Auto)
        .expect_err("no weights");
    assert_eq!(error.kind, ErrorKind::Config);
    assert!(
        error.message.contains("model.safetensors"),
        "{}",
        error.message
    );

    // Every file present, but the weights are garbage.
    std::fs::write(scratch.path().join("model.safetensors"), b"not safetensors").expect("write");
    std::fs::copy(
        real.join("tokenizer.json"),
        scratch.path().join("tokenizer.json"),
    )
    .expect("copy");
    let error = LocalEmbedder::load(minilm_space(), scratch.path(), LocalPrecision::Auto)
        .expect_err("bad weights");
    assert_eq!(error.kind, ErrorKind::Config);
    assert!(error.message.contains("model weights"), "{}", error.message);

    // A config that is not json.
    std::fs::write(scratch.path().join("config.json"), b"{ nope").expect("write");
    let error = LocalEmbedder::load(minilm_space(), scratch.path(), LocalPrecision::Auto)
        .expect_err("bad config");
    assert_eq!(error.kind, ErrorKind::Config);
}

#[test]
fn space_with_the_wrong_dims_is_rejected() {
    let space = EmbeddingSpace {
        dims: 768,
        ..minilm_space()
    };
    let error =
        LocalEmbedder::load(space, &model_dir(), LocalPrecision::Auto).expect_err("dims mismatch");
    assert_eq!(error.kind, ErrorKind::Config);
    assert!(error.message.contains("768"), "{}", error.message);
}

#[test]
fn the_cli_search_and_ask_take_a_filter_as_json() {
    let home = tempfile::tempdir().expect("temp dir");
    let docs = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(home.path().join("models")).unwrap();
    std::os::unix::fs::symlink(model_dir(), home.path().join(DEFAULT_MODEL_DIR)).unwrap();
    // The same topic in a short file and a long one: only the size tells them apart.
    std::fs::write(
        docs.path().join("short.txt"),
        "The lighthouse keeper logs storms.",
    )
    .unwrap();
    let long = "The lighthouse keeper logs storms and ships passing at night. ".repeat(20);
    std::fs::write(docs.path().join("long.txt"), long).unwrap();
    let skyfuse = |arguments: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_skyfuse"))
            .args(arguments)
            .current_dir(home.path())
            .env("SKYFUSE_HOME", home.path())
            .env_remove(MODEL_DIR_ENV)
            .env_remove("SKYFUSE_CONFIG")
            .output()
            .expect("skyfuse runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    let docs_path = docs.path().display().to_string();
    let (indexed, report) = skyfuse(&["index", &docs_path]);
    assert!(indexed, "{report}");
    let small = r#"{"condition": {"field": "size_bytes", "range": {"lt": "100"}}}"#;
    let (ok, hits) = skyfuse(&["search", "lighthouse storms", "--filter", small]);
    assert!(ok, "{hits}");
    assert!(
        hits.contains("short.txt") && !hits.contains("long.txt"),
        "{hits}"
    );
    let (ok, answer) = skyfuse(&["ask", "Who logs storms?", "--filter", small]);
    assert!(ok, "{answer}");
    assert!(
        answer.contains("short.txt") && !answer.contains("long.txt"),
        "{answer}"
    );
    // A malformed filter is refused before anything runs, naming the flag.
    let (ok, refused) = skyfuse(&["search", "storms", "--filter", r#"{"condition": 1}"#]);
    assert!(!ok);
    assert!(refused.contains("--filter"), "{refused}");
}

/// `precision = "bf16"` (what `auto` picks on a CPU with AVX512_BF16): the same model
/// within bf16's rounding. Each vector points where the f32 one does, and the pairs the
/// reference fixture scores keep their similarity and their order. On a CPU without it,
/// asking for bf16 is a clear startup error.
#[test]
fn bf16_products_stay_within_rounding_of_the_f32_model() {
    let loaded = LocalEmbedder::load(minilm_space(), &model_dir(), LocalPrecision::Bf16);
    let bf16 = match loaded {
        Ok(bf16) => bf16,
        Err(error) => {
            assert_eq!(error.kind, ErrorKind::Config);
            assert!(error.to_string().contains("AVX512_BF16"), "{error}");
            let auto = LocalEmbedder::load(minilm_space(), &model_dir(), LocalPrecision::Auto)
                .expect("auto falls back to f32");
            assert!(!auto.is_bf16());
            return;
        }
    };
    assert!(bf16.is_bf16());
    assert!(!embedder().is_bf16(), "the exact model is f32");

    let (fixture, owned_texts) = reference_fixture();
    let texts: Vec<&str> = owned_texts.iter().map(String::as_str).collect();
    let exact = embed(&texts);
    let rounded = bf16.embed_blocking(&texts).expect("bf16 embeds");
    for (index, (exact, rounded)) in exact.iter().zip(&rounded).enumerate() {
        assert_unit_vector(rounded, &format!("bf16 text {index}"));
        let agreement = cosine(exact, rounded);
        assert!(
            agreement >= 0.9999,
            "text {index} ({:?}): bf16 vs f32 cosine {agreement}",
            texts[index]
        );
    }
    let mut pairs: Vec<(f32, f32)> = Vec::new();
    for pair in fixture["cosine_pairs"].as_array().expect("cosine_pairs") {
        let left = pair["a"].as_u64().expect("a") as usize;
        let right = pair["b"].as_u64().expect("b") as usize;
        let wanted = pair["cosine"].as_f64().expect("cosine") as f32;
        let actual = cosine(&rounded[left], &rounded[right]);
        assert!(
            (actual - wanted).abs() <= 0.005,
            "bf16 cosine({left}, {right}) = {actual}, reference {wanted}"
        );
        pairs.push((wanted, actual));
    }
    // Pairs the reference tells apart by more than the rounding stay in its order.
    for first in &pairs {
        for second in &pairs {
            if (first.0 - second.0).abs() > 0.01 {
                assert_eq!(first.0 < second.0, first.1 < second.1, "{pairs:?}");
            }
        }
    }
}
