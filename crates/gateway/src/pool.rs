//! The connections to RabbitMQ that event streams read on. Each stream
//! takes two channels (the user's history and inbox) for as long as it is
//! open; a connection carries at most 2,047 channels, and one connection's
//! traffic goes through one process of the broker. So streams are spread
//! over connections, [`STREAMS_PER_CONNECTION`] at most on each by default, opened as
//! they are needed.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use ytnotify::{broker::Endpoint, error::Result, link::Link};

/// Event streams per connection at most (two channels each), unless
/// configured otherwise.
pub const STREAMS_PER_CONNECTION: usize = 250;

/// The pool: connections, each with the number of streams on it.
pub(crate) struct Pool {
    endpoint: Endpoint,
    per_connection: usize,
    links: tokio::sync::Mutex<Vec<(Link, Arc<AtomicUsize>)>>,
}

/// A stream's place on a connection, given back when dropped.
pub(crate) struct Lease {
    link: Link,
    streams: Arc<AtomicUsize>,
}

impl Lease {
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub(crate) fn new(endpoint: Endpoint, per_connection: usize) -> Pool {
        Pool {
            endpoint,
            per_connection: per_connection.max(1),
            links: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// A place for one more stream: on the least busy connection, or on a
    /// new one when every connection is full.
    pub(crate) async fn lease(&self) -> Result<Lease> {
        let mut links = self.links.lock().await;
        let least = links
            .iter()
            .min_by_key(|(_, streams)| streams.load(Ordering::Relaxed))
            .filter(|(_, streams)| streams.load(Ordering::Relaxed) < self.per_connection);
        let (link, streams) = match least {
            Some((link, streams)) => (link.clone(), Arc::clone(streams)),
            None => {
                let name = format!("gateway streams {}", links.len() + 1);
                let link = Link::connect(&self.endpoint, &name).await?;
                let streams = Arc::new(AtomicUsize::new(0));
                links.push((link.clone(), Arc::clone(&streams)));
                (link, streams)
            }
        };
        streams.fetch_add(1, Ordering::Relaxed);
        Ok(Lease { link, streams })
    }

    /// How many connections the pool holds.
    pub(crate) async fn connections(&self) -> usize {
        self.links.lock().await.len()
    }

    pub(crate) async fn close(&self) {
        for (link, _) in self.links.lock().await.drain(..) {
            link.close().await;
        }
    }
}
