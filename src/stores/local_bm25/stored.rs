//! A stored chunk read straight into the strings a hit keeps. tantivy's own document
//! type builds every value into its compact form, and the hit then copied each string
//! out again: for the 100 candidates of every search that was a tenth of the CPU of a
//! cached SciFact search load.

use tantivy::schema::Field;
use tantivy::schema::document::{
    DeserializeError, DocumentDeserialize, DocumentDeserializer, ValueDeserialize,
    ValueDeserializer, ValueVisitor,
};

/// The stored fields of one chunk, in stored order.
pub(super) struct StoredFields(Vec<(Field, StoredValue)>);

enum StoredValue {
    Text(String),
    Number(u64),
    /// A kind of value the store never writes; kept so that reading does not fail.
    Other,
}

impl StoredFields {
    /// The field's first text, moved out (a field read twice gives "" the second time).
    pub(super) fn take_text(&mut self, field: Field) -> String {
        self.0
            .iter_mut()
            .find_map(|(name, value)| match value {
                StoredValue::Text(text) if *name == field => Some(std::mem::take(text)),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The field's first number.
    pub(super) fn number(&self, field: Field) -> Option<u64> {
        self.0.iter().find_map(|(name, value)| match value {
            StoredValue::Number(number) if *name == field => Some(*number),
            _ => None,
        })
    }
}

impl DocumentDeserialize for StoredFields {
    fn deserialize<'de, D>(mut deserializer: D) -> Result<Self, DeserializeError>
    where
        D: DocumentDeserializer<'de>,
    {
        let mut fields = Vec::with_capacity(deserializer.size_hint());
        while let Some(entry) = deserializer.next_field::<StoredValue>()? {
            fields.push(entry);
        }
        Ok(Self(fields))
    }
}

impl ValueDeserialize for StoredValue {
    fn deserialize<'de, D>(deserializer: D) -> Result<Self, DeserializeError>
    where
        D: ValueDeserializer<'de>,
    {
        deserializer.deserialize_any(StoredValueVisitor)
    }
}

struct StoredValueVisitor;

impl ValueVisitor for StoredValueVisitor {
    type Value = StoredValue;

    fn visit_string(&self, value: String) -> Result<StoredValue, DeserializeError> {
        Ok(StoredValue::Text(value))
    }

    fn visit_u64(&self, value: u64) -> Result<StoredValue, DeserializeError> {
        Ok(StoredValue::Number(value))
    }

    fn visit_null(&self) -> Result<StoredValue, DeserializeError> {
        Ok(StoredValue::Other)
    }

    fn visit_i64(&self, _value: i64) -> Result<StoredValue, DeserializeError> {
        Ok(StoredValue::Other)
    }

    fn visit_f64(&self, _value: f64) -> Result<StoredValue, DeserializeError> {
        Ok(StoredValue::Other)
    }

    fn visit_bool(&self, _value: bool) -> Result<StoredValue, DeserializeError> {
        Ok(StoredValue::Other)
    }
}
