//! The `youtuber` client: upload a video, and see what became of them.

use crate::{
    client::{
        Client,
        user::{Channel, into_channel},
    },
    error::{Error, Result},
    protocol::{Reply, Request},
};

/// `youtuber`'s subscribers, and its newest videos with their counts.
pub async fn stats(client: &Client, youtuber: &str) -> Result<Channel> {
    let request = Request::Stats {
        youtuber: youtuber.to_owned(),
    };
    into_channel(client.call(request).await?)
}

/// Uploads `video` as `youtuber`. Returns once the server has stored the video
/// and the broker has confirmed the notification to every subscriber's inbox.
pub async fn publish_video(client: &Client, youtuber: &str, video: &str) -> Result<()> {
    let request = Request::Upload {
        youtuber: youtuber.to_owned(),
        video: video.to_owned(),
    };
    match client.call(request).await? {
        Reply::Done { .. } => Ok(()),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}
