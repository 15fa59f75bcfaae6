//! The library against a real RabbitMQ: the server in-process, driven by the
//! library's own clients on a vhost per test (`server`), and faults injected
//! on purpose against a private broker node (`faults`, `restart`).

mod faults;
mod restart;
mod server;
