//! `skyfuse config check`: a config read and validated exactly as `serve` reads it,
//! without opening a store, loading a model, resolving a secret or contacting anything
//! (secret locations are only parsed), and the summary an operator reads before
//! deploying it.

use std::fmt;
use std::path::Path;

use crate::config::{Config, SourceConfig, StoreConfig};
use crate::error::Result;

use super::Service;

/// What a valid config will serve, one line per aspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSummary {
    pub listeners: Vec<String>,
    pub identities: String,
    pub spaces: Vec<String>,
    pub sources: Vec<String>,
    pub indexes: Vec<String>,
    pub providers: Vec<String>,
    pub deployment_count: usize,
    /// Chat models with at least one deployment, sorted.
    pub routable_models: Vec<String>,
    pub tiers: Vec<String>,
}

/// Reads, parses (the included index definitions too) and validates the config file,
/// then plans its chat routes from the config alone.
pub fn check_config_file(path: &Path) -> Result<ConfigSummary> {
    summarize_config(&Config::load(path)?)
}

/// Validates a parsed config (the embedded default, say) and summarizes it.
pub fn summarize_config(config: &Config) -> Result<ConfigSummary> {
    // Validates too; builds deployments that only describe themselves (nothing is sent).
    let routable_models = Service::planning_router(config)?
        .map(|router| router.models())
        .unwrap_or_default();
    // What this build leaves out (cargo features), as `serve` would refuse it.
    crate::stores::open::check_built(&config.sources)?;
    super::build::check_local_models_built(&config.spaces)?;
    let off = |listen: &Option<String>| listen.clone().unwrap_or_else(|| "off".to_owned());
    let listeners = vec![
        format!("gRPC {}", config.server.listen),
        format!("facade {}", off(&config.facade.listen)),
        format!("metrics {}", off(&config.telemetry.metrics_listen)),
    ];
    let identities = if config.has_identities() {
        format!(
            "{} caller(s), {} issuer(s), {} client certificate(s), {} role(s)",
            config.callers.len(),
            config.issuers.len(),
            config.client_certs.len(),
            config.roles.len()
        )
    } else if config.server.allow_anonymous {
        "none: anonymous calls get every permission (server.allow_anonymous)".to_owned()
    } else {
        "none: anonymous, loopback only".to_owned()
    };
    let spaces = config
        .spaces
        .iter()
        .map(|space| {
            format!(
                "{} ({}, {}, {} dims)",
                space.id, space.provider, space.model, space.dims
            )
        })
        .collect();
    let sources = config.sources.iter().map(describe_source).collect();
    let indexes = config
        .indexes
        .iter()
        .map(|index| format!("{} ({})", index.id, index.sources.join(", ")))
        .collect();
    let providers = config
        .providers
        .iter()
        .map(|provider| {
            format!(
                "{} ({}, {}/{})",
                provider.id,
                provider.kind().as_str(),
                provider.cloud(),
                provider.region()
            )
        })
        .collect();
    Ok(ConfigSummary {
        listeners,
        identities,
        spaces,
        sources,
        indexes,
        providers,
        deployment_count: config.chat_deployments().len(),
        routable_models,
        tiers: config
            .routing
            .tiers
            .iter()
            .map(|tier| tier.name.clone())
            .collect(),
    })
}

fn describe_source(source: &SourceConfig) -> String {
    let place = format!("{}/{}", source.cloud, source.region);
    match &source.store {
        StoreConfig::Tantivy(_) | StoreConfig::Dense(_) => {
            format!("{} ({}, {place})", source.id, source.kind().as_str())
        }
        StoreConfig::Qdrant(qdrant) => format!(
            "{} (qdrant {} collection {}, {place})",
            source.id, qdrant.remote.url, qdrant.collection
        ),
        StoreConfig::Opensearch(opensearch) => format!(
            "{} (opensearch {} index {}, {place})",
            source.id, opensearch.remote.url, opensearch.index
        ),
    }
}

impl fmt::Display for ConfigSummary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &[String]| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        writeln!(formatter, "  listeners:   {}", self.listeners.join(", "))?;
        writeln!(formatter, "  identities:  {}", self.identities)?;
        writeln!(formatter, "  spaces:      {}", list(&self.spaces))?;
        writeln!(formatter, "  sources:     {}", list(&self.sources))?;
        writeln!(formatter, "  indexes:     {}", list(&self.indexes))?;
        writeln!(formatter, "  providers:   {}", list(&self.providers))?;
        writeln!(formatter, "  deployments: {}", self.deployment_count)?;
        writeln!(formatter, "  models:      {}", list(&self.routable_models))?;
        writeln!(formatter, "  tiers:       {}", list(&self.tiers))?;
        write!(
            formatter,
            "  secrets:     locations parsed, none resolved; no store opened, nothing contacted"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(folder: &Path, text: &str) -> std::path::PathBuf {
        let path = folder.join("skyfuse.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_good_config_is_summarized_without_touching_its_stores_or_secrets() {
        let folder = tempfile::tempdir().unwrap();
        // A Qdrant nobody listens on and a key variable nobody set: the check needs neither.
        let path = write_config(
            folder.path(),
            r#"
            [server]
            listen = "0.0.0.0:50051"
            [facade]
            listen = "0.0.0.0:8080"
            [[caller]]
            id = "ops"
            api_key = "env:SKYFUSE_CONFIG_CHECK_UNSET_KEY"
            [[space]]
            id = "minilm"
            provider = "local"
            model = "models/none-here"
            dims = 384
            [[source]]
            id = "remote"
            kind = "qdrant"
            space = "minilm"
            url = "http://127.0.0.1:9"
            collection = "docs"
            [[index]]
            id = "docs"
            sources = ["remote"]
            [[provider]]
            id = "llama"
            kind = "openai_compat"
            base_url = "http://127.0.0.1:9"
            [[deployment]]
            provider = "llama"
            model = "llama-3.1-8b"
            "#,
        );
        let summary = check_config_file(&path).unwrap();
        assert_eq!(
            summary.listeners,
            ["gRPC 0.0.0.0:50051", "facade 0.0.0.0:8080", "metrics off"]
        );
        assert_eq!(
            summary.sources,
            ["remote (qdrant http://127.0.0.1:9 collection docs, local/local)"]
        );
        assert_eq!(summary.routable_models, ["llama-3.1-8b"]);
        assert_eq!(summary.deployment_count, 1);
        assert!(summary.identities.starts_with("1 caller(s)"));
        let printed = summary.to_string();
        assert!(printed.contains("models:      llama-3.1-8b"), "{printed}");
        assert!(!folder.path().join("models").exists());
    }

    #[test]
    fn a_bad_config_is_refused_naming_the_key() {
        let folder = tempfile::tempdir().unwrap();
        let path = write_config(
            folder.path(),
            "[server]\nlisten = \"0.0.0.0:50051\"\n[[index]]\nid = \"docs\"\nsources = [\"nowhere\"]\n",
        );
        let message = check_config_file(&path).unwrap_err().message;
        assert!(message.contains("server.listen"), "{message}");
        assert!(message.contains("\"nowhere\""), "{message}");
        let literal_key = write_config(
            folder.path(),
            "[[provider]]\nid = \"llama\"\nkind = \"openai_compat\"\nbase_url = \"http://127.0.0.1:9\"\napi_key = \"sk-live\"\n",
        );
        let message = check_config_file(&literal_key).unwrap_err().message;
        assert!(message.contains("env:NAME"), "{message}");
    }

    /// Every config under deploy/ (compose profiles, the image's, the Terraform example's
    /// rendering) passes the check, so a change to the config schema that breaks one
    /// fails here. The Helm chart's config is a value inside values.yaml: the test pulls
    /// it out of the YAML block scalar.
    #[test]
    fn every_config_under_deploy_passes_the_check() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut configs = Vec::new();
        let mut folders = vec![root.join("deploy")];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if path
                    .extension()
                    .is_some_and(|extension| extension == "toml")
                {
                    configs.push(path);
                }
            }
        }
        configs.sort();
        assert!(configs.len() >= 7, "{configs:?}");
        for path in &configs {
            let summary = check_config_file(path)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            assert!(!summary.sources.is_empty(), "{}", path.display());
        }
        let rendered =
            check_config_file(&root.join("deploy/terraform/examples/rendered-skyfuse.toml"))
                .unwrap();
        assert_eq!(
            rendered.routable_models,
            [
                "claude-3.5-sonnet",
                "command-r-plus",
                "gemini-2.5-flash",
                "gpt-4o",
                "llama-3-70b"
            ]
        );

        let values = std::fs::read_to_string(root.join("deploy/helm/skyfuse/values.yaml")).unwrap();
        let chart_config = helm_config_value(&values);
        let folder = tempfile::tempdir().unwrap();
        let path = write_config(folder.path(), &chart_config);
        check_config_file(&path).unwrap_or_else(|error| panic!("the chart's config: {error}"));
    }

    /// The `config: |` block scalar of values.yaml, de-indented.
    fn helm_config_value(values: &str) -> String {
        let mut lines = values
            .lines()
            .skip_while(|line| *line != "config: |")
            .skip(1);
        let mut text = String::new();
        for line in lines.by_ref() {
            if !line.is_empty() && !line.starts_with("  ") {
                break;
            }
            text.push_str(line.strip_prefix("  ").unwrap_or(line));
            text.push('\n');
        }
        assert!(text.contains("[server]"), "no config block in values.yaml");
        text
    }
}
