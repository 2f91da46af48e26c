//! Extraction: turn the bytes of one object into documents with an id, a title and plain text.
//!
//! The format is chosen by the object key's extension. Content problems (binary data, invalid
//! UTF-8, empty documents, malformed JSON) are errors for the object, never panics. Inside a
//! JSON Lines file a bad line is reported as a [`RecordProblem`] and the good lines are kept
//! (the first [`MAX_RECORD_PROBLEMS`] of them; the rest are counted).
//!
//! Everything here is linear in the input, except what the PDF crates and html5ever do
//! inside: HTML nested deeper than [`MAX_HTML_DEPTH`] is refused before html5ever sees it
//! (its tree builder scans the open elements for each start tag), and PDF has no bound we
//! can set from outside, which is why [`crate::ingest::isolate`] runs those parsers in a
//! worker process.

use std::collections::{BTreeMap, HashSet};

use scraper::{Html, Node, Selector};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ingest::gzip::{MAX_DECOMPRESSED_BYTES, gunzip, strip_gzip_suffix};
use crate::ingest::pdf::{PdfError, pdf_text};

/// Problems kept per multi-record object; the rest are counted.
pub const MAX_RECORD_PROBLEMS: usize = 1000;

/// HTML nested deeper than this is refused before parsing.
pub const MAX_HTML_DEPTH: usize = 512;

/// One document found in an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractedDoc {
    /// The record's own id (BEIR `_id`, JSON `id`), else the object key (`key:N` for the
    /// N-th record of a multi-record file without ids). Unique within the object only:
    /// the pipeline makes it unique in the index ([`crate::ingest::doc_ids`]).
    pub doc_id: String,
    pub title: String,
    pub text: String,
    /// Whether `doc_id` is the record's own `_id`/`id` rather than named after the object
    /// or the record's place in it: only such ids may repeat across objects, so only they
    /// are qualified by the index's `record_ids` setting.
    #[serde(default)]
    pub id_from_record: bool,
    /// A JSON(L) record's other short scalar fields (top level, and inside its
    /// `metadata` object) as text: the index keeps those its `metadata_fields` name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// A record keeps at most this many fields, each value at most this long: enough for
/// tags and categories, never a copy of the text.
const MAX_RECORD_FIELDS: usize = 32;
pub(crate) const MAX_RECORD_FIELD_BYTES: usize = 256;

/// A record inside a multi-record file that could not be used; the rest of the file was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordProblem {
    /// `object_key:line` for JSON Lines, `object_key:index` (1-based) for JSON arrays.
    pub location: String,
    pub reason: String,
}

/// Everything extracted from one object: its documents and the records that were left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extraction {
    pub documents: Vec<ExtractedDoc>,
    /// At most [`MAX_RECORD_PROBLEMS`].
    pub problems: Vec<RecordProblem>,
    /// Problems beyond those kept.
    pub problems_left_out: u64,
}

/// Why an object yielded no documents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ExtractError {
    #[error("unsupported file type {extension:?}")]
    Unsupported { extension: String },
    #[error("binary content: nul byte at offset {offset}")]
    Binary { offset: usize },
    #[error("not valid utf-8: invalid byte at offset {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("empty document")]
    Empty,
    #[error("malformed json: {reason}")]
    MalformedJson { reason: String },
    #[error("no usable records: {first_problem}")]
    NoUsableRecords { first_problem: String },
    #[error("{reason}")]
    Gzip { reason: String },
    #[error("encrypted pdf: it needs a password")]
    EncryptedPdf,
    #[error("unreadable pdf: {reason}")]
    Pdf { reason: String },
    #[error("html nests deeper than {limit} elements")]
    HtmlTooDeep { limit: usize },
    /// The extraction worker crashed or hit a limit on this object ("extraction crashed
    /// (signal 11)", "extraction exceeded 1024 MiB", "extraction exceeded 60 s").
    #[error("{reason}")]
    Isolated { reason: String },
    /// No worker could be started: the object is not to blame.
    #[error("extraction worker unavailable: {reason}")]
    WorkerUnavailable { reason: String },
}

impl ExtractError {
    /// Whether the object is simply not something we index (as opposed to broken content).
    pub fn is_skip(&self) -> bool {
        match self {
            ExtractError::Unsupported { .. } | ExtractError::Empty => true,
            ExtractError::Binary { .. }
            | ExtractError::InvalidUtf8 { .. }
            | ExtractError::MalformedJson { .. }
            | ExtractError::NoUsableRecords { .. }
            | ExtractError::Gzip { .. }
            | ExtractError::EncryptedPdf
            | ExtractError::Pdf { .. }
            | ExtractError::HtmlTooDeep { .. }
            | ExtractError::Isolated { .. }
            | ExtractError::WorkerUnavailable { .. } => false,
        }
    }

    /// Whether the object's content is to blame, so it stays failed until it changes
    /// (as opposed to a worker that could not start, which says nothing about the object).
    pub fn blames_content(&self) -> bool {
        !matches!(self, ExtractError::WorkerUnavailable { .. })
    }
}

/// The formats we extract, chosen by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentFormat {
    PlainText,
    Markdown,
    Html,
    Json,
    JsonLines,
    Pdf,
}

impl DocumentFormat {
    /// The format for an object key, by its (case-insensitive) extension; for a gzip
    /// object (`notes.md.gz`), the format of what it holds.
    pub fn from_object_key(object_key: &str) -> Option<DocumentFormat> {
        let object_key = strip_gzip_suffix(object_key).unwrap_or(object_key);
        let extension = extension_of(object_key).to_ascii_lowercase();
        match extension.as_str() {
            "txt" | "text" => Some(DocumentFormat::PlainText),
            "md" | "markdown" => Some(DocumentFormat::Markdown),
            "html" | "htm" => Some(DocumentFormat::Html),
            "json" => Some(DocumentFormat::Json),
            "jsonl" | "ndjson" => Some(DocumentFormat::JsonLines),
            "pdf" => Some(DocumentFormat::Pdf),
            _ => None,
        }
    }
}

/// Whether [`extract`] knows the object's format; lets the pipeline skip without fetching.
pub fn is_supported(object_key: &str) -> bool {
    DocumentFormat::from_object_key(object_key).is_some()
}

/// The object's format, or the [`ExtractError::Unsupported`] that [`extract`] would return.
pub fn format_of(object_key: &str) -> Result<DocumentFormat, ExtractError> {
    DocumentFormat::from_object_key(object_key).ok_or_else(|| ExtractError::Unsupported {
        extension: extension_of(object_key).to_owned(),
    })
}

/// The documents in one object. Record-level problems in multi-record files are dropped
/// here; use [`extract_with_problems`] to see them.
pub fn extract(object_key: &str, bytes: &[u8]) -> Result<Vec<ExtractedDoc>, ExtractError> {
    extract_with_problems(object_key, bytes).map(|extraction| extraction.documents)
}

/// The documents in one object, with the records that had to be left out.
pub fn extract_with_problems(object_key: &str, bytes: &[u8]) -> Result<Extraction, ExtractError> {
    let format = format_of(object_key)?;
    if strip_gzip_suffix(object_key).is_some() {
        let inflated = gunzip(bytes, MAX_DECOMPRESSED_BYTES)
            .map_err(|reason| ExtractError::Gzip { reason })?;
        return extract_format(object_key, format, &inflated);
    }
    extract_format(object_key, format, bytes)
}

fn extract_format(
    object_key: &str,
    format: DocumentFormat,
    bytes: &[u8],
) -> Result<Extraction, ExtractError> {
    // Binary: never goes through text decoding.
    if format == DocumentFormat::Pdf {
        return extract_pdf(object_key, bytes);
    }
    let text = decode_text(bytes)?;
    if text.trim().is_empty() {
        return Err(ExtractError::Empty);
    }
    match format {
        DocumentFormat::PlainText => single_document(object_key, file_stem(object_key), text),
        DocumentFormat::Markdown => extract_markdown(object_key, text),
        DocumentFormat::Html => extract_html(object_key, text),
        DocumentFormat::Json => extract_json(object_key, text),
        DocumentFormat::JsonLines => extract_json_lines(object_key, text),
        DocumentFormat::Pdf => extract_pdf(object_key, bytes),
    }
}

fn extract_pdf(object_key: &str, bytes: &[u8]) -> Result<Extraction, ExtractError> {
    let text = pdf_text(bytes).map_err(|error| match error {
        PdfError::Encrypted => ExtractError::EncryptedPdf,
        PdfError::Unreadable { reason } => ExtractError::Pdf { reason },
    })?;
    let title = file_stem(strip_gzip_suffix(object_key).unwrap_or(object_key));
    single_document(object_key, title, &text)
}

/// UTF-8 text without a byte-order mark; NUL bytes mean binary even when valid UTF-8.
fn decode_text(bytes: &[u8]) -> Result<&str, ExtractError> {
    if let Some(offset) = bytes.iter().position(|&byte| byte == 0) {
        return Err(ExtractError::Binary { offset });
    }
    let text = std::str::from_utf8(bytes).map_err(|error| ExtractError::InvalidUtf8 {
        offset: error.valid_up_to(),
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn single_document(
    object_key: &str,
    title: String,
    text: &str,
) -> Result<Extraction, ExtractError> {
    if text.trim().is_empty() {
        return Err(ExtractError::Empty);
    }
    Ok(Extraction {
        documents: vec![ExtractedDoc {
            doc_id: object_key.to_owned(),
            title,
            text: text.trim().to_owned(),
            id_from_record: false,
            fields: BTreeMap::new(),
        }],
        ..Extraction::default()
    })
}

/// The last path segment's extension, or "" when there is none.
fn extension_of(object_key: &str) -> &str {
    let file_name = object_key.rsplit('/').next().unwrap_or(object_key);
    match file_name.rsplit_once('.') {
        // A leading dot (".bashrc") names a hidden file, not an extension.
        Some((stem, extension)) if !stem.is_empty() => extension,
        _ => "",
    }
}

/// The file name without its extension: the title of last resort.
fn file_stem(object_key: &str) -> String {
    let file_name = object_key.rsplit('/').next().unwrap_or(object_key);
    match file_name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_owned(),
        _ => file_name.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Markdown

fn extract_markdown(object_key: &str, source: &str) -> Result<Extraction, ExtractError> {
    let body = strip_front_matter(source);
    let title = markdown_title(body).unwrap_or_else(|| file_stem(object_key));
    single_document(object_key, title, body)
}

/// YAML (`---`) or TOML (`+++`) front matter is metadata, not text.
fn strip_front_matter(source: &str) -> &str {
    for fence in ["---", "+++"] {
        let Some(rest) = source.strip_prefix(fence) else {
            continue;
        };
        let Some(rest) = rest
            .strip_prefix('\n')
            .or_else(|| rest.strip_prefix("\r\n"))
        else {
            continue;
        };
        let mut offset = 0;
        for line in rest.split_inclusive('\n') {
            offset += line.len();
            if line.trim_end() == fence {
                return &rest[offset..];
            }
        }
    }
    source
}

/// The first ATX (`# Title`) or setext (`Title\n===`) heading outside code fences.
fn markdown_title(body: &str) -> Option<String> {
    let mut inside_code_fence = false;
    let mut previous_line: Option<&str> = None;
    for line in body.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            inside_code_fence = !inside_code_fence;
            previous_line = None;
            continue;
        }
        if inside_code_fence {
            continue;
        }
        if let Some(title) = atx_heading_text(trimmed) {
            return Some(title);
        }
        let is_setext_underline = !trimmed.is_empty()
            && (trimmed.chars().all(|character| character == '=')
                || (trimmed.len() >= 2 && trimmed.chars().all(|character| character == '-')));
        if let Some(previous) = previous_line
            && is_setext_underline
            && !previous.trim().is_empty()
        {
            return Some(previous.trim().to_owned());
        }
        previous_line = Some(line);
    }
    None
}

fn atx_heading_text(trimmed_line: &str) -> Option<String> {
    let level = trimmed_line
        .chars()
        .take_while(|&character| character == '#')
        .count();
    if level == 0 || level > 6 {
        return None;
    }
    let rest = &trimmed_line[level..];
    // "#hashtag" is not a heading: a space must follow the hashes.
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return None;
    }
    let text = rest.trim().trim_end_matches('#').trim();
    if text.is_empty() {
        return None;
    }
    Some(text.to_owned())
}

// ---------------------------------------------------------------------------------------------
// HTML

/// Elements whose text a reader never sees.
const INVISIBLE_ELEMENTS: &[&str] = &[
    "head", "script", "style", "noscript", "template", "svg", "iframe", "object",
];

/// Elements that start a new line of text, so words of neighbouring blocks do not merge.
const BLOCK_ELEMENTS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "br",
    "dd",
    "details",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "td",
    "th",
    "tr",
    "ul",
];

fn extract_html(object_key: &str, source: &str) -> Result<Extraction, ExtractError> {
    if nests_deeper_than(source, MAX_HTML_DEPTH) {
        return Err(ExtractError::HtmlTooDeep {
            limit: MAX_HTML_DEPTH,
        });
    }
    let document = Html::parse_document(source);
    let title = html_title(&document).unwrap_or_else(|| file_stem(object_key));
    let text = html_visible_text(&document);
    single_document(object_key, title, &text)
}

fn html_title(document: &Html) -> Option<String> {
    for selector_text in ["title", "h1"] {
        let Ok(selector) = Selector::parse(selector_text) else {
            continue;
        };
        let Some(element) = document.select(&selector).next() else {
            continue;
        };
        let title = collapse_whitespace(&element.text().collect::<String>());
        if !title.is_empty() {
            return Some(title);
        }
    }
    None
}

/// The text a reader sees: text nodes outside invisible elements, one line per block.
/// One walk over the tree, each node visited once with the nearest block around it
/// (invisible subtrees are not entered), so the cost is linear in the page.
fn html_visible_text(document: &Html) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut current_line = String::new();
    let mut current_block = None;
    let mut pending = vec![(document.tree.root(), None)];
    while let Some((node, enclosing_block)) = pending.pop() {
        let mut block = enclosing_block;
        match node.value() {
            Node::Text(text) => {
                // A text node in another block than the previous one starts a new line.
                if block != current_block {
                    push_line(&mut lines, &mut current_line);
                    current_block = block;
                }
                current_line.push_str(text);
                continue;
            }
            Node::Element(element) => {
                let name = element.name();
                if INVISIBLE_ELEMENTS.contains(&name) {
                    continue;
                }
                if BLOCK_ELEMENTS.contains(&name) {
                    block = Some(node.id());
                }
            }
            _ => {}
        }
        // Pushed last child first, so they come off the stack in document order.
        let mut child = node.last_child();
        while let Some(current) = child {
            pending.push((current, block));
            child = current.prev_sibling();
        }
    }
    push_line(&mut lines, &mut current_line);
    lines.join("\n")
}

/// Elements that never have children.
const VOID_ELEMENTS: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

/// Elements whose end tag may be left out: the parser closes them itself, so an unclosed
/// one does not nest.
const OPTIONAL_END_ELEMENTS: &[&str] = &[
    "html", "head", "body", "p", "li", "dt", "dd", "tr", "td", "th", "thead", "tbody", "tfoot",
    "option", "optgroup", "colgroup", "caption", "rb", "rt", "rp", "rtc",
];

/// Elements whose content is raw text, not tags.
const RAW_TEXT_ELEMENTS: &[&str] = &["script", "style", "textarea", "title", "xmp"];

/// Whether the page opens more than `limit` elements inside each other, estimated in one
/// pass over the tags (void and optional-end elements do not count). html5ever would
/// build the same depth, at a cost that grows with the depth for every start tag.
fn nests_deeper_than(source: &str, limit: usize) -> bool {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    let mut position = 0;
    while let Some(offset) = bytes[position..].iter().position(|&byte| byte == b'<') {
        let tag_start = position + offset + 1;
        let rest = &bytes[tag_start..];
        if rest.starts_with(b"!--") {
            position = find_from(bytes, tag_start, b"-->").map_or(bytes.len(), |end| end + 3);
            continue;
        }
        let closing = rest.first() == Some(&b'/');
        let name_start = tag_start + usize::from(closing);
        let name_length = bytes[name_start..]
            .iter()
            .take_while(|byte| byte.is_ascii_alphanumeric())
            .count();
        if name_length == 0 {
            position = tag_start;
            continue;
        }
        let name = source[name_start..name_start + name_length].to_ascii_lowercase();
        let Some(tag_end) = find_from(bytes, name_start + name_length, b">") else {
            break;
        };
        position = tag_end + 1;
        let counted = !VOID_ELEMENTS.contains(&name.as_str())
            && !OPTIONAL_END_ELEMENTS.contains(&name.as_str());
        if closing {
            if counted {
                depth = depth.saturating_sub(1);
            }
            continue;
        }
        let self_closing = bytes[..tag_end].ends_with(b"/");
        if counted && !self_closing {
            depth += 1;
            if depth > limit {
                return true;
            }
        }
        if RAW_TEXT_ELEMENTS.contains(&name.as_str()) {
            let end_tag = format!("</{name}");
            let lowered_end = end_tag.as_bytes();
            position = find_from_ignoring_case(bytes, position, lowered_end).unwrap_or(bytes.len());
        }
    }
    false
}

fn find_from(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|offset| from + offset)
}

fn find_from_ignoring_case(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|window| window.eq_ignore_ascii_case(needle))
        .map(|offset| from + offset)
}

fn push_line(lines: &mut Vec<String>, current_line: &mut String) {
    let line = collapse_whitespace(current_line);
    if !line.is_empty() {
        lines.push(line);
    }
    current_line.clear();
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// JSON and JSON Lines

/// Fields that hold a record's text, in order of preference.
const TEXT_FIELDS: &[&str] = &["text", "content", "body"];
/// Fields that hold a record's id, in order of preference (`_id` is BEIR's).
const ID_FIELDS: &[&str] = &["_id", "id"];

fn extract_json(object_key: &str, source: &str) -> Result<Extraction, ExtractError> {
    let value: Value =
        serde_json::from_str(source).map_err(|error| ExtractError::MalformedJson {
            reason: error.to_string(),
        })?;
    match value {
        Value::Object(record) => {
            let document = record_to_document(&record, object_key)
                .map_err(|first_problem| ExtractError::NoUsableRecords { first_problem })?;
            Ok(Extraction {
                documents: vec![document],
                ..Extraction::default()
            })
        }
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ExtractError::Empty);
            }
            let records = items.iter().enumerate().map(|(index, item)| {
                let location = format!("{object_key}:{}", index + 1);
                let document = match item {
                    Value::Object(record) => record_to_document(record, &location),
                    _ => Err("array item is not a json object".to_owned()),
                };
                (location, document)
            });
            collect_records(records)
        }
        _ => Err(ExtractError::MalformedJson {
            reason: "expected an object or an array of objects".to_owned(),
        }),
    }
}

fn extract_json_lines(object_key: &str, source: &str) -> Result<Extraction, ExtractError> {
    let records = source
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            let location = format!("{object_key}:{}", index + 1);
            let document = parse_json_line(line, &location);
            (location, document)
        });
    collect_records(records)
}

fn parse_json_line(line: &str, location: &str) -> Result<ExtractedDoc, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|error| format!("malformed json: {error}"))?;
    let Value::Object(record) = value else {
        return Err("line is not a json object".to_owned());
    };
    record_to_document(&record, location)
}

/// Keeps the good records, reports the bad ones and repeated ids; no good record is an error.
fn collect_records(
    records: impl Iterator<Item = (String, Result<ExtractedDoc, String>)>,
) -> Result<Extraction, ExtractError> {
    let mut extraction = Extraction::default();
    let mut seen_ids = HashSet::new();
    let note_problem = |extraction: &mut Extraction, problem: RecordProblem| {
        if extraction.problems.len() < MAX_RECORD_PROBLEMS {
            extraction.problems.push(problem);
        } else {
            extraction.problems_left_out += 1;
        }
    };
    for (location, record) in records {
        match record {
            Ok(document) if seen_ids.insert(document.doc_id.clone()) => {
                extraction.documents.push(document)
            }
            // A repeated id would produce colliding chunk ids; the first record wins.
            Ok(document) => note_problem(
                &mut extraction,
                RecordProblem {
                    location,
                    reason: format!("duplicate record id {:?}, kept the first", document.doc_id),
                },
            ),
            Err(reason) => note_problem(&mut extraction, RecordProblem { location, reason }),
        }
    }
    if extraction.documents.is_empty() {
        let first_problem = match extraction.problems.first() {
            Some(problem) => format!("{}: {}", problem.location, problem.reason),
            None => "no records".to_owned(),
        };
        return Err(ExtractError::NoUsableRecords { first_problem });
    }
    Ok(extraction)
}

/// A document from a JSON record; `fallback_id` when the record has no id of its own.
fn record_to_document(
    record: &Map<String, Value>,
    fallback_id: &str,
) -> Result<ExtractedDoc, String> {
    let (doc_id, id_from_record) = match first_field(record, ID_FIELDS) {
        Some(Value::String(id)) if !id.trim().is_empty() => (id.clone(), true),
        Some(Value::Number(id)) => (id.to_string(), true),
        Some(Value::String(_)) | None => (fallback_id.to_owned(), false),
        Some(_) => return Err("record id is neither a string nor a number".to_owned()),
    };
    let title = match record.get("title") {
        Some(Value::String(title)) => title.trim().to_owned(),
        _ => String::new(),
    };
    let text = match first_field(record, TEXT_FIELDS) {
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(_) => return Err("record text is not a string".to_owned()),
        None => String::new(),
    };
    // A record with only a title (some BEIR corpora have them) is still searchable by it.
    let text = if text.is_empty() { title.clone() } else { text };
    if text.is_empty() {
        return Err("record has no text, content, body or title".to_owned());
    }
    Ok(ExtractedDoc {
        doc_id,
        title,
        text,
        id_from_record,
        fields: record_fields(record),
    })
}

/// The record's short scalar fields other than its id, title and text; a top-level
/// field wins over one of the same name in `metadata`.
fn record_fields(record: &Map<String, Value>) -> BTreeMap<String, String> {
    let as_text = |value: &Value| match value {
        Value::String(text) if text.len() <= MAX_RECORD_FIELD_BYTES => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    };
    let taken = |name: &str| {
        name == "title"
            || name == "metadata"
            || ID_FIELDS.contains(&name)
            || TEXT_FIELDS.contains(&name)
    };
    let nested = record.get("metadata").and_then(Value::as_object);
    let mut fields = BTreeMap::new();
    for (name, value) in record
        .iter()
        .filter(|(name, _)| !taken(name))
        .chain(nested.into_iter().flatten())
    {
        if fields.len() == MAX_RECORD_FIELDS {
            break;
        }
        if fields.contains_key(name) {
            continue;
        }
        if let Some(text) = as_text(value) {
            fields.insert(name.clone(), text);
        }
    }
    fields
}

fn first_field<'a>(record: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|name| record.get(*name).filter(|value| !value.is_null()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::gzip::tests::gzip;
    use crate::ingest::pdf::tests::pdf_bytes;

    #[test]
    fn gzip_objects_are_extracted_in_the_format_they_hold() {
        let compressed = gzip(b"# Runbook\n\nRestart the ingest worker.");
        let documents = extract("ops/runbook.md.gz", &compressed).unwrap();
        assert_eq!(documents[0].title, "Runbook");
        assert_eq!(documents[0].doc_id, "ops/runbook.md.gz");
        assert!(documents[0].text.contains("Restart the ingest worker."));
        assert!(is_supported("ops/runbook.md.gz"));
        assert!(!is_supported("ops/image.png.gz"));
    }

    #[test]
    fn truncated_gzip_is_a_content_error_naming_the_cause() {
        let compressed = gzip("some words ".repeat(500).as_bytes());
        let error = extract("logs/a.txt.gz", &compressed[..compressed.len() - 20]).unwrap_err();
        assert!(!error.is_skip());
        assert!(error.to_string().contains("truncated gzip"), "{error}");
    }

    #[test]
    fn pdf_text_becomes_one_document_titled_by_its_file_name() {
        let documents = extract(
            "reports/q3-summary.pdf",
            &pdf_bytes("Revenue grew nine percent"),
        )
        .unwrap();
        assert_eq!(documents.len(), 1);
        assert_eq!(documents[0].title, "q3-summary");
        assert!(documents[0].text.contains("Revenue grew nine percent"));
        let zipped = extract("reports/q3.pdf.gz", &gzip(&pdf_bytes("Zipped report"))).unwrap();
        assert!(zipped[0].text.contains("Zipped report"));
        let error = extract("reports/broken.pdf", b"%PDF-1.4 garbage").unwrap_err();
        assert!(!error.is_skip());
        assert!(error.to_string().starts_with("unreadable pdf"), "{error}");
    }

    fn only_document(object_key: &str, source: &str) -> ExtractedDoc {
        let mut documents = extract(object_key, source.as_bytes()).expect("extracts");
        assert_eq!(documents.len(), 1, "{documents:?}");
        documents.remove(0)
    }

    #[test]
    fn plain_text_uses_object_key_as_id_and_file_stem_as_title() {
        let document = only_document("notes/today.txt", "  hello world \n");
        assert_eq!(document.doc_id, "notes/today.txt");
        assert_eq!(document.title, "today");
        assert_eq!(document.text, "hello world");
    }

    #[test]
    fn markdown_title_comes_from_the_first_heading_outside_code() {
        let source =
            "---\ntitle: ignored\n---\n```sh\n# not a title\n```\nintro\n\n## Real Title ##\nbody";
        let document = only_document("a.md", source);
        assert_eq!(document.title, "Real Title");
        assert!(!document.text.contains("ignored"));
        assert!(document.text.contains("body"));
    }

    #[test]
    fn markdown_setext_heading_and_fallback_title() {
        assert_eq!(only_document("b.markdown", "Big\n===\ntext").title, "Big");
        assert_eq!(only_document("dir/c.MD", "#hashtag only").title, "c");
    }

    #[test]
    fn html_keeps_visible_text_and_title() {
        let source = "<html><head><title> The  Page </title><style>p{}</style></head>\
            <body><script>var hidden = 1;</script><p>first <b>bold</b></p><div>second</div>tail\
            <noscript>nope</noscript></body></html>";
        let document = only_document("site/index.html", source);
        assert_eq!(document.title, "The Page");
        assert_eq!(document.text, "first bold\nsecond\ntail");
        assert!(!document.text.contains("hidden"));
    }

    #[test]
    fn html_nested_too_deep_is_refused_quickly_and_normal_nesting_is_not() {
        let attack = "<div>a".repeat(200_000);
        assert_eq!(
            extract("deep.html", attack.as_bytes()),
            Err(ExtractError::HtmlTooDeep {
                limit: MAX_HTML_DEPTH
            })
        );
        let nested = format!("{}text{}", "<div>".repeat(100), "</div>".repeat(100));
        assert_eq!(only_document("ok.html", &nested).text, "text");
        let unclosed = format!("<ul>{}</ul>", "<li><p>item ".repeat(2_000));
        assert!(only_document("list.html", &unclosed).text.contains("item"));
        let closed = "<section><div>x</div><br><img src=a /></section>".repeat(5_000);
        assert!(!nests_deeper_than(&closed, 4));
        let scripted = format!("<script>{}</script><p>shown</p>", "<div>".repeat(1_000));
        assert_eq!(only_document("s.html", &scripted).text, "shown");
    }

    #[test]
    fn json_lines_keep_at_most_the_first_problems_and_count_the_rest() {
        let mut source = String::from("{\"text\": \"good\"}\n");
        source.push_str(&"{broken\n".repeat(MAX_RECORD_PROBLEMS + 5));
        let extraction = extract_with_problems("many.jsonl", source.as_bytes()).unwrap();
        assert_eq!(extraction.problems.len(), MAX_RECORD_PROBLEMS);
        assert_eq!(extraction.problems_left_out, 5);
    }

    #[test]
    fn html_without_title_falls_back_to_h1() {
        let document = only_document("x.htm", "<body><h1>Heading</h1><p>words</p></body>");
        assert_eq!(document.title, "Heading");
    }

    #[test]
    fn html_with_only_invisible_text_is_empty() {
        let result = extract("x.html", b"<script>var a;</script><style>b{}</style>");
        assert_eq!(result, Err(ExtractError::Empty));
    }

    #[test]
    fn beir_corpus_gives_one_document_per_line() {
        let source = concat!(
            r#"{"_id": "4983", "title": "Microstructural development", "text": "Alterations of the architecture.", "metadata": {}}"#,
            "\n",
            r#"{"_id": "5836", "title": "", "text": "Induction of myelodysplasia.", "metadata": {}}"#,
            "\n\n"
        );
        let documents = extract("scifact/corpus.jsonl", source.as_bytes()).unwrap();
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[0].doc_id, "4983");
        assert!(documents[0].id_from_record);
        assert_eq!(documents[0].title, "Microstructural development");
        assert_eq!(documents[0].text, "Alterations of the architecture.");
        assert_eq!(documents[1].doc_id, "5836");
        assert_eq!(documents[1].title, "");
    }

    #[test]
    fn json_lines_keep_good_lines_and_report_bad_ones() {
        let source = "{\"text\": \"one\"}\n{broken\n[1]\n{\"id\": 7, \"content\": \"three\"}\n{\"title\": \"\"}\n{\"id\": 7, \"text\": \"again\"}";
        let extraction = extract_with_problems("data.ndjson", source.as_bytes()).unwrap();
        let ids: Vec<_> = extraction
            .documents
            .iter()
            .map(|d| d.doc_id.as_str())
            .collect();
        assert_eq!(ids, ["data.ndjson:1", "7"]);
        let locations: Vec<_> = extraction
            .problems
            .iter()
            .map(|p| p.location.as_str())
            .collect();
        assert_eq!(
            locations,
            [
                "data.ndjson:2",
                "data.ndjson:3",
                "data.ndjson:5",
                "data.ndjson:6"
            ]
        );
        assert!(extraction.problems[0].reason.starts_with("malformed json"));
    }

    #[test]
    fn json_lines_with_no_good_line_is_an_error() {
        let result = extract("bad.jsonl", b"{nope\n{\"x\": 1}\n");
        assert!(
            matches!(result, Err(ExtractError::NoUsableRecords { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn json_object_and_array() {
        let document = only_document("one.json", r#"{"title": "T", "body": "B"}"#);
        assert_eq!(
            (document.doc_id.as_str(), document.title.as_str()),
            ("one.json", "T")
        );
        let documents = extract(
            "many.json",
            br#"[{"_id": "a", "text": "x"}, {"text": "y"}, 3]"#,
        )
        .unwrap();
        let ids: Vec<_> = documents.iter().map(|d| d.doc_id.as_str()).collect();
        assert_eq!(ids, ["a", "many.json:2"]);
        assert!(matches!(
            extract("bad.json", b"{\"text\": "),
            Err(ExtractError::MalformedJson { .. })
        ));
        assert!(matches!(
            extract("scalar.json", b"42"),
            Err(ExtractError::MalformedJson { .. })
        ));
        assert_eq!(extract("none.json", b"[]"), Err(ExtractError::Empty));
    }

    #[test]
    fn title_only_record_is_searchable_by_its_title() {
        let document = only_document("t.json", r#"{"id": "x", "title": "Only a title"}"#);
        assert_eq!(document.text, "Only a title");
    }

    #[test]
    fn binary_invalid_utf8_empty_and_unknown_are_errors() {
        assert_eq!(
            extract("a.txt", b"ab\0cd"),
            Err(ExtractError::Binary { offset: 2 })
        );
        assert_eq!(
            extract("a.txt", b"ok \xff\xfe"),
            Err(ExtractError::InvalidUtf8 { offset: 3 })
        );
        assert_eq!(extract("a.md", b" \n\t "), Err(ExtractError::Empty));
        assert_eq!(extract("a.txt", b""), Err(ExtractError::Empty));
        assert_eq!(
            extract("photo.png", b"whatever"),
            Err(ExtractError::Unsupported {
                extension: "png".to_owned()
            })
        );
        assert_eq!(
            extract("dir/.hidden", b"x"),
            Err(ExtractError::Unsupported {
                extension: String::new()
            })
        );
        assert!(ExtractError::Empty.is_skip());
        assert!(!ExtractError::Binary { offset: 0 }.is_skip());
    }

    #[test]
    fn byte_order_mark_is_stripped() {
        assert_eq!(only_document("bom.txt", "\u{feff}hello").text, "hello");
    }

    #[test]
    fn supported_extensions_are_case_insensitive() {
        assert!(is_supported("A/B.JSONL"));
        assert!(is_supported("x.Htm"));
        assert!(!is_supported("archive.tar.gz"));
        assert!(!is_supported("README"));
    }
}
