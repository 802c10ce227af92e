//! The two servers the tool speaks to: ws-gateway (its own protocol) and nginx+Nchan.

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// ws-gateway: upgrade on `/`, auth + subscribe messages, `POST /push`.
    Gateway,
    /// nginx + Nchan: upgrade on `/sub/<app>` (no auth, no subscribe), `POST /pub/<app>`.
    Nchan,
}

impl Target {
    /// The path a subscriber upgrades on.
    pub fn subscribe_path(self, app: &str) -> String {
        match self {
            Target::Gateway => "/".to_owned(),
            Target::Nchan => format!("/sub/{app}"),
        }
    }

    /// Messages a subscriber sends after the upgrade (none for Nchan), and how many replies
    /// it then waits for. With `recover`, a ws-gateway subscriber asks for stream positions
    /// (`{"app":..,"recover":true}`): its pushes carry `offset` and `epoch` (issue 13).
    pub fn setup_messages(self, app: &str, recover: bool) -> (Vec<String>, usize) {
        match self {
            Target::Gateway => (
                vec![
                    r#"{"member_id":-1,"token":""}"#.to_owned(),
                    if recover {
                        format!(r#"{{"app":"{app}","recover":true}}"#)
                    } else {
                        format!(r#"{{"app":"{app}"}}"#)
                    },
                ],
                2,
            ),
            Target::Nchan => (Vec::new(), 0),
        }
    }

    /// The request path and body of a push carrying `text`.
    pub fn push(self, app: &str, text: &str) -> (String, String) {
        match self {
            Target::Gateway => (
                "/push".to_owned(),
                format!(r#"{{"app":"{app}","text":"{text}"}}"#),
            ),
            Target::Nchan => (format!("/pub/{app}"), text.to_owned()),
        }
    }

    /// The pushed text inside a delivered frame.
    pub fn delivered_text(self, payload: &[u8]) -> Option<&[u8]> {
        match self {
            // {"app":"bench","member_id":-1,"text":"<text>"}, with `,"offset":N,"epoch":"e"`
            // before the `}` for a subscriber with positions: the text has no quote in it.
            Target::Gateway => {
                let marker = b"\"text\":\"";
                let start = payload.windows(marker.len()).position(|w| w == marker)? + marker.len();
                let len = payload.get(start..)?.iter().position(|&b| b == b'"')?;
                payload.get(start..start + len)
            }
            Target::Nchan => Some(payload),
        }
    }

    /// Whether a delivered frame carries a stream position (issue 13): the seed frame ends
    /// `"}` right after the text, a positioned one with `,"epoch":"e"}`.
    pub fn is_positioned(self, payload: &[u8]) -> bool {
        let marker = b",\"epoch\":\"";
        match self {
            Target::Gateway => payload.windows(marker.len()).any(|w| w == marker),
            Target::Nchan => false,
        }
    }
}
