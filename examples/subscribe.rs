//! A minimal ws-gateway client: authenticates, subscribes to apps, prints every frame.
//!
//! Run with (a gateway running on the default port):
//!     cargo run --example subscribe -- ws://127.0.0.1:5000/ match chat
//!     cargo run --example subscribe -- ws://127.0.0.1:5000/ --member 123456 --token 654321 im
//! then push from another terminal:
//!     curl -X POST http://127.0.0.1:5000/push -d '{"app":"match","member_id":-1,"text":"goal"}'

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:5000/".to_owned());
    let (mut member, mut token, mut apps) = (-1_i64, String::new(), Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--member" => member = args.next().ok_or("--member needs an id")?.parse()?,
            "--token" => token = args.next().ok_or("--token needs a value")?,
            app => apps.push(app.to_owned()),
        }
    }

    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let auth = serde_json::json!({ "member_id": member, "token": token });
    ws.send(Message::text(auth.to_string())).await?;
    // Like the seed's browser example, subscribe without waiting for the auth reply: the
    // gateway answers in order.
    for app in &apps {
        let subscribe = serde_json::json!({ "app": app });
        ws.send(Message::text(subscribe.to_string())).await?;
    }
    while let Some(message) = ws.next().await {
        match message? {
            Message::Text(text) => println!("{text}"),
            Message::Close(frame) => {
                println!("closed: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
