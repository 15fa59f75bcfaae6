//! The `youtuber` client: upload a video.

use crate::{
    client::Client,
    error::{Error, Result},
    protocol::{Reply, Request},
};

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
