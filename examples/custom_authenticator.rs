//! A Rust service plugging its own authenticator into the gateway.
//!
//! Run with:
//!     cargo run --example custom_authenticator
//! then connect with `{"member_id":7,"token":"let-me-in"}` to ws://127.0.0.1:5000/.

use std::sync::Arc;

use gateway_auth::{AuthError, Authenticator, Credentials, Decision, async_trait};
use gateway_server::{Gateway, ServerConfig};

/// Your identity system goes here: a database, a session store, an SDK.
struct MyAuthenticator;

#[async_trait]
impl Authenticator for MyAuthenticator {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Decision, AuthError> {
        let ok = creds.token == "let-me-in" && creds.member.get() < 1_000;
        Ok(if ok {
            Decision::accept()
        } else {
            Decision::Refuse
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = ServerConfig {
        listen: "127.0.0.1:5000".parse()?,
        ..ServerConfig::default()
    };
    let gateway = Gateway::bind(config, Arc::new(MyAuthenticator)).await?;
    println!(
        "ws://{}/ (stat on http://{}/stat)",
        gateway.local_addr(),
        gateway.stat_addr()
    );
    gateway
        .run(async { tokio::signal::ctrl_c().await.unwrap_or(()) })
        .await;
    Ok(())
}
