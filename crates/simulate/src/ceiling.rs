//! The broker's own ceiling for the same shape: the same inbox queues and
//! bindings, the same message size and upload pattern, but plain lapin —
//! publish with confirms straight to the notifications exchange, consume with
//! acks — and, for churn, the same binding changes made directly. For likes
//! and comments, the shape of fan-in: many publishers, one durable queue,
//! one consumer ([`interactions`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use tokio::sync::Semaphore;

use super::{
    SimError,
    receiver::{Tally, histogram, lock, title},
    report::{InteractionCeiling, Latency},
    scenario::{Change, Scenario, user_name, youtuber_name},
};
use ytnotify::{
    broker,
    protocol::{self, CreatorEvents, Notification},
    topology,
};

/// Publishes `uploads` (YouTuber of each) as our run does — the same window
/// and rate — and returns once the broker has confirmed every one.
pub async fn publish(
    connection: &Connection,
    scenario: &Scenario,
    uploads: &[u32],
    tally: &Arc<Tally>,
    bar: &indicatif::ProgressBar,
) -> Result<(), SimError> {
    let channel = broker::confirming_channel(connection).await?;
    let window = Arc::new(Semaphore::new(scenario.upload_window as usize));
    let started = tokio::time::Instant::now();
    let mut confirms = Vec::with_capacity(uploads.len());
    for (seq, &youtuber) in uploads.iter().enumerate() {
        if scenario.upload_rate > 0.0 {
            let due = Duration::from_secs_f64(seq as f64 / scenario.upload_rate);
            tokio::time::sleep_until(started + due).await;
        }
        let permit = Arc::clone(&window)
            .acquire_owned()
            .await
            .map_err(|_| SimError::Harness("the upload window closed".to_owned()))?;
        let youtuber = youtuber_name(youtuber);
        // The same body as the server's notification, so the same size.
        let body = protocol::encode(&Notification::VideoUploaded {
            id: uuid::Uuid::new_v4(),
            youtuber: youtuber.clone(),
            video: title(seq as u32),
            uploaded_at_ms: ytnotify::store::now_ms(),
            seq: Some(seq as u64 + 1),
            stream_after: false,
        });
        tally.mark_sent(seq as u32);
        let confirm = channel
            .basic_publish(
                topology::NOTIFICATIONS.into(),
                youtuber.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                broker::persistent_json(),
            )
            .await?;
        let bar = bar.clone();
        confirms.push(tokio::spawn(async move {
            let confirmed = confirm.await;
            drop(permit);
            bar.inc(1);
            confirmed
        }));
    }
    for confirm in confirms {
        let confirmation = confirm
            .await
            .map_err(|e| SimError::Harness(format!("a publishing task failed: {e}")))??;
        if confirmation.is_nack() {
            return Err(SimError::Harness(
                "the broker refused a ceiling publish".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Makes the same binding changes directly, on as many channels as our run
/// had changes in flight (at most 32), each user's changes on one channel and
/// in order. Returns changes per second.
pub async fn binding_changes(
    connection: &Connection,
    changes: &[Change],
    window: u32,
    bar: &indicatif::ProgressBar,
) -> Result<f64, SimError> {
    let lanes = window.clamp(1, 32) as usize;
    let mut by_lane = vec![Vec::new(); lanes];
    for change in changes {
        by_lane[change.user as usize % lanes].push(*change);
    }
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for lane in by_lane {
        let channel = connection.create_channel().await?;
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            for change in lane {
                let (user, youtuber) = (user_name(change.user), youtuber_name(change.youtuber));
                if change.subscribe {
                    topology::bind_subscription(&channel, &user, &youtuber).await?;
                } else {
                    topology::unbind_subscription(&channel, &user, &youtuber).await?;
                }
                bar.inc(1);
            }
            let _ = channel.close(200, "done".into()).await;
            Ok::<(), lapin::Error>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| SimError::Harness(format!("a binding task failed: {e}")))??;
    }
    Ok(changes.len() as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// What RabbitMQ may push to the ceiling's consumer ahead of its acks: the
/// same as to each of the simulator's creator inbox consumers.
const FAN_IN_PREFETCH: u16 = 100;

/// The ceiling of the likes' and comments' shape: as many messages as our
/// run sent requests, each one creator event (the size of what one request
/// tells its creator), persistent and published with confirms by
/// `publishers` connections, at most `window` in flight, into one durable
/// queue read by one consumer that acknowledges each. Our run sends each
/// request through the server, which stores it and tells the creator's
/// inbox; this is the one hop of the broker alone.
pub async fn interactions(
    url: &str,
    messages: &[CreatorEvents],
    publishers: u32,
    window: u32,
    timeout: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<InteractionCeiling, SimError> {
    let endpoint = broker::Endpoint::new(url);
    let queue = format!(
        "simulate.ceiling.fan-in.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let reading = broker::connect(&endpoint, "simulate-ceiling-fan-in-consumer").await?;
    let channel = reading.create_channel().await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_qos(FAN_IN_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "simulate-ceiling-fan-in".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    let now = move || start.elapsed().as_nanos() as u64;
    let mut index = HashMap::with_capacity(messages.len());
    let mut bodies = Vec::with_capacity(messages.len());
    for (n, message) in messages.iter().enumerate() {
        for event in &message.events {
            index.insert(event.id(), n);
        }
        bodies.push(protocol::encode(message));
    }
    let total = bodies.len();
    // Per message: when it arrived first, and how many copies.
    let arrived: Arc<Mutex<Vec<(u64, u32)>>> = Arc::new(Mutex::new(vec![(0, 0); total]));
    let (all_in, mut all_arrived) = tokio::sync::watch::channel(total == 0);
    let consuming = {
        let arrived = Arc::clone(&arrived);
        tokio::spawn(async move {
            let mut distinct = 0;
            while let Some(Ok(delivery)) = consumer.next().await {
                let at = now();
                let ids = protocol::decode_creator_events(&delivery.data)
                    .map(|message| message.events.iter().map(|e| e.id()).collect::<Vec<_>>())
                    .unwrap_or_default();
                {
                    let mut arrived = lock(&arrived);
                    for n in ids.iter().filter_map(|id| index.get(id)) {
                        let slot = &mut arrived[*n];
                        if slot.1 == 0 {
                            slot.0 = at;
                            distinct += 1;
                        }
                        slot.1 += 1;
                    }
                }
                let _ = broker::ack(&delivery.acker, BasicAckOptions::default()).await;
                if distinct == total {
                    let _ = all_in.send(true);
                }
            }
        })
    };
    let mut connections = Vec::new();
    let mut channels = Vec::new();
    for n in 0..publishers.max(1) {
        let connection =
            broker::connect(&endpoint, &format!("simulate-ceiling-fan-in-publisher-{n}")).await?;
        channels.push(broker::confirming_channel(&connection).await?);
        connections.push(connection);
    }
    let in_flight = Arc::new(Semaphore::new(window.max(1) as usize));
    let mut sent: Vec<u64> = vec![0; total];
    let mut confirms = Vec::with_capacity(total);
    for (n, body) in bodies.iter().enumerate() {
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .map_err(|_| SimError::Harness("the interactions' window closed".to_owned()))?;
        sent[n] = now();
        let confirm = channels[n % channels.len()]
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                broker::persistent_json(),
            )
            .await?;
        let bar = bar.clone();
        confirms.push(tokio::spawn(async move {
            let confirmed = confirm.await;
            let at = now();
            drop(permit);
            bar.inc(1);
            confirmed.map(|confirmation| (confirmation.is_ack(), at))
        }));
    }
    let mut last_confirm = 0;
    let mut confirmed = 0u64;
    for confirm in confirms {
        let (acked, at) = confirm
            .await
            .map_err(|e| SimError::Harness(format!("a publishing task failed: {e}")))??;
        if acked {
            confirmed += 1;
            last_confirm = last_confirm.max(at);
        }
    }
    let _ = tokio::time::timeout(timeout, all_arrived.wait_for(|all| *all)).await;
    // A copy beyond the first would come right behind; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    consuming.abort();
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = reading.close(200, "ceiling done".into()).await;
    for connection in connections {
        let _ = connection.close(200, "ceiling done".into()).await;
    }
    let first_sent = sent.iter().copied().min().unwrap_or(0);
    let arrived = lock(&arrived).clone();
    let mut latency = histogram();
    let (mut deliveries, mut duplicates, mut last_delivery) = (0u64, 0u64, first_sent);
    for (n, &(at, copies)) in arrived.iter().enumerate() {
        if copies == 0 {
            continue;
        }
        deliveries += 1;
        duplicates += u64::from(copies - 1);
        last_delivery = last_delivery.max(at);
        let _ = latency.record((at.saturating_sub(sent[n]) / 1_000).max(1));
    }
    let per_second = |count: u64, until: u64| match until.saturating_sub(first_sent) {
        0 => 0.0,
        nanos => count as f64 / (nanos as f64 / 1e9),
    };
    Ok(InteractionCeiling {
        publishers: channels.len() as u32,
        window: window.max(1),
        publishes: total as u64,
        body_bytes: bodies.iter().map(|b| b.len() as u64).sum::<u64>() / total.max(1) as u64,
        seconds: last_delivery.max(last_confirm).saturating_sub(first_sent) as f64 / 1e9,
        confirmed_per_s: per_second(confirmed, last_confirm),
        deliveries,
        deliveries_per_s: per_second(deliveries, last_delivery),
        latency_ms: Latency::from_micros(&latency),
        lost: total as u64 - deliveries,
        duplicates,
    })
}
