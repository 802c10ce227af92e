//! Errors of the protocol layer. Each one becomes a documented reply; none ever panics.

/// Why a string is not a valid [`AppName`](crate::AppName).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAppName {
    /// The name is the empty string.
    #[error("app name is empty")]
    Empty,
    /// The name is longer than the configured limit (`max_app_name_bytes`).
    #[error("app name is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    /// The name holds a control character such as a newline.
    #[error("app name contains a control character")]
    ControlCharacter,
}

/// Why a client or backend message was refused. The wire reply does not depend on the variant
/// (the seed protocol has one reply per message kind); the variant is for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes are not one JSON object of the expected shape: not JSON, not an object, a key
    /// missing or of the wrong type. The string is serde_json's description.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The auth message's `member_id` is `0`, which names nobody.
    #[error("member_id 0 names nobody")]
    ZeroMemberId,
    /// The `app` string is not a valid app name.
    #[error(transparent)]
    AppName(#[from] InvalidAppName),
}

impl From<serde_json::Error> for MessageError {
    fn from(err: serde_json::Error) -> Self {
        MessageError::Malformed(err.to_string())
    }
}
