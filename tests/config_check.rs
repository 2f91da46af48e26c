//! `skyfuse config check` as an operator runs it: the binary, a config file, the exit
//! status and what it prints.

use std::process::{Command, Output};

fn config_check(config: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skyfuse"))
        .args(["config", "check", "--config"])
        .arg(config)
        .env_remove("SKYFUSE_CONFIG")
        .output()
        .expect("skyfuse runs")
}

#[test]
fn a_deployable_config_passes_and_its_summary_names_what_it_serves() {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/terraform/examples/rendered-skyfuse.toml");
    let output = config_check(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("rendered-skyfuse.toml: ok"), "{stdout}");
    assert!(
        stdout.contains("gRPC 0.0.0.0:50051, facade 0.0.0.0:8080, metrics 0.0.0.0:9464"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "models:      claude-3.5-sonnet, command-r-plus, gemini-2.5-flash, gpt-4o, llama-3-70b"
        ),
        "{stdout}"
    );
}

#[test]
fn a_bad_config_fails_with_the_key_named_and_a_non_zero_exit() {
    let folder = tempfile::tempdir().expect("temp dir");
    let config = folder.path().join("skyfuse.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"0.0.0.0:50051\"\n\n[telemetry]\nmetrics_port = 9464\n",
    )
    .expect("config written");
    let output = config_check(&config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("metrics_port"), "{stderr}");
    assert!(output.stdout.is_empty());

    // Valid keys, but an anonymous server on every interface is refused, as `serve` would.
    std::fs::write(&config, "[server]\nlisten = \"0.0.0.0:50051\"\n").expect("config written");
    let output = config_check(&config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("allow_anonymous"),
        "{stderr}"
    );
}
