//! What a dashboard has received and acknowledges once a frame showing it
//! has been drawn: a notification, a window of a creator's feed.

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;

use crate::client::{creator::Window, notifications::Received};

/// Something that leaves its queue once shown.
pub(crate) trait Acknowledge: Send + 'static {
    fn acknowledge(self) -> impl Future<Output = ()> + Send;
}

impl Acknowledge for Received {
    async fn acknowledge(self) {
        // A failure means the connection is gone: it comes again, and the
        // session recognises it.
        let _ = self.ack().await;
    }
}

impl Acknowledge for Window {
    async fn acknowledge(self) {
        self.ack().await;
    }
}

/// How long a closing dashboard waits for its acknowledgements.
const CLOSING: Duration = Duration::from_secs(5);

/// What was received and not yet drawn, and the acknowledgements under way.
pub(crate) struct AckWhenDrawn<T> {
    received: Vec<T>,
    acking: Vec<JoinHandle<()>>,
}

impl<T: Acknowledge> AckWhenDrawn<T> {
    pub fn new() -> Self {
        AckWhenDrawn {
            received: Vec::new(),
            acking: Vec::new(),
        }
    }

    /// Received: acknowledged after the next frame.
    pub fn received(&mut self, item: T) {
        self.received.push(item);
    }

    /// A frame was drawn: what it showed leaves its queue, in a task (the
    /// event loop never waits on the broker).
    pub fn drawn(&mut self) {
        if self.received.is_empty() {
            return;
        }
        let shown = std::mem::take(&mut self.received);
        self.acking.retain(|task| !task.is_finished());
        self.acking.push(tokio::spawn(async move {
            for item in shown {
                item.acknowledge().await;
            }
        }));
    }

    /// The dashboard closes: what was never drawn stays in its queue for
    /// next time; what was drawn is acknowledged before the connection
    /// closes (waiting at most [`CLOSING`]).
    pub async fn close(self) {
        drop(self.received);
        let _ = tokio::time::timeout(CLOSING, async {
            for task in self.acking {
                let _ = task.await;
            }
        })
        .await;
    }
}
