//! The seed's three residency examples (eu / us / apac) as shipped in
//! `docs/examples/residency.toml`, each checked over gRPC (`Answer`, `Search`) and the
//! facade (`POST /v1/chat/completions` with `retrieval`, and `POST /v1/search`).
//!
//! The shipped file is loaded as it is; only its providers' transports change: each
//! becomes an OpenAI-compatible fake on 127.0.0.1 with the provider's id, cloud and
//! region, so which endpoint saw which passage can be counted. The data lives in the
//! moto S3 emulator under three prefixes labelled as the seed stores it (Azure West
//! Europe, AWS us-east-1, OCI Tokyo) by `[[bucket]]` entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::ObjectStoreExt;
use tempfile::TempDir;

use super::{SSE_ANSWER, TestServer, proto};
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;

const SHIPPED: &str = "docs/examples/residency.toml";
const QUESTION: &str = "Which warehouse ships spare turbine blades?";

/// One seed example: the rule's id, where its data is stored, a passage only it holds,
/// the provider that may answer it, and a region outside its inference regions.
struct Example {
    rule: &'static str,
    cloud: &'static str,
    region: &'static str,
    passage: &'static str,
    answered_by: &'static str,
    reason: &'static str,
    elsewhere: &'static str,
}

const EU: Example = Example {
    rule: "eu",
    cloud: "azure",
    region: "westeurope",
    passage: "The Rotterdam warehouse ships spare turbine blades on Mondays.",
    answered_by: "oci-fra",
    reason: "GDPR - data stays in EU",
    elsewhere: "us-east-1",
};

const US: Example = Example {
    rule: "us",
    cloud: "aws",
    region: "us-east-1",
    passage: "The Virginia warehouse ships spare turbine blades on Tuesdays.",
    answered_by: "bedrock-us",
    reason: "Low latency colocation",
    elsewhere: "eu-frankfurt-1",
};

const APAC: Example = Example {
    rule: "apac",
    cloud: "oci",
    region: "ap-tokyo-1",
    passage: "The Tokyo warehouse ships spare turbine blades on Wednesdays.",
    answered_by: "oci-osaka",
    reason: "Japanese data residency laws",
    elsewhere: "us-east-1",
};

const EXAMPLES: [&Example; 3] = [&EU, &US, &APAC];

/// The moto endpoint and bucket, or `None` (with a message) outside the test script;
/// under it (and under CI) a missing emulator fails the test.
fn moto() -> Option<(String, String)> {
    let bucket = std::env::var("SKYFUSE_TEST_BUCKET").unwrap_or_else(|_| "skyfuse-test".into());
    if let Ok(endpoint) = std::env::var("SKYFUSE_TEST_S3_ENDPOINT")
        && !endpoint.is_empty()
    {
        return Some((endpoint, bucket));
    }
    let required = std::env::var("SKYFUSE_REQUIRE_EMULATORS").is_ok_and(|value| value == "1")
        || std::env::var("CI").is_ok_and(|value| value == "true");
    assert!(
        !required,
        "SKYFUSE_TEST_S3_ENDPOINT is not set: run ./scripts/test.sh, which starts moto"
    );
    eprintln!("SKIPPED: SKYFUSE_TEST_S3_ENDPOINT is not set; ./scripts/test.sh starts moto");
    None
}

/// An OpenAI-compatible chat endpoint that keeps every request body it gets.
async fn recording_model() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |body: String| {
            kept.lock().unwrap().push(body);
            async move {
                let body = SSE_ANSWER.split_once("\r\n\r\n").unwrap().1;
                ([("content-type", "text/event-stream")], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// The server with the shipped example, its data in moto, and a fake per provider.
struct Setup {
    server: TestServer,
    /// Request bodies each provider received, by provider id.
    calls: HashMap<String, Arc<Mutex<Vec<String>>>>,
    /// The shipped rules, as the server read them.
    config: skyfuse::config::Config,
    _data: TempDir,
}

impl Setup {
    async fn start() -> Option<Self> {
        let (endpoint, bucket) = moto()?;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED);
        let mut shipped: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let config = skyfuse::config::Config::load(&path).unwrap();

        // The same providers (id, cloud, region), reached on loopback.
        let mut calls = HashMap::new();
        let mut providers = Vec::new();
        for provider in shipped["provider"].as_array().unwrap() {
            let id = provider["id"].as_str().unwrap().to_owned();
            let cloud = match provider["kind"].as_str().unwrap() {
                "bedrock" => "aws",
                other => other,
            };
            let (url, seen) = recording_model().await;
            calls.insert(id.clone(), seen);
            let mut fake = toml::Table::new();
            fake.insert("id".into(), id.into());
            fake.insert("kind".into(), "openai_compat".into());
            fake.insert("base_url".into(), url.into());
            fake.insert("cloud".into(), cloud.into());
            fake.insert("region".into(), provider["region"].clone());
            providers.push(toml::Value::Table(fake));
        }
        shipped.insert("provider".into(), providers.into());

        // The seed's stores: one prefix per example, labelled where the seed keeps it.
        let prefix = format!(
            "residency-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_bucket_name(&bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_allow_http(true)
            .build()
            .unwrap();
        let mut buckets = Vec::new();
        for example in EXAMPLES {
            let key = format!("{prefix}/{}/warehouse.md", example.rule);
            store
                .put(
                    &object_store::path::Path::parse(&key).unwrap(),
                    example.passage.as_bytes().to_vec().into(),
                )
                .await
                .unwrap();
            let entry: toml::Table = format!(
                r#"
                url = "s3://{bucket}/{prefix}/{rule}"
                endpoint = "{endpoint}"
                allow_http = true
                cloud = "{cloud}"
                region = "{region}"
                access_key_id = "env:RESIDENCY_TEST_KEY_ID"
                secret_access_key = "env:RESIDENCY_TEST_SECRET"
                "#,
                rule = example.rule,
                cloud = example.cloud,
                region = example.region,
            )
            .parse()
            .unwrap();
            buckets.push(toml::Value::Table(entry));
        }
        shipped.insert("bucket".into(), buckets.into());

        let env = HashMap::from([
            ("RESIDENCY_TEST_KEY_ID".to_owned(), "test".to_owned()),
            ("RESIDENCY_TEST_SECRET".to_owned(), "test".to_owned()),
        ]);
        let data = TempDir::new().unwrap();
        let server =
            TestServer::start_with_env(data.path(), &toml::to_string(&shipped).unwrap(), &env)
                .await;
        for example in EXAMPLES {
            let mut stream = IngestionServiceClient::new(server.channel.clone())
                .index(proto::IndexRequest {
                    url: format!("s3://{bucket}/{prefix}/{}", example.rule),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut last = None;
            while let Some(event) = stream.message().await.unwrap() {
                last = Some(event);
            }
            let last = last.unwrap();
            assert_eq!((last.indexed, last.failed), (1, 0), "{last:?}");
        }
        Some(Self {
            server,
            calls,
            config,
            _data: data,
        })
    }

    /// Each provider's calls so far, and forgets them.
    fn take_calls(&self) -> HashMap<String, Vec<String>> {
        self.calls
            .iter()
            .map(|(id, seen)| (id.clone(), std::mem::take(&mut *seen.lock().unwrap())))
            .collect()
    }

    /// The shipped rule of `example`.
    fn rule(&self, example: &Example) -> &skyfuse::config::ResidencyRule {
        self.config
            .residency
            .iter()
            .find(|rule| rule.id == example.rule)
            .unwrap()
    }

    /// An answer from this example's data only (a filter on its region).
    async fn answer(&self, example: &Example, allowed_regions: &[&str]) -> proto::AnswerDone {
        let events = self
            .server
            .answer(proto::AnswerRequest {
                question: QUESTION.into(),
                top_k: 5,
                allowed_regions: allowed_regions.iter().map(|r| r.to_string()).collect(),
                filter: Some(super::condition(
                    "region",
                    proto::field_condition::Test::Eq(example.region.into()),
                )),
                ..Default::default()
            })
            .await;
        match events.last() {
            Some(proto::answer_event::Event::Done(done)) => done.clone(),
            other => panic!("{}: the stream ends with done: {other:?}", example.rule),
        }
    }
}

/// Over gRPC `Answer`: the example's passage reaches only the provider in its inference
/// regions; when the caller allows only a region outside them, the passage is withheld,
/// naming the rule and its reason, and the model that answers never sees it.
async fn answer_keeps_the_example_s_data_at_home(setup: &Setup, example: &Example) {
    let name = example.rule;
    // The shipped rule covers where the seed stores this data.
    let rule = setup.rule(example);
    assert!(
        rule.data.clouds.iter().any(|cloud| cloud == example.cloud)
            && rule
                .data
                .regions
                .iter()
                .any(|glob| glob.matches(example.region))
            && rule.reason == example.reason,
        "{name}: {rule:?}"
    );
    let done = setup.answer(example, &[]).await;
    assert_eq!(done.citations.len(), 1, "{name}: {done:?}");
    assert_eq!(done.citations[0].text, example.passage, "{name}");
    assert!(done.withheld.is_empty(), "{name}: {done:?}");
    let route = done.route.as_ref().unwrap();
    assert_eq!(route.provider, example.answered_by, "{name}: {route:?}");
    assert!(
        done.residency_regions.iter().all(|region| {
            rule.inference_regions
                .iter()
                .any(|glob| glob.matches(region))
        }),
        "{name}: {:?} outside {:?}",
        done.residency_regions,
        rule.inference_regions
    );
    let calls = setup.take_calls();
    for (provider, bodies) in &calls {
        let saw = bodies.iter().any(|body| body.contains(example.passage));
        assert_eq!(
            (bodies.len(), saw),
            if *provider == example.answered_by {
                (1, true)
            } else {
                (0, false)
            },
            "{name}: {provider}"
        );
    }

    // Only a region outside the rule's inference regions: the passage stays out.
    let done = setup.answer(example, &[example.elsewhere]).await;
    assert!(done.citations.is_empty(), "{name}: {done:?}");
    assert_eq!(done.withheld.len(), 1, "{name}: {done:?}");
    let withheld = &done.withheld[0];
    assert_eq!(
        (withheld.cloud.as_str(), withheld.region.as_str()),
        (example.cloud, example.region)
    );
    let names = format!("residency {:?} ({})", example.rule, example.reason);
    assert!(
        withheld.reason.contains(&names) && withheld.reason.contains(example.elsewhere),
        "{name}: {}",
        withheld.reason
    );
    let calls = setup.take_calls();
    let bodies: Vec<&String> = calls.values().flatten().collect();
    assert_eq!(bodies.len(), 1, "{name}: answered without the passage");
    assert!(!bodies[0].contains(example.passage), "{name}");
}

/// `POST /v1/chat/completions` with `retrieval` over this example's data, the prompt
/// allowed only in `allowed_regions` (the `x-skyfuse-allowed-regions` header) if any.
async fn chat_with_retrieval(
    setup: &Setup,
    example: &Example,
    allowed_regions: Option<&str>,
) -> serde_json::Value {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", setup.server.facade))
        .json(&serde_json::json!({
            "messages": [{"role": "user", "content": QUESTION}],
            "retrieval": {
                "top_k": 5,
                "filter": {"condition": {"field": "region", "eq": example.region}},
            },
        }));
    if let Some(regions) = allowed_regions {
        request = request.header("x-skyfuse-allowed-regions", regions);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{}: {body}", example.rule);
    body
}

/// Over the facade's chat completions with `retrieval`: as over gRPC `Answer`.
async fn facade_answer_keeps_the_example_s_data_at_home(setup: &Setup, example: &Example) {
    let name = example.rule;
    let body = chat_with_retrieval(setup, example, None).await;
    let skyfuse = &body["skyfuse"];
    assert_eq!(skyfuse["provider"], example.answered_by, "{name}: {body}");
    assert_eq!(skyfuse["citations"][0]["text"], example.passage, "{name}");
    assert_eq!(skyfuse["withheld"], serde_json::json!([]), "{name}");
    let calls = setup.take_calls();
    for (provider, bodies) in &calls {
        let expected = usize::from(*provider == example.answered_by);
        assert_eq!(bodies.len(), expected, "{name}: {provider}");
        assert!(
            bodies.iter().all(|body| body.contains(example.passage)),
            "{name}: {provider}"
        );
    }

    let body = chat_with_retrieval(setup, example, Some(example.elsewhere)).await;
    let withheld = body["skyfuse"]["withheld"].as_array().unwrap();
    assert_eq!(withheld.len(), 1, "{name}: {body}");
    let reason = withheld[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "residency {:?} ({})",
            example.rule, example.reason
        )) && reason.contains(example.elsewhere),
        "{name}: {reason}"
    );
    assert_eq!(
        body["skyfuse"]["citations"],
        serde_json::json!([]),
        "{name}"
    );
    let calls = setup.take_calls();
    let bodies: Vec<&String> = calls.values().flatten().collect();
    assert_eq!(bodies.len(), 1, "{name}: answered without the passage");
    assert!(!bodies[0].contains(example.passage), "{name}");
}

/// Over gRPC `Search` and the facade's `POST /v1/search`: a search whose results go to
/// the rule's inference regions (its `regions`) gets that example's data and no other's,
/// and the outcome says how many hits residency left out.
async fn search_keeps_the_example_s_data_at_home(setup: &Setup, example: &Example) {
    let name = example.rule;
    let regions = setup.rule(example).inference_regions.clone();
    let regions: Vec<String> = regions
        .iter()
        .map(|glob| glob.as_str().to_owned())
        .collect();
    let grpc = setup
        .server
        .search()
        .search(proto::SearchRequest {
            query: QUESTION.into(),
            top_k: 10,
            include_text: true,
            regions: regions.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let places: Vec<(&str, &str, &str)> = grpc
        .hits
        .iter()
        .map(|hit| (hit.cloud.as_str(), hit.region.as_str(), hit.text.as_str()))
        .collect();
    assert_eq!(
        places,
        [(example.cloud, example.region, example.passage)],
        "{name}"
    );
    assert!(
        grpc.sources
            .iter()
            .any(|outcome| outcome.message.contains("2 hit(s) left out (residency)")),
        "{name}: {:?}",
        grpc.sources
    );

    let (status, json) = setup
        .server
        .post_json(
            "/v1/search",
            serde_json::json!({"query": QUESTION, "top_k": 10, "regions": regions}),
        )
        .await;
    assert_eq!(status, 200, "{name}: {json}");
    let hits = json["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{name}: {json}");
    assert_eq!(hits[0]["doc_id"], grpc.hits[0].doc_id.as_str());
    assert_eq!(
        (hits[0]["cloud"].as_str(), hits[0]["region"].as_str()),
        (Some(example.cloud), Some(example.region))
    );
    assert!(
        json["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|outcome| outcome["message"]
                .as_str()
                .is_some_and(|message| message.contains("left out (residency)"))),
        "{name}: {json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eu_example_keeps_eu_data_on_eu_endpoints_over_grpc_and_the_facade() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    answer_keeps_the_example_s_data_at_home(&setup, &EU).await;
    facade_answer_keeps_the_example_s_data_at_home(&setup, &EU).await;
    search_keeps_the_example_s_data_at_home(&setup, &EU).await;
    setup.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_us_example_keeps_us_data_on_us_endpoints_over_grpc_and_the_facade() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    answer_keeps_the_example_s_data_at_home(&setup, &US).await;
    facade_answer_keeps_the_example_s_data_at_home(&setup, &US).await;
    search_keeps_the_example_s_data_at_home(&setup, &US).await;
    setup.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apac_example_keeps_apac_data_on_apac_endpoints_over_grpc_and_the_facade() {
    let Some(setup) = Setup::start().await else {
        return;
    };
    answer_keeps_the_example_s_data_at_home(&setup, &APAC).await;
    facade_answer_keeps_the_example_s_data_at_home(&setup, &APAC).await;
    search_keeps_the_example_s_data_at_home(&setup, &APAC).await;
    setup.server.stop().await;
}
