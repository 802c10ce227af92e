//! History in Redis: the two Lua scripts (`publish.lua`, `read.lua`), their keys and
//! arguments, and what their answers mean. See the module docs of [`super`] ("History") and
//! docs/protocol.md ("History in a cluster", "Redis") for the layout and the guarantees.

use std::sync::OnceLock;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Cmd, RedisError, Value};
use bytes::Bytes;
use gateway_core::{Epoch, HistoryRead, Position, Publication, Since, StreamLimits, Topic};

use super::{RedisBroker, not_connected, sent_and_failed};
use crate::{BoxFuture, BrokerError, Published, wire};

/// A Lua script, known to a server by its SHA-1 digest once loaded there.
pub(super) struct Script {
    name: &'static str,
    body: &'static str,
    /// The digest, as the first `SCRIPT LOAD` answered it (it depends on the body alone, so
    /// one serves every server). Until then, calls are sent as `EVAL`.
    sha: OnceLock<String>,
}

impl Script {
    const fn new(name: &'static str, body: &'static str) -> Self {
        Script {
            name,
            body,
            sha: OnceLock::new(),
        }
    }
}

/// Appends a push to its stream's log, gives it its position and publishes it.
pub(super) static PUBLISH: Script = Script::new("publish", include_str!("publish.lua"));
/// Reads a stream's run, oldest kept offset and kept pushes.
pub(super) static READ: Script = Script::new("read", include_str!("read.lua"));

/// The longest time to live written, about 100 years: `PEXPIRE` refuses one that overflows
/// the server's clock.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// Loads every script on `connection`, so that `EVALSHA` finds them. Called on each new
/// publisher connection: a restarted (or flushed) server has forgotten them.
pub(super) async fn load(connection: &mut MultiplexedConnection) -> Result<(), RedisError> {
    for script in [&PUBLISH, &READ] {
        let sha: String = ::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script.body)
            .query_async(connection)
            .await?;
        let known = script.sha.get_or_init(|| sha.clone());
        if *known != sha {
            tracing::warn!(script = script.name, %sha, %known, "a server digests a script differently");
        }
    }
    Ok(())
}

/// One run of a script: its keys and arguments.
pub(super) struct Call {
    script: &'static Script,
    keys: [String; 2],
    args: Vec<Vec<u8>>,
}

impl Call {
    /// `EVALSHA` when the digest is known, else `EVAL` (which also loads the script).
    pub(super) fn command(&self) -> Cmd {
        match self.script.sha.get() {
            Some(sha) => self.build("EVALSHA", sha),
            None => self.eval(),
        }
    }

    /// `EVAL`: for a server that answered `NOSCRIPT` (the script did not run, so running it
    /// now cannot run it twice).
    pub(super) fn eval(&self) -> Cmd {
        self.build("EVAL", self.script.body)
    }

    fn build(&self, verb: &str, script: &str) -> Cmd {
        let mut command = ::redis::cmd(verb);
        command.arg(script).arg(self.keys.len());
        for key in &self.keys {
            command.arg(key);
        }
        for arg in &self.args {
            command.arg(&arg[..]);
        }
        command
    }

    /// Runs the call on `connection`; on `NOSCRIPT`, once more as `EVAL`.
    pub(super) async fn run(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<Value, RedisError> {
        let answer = connection.send_packed_command(&self.command()).await;
        if answer_is_no_script(&answer) {
            return connection.send_packed_command(&self.eval()).await;
        }
        answer
    }
}

/// Whether the server answered that it does not have the script: the script did not run.
pub(super) fn answer_is_no_script(answer: &Result<Value, RedisError>) -> bool {
    match answer {
        Ok(value) => is_no_script(value),
        Err(error) => error.code() == Some("NOSCRIPT"),
    }
}

pub(super) fn is_no_script(value: &Value) -> bool {
    matches!(value, Value::ServerError(error) if error.code() == "NOSCRIPT")
}

/// The keys of `topic`'s stream: its meta hash (epoch, offset) and its log. Channel names
/// escape every `.` of an app name, so no channel or key of another topic ends this way.
fn keys(prefix: &str, topic: &Topic) -> (String, [String; 2]) {
    let channel = wire::channel(prefix, topic);
    let keys = [format!("{channel}.meta"), format!("{channel}.log")];
    (channel, keys)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TTL_MS)
}

/// The call that publishes `publication` to `topic` with a position. `meta_ttl`: how long the
/// stream's run outlives its last push (at least as long as its log); `server_run`: the run
/// of the server it goes to (see [`super::publisher::Live`]).
pub(super) fn publish_call(
    prefix: &str,
    topic: &Topic,
    publication: &Publication,
    limits: StreamLimits,
    meta_ttl: Duration,
    server_run: &str,
) -> Call {
    let (channel, keys) = keys(prefix, topic);
    // Used only if the stream has no run: drawn per push, since the node cannot know.
    let epoch = Epoch::from_random(fastrand::u64(..));
    let ttl = millis(limits.ttl);
    let args = vec![
        epoch.as_str().as_bytes().to_vec(),
        limits.size.to_string().into_bytes(),
        ttl.to_string().into_bytes(),
        millis(meta_ttl).max(ttl).to_string().into_bytes(),
        channel.into_bytes(),
        wire::head(publication, true),
        publication.frame.as_bytes().to_vec(),
        server_run.as_bytes().to_vec(),
    ];
    Call {
        script: &PUBLISH,
        keys,
        args,
    }
}

/// The position `publish.lua` answered with.
pub(super) fn published(answer: Value) -> Result<Published, BrokerError> {
    let bad = |answer: &Value| {
        BrokerError::Failed(format!(
            "unexpected answer to the publish script: {answer:?}"
        ))
    };
    let position = match &answer {
        Value::Array(items) => match &items[..] {
            [Value::Int(offset), Value::BulkString(epoch)] => {
                let offset = u64::try_from(*offset).ok().filter(|o| *o > 0);
                let epoch = std::str::from_utf8(epoch)
                    .ok()
                    .and_then(|e| Epoch::parse(e).ok());
                offset.zip(epoch).map(|(o, e)| Position::new(o, e))
            }
            _ => None,
        },
        Value::ServerError(error) => {
            return Err(BrokerError::Failed(format!(
                "redis refused the publish script: {error}"
            )));
        }
        _ => None,
    };
    position.map(Published::at).ok_or_else(|| bad(&answer))
}

/// The call that reads `topic`'s history after `since`, at most `limit` pushes.
fn read_call(
    prefix: &str,
    topic: &Topic,
    since: Option<&Since>,
    limit: usize,
    limits: StreamLimits,
) -> Call {
    let (_, keys) = keys(prefix, topic);
    // `None` and `Since::Start` both read from the oldest kept push of whatever run is
    // current; a position reads only in its own run.
    let (after, epoch) = match since {
        None | Some(Since::Start) => (0, ""),
        Some(Since::After(position)) => (position.offset, position.epoch.as_str()),
    };
    // COUNT is a signed 64-bit integer for Redis.
    let limit = limit.min(i64::MAX as usize);
    Call {
        script: &READ,
        keys,
        args: vec![
            after.to_string().into_bytes(),
            epoch.as_bytes().to_vec(),
            limit.to_string().into_bytes(),
            millis(limits.ttl).to_string().into_bytes(),
        ],
    }
}

/// What `read.lua` answered, as the contract's [`HistoryRead`].
fn history_read(answer: Value) -> Result<HistoryRead, BrokerError> {
    let bad =
        |why: &str| BrokerError::Failed(format!("unexpected answer to the read script: {why}"));
    let items = match answer {
        Value::Array(items) => items,
        Value::ServerError(error) => {
            return Err(BrokerError::Failed(format!(
                "redis refused the read script: {error}"
            )));
        }
        other => return Err(bad(&format!("{other:?}"))),
    };
    let mut items = items.into_iter();
    let (epoch, top, first) = match (items.next(), items.next(), items.next()) {
        (None, ..) => return Ok(HistoryRead::default()),
        (Some(Value::BulkString(epoch)), Some(Value::Int(top)), Some(Value::Int(first))) => {
            (epoch, top, first)
        }
        other => return Err(bad(&format!("{other:?}"))),
    };
    let epoch = std::str::from_utf8(&epoch)
        .ok()
        .and_then(|e| Epoch::parse(e).ok())
        .ok_or_else(|| bad("an invalid epoch"))?;
    let top = u64::try_from(top)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| bad("an invalid offset"))?;
    let first = u64::try_from(first).ok().filter(|f| *f > 0);
    let publications = items
        .map(|item| {
            let Value::BulkString(message) = item else {
                return Err(bad("an entry that is not a message"));
            };
            let publication = wire::decode(Bytes::from(message))
                .map_err(|e| BrokerError::Failed(format!("an unreadable history entry: {e}")))?;
            match &publication.position {
                Some(position) if position.epoch == epoch => Ok(publication),
                _ => Err(bad("an entry of another run")),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HistoryRead {
        top: Some(Position::new(top, epoch)),
        first,
        publications,
    })
}

impl RedisBroker {
    /// [`crate::Broker::history`]: one run of `read.lua` on the app's shard, over the
    /// publisher connection. An app without history has no run: an empty read.
    pub(super) fn read_history(
        &self,
        topic: &Topic,
        since: Option<Since>,
        limit: usize,
    ) -> BoxFuture<'static, Result<HistoryRead, BrokerError>> {
        let limits = self.settings.history.limits(topic.app());
        if !limits.enabled() {
            return Box::pin(async { Ok(HistoryRead::default()) });
        }
        let shard = self.shard(topic);
        let mut connection = match shard.publisher.connection() {
            Some(connection) if !self.shared.is_closed() => connection,
            _ => {
                let error = not_connected(&shard.addr);
                return Box::pin(async move { Err(error) });
            }
        };
        let call = read_call(&self.settings.prefix, topic, since.as_ref(), limit, limits);
        let timeout = self.settings.publish_timeout;
        let publisher = shard.publisher.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, call.run(&mut connection)).await {
                Err(_) => Err(BrokerError::TimedOut(timeout)),
                Ok(Ok(answer)) => history_read(answer),
                Ok(Err(error)) => Err(sent_and_failed(&error, &publisher)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_read_answer_becomes_the_contracts_read() {
        assert_eq!(
            history_read(Value::Array(Vec::new())).unwrap(),
            HistoryRead::default()
        );
        let mut message = b"\x02\0\0\0\0\0\0\0\x07\0\x02ab3 e1\n".to_vec();
        message.extend_from_slice(br#"{"app":"ab","member_id":7,"text":"t"}"#);
        let read = history_read(Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::Int(3),
            Value::Int(2),
            Value::BulkString(message.clone()),
        ]))
        .unwrap();
        let e1 = Epoch::parse("e1").unwrap();
        assert_eq!(read.top, Some(Position::new(3, e1.clone())));
        assert_eq!(read.first, Some(2));
        assert_eq!(read.publications.len(), 1);
        assert_eq!(read.publications[0].position, Some(Position::new(3, e1)));
        // Nothing kept: first 0 is None. An entry of another run is an error, not a gap.
        let read = history_read(Value::Array(vec![
            Value::BulkString(b"e1".to_vec()),
            Value::Int(3),
            Value::Int(0),
        ]))
        .unwrap();
        assert_eq!(read.first, None);
        assert!(
            history_read(Value::Array(vec![
                Value::BulkString(b"e2".to_vec()),
                Value::Int(3),
                Value::Int(2),
                Value::BulkString(message),
            ]))
            .is_err()
        );
    }

    #[test]
    fn a_publish_answer_is_a_position() {
        let answer = published(Value::Array(vec![
            Value::Int(42),
            Value::BulkString(b"e1".to_vec()),
        ]))
        .unwrap();
        assert_eq!(
            answer.position,
            Some(Position::new(42, Epoch::parse("e1").unwrap()))
        );
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(0), Value::BulkString(b"e1".to_vec())]),
            Value::Array(vec![Value::Int(1), Value::BulkString(b"e 1".to_vec())]),
        ] {
            assert!(published(bad).is_err());
        }
    }
}
