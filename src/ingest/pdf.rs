//! PDF text through `pdf-extract` (on `lopdf`): the text of every page, in reading order as
//! far as the PDF's content streams tell it.
//!
//! An encrypted PDF is readable when its user password is empty (common for "no-copy" PDFs);
//! otherwise it is refused with its own error. `pdf-extract` panics on some malformed fonts
//! and streams, so a panic is caught and reported as a broken PDF rather than taking the
//! indexing worker down.

use pdf_extract::{Document, PlainTextOutput};

/// Why a PDF gave no text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PdfError {
    #[error("encrypted pdf: it needs a password")]
    Encrypted,
    #[error("unreadable pdf: {reason}")]
    Unreadable { reason: String },
}

/// The text of every page, pages separated by blank lines.
pub fn pdf_text(bytes: &[u8]) -> Result<String, PdfError> {
    std::panic::catch_unwind(|| text_of(bytes)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the pdf parser crashed".to_owned());
        Err(PdfError::Unreadable { reason })
    })
}

fn text_of(bytes: &[u8]) -> Result<String, PdfError> {
    let mut document = match Document::load_mem(bytes) {
        Ok(document) => document,
        // lopdf refuses some encrypted files at load time already.
        Err(_) if has_encrypt_entry(bytes) => return Err(PdfError::Encrypted),
        Err(error) => {
            return Err(PdfError::Unreadable {
                reason: error.to_string(),
            });
        }
    };
    if document.is_encrypted() && document.decrypt("").is_err() {
        return Err(PdfError::Encrypted);
    }
    let mut text = String::new();
    let mut output = PlainTextOutput::new(&mut text);
    pdf_extract::output_doc(&document, &mut output).map_err(|error| PdfError::Unreadable {
        reason: error.to_string(),
    })?;
    Ok(text)
}

/// A trailer's `/Encrypt` entry, looked for in the raw bytes when parsing failed.
fn has_encrypt_entry(bytes: &[u8]) -> bool {
    bytes
        .windows(b"/Encrypt".len())
        .any(|window| window == b"/Encrypt")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pdf_extract::{
        Dictionary, EncryptionState, EncryptionVersion, Object, Permissions, Stream,
    };

    /// A one-page PDF showing `line` in Helvetica, built with lopdf.
    pub(crate) fn pdf_with_text(line: &str) -> Document {
        let mut document = Document::with_version("1.5");
        let pages_id = document.new_object_id();
        let font_id = document.add_object(Dictionary::from_iter([
            ("Type", Object::Name(b"Font".to_vec())),
            ("Subtype", Object::Name(b"Type1".to_vec())),
            ("BaseFont", Object::Name(b"Helvetica".to_vec())),
        ]));
        let resources_id = document.add_object(Dictionary::from_iter([(
            "Font",
            Object::Dictionary(Dictionary::from_iter([("F1", Object::Reference(font_id))])),
        )]));
        let content = format!("BT /F1 12 Tf 72 712 Td ({line}) Tj ET");
        let content_id = document.add_object(Stream::new(Dictionary::new(), content.into_bytes()));
        let page_id = document.add_object(Dictionary::from_iter([
            ("Type", Object::Name(b"Page".to_vec())),
            ("Parent", Object::Reference(pages_id)),
            ("Contents", Object::Reference(content_id)),
        ]));
        document.objects.insert(
            pages_id,
            Object::Dictionary(Dictionary::from_iter([
                ("Type", Object::Name(b"Pages".to_vec())),
                ("Kids", Object::Array(vec![Object::Reference(page_id)])),
                ("Count", Object::Integer(1)),
                ("Resources", Object::Reference(resources_id)),
                (
                    "MediaBox",
                    Object::Array(vec![
                        Object::Integer(0),
                        Object::Integer(0),
                        Object::Integer(612),
                        Object::Integer(792),
                    ]),
                ),
            ])),
        );
        let catalog_id = document.add_object(Dictionary::from_iter([
            ("Type", Object::Name(b"Catalog".to_vec())),
            ("Pages", Object::Reference(pages_id)),
        ]));
        document.trailer.set("Root", catalog_id);
        document
    }

    pub(crate) fn pdf_bytes(line: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        pdf_with_text(line).save_to(&mut bytes).unwrap();
        bytes
    }

    pub(crate) fn encrypted_pdf_bytes(line: &str, user_password: &str) -> Vec<u8> {
        let mut document = pdf_with_text(line);
        document.trailer.set(
            "ID",
            Object::Array(vec![
                Object::string_literal(b"0123456789abcdef".to_vec()),
                Object::string_literal(b"0123456789abcdef".to_vec()),
            ]),
        );
        let version = EncryptionVersion::V2 {
            document: &document,
            owner_password: "owner",
            user_password,
            key_length: 128,
            permissions: Permissions::default(),
        };
        let state = EncryptionState::try_from(version).unwrap();
        document.encrypt(&state).unwrap();
        let mut bytes = Vec::new();
        document.save_to(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn text_of_a_pdf_page_is_extracted() {
        let text = pdf_text(&pdf_bytes("Quarterly revenue grew by nine percent")).unwrap();
        assert!(
            text.contains("Quarterly revenue grew by nine percent"),
            "{text:?}"
        );
    }

    #[test]
    fn password_protected_pdf_is_refused_as_encrypted() {
        let bytes = encrypted_pdf_bytes("secret plans", "hunter2");
        assert_eq!(pdf_text(&bytes), Err(PdfError::Encrypted));
    }

    #[test]
    fn pdf_encrypted_with_an_empty_user_password_is_read() {
        let bytes = encrypted_pdf_bytes("open to all readers", "");
        let text = pdf_text(&bytes).unwrap();
        assert!(text.contains("open to all readers"), "{text:?}");
    }

    #[test]
    fn garbage_and_truncated_pdfs_are_unreadable_not_panics() {
        assert!(matches!(
            pdf_text(b"%PDF-1.5\nnot really"),
            Err(PdfError::Unreadable { .. })
        ));
        let bytes = pdf_bytes("cut short");
        assert!(pdf_text(&bytes[..bytes.len() / 2]).is_err());
    }
}
