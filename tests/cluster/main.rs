//! Several gateway nodes as one, over a real Redis and a real NATS: every test starts its own
//! broker server on an ephemeral port (`test-servers`) and its own nodes, and runs once per
//! broker. Waits are on events (a reply, a counter, the broker's own view of subscriptions),
//! bounded by `common::GUARD`.

#![allow(clippy::unwrap_used)] // tests: a failure should panic where it happens

#[path = "../common/mod.rs"]
mod common;

mod crash;
mod delivery;
mod faults;
mod interest;
mod recovery;
mod verbs;
mod view;

use std::time::Duration;

use common::TestServer;
use gateway_broker::BrokerSettings;
use gateway_server::{BrokerConfig, BrokerKind, ServerConfig};
use test_servers::{NatsServer, RedisServer};

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Nats,
}

/// The broker's server process.
#[derive(Debug)]
pub enum BrokerServer {
    Redis(RedisServer),
    Nats(NatsServer),
}

impl BrokerServer {
    fn start(kind: Kind) -> BrokerServer {
        match kind {
            Kind::Redis => BrokerServer::Redis(RedisServer::start()),
            Kind::Nats => BrokerServer::Nats(NatsServer::start()),
        }
    }

    /// The `[broker]` configuration that reaches this server.
    fn broker_config(&self) -> BrokerConfig {
        let kind = match self {
            BrokerServer::Redis(redis) => BrokerKind::Redis {
                urls: vec![redis.url()],
            },
            BrokerServer::Nats(nats) => BrokerKind::Nats {
                url: nats.url(),
                credentials: Default::default(),
            },
        };
        BrokerConfig {
            kind,
            ..test_timings()
        }
    }

    /// The channels (Redis) or subscriptions (NATS) under the default prefix, sorted; a
    /// channel appears once whatever its number of subscribers, a NATS subject once per
    /// subscription.
    /// The nodes' own control channels (`$ws-gateway/…`, open while a node runs) are left out.
    pub fn interest(&self) -> Vec<String> {
        let all = match self {
            BrokerServer::Redis(redis) => redis.channels("ws-gateway.*"),
            BrokerServer::Nats(nats) => nats.subscriptions("ws-gateway."),
        };
        // Not a node's interest: the cluster's control channels, and (NATS) the JetStream
        // history stream's own subscription to the history subjects.
        all.into_iter()
            .filter(|channel| {
                !channel.starts_with("ws-gateway.a.~24ws-gateway~2F")
                    && !channel.starts_with("ws-gateway.h.")
            })
            .collect()
    }

    /// Subscriptions to one channel or subject, over all nodes.
    pub fn subscribers(&self, channel: &str) -> usize {
        match self {
            BrokerServer::Redis(redis) => {
                let answer = redis.command(&["PUBSUB", "NUMSUB", channel]).unwrap();
                answer.lines().nth(1).unwrap_or("0").parse().unwrap()
            }
            BrokerServer::Nats(nats) => nats
                .subscriptions(channel)
                .iter()
                .filter(|s| *s == channel)
                .count(),
        }
    }

    pub fn stop(&mut self) {
        match self {
            BrokerServer::Redis(redis) => redis.stop(),
            BrokerServer::Nats(nats) => nats.stop(),
        }
    }

    pub fn restart(&mut self) {
        match self {
            BrokerServer::Redis(redis) => redis.restart(),
            BrokerServer::Nats(nats) => nats.restart(),
        }
    }
}

/// The tests' broker timings: quick reconnects and reports, so faults resolve in moments.
fn test_timings() -> BrokerConfig {
    BrokerConfig {
        kind: BrokerKind::Local,
        settings: BrokerSettings {
            node_id: String::new(),
            reconnect_max: Duration::from_millis(500),
            ..BrokerSettings::default()
        },
        report_interval: Duration::from_millis(200),
        subscribe_timeout: Duration::from_secs(3),
    }
}

/// A Redis broker over these shards, with the tests' timings.
pub fn redis_config(urls: &[String]) -> BrokerConfig {
    BrokerConfig {
        kind: BrokerKind::Redis {
            urls: urls.to_vec(),
        },
        ..test_timings()
    }
}

/// A broker server and gateway nodes connected to it.
pub(crate) struct Cluster {
    pub(crate) broker: BrokerServer,
    pub(crate) nodes: Vec<TestServer>,
}

impl Cluster {
    pub async fn start(kind: Kind, nodes: usize) -> Cluster {
        let broker = BrokerServer::start(kind);
        let mut cluster = Cluster {
            broker,
            nodes: Vec::new(),
        };
        for _ in 0..nodes {
            cluster.add_node().await;
        }
        cluster
    }

    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            broker: self.broker.broker_config(),
            ..ServerConfig::default()
        }
    }

    pub async fn add_node(&mut self) {
        let node = TestServer::with_config(self.config()).await;
        self.nodes.push(node);
    }
}

/// The envelope a client receives for a push.
pub fn envelope(app: &str, member_id: i64, text: &str) -> String {
    format!(r#"{{"app":"{app}","member_id":{member_id},"text":"{text}"}}"#)
}

/// One `#[tokio::test]` per broker for a test body `async fn(Kind)`.
macro_rules! per_broker {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$name(crate::Kind::Redis).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn nats() {
                    super::$name(crate::Kind::Nats).await;
                }
            }
        )*
    };
}
pub(crate) use per_broker;
