//! Every region a chat deployment may process a prompt in. Most serve from their one
//! configured region; a multi-region endpoint (a Bedrock cross-region inference
//! profile, a Vertex `global` endpoint, an Azure global or data-zone deployment) may
//! route a request to any of several, and residency must count them all.

/// Where a Bedrock cross-region inference profile may send a request, by the prefix
/// of its id (`eu.anthropic.claude-3-5-sonnet...`), after AWS's published profile
/// geographies. `global.` may use any commercial region.
const BEDROCK_PROFILES: [(&str, &[&str]); 8] = [
    ("us.", &["us-east-1", "us-east-2", "us-west-1", "us-west-2"]),
    ("us-gov.", &["us-gov-east-1", "us-gov-west-1"]),
    (
        "eu.",
        &[
            "eu-central-1",
            "eu-central-2",
            "eu-north-1",
            "eu-south-1",
            "eu-south-2",
            "eu-west-1",
            "eu-west-3",
        ],
    ),
    (
        "apac.",
        &[
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-northeast-3",
            "ap-south-1",
            "ap-south-2",
            "ap-southeast-1",
            "ap-southeast-2",
            "ap-southeast-4",
        ],
    ),
    ("jp.", &["ap-northeast-1", "ap-northeast-3"]),
    ("au.", &["ap-southeast-2", "ap-southeast-4"]),
    ("ca.", &["ca-central-1", "ca-west-1"]),
    ("global.", &[GLOBAL]),
];

/// The region name of an endpoint that may run anywhere: only data whose rule allows
/// a glob matching `global` (such as `*`) may reach it.
pub const GLOBAL: &str = "global";

/// The regions a deployment of `cloud` in `region`, known to its endpoint as
/// `wire_id`, may use: `configured` when the deployment lists them, else what its id
/// or region says, else its one region.
pub fn regions_used(
    cloud: &str,
    region: &str,
    wire_id: &str,
    configured: &[String],
) -> Vec<String> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    if cloud == "aws"
        && let Some((_, regions)) = BEDROCK_PROFILES
            .iter()
            .find(|(prefix, _)| wire_id.starts_with(prefix))
    {
        return regions.iter().map(|region| region.to_string()).collect();
    }
    vec![region.to_string()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_profiles_and_global_endpoints_count_as_every_region_they_may_use() {
        let eu = regions_used(
            "aws",
            "eu-central-1",
            "eu.anthropic.claude-3-5-sonnet-20240620-v1:0",
            &[],
        );
        assert!(eu.contains(&"eu-west-3".to_string()) && !eu.iter().any(|r| r.starts_with("us")));
        assert_eq!(
            regions_used("aws", "us-east-1", "global.anthropic.claude-sonnet-4", &[]),
            [GLOBAL]
        );
        assert_eq!(
            regions_used("aws", "us-east-1", "anthropic.claude-3-5-sonnet", &[]),
            ["us-east-1"],
            "a plain model id stays in its region"
        );
        assert_eq!(
            regions_used("gcp", "global", "gemini-2.0-flash", &[]),
            [GLOBAL]
        );
        let configured = vec!["eastus".to_string(), "westeurope".to_string()];
        assert_eq!(
            regions_used("azure", "eastus", "gpt-4o-global", &configured),
            configured,
            "an Azure global deployment is declared"
        );
    }
}
