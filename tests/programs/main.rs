//! The three programs as a user runs them: the built binaries, their exact
//! output and exit codes (`cli`), and the user dashboard in a pseudo-terminal
//! (`dashboard`), against a real RabbitMQ on a vhost per test; secure mode's
//! accounts and `amqps://` (`secure`); likes, comments and the creator's
//! feed (`interactions`); the type of a vhost's queues and its move
//! (`queues`).

mod cli;
mod dashboard;
mod interactions;
mod queues;
mod secure;
mod servers;
