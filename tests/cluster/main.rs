//! ytnotify on a RabbitMQ cluster: several broker URLs, tried in turn
//! (`urls`), and a node of a three-node cluster killed under load while the
//! vhost's queues are quorum queues (`failover`). The cluster is three
//! private nodes on spare ports (`ytnotify_testkit::cluster`), never the
//! machine's broker.

mod failover;
mod urls;
