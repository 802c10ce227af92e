//! Gaps between the docs and behaviour: what a backend of the original service sends must
//! still be delivered, byte for byte.

use crate::common::*;

/// A 60 KB text as a real backend pushes it: JSON with CJK, emoji, quotes, backslashes,
/// control characters and `<>&`.
fn sixty_kb_text() -> String {
    let unit = "{\"user\":\"张伟\",\"msg\":\"你好，世界 🎉👍 \\\"quoted\\\" back\\\\slash <b>&amp;</b>\",\
                \"tab\":\"a\tb\",\"nl\":\"line\nline\"}";
    let mut text = String::new();
    while text.len() < 60 * 1024 {
        text.push_str(unit);
    }
    text
}

/// The body as a backend that escapes every non-ASCII character (Python's `json.dumps`
/// default, many Java encoders) sends it: `\uXXXX`, surrogate pairs for emoji.
fn ascii_only_body(app: &str, text: &str) -> String {
    let mut escaped = String::new();
    for c in serde_json::to_string(text).unwrap().chars() {
        if c.is_ascii() {
            escaped.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                escaped.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    format!(r#"{{"app":"{app}","member_id":-1,"text":{escaped}}}"#)
}

#[tokio::test]
async fn a_60_kb_text_from_an_original_backend_is_delivered_byte_for_byte() {
    let server = TestServer::start().await;
    let mut subscriber = server.anonymous().await;
    subscriber.subscribe("match").await;
    let text = sixty_kb_text();
    let expected = format!(
        r#"{{"app":"match","member_id":-1,"text":{}}}"#,
        serde_json::to_string(&text).unwrap()
    );

    // Once with non-ASCII as UTF-8, once escaped as \uXXXX: ~70 KB and ~94 KB bodies, both
    // over the former 64 KiB limit.
    let utf8_body = serde_json::json!({"app": "match", "member_id": -1, "text": text}).to_string();
    let ascii_body = ascii_only_body("match", &text);
    assert!(utf8_body.len() > 64 * 1024, "{}", utf8_body.len());
    assert!(ascii_body.len() > 90 * 1024, "{}", ascii_body.len());
    for body in [utf8_body, ascii_body] {
        let (status, reason) = server.push(&body).await;
        assert_eq!(status, hyper::StatusCode::ACCEPTED, "{reason}");
        assert_eq!(subscriber.recv().await, expected);
    }
}
