//! `UpsertDocuments` and `DeleteDocuments`: proto <-> domain, shared by gRPC and the
//! facade's `/v1/documents` routes.

use super::{convert, proto};
use crate::error::{Error, Result};
use crate::ingest::{DeleteReport, NewDocument, UpsertReport};
use crate::service::DeleteSelection;

pub fn new_document(document: proto::Document) -> NewDocument {
    NewDocument {
        id: document.id,
        title: document.title,
        text: document.text,
        metadata: document.metadata.into_iter().collect(),
    }
}

pub fn upsert_response(report: &UpsertReport) -> proto::UpsertDocumentsResponse {
    proto::UpsertDocumentsResponse {
        written: report.written,
        unchanged: report.unchanged,
        chunks: report.chunks_written,
    }
}

/// The one selection a delete must set.
pub fn delete_selection(
    selection: Option<proto::delete_documents_request::Selection>,
) -> Result<DeleteSelection> {
    use proto::delete_documents_request::Selection;
    match selection {
        None => Err(Error::invalid(
            "set one of ids, object_key_prefix or filter to say which documents to delete",
        )),
        Some(Selection::Ids(ids)) => Ok(DeleteSelection::Ids(ids.ids)),
        Some(Selection::ObjectKeyPrefix(prefix)) => Ok(DeleteSelection::ObjectKeyPrefix(prefix)),
        Some(Selection::Filter(filter)) => {
            Ok(DeleteSelection::Filter(convert::filter_request(&filter)?))
        }
    }
}

pub fn delete_response(report: &DeleteReport) -> proto::DeleteDocumentsResponse {
    proto::DeleteDocumentsResponse {
        documents: report.documents,
        chunks: report.chunks,
    }
}
