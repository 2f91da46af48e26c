//! Documents over the API: upsert and delete single documents of an index without a
//! bucket. How they live beside bucket objects (keys `api/<index>/<id>`, their own
//! manifest) is in [`crate::ingest::pipeline::documents`].

use std::collections::{BTreeMap, HashMap};

use super::Service;
use crate::auth::Principal;
use crate::config::{IndexConfig, RecordIdScope};
use crate::error::{Error, Result};
use crate::ingest::pipeline::documents::{
    bucket_held_document_ids, documents_manifest_path, key_prefix_of,
};
use crate::ingest::{
    DeleteReport, DocumentSelection, NewDocument, UpsertReport, delete_documents, upsert_documents,
};
use crate::stores::filter::{FilterRequest, valid_metadata_name};

/// Most documents one upsert may carry.
pub const MAX_DOCUMENTS_PER_CALL: usize = 100;
/// Longest text of one document, in bytes.
pub const MAX_DOCUMENT_TEXT_BYTES: usize = 1024 * 1024;
/// Most text (titles and texts) one upsert may carry, in bytes, whatever the message
/// limit: bounds the embedding work of one call.
pub const MAX_UPSERT_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// Longest document id, in bytes.
pub const MAX_DOCUMENT_ID_BYTES: usize = 256;
/// Longest title, in bytes.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Most metadata entries per document, and the longest value: as for a JSON record.
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_VALUE_BYTES: usize = 256;
/// Most ids one delete may name.
pub const MAX_DELETE_IDS: usize = 1000;

/// A delete as a caller states it, before the filter is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteSelection {
    Ids(Vec<String>),
    /// Over object keys (`api/<index>/<id>`).
    ObjectKeyPrefix(String),
    Filter(FilterRequest),
}

impl Service {
    /// Adds or replaces `documents` in the index `index_id` (empty: the default index),
    /// chunked and embedded as a bucket object of that index would be. Returns once
    /// every store committed them and the manifest recorded them.
    /// `namespace` (empty: the index's, else the caller's only one, else none) is the
    /// tenant the documents belong to: its own ids, and only its searches see them.
    pub async fn upsert_documents(
        &self,
        principal: &Principal,
        index_id: &str,
        namespace: &str,
        documents: Vec<NewDocument>,
    ) -> Result<UpsertReport> {
        self.admit_call(principal).await?;
        let index = self.documents_index_for(principal, index_id)?;
        let namespace = principal
            .permissions()
            .write_namespace(namespace, index.namespace.as_deref())?;
        check_documents(&documents, index)?;
        let _writing = self.document_lock(index)?.lock().await;
        let folder = self.manifest_folder(index);
        let held_by_buckets = if index.record_ids == RecordIdScope::Global {
            let folder = folder.clone();
            tokio::task::spawn_blocking(move || bucket_held_document_ids(&folder))
                .await
                .map_err(|error| Error::internal(format!("reading the manifests: {error}")))??
        } else {
            // Other record ids are qualified by their bucket: none is under `api/`.
            HashMap::new()
        };
        let key_prefix = key_prefix_of(&index.id, namespace.as_deref());
        let mut job = self.index_job(
            index,
            key_prefix.clone(),
            documents_manifest_path(&folder, namespace.as_deref()),
        );
        job.namespace = namespace.clone();
        let report = upsert_documents(&job, &key_prefix, documents, &held_by_buckets).await;
        let outcome = if report.is_ok() { "ok" } else { "error" };
        self.metrics.record_request("upsert_documents", outcome);
        let report = report?;
        tracing::info!(
            index = %index.id,
            namespace = namespace.as_deref().unwrap_or_default(),
            principal = principal.id(),
            written = report.written,
            unchanged = report.unchanged,
            chunks = report.chunks_written,
            "documents upserted"
        );
        Ok(report)
    }

    /// Deletes the API documents of `index_id` that `selection` picks, from every store
    /// of the index, and says how many documents and chunks went. Bucket objects are not
    /// touched: they go when they leave their bucket and it is synced. Only documents of
    /// the one namespace chosen as for an upsert are reached.
    pub async fn delete_documents(
        &self,
        principal: &Principal,
        index_id: &str,
        namespace: &str,
        selection: DeleteSelection,
    ) -> Result<DeleteReport> {
        self.admit_call(principal).await?;
        let index = self.documents_index_for(principal, index_id)?;
        let namespace = principal
            .permissions()
            .write_namespace(namespace, index.namespace.as_deref())?;
        let key_prefix = key_prefix_of(&index.id, namespace.as_deref());
        let selection = check_selection(selection, index, &key_prefix)?;
        let _writing = self.document_lock(index)?.lock().await;
        let mut job = self.index_job(
            index,
            key_prefix.clone(),
            documents_manifest_path(&self.manifest_folder(index), namespace.as_deref()),
        );
        job.namespace = namespace;
        let report = delete_documents(&job, &key_prefix, &selection).await;
        let outcome = if report.is_ok() { "ok" } else { "error" };
        self.metrics.record_request("delete_documents", outcome);
        let report = report?;
        tracing::info!(
            index = %index.id,
            principal = principal.id(),
            documents = report.documents,
            chunks = report.chunks,
            "documents deleted"
        );
        Ok(report)
    }

    /// Built with the service for every configured index; an error, not a panic, if not.
    fn document_lock(&self, index: &IndexConfig) -> Result<&tokio::sync::Mutex<()>> {
        self.document_locks
            .get(&index.id)
            .ok_or_else(|| Error::internal(format!("index {:?} has no documents lock", index.id)))
    }

    /// The index a documents call names, refused unless the principal may write its
    /// documents. As for `Index`, a restricted principal gets the same refusal for an
    /// unknown index as for a forbidden one; an unrestricted one gets NOT_FOUND.
    fn documents_index_for(&self, principal: &Principal, index_id: &str) -> Result<&IndexConfig> {
        let permissions = principal.permissions();
        if permissions.is_all() {
            return self.index_config(index_id);
        }
        let forbidden = || Error::forbidden("permission denied: write documents of the index");
        let index = self.index_config(index_id).map_err(|_| forbidden())?;
        if !permissions.may_write_documents(&index.id) {
            return Err(forbidden());
        }
        Ok(index)
    }
}

/// Limits and shapes an upsert must keep, each refusal naming the document.
fn check_documents(documents: &[NewDocument], index: &IndexConfig) -> Result<()> {
    if documents.is_empty() || documents.len() > MAX_DOCUMENTS_PER_CALL {
        return Err(Error::invalid(format!(
            "documents: send 1 to {MAX_DOCUMENTS_PER_CALL} documents per call, got {}",
            documents.len()
        )));
    }
    let mut total_bytes = 0usize;
    for (position, document) in documents.iter().enumerate() {
        let name = format!("documents[{position}]");
        check_id(&document.id).map_err(|error| error.context(&name))?;
        if document.text.trim().is_empty() {
            return Err(Error::invalid(format!("{name}: text is empty")));
        }
        if document.text.len() > MAX_DOCUMENT_TEXT_BYTES {
            return Err(Error::invalid(format!(
                "{name}: text is {} bytes, more than the {MAX_DOCUMENT_TEXT_BYTES} a document may have",
                document.text.len()
            )));
        }
        if document.title.len() > MAX_TITLE_BYTES {
            return Err(Error::invalid(format!(
                "{name}: title is longer than {MAX_TITLE_BYTES} bytes"
            )));
        }
        check_metadata(&document.metadata, index).map_err(|error| error.context(&name))?;
        total_bytes += document.text.len() + document.title.len();
    }
    if total_bytes > MAX_UPSERT_TEXT_BYTES {
        return Err(Error::invalid(format!(
            "documents: {total_bytes} bytes of text in one call, more than {MAX_UPSERT_TEXT_BYTES}; \
             send fewer documents per call"
        )));
    }
    Ok(())
}

/// An id is printable text of bounded length: it becomes an object key and chunk ids.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("id is empty"));
    }
    if id.len() > MAX_DOCUMENT_ID_BYTES {
        return Err(Error::invalid(format!(
            "id is longer than {MAX_DOCUMENT_ID_BYTES} bytes"
        )));
    }
    if id.chars().any(char::is_control) || id.trim() != id {
        return Err(Error::invalid(format!(
            "id {id:?} has control characters or surrounding whitespace"
        )));
    }
    Ok(())
}

/// Only the fields the index keeps for filters: another name would be stored nowhere a
/// filter could reach, so it is refused rather than dropped.
fn check_metadata(metadata: &BTreeMap<String, String>, index: &IndexConfig) -> Result<()> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::invalid(format!(
            "metadata has more than {MAX_METADATA_ENTRIES} entries"
        )));
    }
    for (name, value) in metadata {
        if !valid_metadata_name(name) || !index.metadata_fields.contains(name) {
            return Err(Error::invalid(format!(
                "metadata {name:?} is not a field index {:?} keeps; its metadata_fields are: {}",
                index.id,
                if index.metadata_fields.is_empty() {
                    "none".to_owned()
                } else {
                    index.metadata_fields.join(", ")
                }
            )));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(Error::invalid(format!(
                "metadata {name:?} is longer than {MAX_METADATA_VALUE_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// `own_prefix`: the key prefix of the API documents of the index and namespace.
fn check_selection(
    selection: DeleteSelection,
    index: &IndexConfig,
    own_prefix: &str,
) -> Result<DocumentSelection> {
    match selection {
        DeleteSelection::Ids(ids) => {
            if ids.is_empty() || ids.len() > MAX_DELETE_IDS {
                return Err(Error::invalid(format!(
                    "ids: name 1 to {MAX_DELETE_IDS} ids per call, got {}",
                    ids.len()
                )));
            }
            for (position, id) in ids.iter().enumerate() {
                check_id(id).map_err(|error| error.context(format!("ids[{position}]")))?;
            }
            Ok(DocumentSelection::Ids(ids))
        }
        DeleteSelection::ObjectKeyPrefix(prefix) => {
            if !prefix.starts_with(own_prefix) {
                return Err(Error::invalid(format!(
                    "object_key_prefix must start with {own_prefix:?}: only documents \
                     sent over the API to this index are deleted here; bucket objects go \
                     when they leave their bucket and it is indexed again"
                )));
            }
            Ok(DocumentSelection::ObjectKeyPrefix(prefix))
        }
        DeleteSelection::Filter(filter) => {
            if names_source(&filter) {
                return Err(Error::invalid(
                    "filter: a delete cannot test `source`; it deletes from every store of the index",
                ));
            }
            let filter = filter.check(&index.metadata_fields)?;
            Ok(DocumentSelection::Filter(filter))
        }
    }
}

fn names_source(filter: &FilterRequest) -> bool {
    match filter {
        FilterRequest::And(children) | FilterRequest::Or(children) => {
            children.iter().any(names_source)
        }
        FilterRequest::Not(inner) => names_source(inner),
        FilterRequest::Eq { field, .. }
        | FilterRequest::In { field, .. }
        | FilterRequest::Prefix { field, .. }
        | FilterRequest::Range { field, .. } => field == "source",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> IndexConfig {
        toml::from_str("id = \"docs\"\nsources = [\"s\"]\nmetadata_fields = [\"topic\"]").unwrap()
    }

    fn document(id: &str, text: &str) -> NewDocument {
        NewDocument {
            id: id.into(),
            text: text.into(),
            ..NewDocument::default()
        }
    }

    #[test]
    fn upserts_are_bounded_and_each_refusal_names_the_document() {
        let index = index();
        assert!(check_documents(&[document("a", "text")], &index).is_ok());
        let error = check_documents(&[], &index).unwrap_err();
        assert!(error.message.contains("1 to 100"), "{error}");
        let too_many = vec![document("a", "t"); MAX_DOCUMENTS_PER_CALL + 1];
        assert!(check_documents(&too_many, &index).is_err());
        let long = "word ".repeat(MAX_DOCUMENT_TEXT_BYTES / 5 + 1);
        let error =
            check_documents(&[document("a", "t"), document("b", &long)], &index).unwrap_err();
        assert!(
            error.message.starts_with("documents[1]: text is"),
            "{error}"
        );
        for id in ["", " padded", "line\nbreak"] {
            assert!(
                check_documents(&[document(id, "t")], &index).is_err(),
                "{id:?}"
            );
        }
        let mut tagged = document("a", "t");
        tagged.metadata.insert("topic".into(), "x".into());
        assert!(check_documents(std::slice::from_ref(&tagged), &index).is_ok());
        tagged.metadata.insert("team".into(), "x".into());
        let error = check_documents(&[tagged], &index).unwrap_err();
        assert!(
            error.message.contains("metadata_fields are: topic"),
            "{error}"
        );
    }

    #[test]
    fn deletes_reach_only_api_documents_and_never_test_the_source() {
        let index = index();
        assert!(
            check_selection(
                DeleteSelection::ObjectKeyPrefix("api/docs/team-".into()),
                &index,
                "api/docs/"
            )
            .is_ok()
        );
        let error = check_selection(
            DeleteSelection::ObjectKeyPrefix("s3://b/".into()),
            &index,
            "api/docs/",
        )
        .unwrap_err();
        assert!(
            error.message.contains("must start with \"api/docs/\""),
            "{error}"
        );
        let by_source = FilterRequest::Not(Box::new(FilterRequest::Eq {
            field: "source".into(),
            value: "x".into(),
        }));
        assert!(check_selection(DeleteSelection::Filter(by_source), &index, "api/docs/").is_err());
        assert!(check_selection(DeleteSelection::Ids(Vec::new()), &index, "api/docs/").is_err());
    }
}
