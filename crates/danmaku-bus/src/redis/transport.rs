//! The transport: how the bus reaches Redis. The rest of the Redis bus
//! speaks in pipelines (on the command connection) and channels (on the
//! pub/sub link) and never sees a socket, a URL or a client.
//!
//! This is the seam where a Redis Cluster transport plugs in later: it
//! would route each pipeline to the node owning its room's slot (every key
//! of one operation is about one room, or is a fleet key) and keep one
//! sharded pub/sub link per node, each read by a single task so a room's
//! events stay in order. Nothing above this module would change.
//!
//! Invariants: no pattern subscription, ever (an instance only receives the
//! rooms it subscribed); every call here is bounded by the operation timeout,
//! so a silent Redis never hangs a caller.

use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use ::redis::{AsyncConnectionConfig, Client, Msg, RedisError, Value};
use futures_util::StreamExt;

use crate::BusError;

/// Most channels named in one `SUBSCRIBE` or `UNSUBSCRIBE`, so a reconnect
/// with many rooms does not build one huge command.
const CHANNELS_PER_COMMAND: usize = 512;

/// Opens connections to one Redis.
#[derive(Debug)]
pub(crate) struct Transport {
    client: Client,
    /// Bound on connecting and on each command.
    timeout: Duration,
}

impl Transport {
    /// Checks the URL; connects nothing.
    pub(crate) fn open(url: &str, timeout: Duration) -> Result<Transport, BusError> {
        let client =
            Client::open(url).map_err(|e| BusError::Config(format!("redis url {url:?}: {e}")))?;
        Ok(Transport { client, timeout })
    }

    /// A new multiplexed command connection whose every command is bounded
    /// by the timeout.
    pub(crate) async fn command_connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A new pub/sub link, subscribed to nothing yet.
    pub(crate) async fn pubsub_link(&self) -> Result<PubSubLink, String> {
        match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => {
                let (sink, stream) = pubsub.split();
                Ok(PubSubLink {
                    sink,
                    stream,
                    timeout: self.timeout,
                })
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connecting timed out".to_owned()),
        }
    }
}

/// One pub/sub connection: changes of subscription on one side, the
/// messages of every subscribed channel, in order, on the other.
pub(crate) struct PubSubLink {
    sink: PubSubSink,
    stream: PubSubStream,
    timeout: Duration,
}

impl PubSubLink {
    /// Subscribes `channels`, many per command, each command confirmed.
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
            let sent = tokio::time::timeout(self.timeout, self.sink.subscribe(chunk)).await;
            confirmed("SUBSCRIBE", sent)?;
        }
        Ok(())
    }

    /// Unsubscribes `channels`, many per command, each command confirmed.
    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), String> {
        for chunk in channels.chunks(CHANNELS_PER_COMMAND) {
            let sent = tokio::time::timeout(self.timeout, self.sink.unsubscribe(chunk)).await;
            confirmed("UNSUBSCRIBE", sent)?;
        }
        Ok(())
    }

    /// Checks the connection still answers.
    pub(crate) async fn ping(&mut self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.sink.ping::<Value>()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("ping timed out".to_owned()),
        }
    }

    /// The next message of any subscribed channel; `None` once the
    /// connection is closed.
    pub(crate) async fn next(&mut self) -> Option<Msg> {
        self.stream.next().await
    }
}

/// A subscription change's outcome as the link reports it.
fn confirmed(
    what: &str,
    outcome: Result<Result<(), RedisError>, tokio::time::error::Elapsed>,
) -> Result<(), String> {
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}
