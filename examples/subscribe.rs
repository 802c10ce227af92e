//! A ws-gateway client on the `gateway-client` crate: authenticates, subscribes to apps, prints
//! every push, and reconnects (and subscribes again) by itself when the gateway goes away.
//!
//! Run with (a gateway running on the default port):
//!     cargo run --example subscribe -- ws://127.0.0.1:5000/ match chat
//!     cargo run --example subscribe -- ws://127.0.0.1:5000/ --member 123456 --token 654321 im
//! then push from another terminal:
//!     curl -X POST http://127.0.0.1:5000/push -d '{"app":"match","member_id":-1,"text":"goal"}'
//!
//! Each push is printed on stdout as the gateway sent it (`{"app":…,"member_id":…,"text":…}`);
//! the answers to the subscriptions and the connection's events go to stderr.

use gateway_client::{Client, Error};

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

    let builder = match member {
        -1 => Client::builder(url).anonymous(),
        member => Client::builder(url).member(member, token),
    };
    let (client, mut pushes, mut events) = builder.connect().await?;
    eprintln!("connected: {:?}", client.auth());
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            eprintln!("event: {event:?}");
        }
    });
    for app in &apps {
        match client.subscribe(app).await {
            Ok(()) => eprintln!("subscribe {app} success"),
            Err(err @ (Error::Forbidden { .. } | Error::Refused { .. })) => eprintln!("{err}"),
            Err(err) => return Err(err.into()),
        }
    }
    while let Some(push) = pushes.next().await {
        let envelope = serde_json::json!({
            "app": push.app,
            "member_id": push.member_id,
            "text": push.text,
        });
        println!("{envelope}");
    }
    eprintln!("the client stopped");
    Ok(())
}
