//! Publishing: a `PUBLISH` of wire format version 1 for an app without history, one run of
//! `publish.lua` (position, log, `PUBLISH` of version 2, in one step) for an app with history.
//! Both answer on the shard's publisher connection; the error mapping is the module's (see
//! [`super`], "What a failed publication means").

use std::collections::HashSet;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Cmd, Value};
use gateway_core::{Publication, Topic};

use super::history::{self, Call};
use super::publisher::Live;
use super::{Publisher, RedisBroker, not_connected, sent_and_failed};
use crate::{BoxFuture, BrokerError, Published, Publishing, wire};

/// What one publication sends.
enum Outgoing {
    /// `PUBLISH channel message` (version 1): the app keeps no history.
    Plain(Cmd),
    /// A run of `publish.lua`: the app keeps history.
    Script(Call),
}

impl Outgoing {
    fn command(&self) -> Cmd {
        match self {
            Outgoing::Plain(command) => command.clone(),
            Outgoing::Script(call) => call.command(),
        }
    }

    fn answer(&self, answer: Value) -> Result<Published, BrokerError> {
        match self {
            Outgoing::Plain(_) => publish_answer(answer),
            Outgoing::Script(_) => history::published(answer),
        }
    }

    async fn send(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<Value, ::redis::RedisError> {
        match self {
            Outgoing::Plain(command) => connection.send_packed_command(command).await,
            Outgoing::Script(call) => call.run(connection).await,
        }
    }
}

/// The number of subscribers that got it (zero is a success too), or why not.
fn publish_answer(answer: Value) -> Result<Published, BrokerError> {
    match answer {
        Value::Int(_) => Ok(Published::new()),
        other => Err(BrokerError::Failed(format!(
            "unexpected answer to PUBLISH: {other:?}"
        ))),
    }
}

/// One shard's share of a [`RedisBroker::publish_many`]: the publications' places in the
/// request, their topics and what each sends.
struct Group {
    shard: usize,
    /// The shard's connection, taken once for the whole group (its scripts name its server's
    /// run); `None`: not connected.
    live: Option<Live>,
    items: Vec<(usize, Topic, Outgoing)>,
}

impl RedisBroker {
    /// What publishing `publication` sends to a server whose run is `server_run`.
    fn outgoing(&self, topic: &Topic, publication: &Publication, server_run: &str) -> Outgoing {
        let limits = self.settings.history.limits(topic.app());
        if limits.enabled() {
            Outgoing::Script(history::publish_call(
                &self.settings.prefix,
                topic,
                publication,
                limits,
                self.options.history_meta_ttl,
                server_run,
            ))
        } else {
            let mut command = ::redis::cmd("PUBLISH");
            command
                .arg(wire::channel(&self.settings.prefix, topic))
                .arg(&wire::encode(publication)[..]);
            Outgoing::Plain(command)
        }
    }

    /// [`crate::Broker::publish`].
    pub(super) fn publish_one(&self, topic: &Topic, publication: Publication) -> Publishing {
        let shard = self.shard(topic);
        let (connection, server_run) = match shard.publisher.live() {
            Some(live) if !self.shared.is_closed() => (live.connection, live.server_run),
            _ => return Publishing::Done(Err(not_connected(&shard.addr))),
        };
        let outgoing = self.outgoing(topic, &publication, &server_run);
        let timeout = self.settings.publish_timeout;
        let publisher = shard.publisher.clone();
        Publishing::Pending(Box::pin(async move {
            let mut connection = connection;
            match tokio::time::timeout(timeout, outgoing.send(&mut connection)).await {
                Err(_) => Err(BrokerError::TimedOut(timeout)),
                Ok(Ok(answer)) => outgoing.answer(answer),
                Ok(Err(error)) => Err(sent_and_failed(&error, &publisher)),
            }
        }))
    }

    /// [`crate::Broker::publish_all`]: one pipeline per shard, in the order given (Redis runs
    /// one connection's commands in order, and the pipeline goes to the connection's queue as
    /// one message); the shards' pipelines are sent at once, since a topic lives on one shard.
    /// A shard that is not connected fails its publications with `Unavailable`; a pipeline
    /// that fails after it was handed over fails all of its publications alike.
    ///
    /// Scripts answered `NOSCRIPT` (the server lost them since the connection loaded them)
    /// did not run: they are sent again as `EVAL` in a second pipeline, in order, unless a
    /// later publication of the same topic in the first one ran, which the retry would
    /// overtake; those fail with `Unavailable` (nothing of them was published).
    pub(super) fn publish_many(
        &self,
        publications: Vec<(Topic, Publication)>,
    ) -> BoxFuture<'_, Vec<Result<Published, BrokerError>>> {
        let count = publications.len();
        let closed = self.shared.is_closed();
        let mut groups: Vec<Group> = Vec::new();
        for (place, (topic, publication)) in publications.into_iter().enumerate() {
            let shard = wire::shard_of(topic.app(), self.shards.len());
            let group = match groups.iter().position(|g| g.shard == shard) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(Group {
                        shard,
                        live: self.shards[shard].publisher.live().filter(|_| !closed),
                        items: Vec::new(),
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            let server_run = group.live.as_ref().map_or("", |live| &live.server_run);
            let outgoing = self.outgoing(&topic, &publication, server_run);
            group.items.push((place, topic, outgoing));
        }
        let timeout = self.settings.publish_timeout;
        let sends: Vec<_> = groups
            .into_iter()
            .map(|mut group| {
                let shard = &self.shards[group.shard];
                let connection = group.live.take().map(|live| live.connection);
                let (publisher, addr) = (shard.publisher.clone(), shard.addr.clone());
                async move {
                    let Some(mut connection) = connection else {
                        let error = not_connected(&addr);
                        return outcomes_all(&group.items, &error);
                    };
                    let sent = send_group(&mut connection, &group.items, &publisher);
                    match tokio::time::timeout(timeout, sent).await {
                        Err(_) => outcomes_all(&group.items, &BrokerError::TimedOut(timeout)),
                        Ok(Err(error)) => outcomes_all(&group.items, &error),
                        Ok(Ok(outcomes)) => outcomes,
                    }
                }
            })
            .collect();
        Box::pin(async move {
            let mut outcomes: Vec<Option<Result<Published, BrokerError>>> =
                (0..count).map(|_| None).collect();
            for group in futures_util::future::join_all(sends).await {
                for (place, outcome) in group {
                    outcomes[place] = Some(outcome);
                }
            }
            outcomes
                .into_iter()
                .map(|outcome| {
                    outcome.unwrap_or_else(|| {
                        Err(BrokerError::Failed("no answer to this publication".into()))
                    })
                })
                .collect()
        })
    }
}

fn outcomes_all(
    items: &[(usize, Topic, Outgoing)],
    error: &BrokerError,
) -> Vec<(usize, Result<Published, BrokerError>)> {
    items
        .iter()
        .map(|(place, _, _)| (*place, Err(error.clone())))
        .collect()
}

/// Sends one shard's pipeline (and the retry of its `NOSCRIPT`s); the outcome of each item,
/// or the error that failed the whole pipeline.
async fn send_group(
    connection: &mut MultiplexedConnection,
    items: &[(usize, Topic, Outgoing)],
    publisher: &Publisher,
) -> Result<Vec<(usize, Result<Published, BrokerError>)>, BrokerError> {
    let mut pipeline = ::redis::pipe();
    for (_, _, outgoing) in items {
        pipeline.add_command(outgoing.command());
    }
    let answers = connection
        .send_packed_commands(&pipeline, 0, items.len())
        .await
        .map_err(|error| sent_and_failed(&error, publisher))?;
    let mut answers: Vec<Result<Value, BrokerError>> = answers.into_iter().map(Ok).collect();

    // Which NOSCRIPTs may run again: those with no later publication of their topic that ran
    // (walking backwards, a topic is "overtaken" once one of its answers was not NOSCRIPT).
    let mut ran_later: HashSet<&Topic> = HashSet::new();
    let mut retry = Vec::new();
    for (index, (_, topic, outgoing)) in items.iter().enumerate().rev() {
        let Some(Ok(answer)) = answers.get(index) else {
            continue;
        };
        match outgoing {
            Outgoing::Script(call) if history::is_no_script(answer) => {
                if ran_later.contains(topic) {
                    answers[index] = Err(BrokerError::Unavailable(
                        "redis lost the publish script while a later push of the stream ran; \
                         this one was not published"
                            .into(),
                    ));
                } else {
                    retry.push((index, call));
                }
            }
            _ => {
                ran_later.insert(topic);
            }
        }
    }
    if !retry.is_empty() {
        retry.reverse();
        let mut pipeline = ::redis::pipe();
        for (_, call) in &retry {
            pipeline.add_command(call.eval());
        }
        match connection
            .send_packed_commands(&pipeline, 0, retry.len())
            .await
        {
            Ok(retried) => {
                for ((index, _), answer) in retry.iter().zip(retried) {
                    answers[*index] = Ok(answer);
                }
            }
            Err(error) => {
                let error = sent_and_failed(&error, publisher);
                for (index, _) in &retry {
                    answers[*index] = Err(error.clone());
                }
            }
        }
    }
    Ok(items
        .iter()
        .zip(
            answers
                .into_iter()
                .map(Some)
                .chain(std::iter::repeat_with(|| None)),
        )
        .map(|((place, _, outgoing), answer)| {
            let outcome = match answer {
                Some(Ok(answer)) => outgoing.answer(answer),
                Some(Err(error)) => Err(error),
                None => Err(BrokerError::Failed("no answer to this publication".into())),
            };
            (*place, outcome)
        })
        .collect())
}
