//! A RabbitMQ cluster of three private nodes on spare ports, for tests of
//! quorum queues and of what the programs do when a node of the cluster dies:
//! the Rust twin of `scripts/cluster.sh`.
//!
//! ```no_run
//! # async fn example() {
//! use ytnotify_testkit::cluster::Cluster;
//!
//! let cluster = Cluster::start().await;
//! cluster.add_vhost("quorum");
//! let urls = cluster.urls_on("quorum"); // what AMQP_URL takes
//! cluster.kill(1);
//! cluster.restart(1).await;
//! # }
//! ```
//!
//! Nodes are numbered from 0 here (node 1 of the script is node 0). Dropping
//! the cluster kills its three nodes and removes their data.

use std::time::{Duration, Instant};

use crate::broker_node::{BrokerNode, run_cli};

/// How long the nodes may take to list each other as running members once
/// joined or booted.
const JOIN: Duration = Duration::from_secs(60);

/// How long one `rabbitmqctl` or `rabbitmq-queues` call may take.
const CLI: Duration = Duration::from_secs(60);

/// Three RabbitMQ nodes joined into one cluster, each with its own data and
/// AMQP port on 127.0.0.1.
pub struct Cluster {
    /// Dropping a node kills it and removes its directory.
    nodes: Vec<BrokerNode>,
}

impl Cluster {
    /// Boots three fresh nodes, joins nodes 1 and 2 to node 0, and waits until
    /// node 0 lists all three as running members: a quorum queue declared
    /// before that would get fewer than three replicas. About 12 s on a
    /// 2-core machine.
    pub async fn start() -> Cluster {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut nodes: Vec<BrokerNode> = Vec::new();
        while nodes.len() < 3 {
            let node = BrokerNode::create(
                format!("ytnotify-cluster-{id}-{}@localhost", nodes.len()),
                None,
            );
            // None of the six ports is in use yet: two picks may be equal.
            let taken = |other: &BrokerNode| {
                [other.port(), other.dist_port()]
                    .iter()
                    .any(|port| [node.port(), node.dist_port()].contains(port))
            };
            if node.port() != node.dist_port() && !nodes.iter().any(taken) {
                nodes.push(node);
            }
        }
        let cluster = Cluster { nodes };
        tokio::join!(
            cluster.nodes[0].boot(),
            cluster.nodes[1].boot(),
            cluster.nodes[2].boot()
        );
        let first = cluster.name(0).to_owned();
        for i in 1..3 {
            for args in [&["stop_app"][..], &["join_cluster", &first], &["start_app"]] {
                if let Err(err) = cluster.ctl_async(i, args).await {
                    panic!("joining {} to {first}: {err}", cluster.name(i));
                }
            }
        }
        cluster.wait_members(0, &[0, 1, 2]).await;
        cluster
    }

    /// Node `i`'s AMQP URL on vhost `/`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url.clone()
    }

    /// The three nodes' AMQP URLs on vhost `/`, comma-separated, as
    /// `AMQP_URL` takes them.
    pub fn urls(&self) -> String {
        (0..3).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// The three URLs on `vhost`, comma-separated; [`Cluster::add_vhost`]
    /// creates it.
    pub fn urls_on(&self, vhost: &str) -> String {
        self.nodes
            .iter()
            .map(|node| crate::with_vhost(&node.url, vhost))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Creates `vhost` (on the cluster, through node 0) with every right on
    /// it for guest.
    pub fn add_vhost(&self, vhost: &str) {
        self.ctl(0, &["add_vhost", vhost]);
        self.ctl(
            0,
            &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        );
    }

    /// Node `i`'s Erlang name, as `rabbitmqctl -n` takes it.
    pub fn name(&self, i: usize) -> &str {
        self.nodes[i].name()
    }

    /// Node `i` itself: to freeze or thaw it, or read its port.
    pub fn node(&self, i: usize) -> &BrokerNode {
        &self.nodes[i]
    }

    /// Crashes node `i`: kill -9 of its Erlang VM; returns once its AMQP port
    /// is closed.
    pub fn kill(&self, i: usize) {
        assert!(
            self.nodes[i].is_running(),
            "kill({i}): node {i} is not running"
        );
        self.nodes[i].kill9_blocking();
    }

    /// Boots node `i` again on its data and waits until it runs as a member
    /// of the cluster again, as the other running nodes see it. With every
    /// node down, only the one that stopped last boots alone (the others
    /// wait for it): restart that one first.
    pub async fn restart(&self, i: usize) {
        // A second boot would fail, and lose the pid file that drop kills by.
        assert!(
            !self.nodes[i].is_running(),
            "restart({i}): node {i} is running; kill({i}) first"
        );
        let others: Vec<usize> = (0..3)
            .filter(|&j| j != i && self.nodes[j].is_running())
            .collect();
        self.nodes[i].boot().await;
        // A node that stayed up knows the cluster; if none did, ask node i.
        let witness = others.first().copied().unwrap_or(i);
        let mut expected = others.clone();
        expected.push(i);
        self.wait_members(witness, &expected).await;
    }

    /// `rabbitmqctl -q -n <node i> args…` (60 s at most): its stdout. Panics
    /// with its stderr if it fails.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        self.try_ctl(i, args).unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`Cluster::ctl`] that returns what went wrong instead of panicking:
    /// for a node that may be down.
    pub fn try_ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        run_cli("rabbitmqctl", self.name(i), args, CLI)
    }

    /// `rabbitmq-queues -q -n <node i> args…` (60 s at most), e.g.
    /// `["quorum_status", queue, "--vhost", vhost, "--formatter", "json"]`
    /// (a table without the formatter): its stdout. Panics with its stderr
    /// if it fails.
    pub fn queues(&self, i: usize, args: &[&str]) -> String {
        run_cli("rabbitmq-queues", self.name(i), args, CLI).unwrap_or_else(|err| panic!("{err}"))
    }

    /// The nodes that node `i` lists as running members of its cluster.
    pub fn running_members(&self, i: usize) -> Result<Vec<String>, String> {
        let status = self.try_ctl(i, &["cluster_status", "--formatter", "json"])?;
        running_nodes(&status).ok_or_else(|| format!("no running_nodes in {status}"))
    }

    /// [`Cluster::try_ctl`] off the async runtime's thread: the waits below
    /// must not stall a server that runs in-process beside the cluster.
    async fn ctl_async(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let name = self.name(i).to_owned();
        let args: Vec<String> = args.iter().map(|&arg| arg.to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli("rabbitmqctl", &name, &args, CLI)
        })
        .await
        .expect("rabbitmqctl's thread")
    }

    /// Waits until node `witness` lists every node of `expected` as running.
    async fn wait_members(&self, witness: usize, expected: &[usize]) {
        let started = Instant::now();
        loop {
            let seen = self
                .ctl_async(witness, &["cluster_status", "--formatter", "json"])
                .await
                .map(|status| running_nodes(&status).unwrap_or_default());
            let missing: Vec<&str> = expected
                .iter()
                .map(|&j| self.name(j))
                .filter(|member| {
                    !seen
                        .as_ref()
                        .is_ok_and(|seen| seen.iter().any(|s| s == member))
                })
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < JOIN,
                "after {JOIN:?}, {} does not list {missing:?} as running members \
                 (it lists {seen:?}); see the logs in {}",
                self.name(witness),
                self.nodes
                    .iter()
                    .map(|node| node.log_dir().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The `running_nodes` of `rabbitmqctl cluster_status --formatter json`.
fn running_nodes(status: &str) -> Option<Vec<String>> {
    let key = "\"running_nodes\":[";
    let start = status.find(key)? + key.len();
    let list = &status[start..start + status[start..].find(']')?];
    Some(
        list.split(',')
            .map(|name| name.trim().trim_matches('"').to_owned())
            .filter(|name| !name.is_empty())
            .collect(),
    )
}
