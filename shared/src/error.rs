//! The one error type of decoding, so a receiver can answer every bad input with a clear message.

use thiserror::Error;

/// Why a frame or a media event could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("`{event}` is missing field `{field}`")]
    MissingField { event: String, field: String },
    #[error("`{event}` has a bad value: {reason}")]
    BadValue { event: String, reason: String },
}

impl DecodeError {
    /// Rejects `text` before parsing when it is over `limit` bytes.
    pub(crate) fn check_size(text: &str, limit: usize) -> Result<(), DecodeError> {
        if text.len() > limit {
            return Err(DecodeError::TooLarge {
                size: text.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Classifies a serde_json error met while decoding `what`: syntax errors are malformed JSON,
    /// data errors name the missing field or the bad value.
    pub(crate) fn from_json(what: &str, err: serde_json::Error) -> DecodeError {
        use serde_json::error::Category;
        match err.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                DecodeError::Malformed(err.to_string())
            }
            Category::Data => {
                let message = err.to_string();
                // serde's wording for a missing field is fixed: "missing field `name`".
                match message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.split('`').next())
                {
                    Some(field) => DecodeError::MissingField {
                        event: what.to_owned(),
                        field: field.to_owned(),
                    },
                    None => DecodeError::BadValue {
                        event: what.to_owned(),
                        reason: message,
                    },
                }
            }
        }
    }
}
