//! Who is a member: the [`Authenticator`] trait and its implementations.
//!
//! The gateway calls an authenticator once per connection, with the `member_id` and `token` of
//! the client's auth message (never for anonymous clients). The authenticator answers
//! [`Decision::Accept`] or [`Decision::Refuse`]; an `Err` means it could not decide (a backend
//! down, a timeout) and the gateway treats it as a refusal, logs it and counts it.
//!
//! Implementations here: [`StaticTokens`] (a table from the configuration), [`AnonymousOnly`],
//! [`HmacTokens`] (shared-secret tokens verified offline), [`JwtAuthenticator`] (HS256, RS256,
//! ES256), [`HttpCallback`] (ask the app's backend); and wrappers that compose any of them:
//! [`Cached`] (a bounded TTL cache of accepted pairs) and [`Chain`] (the first that accepts
//! wins).
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
//!         Ok(Decision::accept_if(creds.member.get() % 2 == 0))
//!     }
//! }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

pub use async_trait::async_trait;
use gateway_core::MemberId;

mod anonymous;
mod cache;
mod chain;
mod clock;
mod error;
mod hmac_tokens;
mod http_callback;
mod jwt;
mod static_tokens;

pub use anonymous::AnonymousOnly;
pub use cache::Cached;
pub use chain::Chain;
pub use clock::{Clock, SystemClock};
pub use error::{AuthError, SetupError};
pub use hmac_tokens::{HmacTokens, mint_hmac_token};
pub use http_callback::{HttpCallback, HttpCallbackConfig};
pub use jwt::{JwtAlgorithm, JwtAuthenticator, JwtConfig, JwtKey};
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
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The token proves the member: the connection belongs to that member.
    Accept(Grant),
    /// The token does not prove the member: the connection continues as anonymous.
    Refuse,
    /// [`Decision::Refuse`], with the reason the gateway logs (at info, rate-limited) so an
    /// operator can tell an expired token from a wrong key. The reason is for the log only (the
    /// client still gets the plain 401 reply) and must never contain the token or a secret.
    RefuseWith(Cow<'static, str>),
}

impl Decision {
    /// Accepts the member with access to every private app.
    pub fn accept() -> Decision {
        Decision::Accept(Grant::default())
    }

    /// [`Decision::accept`] if `proven`, else [`Decision::Refuse`].
    pub fn accept_if(proven: bool) -> Decision {
        if proven {
            Decision::accept()
        } else {
            Decision::Refuse
        }
    }

    /// Refuses the member, saying why (for the log; see [`Decision::RefuseWith`]).
    pub fn refuse_with(reason: impl Into<Cow<'static, str>>) -> Decision {
        Decision::RefuseWith(reason.into())
    }

    /// Why the member was refused, for the log; `None` when accepted.
    pub fn refusal_reason(&self) -> Option<&str> {
        match self {
            Decision::Accept(_) => None,
            Decision::Refuse => Some("refused by the authenticator"),
            Decision::RefuseWith(reason) => Some(reason),
        }
    }
}

/// What an accepted member may do beyond public apps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Grant {
    /// `None`: every private app. `Some(names)`: only these (others are "forbidden").
    pub private_apps: Option<Vec<String>>,
}

impl Grant {
    /// Access to these private apps only.
    pub fn only_private_apps(apps: impl IntoIterator<Item = impl Into<String>>) -> Grant {
        Grant {
            private_apps: Some(apps.into_iter().map(Into::into).collect()),
        }
    }
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
