//! A real llama.cpp server on loopback for the tests that answer through a real
//! model: `SKYFUSE_LLAMA_SERVER` (or `llama-server` on PATH) with the GGUF model in
//! `SKYFUSE_LLAMA_MODEL`; scripts/test.sh installs both (Gemma 3 270M, a base model,
//! prompted through tests/fixtures/question-answer.jinja). Skipped when they are
//! missing, unless `CI` or `SKYFUSE_REQUIRE_TOOLS` says they must be there.

use std::path::PathBuf;

pub struct LlamaServer {
    /// `http://127.0.0.1:PORT`, the OpenAI-compatible base URL.
    pub url: String,
    _process: tokio::process::Child,
}

fn binary() -> Option<String> {
    std::env::var("SKYFUSE_LLAMA_SERVER").ok().or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("llama-server"))
                .find(|path| path.is_file())
                .map(|path| path.display().to_string())
        })
    })
}

/// Starts llama-server on a free loopback port and waits until it is healthy (a
/// readiness wait, not a timing assertion), or None when it is not installed here.
pub async fn start() -> Option<LlamaServer> {
    let (Some(binary), Ok(model)) = (binary(), std::env::var("SKYFUSE_LLAMA_MODEL")) else {
        let required = ["CI", "SKYFUSE_REQUIRE_TOOLS"]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0"));
        assert!(
            !required,
            "llama-server and its model are required here (CI or SKYFUSE_REQUIRE_TOOLS is set) \
             but SKYFUSE_LLAMA_SERVER / SKYFUSE_LLAMA_MODEL are not set: scripts/test.sh installs them"
        );
        eprintln!(
            "SKIPPED: set SKYFUSE_LLAMA_MODEL (and SKYFUSE_LLAMA_SERVER or put llama-server on PATH)"
        );
        return None;
    };
    let template =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/question-answer.jinja");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let process = tokio::process::Command::new(binary)
        .args([
            "-m",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["-c", "2048", "--jinja", "--chat-template-file"])
        .arg(&template)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..1200 {
        if let Ok(response) = http.get(format!("{url}/health")).send().await
            && response.status().is_success()
        {
            return Some(LlamaServer {
                url,
                _process: process,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("llama-server did not become healthy in 120 s");
}
