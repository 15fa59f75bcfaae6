//! Likes, dislikes, comments and the creator's feed, as users and YouTubers
//! run them: the real binaries, their exact lines and exit codes.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde_json::Value;
use ytnotify::{
    client::user,
    protocol::{Reaction, Request},
};
use ytnotify_testkit::{TestVhost, within};

use crate::cli::{Running, USER, YOUTUBER, assert_one_line_error, run, start_server};

/// The id of `youtuber`'s newest video, from `user videos --json`.
async fn newest_video(vhost: &TestVhost, youtuber: &str) -> String {
    let listing = run(USER, vhost, &["videos", youtuber, "--json"]).await;
    assert_eq!(listing.code, 0, "{}", listing.stderr);
    let json: Value = serde_json::from_str(&listing.stdout).expect("JSON");
    json["videos"][0]["id"].as_str().expect("an id").to_owned()
}

async fn success(vhost: &TestVhost, program: &str, args: &[&str]) -> String {
    let output = run(program, vhost, args).await;
    assert_eq!(
        (output.code, output.stdout.as_str()),
        (0, "SUCCESS\n"),
        "{args:?}: {}",
        output.stderr
    );
    output.stderr
}

#[tokio::test]
async fn every_interaction_reaches_the_creators_feed_as_one_exact_line() {
    let vhost = TestVhost::new("interactions");
    let server = start_server(&vhost).await;
    success(&vhost, YOUTUBER, &["bob", "Hello", "world"]).await;

    let listing = run(USER, &vhost, &["videos", "bob"]).await;
    assert_eq!(listing.code, 0, "{}", listing.stderr);
    let lines: Vec<&str> = listing.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "ID        UPLOADED          LIKES  DISLIKES  COMMENTS  TITLE"
    );
    assert_eq!(lines.len(), 2, "{}", listing.stdout);
    let id = newest_video(&vhost, "bob").await;
    let short = &id[..8];
    assert!(lines[1].starts_with(short), "{}", lines[1]);
    assert!(
        lines[1].ends_with("      0         0         0  Hello world"),
        "{}",
        lines[1]
    );

    let mut feed = Running::spawn(YOUTUBER, &vhost, &["watch", "bob"]);
    success(&vhost, USER, &["subscribe", "alice", "bob"]).await;
    feed.expect("alice subscribed to you").await;
    // A prefix of the id, in capitals as someone may copy it.
    success(&vhost, USER, &["like", "alice", &short[..5].to_uppercase()]).await;
    feed.expect("alice liked \"Hello world\"").await;
    success(&vhost, USER, &["dislike", "carol", short]).await;
    feed.expect("carol disliked \"Hello world\"").await;
    success(
        &vhost,
        USER,
        &["comment", "alice", &id, "Nice", "video,", "\"really\""],
    )
    .await;
    feed.expect("alice commented on \"Hello world\": Nice video, \"really\"")
        .await;
    // The same like again changes nothing: a note, and no line for bob.
    let again = success(&vhost, USER, &["like", "alice", short]).await;
    assert_eq!(again, "note: alice already likes \"Hello world\"\n");
    // A like replaces a dislike.
    success(&vhost, USER, &["like", "carol", short]).await;
    feed.expect("carol liked \"Hello world\"").await;
    // Taking a like back tells no one.
    success(&vhost, USER, &["unlike", "alice", short]).await;
    success(&vhost, USER, &["unsubscribe", "alice", "bob"]).await;
    feed.expect("alice unsubscribed from you").await;

    let stats = run(YOUTUBER, &vhost, &["stats", "bob"]).await;
    assert_eq!(stats.code, 0, "{}", stats.stderr);
    let lines: Vec<&str> = stats.stdout.lines().collect();
    assert_eq!(lines[0], "bob: 0 subscribers, 1 video");
    assert!(
        lines[2].ends_with("      1         0         1  Hello world"),
        "{}",
        lines[2]
    );
    let json = run(YOUTUBER, &vhost, &["stats", "bob", "--json"]).await;
    let json: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(
        (
            &json["videos"][0]["id"],
            &json["videos"][0]["likes"],
            &json["subscribers"]
        ),
        (&Value::from(id.as_str()), &Value::from(1), &Value::from(0))
    );

    assert_eq!(feed.interrupt().await, 0);
    server.interrupt().await;
}

#[tokio::test]
async fn an_unknown_or_ambiguous_video_and_a_bad_comment_get_one_line_and_exit_1() {
    let vhost = TestVhost::new("interaction-refusals");
    let server = start_server(&vhost).await;
    let output = run(USER, &vhost, &["videos", "bob"]).await;
    assert_one_line_error(
        &output,
        1,
        "user: youtube_server refused the request: bob has not uploaded any video",
    );
    let output = run(YOUTUBER, &vhost, &["watch", "bob"]).await;
    assert_one_line_error(
        &output,
        1,
        "youtuber: bob has no creator inbox yet: youtube_server makes it at bob's first upload",
    );
    // Seventeen videos: two of them share the first character of their id.
    for n in 0..17 {
        success(&vhost, YOUTUBER, &["bob", &format!("Video {n}")]).await;
    }
    let listing = run(USER, &vhost, &["videos", "bob", "--json"]).await;
    let json: Value = serde_json::from_str(&listing.stdout).expect("JSON");
    let mut firsts: HashMap<char, usize> = HashMap::new();
    for video in json["videos"].as_array().unwrap() {
        let first = video["id"].as_str().unwrap().chars().next().unwrap();
        *firsts.entry(first).or_default() += 1;
    }
    let shared = firsts
        .iter()
        .find(|(_, count)| **count > 1)
        .map(|(first, _)| first.to_string())
        .expect("pigeonhole");
    let output = run(USER, &vhost, &["like", "alice", &shared]).await;
    assert_one_line_error(
        &output,
        1,
        &format!(
            "user: youtube_server refused the request: {shared} starts the ids of several videos ("
        ),
    );
    assert!(output.stderr.trim_end().ends_with("give more of the id"));

    let output = run(USER, &vhost, &["comment", "alice", "0000-ffff", "Hi"]).await;
    assert_one_line_error(
        &output,
        1,
        "user: youtube_server refused the request: no video has an id that starts with 0000-ffff; \
         `user videos <youtuber>` lists a YouTuber's videos with their ids",
    );
    let output = run(USER, &vhost, &["like", "alice", "Video"]).await;
    assert_one_line_error(
        &output,
        1,
        "user: invalid video id \"Video\": 'V' at position 1 is not in an id",
    );
    let long = "x".repeat(501);
    let output = run(USER, &vhost, &["comment", "alice", &shared, &long]).await;
    assert_one_line_error(&output, 1, "it has 501 characters; use at most 500");
    let output = run(USER, &vhost, &["comment", "alice", &shared, "two\nlines"]).await;
    assert_one_line_error(&output, 1, "write one line of printable characters");
    server.interrupt().await;
}

/// What a creator's feed adds up to: likes and dislikes per video, and each
/// comment's text with how often it was shown.
#[derive(Default)]
struct Tally {
    reactions: HashMap<(String, &'static str), usize>,
    comments: HashMap<String, usize>,
}

impl Tally {
    /// Adds a line of the feed; panics on one it cannot read.
    fn add(&mut self, line: &str) {
        if let Some((count, rest)) = line.split_once(" new ") {
            let (what, video) = rest.split_once(" on ").expect("N new likes on \"video\"");
            let kind = if what == "likes" { "like" } else { "dislike" };
            *self
                .reactions
                .entry((video.trim_matches('"').to_owned(), kind))
                .or_default() += count.parse::<usize>().expect("a count");
        } else if let Some((_, rest)) = line.split_once(" commented on ") {
            let (_, text) = rest.split_once(": ").expect("a comment's text");
            *self.comments.entry(text.to_owned()).or_default() += 1;
        } else if let Some((_, video)) = line.split_once(" disliked ") {
            *self
                .reactions
                .entry((video.trim_matches('"').to_owned(), "dislike"))
                .or_default() += 1;
        } else if let Some((_, video)) = line.split_once(" liked ") {
            *self
                .reactions
                .entry((video.trim_matches('"').to_owned(), "like"))
                .or_default() += 1;
        } else {
            panic!("not a line of a creator's feed: {line:?}");
        }
    }

    fn events(&self) -> usize {
        self.reactions.values().sum::<usize>() + self.comments.values().sum::<usize>()
    }
}

#[tokio::test]
async fn a_creator_away_while_a_thousand_users_like_and_comment_sees_it_all_once() {
    const USERS: usize = 1_000;
    let vhost = TestVhost::new("creator-away");
    let server = start_server(&vhost).await;
    success(&vhost, YOUTUBER, &["bob", "Viral"]).await;
    let viral = newest_video(&vhost, "bob").await;
    success(&vhost, YOUTUBER, &["bob", "Other"]).await;
    let other = newest_video(&vhost, "bob").await;

    // User i likes "Viral" (i < 600), likes "Other" (600 ≤ i < 900), or
    // dislikes "Viral"; every fifth comments on the one it reacted to, and
    // every tenth sends its reaction twice. All at once, from one client.
    let client = vhost.client("crowd").await;
    let mut requests = Vec::new();
    let mut comments = HashSet::new();
    for i in 0..USERS {
        let user = format!("u{i}");
        let (video, reaction) = match i {
            0..600 => (&viral, Reaction::Like),
            600..900 => (&other, Reaction::Like),
            _ => (&viral, Reaction::Dislike),
        };
        let react = Request::React {
            user: user.clone(),
            video: video.clone(),
            reaction: Some(reaction),
        };
        requests.push(react.clone());
        if i % 10 == 0 {
            requests.push(react);
        }
        if i % 5 == 0 {
            let text = format!("comment {i}");
            comments.insert(text.clone());
            requests.push(Request::Comment {
                user,
                video: video.clone(),
                text,
            });
        }
    }
    for chunk in requests.chunks(500) {
        let mut pending = Vec::new();
        for request in chunk {
            pending.push(client.send(request.clone()).await.expect("sent"));
        }
        for reply in pending {
            within("a reply", client.wait(reply))
                .await
                .expect("applied");
        }
    }
    client.close().await.unwrap();

    let mut feed = Running::spawn(YOUTUBER, &vhost, &["watch", "bob"]);
    let mut tally = Tally::default();
    let expected = USERS + comments.len();
    let mut lines = 0;
    while tally.events() < expected {
        tally.add(&feed.line().await);
        lines += 1;
    }
    // Nothing more, and nothing twice.
    if let Some(line) = feed.line_within(Duration::from_secs(2)).await {
        panic!("one more line than there were events: {line:?}");
    }
    assert_eq!(tally.reactions[&("Viral".to_owned(), "like")], 600);
    assert_eq!(tally.reactions[&("Other".to_owned(), "like")], 300);
    assert_eq!(tally.reactions[&("Viral".to_owned(), "dislike")], 100);
    assert_eq!(tally.comments.len(), comments.len());
    assert!(
        tally
            .comments
            .iter()
            .all(|(text, shown)| comments.contains(text) && *shown == 1),
        "each comment once"
    );
    eprintln!("{expected} events in {lines} lines");
    assert!(lines < 300, "likes gathered: {lines} lines");
    assert_eq!(feed.interrupt().await, 0);

    // Shown, so gone: the next watch starts empty.
    let mut feed = Running::spawn(YOUTUBER, &vhost, &["watch", "bob"]);
    let client = vhost.client("late").await;
    user::comment(&client, "late", &viral[..8], "Late to the party")
        .await
        .unwrap();
    feed.expect("late commented on \"Viral\": Late to the party")
        .await;
    client.close().await.unwrap();
    assert_eq!(feed.interrupt().await, 0);
    server.interrupt().await;
}
