//! The protocol of ws-gateway and its hub, with no I/O.
//!
//! This crate knows the wire format of `docs/protocol.md` (what a client's auth and subscribe
//! messages and a backend's push look like, and the exact bytes of every frame the gateway
//! sends) and the rules that connect them: who is anonymous or which member, who subscribed to
//! which app, who receives a push, and the per-app counts of `/stat`.
//!
//! It does **not** open sockets, spawn tasks, read the clock or decide whether a token is
//! valid: `gateway-auth` decides tokens and `gateway-server` carries bytes and owns timers.
//! That keeps it deterministic, so every rule is tested without a network, and embeddable in a
//! service that has its own transport.
//!
//! ```
//! use gateway_core::{Action, AuthOutcome, ConnId, Hub, HubConfig, Input, PushMessage, Publication};
//!
//! let mut hub = Hub::new(HubConfig::default());
//! let conn = ConnId::new(1);
//! hub.handle(Input::Authenticated { conn, outcome: AuthOutcome::Anonymous });
//! hub.handle(Input::Message { conn, payload: br#"{"app":"match"}"# });
//! let push = PushMessage::parse(br#"{"app":"match","text":"goal"}"#, 128).unwrap();
//! hub.handle(Input::Push(Publication::from(push)));
//!
//! let actions: Vec<Action> = std::iter::from_fn(|| hub.poll_action()).collect();
//! // [0] hello, [1] interest in "match" appeared, [2] subscribe success, [3] the delivery.
//! let Action::Deliver { conns, frame } = &actions[3] else { panic!() };
//! assert_eq!(conns, &[conn]);
//! assert_eq!(frame.as_str(), r#"{"app":"match","member_id":-1,"text":"goal"}"#);
//! ```

mod error;
mod frame;
pub mod history;
mod hub;
mod ids;
mod message;
mod position;
mod push;
mod topic;
mod views;

pub use error::{InvalidAppName, MessageError};
pub use frame::{CloseCode, Frame, GATEWAY_APP, Reply};
pub use history::{HistoryPolicy, HistoryRead, StreamLimits};
pub use hub::{Action, AuthOutcome, Hub, HubConfig, Identity, Input, PrivateAccess};
pub use ids::{AppName, ConnId, MemberId};
pub use message::{
    AuthRequest, ClientRequest, NO_MEMBER, Publication, PushMessage, SubscribeRequest,
};
pub use position::{Epoch, InvalidEpoch, Position, Recovery, Since, positioned_frame};
pub use push::{ElementError, MembersError, PushBatch, PushError, PushLimits, PushRequest};
pub use topic::{Timestamp, Topic};
pub use views::{AppSubscribers, MemberPresence, MembersPage, Stat, StatPage, SubscribersPage};
