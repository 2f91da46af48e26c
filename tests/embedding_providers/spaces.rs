//! A space served by two OpenAI-compatible endpoints of the same model, wired from
//! config through the whole service: indexing and search fail over from the endpoint
//! that is down to the same model elsewhere (its id there), and a search embeds the
//! query once however many sources the space has.

use std::collections::HashMap;
use std::path::Path;

use serde_json::json;
use skyfuse::config::Config;
use skyfuse::service::{IndexFilters, SearchParams, Service};
use tempfile::TempDir;

use crate::support::*;

const DIMS: usize = 8;

fn answer(received: &Received) -> Handled {
    let body = received.json();
    let inputs = field(&body, "input")?
        .as_array()
        .ok_or("input is not an array")?;
    let data: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            json!({"object": "embedding", "index": index, "embedding": vector_for(text.as_str().unwrap(), DIMS)})
        })
        .collect();
    Ok(Reply::json(200, json!({"object": "list", "data": data})))
}

#[tokio::test]
async fn a_space_fails_over_to_the_same_model_elsewhere_and_embeds_each_query_once() {
    let down = serve(|_| Ok(Reply::text(503, "overloaded"))).await;
    let up = serve(answer).await;
    let data = TempDir::new().unwrap();
    let docs = TempDir::new().unwrap();
    for (name, text) in [
        ("a.txt", "cold archives are replicated nightly"),
        (
            "b.txt",
            "billing exports land in the finance bucket every month",
        ),
    ] {
        std::fs::write(docs.path().join(name), text).unwrap();
    }
    let text = format!(
        r#"
        [server]
        data_dir = "{data}"
        [[provider]]
        id = "east"
        kind = "openai_compat"
        base_url = "{down}"
        [[provider]]
        id = "west"
        kind = "openai_compat"
        base_url = "{up}"
        [[space]]
        id = "bge"
        provider = "east"
        fallback = ["west"]
        model = "bge-small"
        model_ids = {{ west = "bge-small-en" }}
        dims = {DIMS}
        [[source]]
        id = "dense-a"
        kind = "dense"
        space = "bge"
        [[source]]
        id = "dense-b"
        kind = "dense"
        space = "bge"
        [[index]]
        id = "docs"
        sources = ["dense-a", "dense-b"]
        "#,
        data = data.path().display(),
        down = down.base_url,
        up = up.base_url,
    );
    let mut config = Config::parse(&text, Path::new("/")).unwrap();
    config.ingest.roots.push(docs.path().to_path_buf());
    let service = Service::build(config, &HashMap::new()).await.unwrap();
    let report = service
        .index(
            &skyfuse::auth::Principal::operator(),
            &docs.path().display().to_string(),
            "",
            &IndexFilters::default(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.progress.failed, 0, "{report:?}");
    assert_eq!(
        up.last().json()["model"],
        "bge-small-en",
        "the model's id at west"
    );

    let before = up.count();
    for _ in 0..4 {
        let result = service
            .search(
                &skyfuse::auth::Principal::operator(),
                SearchParams {
                    query: "where are archives replicated?".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(!result.degraded, "{:?}", result.outcomes);
        assert_eq!(result.outcomes.len(), 2);
        assert!(!result.hits.is_empty());
    }
    assert_eq!(
        up.count() - before,
        1,
        "four identical searches over two sources: one embedding, then the cache"
    );
    assert_eq!(
        down.count(),
        2,
        "east is tried first, once for the documents and once for the query"
    );
}
