//! Who is a member: the [`Authenticator`] trait and its implementations.
//!
//! The gateway calls an authenticator once per connection, with the `member_id` and `token` of
//! the client's auth message (never for anonymous clients). The authenticator answers
//! [`Decision::Accept`] or [`Decision::Refuse`]; an `Err` means it could not decide (a backend
//! down, a timeout) and the gateway treats it as a refusal, logs it and counts it.
//!
//! This crate does not parse client messages, hold connections or time anything out on the
//! gateway's behalf: an implementation that talks to a backend bounds its own latency.
//!
//! Plugging in your own:
//! ```
//! use gateway_auth::{async_trait, AuthError, Authenticator, Credentials, Decision};
//!
//! #[derive(Debug)]
//! struct EvenMembersOnly;
//!
//! #[async_trait]
//! impl Authenticator for EvenMembersOnly {
//!     async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
//!         Ok(if creds.member.get() % 2 == 0 { Decision::Accept } else { Decision::Refuse })
//!     }
//! }
//! ```

use std::fmt;
use std::sync::Arc;

pub use async_trait::async_trait;
use gateway_core::MemberId;

mod anonymous;
mod error;
mod static_tokens;

pub use anonymous::AnonymousOnly;
pub use error::AuthError;
pub use static_tokens::StaticTokens;

/// What a client presented in its auth message. Never logged: it holds a secret.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct Credentials<'a> {
    /// The member the client claims to be (always > 0; anonymous clients are never asked about).
    pub member: MemberId,
    /// The token from the auth message; `""` when the client sent none.
    pub token: &'a str,
}

impl<'a> Credentials<'a> {
    pub fn new(member: MemberId, token: &'a str) -> Self {
        Credentials { member, token }
    }
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("member", &self.member)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// An authenticator's verdict on a pair `(member_id, token)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The token proves the member: the connection belongs to that member.
    Accept,
    /// The token does not prove the member: the connection continues as anonymous.
    Refuse,
}

/// Decides whether a client is the member it claims to be.
///
/// Implementations are shared by every connection (`Send + Sync`) and called concurrently; a
/// slow one delays only the connection that waits for it.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError>;

    /// A short description for the start-up log ("static tokens (2 members)"). No secrets.
    fn describe(&self) -> String {
        std::any::type_name::<Self>().to_owned()
    }
}

#[async_trait]
impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        (**self).authenticate(creds).await
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[async_trait]
impl<A: Authenticator + ?Sized> Authenticator for Box<A> {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        (**self).authenticate(creds).await
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}
