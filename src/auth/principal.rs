//! An authenticated caller: who (its id, for budgets, rate limits and logs) and
//! what it may do.

use std::sync::Arc;

use super::Permissions;

/// Who is calling and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    id: String,
    permissions: Arc<Permissions>,
}

impl Principal {
    /// A principal `id` with `permissions`.
    pub fn new(id: impl Into<String>, permissions: Permissions) -> Self {
        Self {
            id: id.into(),
            permissions: Arc::new(permissions),
        }
    }

    /// The caller of a server without identities: every permission.
    pub fn anonymous() -> Self {
        Self::new("anonymous", Permissions::all())
    }

    /// The operator on the CLI's in-process transport: every permission.
    pub fn operator() -> Self {
        Self::new("operator", Permissions::all())
    }

    /// A stable id: a caller id, `<issuer id>:<subject>`, or a client_cert id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What it may do.
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }
}
