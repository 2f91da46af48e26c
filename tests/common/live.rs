//! The `[[provider]]` of a live cloud endpoint, from the environment variables the
//! live tests document, for the chat and embedding provider tests alike. Each
//! returns None, after printing why the test is skipped, when they are not set.

#![allow(dead_code)] // each test crate uses its own part

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// `SKYFUSE_LIVE_AZURE_OPENAI_URL` (`https://{resource}.openai.azure.com`), the key in
/// `AZURE_OPENAI_API_KEY`; `SKYFUSE_LIVE_AZURE_OPENAI_API_VERSION` picks the classic
/// path (else v1).
pub fn azure_openai() -> Option<String> {
    let Some(base_url) = var("SKYFUSE_LIVE_AZURE_OPENAI_URL") else {
        eprintln!(
            "skipped: set SKYFUSE_LIVE_AZURE_OPENAI_URL (and a deployment, AZURE_OPENAI_API_KEY) to run against Azure"
        );
        return None;
    };
    let api_version = var("SKYFUSE_LIVE_AZURE_OPENAI_API_VERSION")
        .map(|version| format!("api_version = \"{version}\"\n"))
        .unwrap_or_default();
    Some(format!(
        "[[provider]]\nid = \"azure-live\"\nkind = \"azure_openai\"\nbase_url = \"{base_url}\"\nregion = \"live\"\napi_key = \"env:AZURE_OPENAI_API_KEY\"\n{api_version}"
    ))
}

/// `SKYFUSE_LIVE_BEDROCK_REGION`, credentials from the standard `AWS_*` variables.
pub fn bedrock() -> Option<String> {
    let Some(region) = var("SKYFUSE_LIVE_BEDROCK_REGION") else {
        eprintln!(
            "skipped: set SKYFUSE_LIVE_BEDROCK_REGION (and AWS_* credentials) to run against Bedrock"
        );
        return None;
    };
    Some(format!(
        "[[provider]]\nid = \"bedrock-live\"\nkind = \"bedrock\"\nregion = \"{region}\"\n"
    ))
}

/// `SKYFUSE_LIVE_VERTEX_PROJECT` and `_REGION`, a service-account key file at
/// `GOOGLE_APPLICATION_CREDENTIALS`.
pub fn vertex() -> Option<String> {
    let (Some(project), Some(region), Some(key_path)) = (
        var("SKYFUSE_LIVE_VERTEX_PROJECT"),
        var("SKYFUSE_LIVE_VERTEX_REGION"),
        var("GOOGLE_APPLICATION_CREDENTIALS"),
    ) else {
        eprintln!(
            "skipped: set SKYFUSE_LIVE_VERTEX_PROJECT, _REGION and GOOGLE_APPLICATION_CREDENTIALS to run against Vertex"
        );
        return None;
    };
    Some(format!(
        "[[provider]]\nid = \"vertex-live\"\nkind = \"vertex\"\nproject = \"{project}\"\nregion = \"{region}\"\nservice_account_key = \"file:{key_path}\"\n"
    ))
}

/// `SKYFUSE_LIVE_OCI_REGION` and `_COMPARTMENT`, with `OCI_TENANCY`, `OCI_USER`,
/// `OCI_FINGERPRINT` and the API key PEM at `OCI_KEY_FILE`.
pub fn oci() -> Option<String> {
    let (Some(region), Some(compartment)) = (
        var("SKYFUSE_LIVE_OCI_REGION"),
        var("SKYFUSE_LIVE_OCI_COMPARTMENT"),
    ) else {
        eprintln!(
            "skipped: set SKYFUSE_LIVE_OCI_REGION and _COMPARTMENT (and OCI_* key settings) to run against OCI"
        );
        return None;
    };
    let required = |name: &str| var(name).unwrap_or_else(|| panic!("{name} is not set"));
    Some(format!(
        "[[provider]]\nid = \"oci-live\"\nkind = \"oci\"\nregion = \"{region}\"\ncompartment_id = \"{compartment}\"\ntenancy_id = \"{}\"\nuser_id = \"{}\"\nkey_fingerprint = \"{}\"\nprivate_key = \"file:{}\"\n",
        required("OCI_TENANCY"),
        required("OCI_USER"),
        required("OCI_FINGERPRINT"),
        required("OCI_KEY_FILE")
    ))
}
