//! The broker's address, an AMQP URL, read once with lapin's own parser
//! (`AMQPUri`): what a program connects to, what it prints (never the
//! password), and the same broker on another vhost. A cluster's nodes are
//! several URLs separated by commas ([`parse_list`]).

use std::{fmt, str::FromStr};

use lapin::uri::AMQPUri;

use crate::error::Error;

/// An AMQP URL that parses: `amqp://user:password@host:port/vhost`.
#[derive(Clone, PartialEq)]
pub struct BrokerUrl {
    uri: AMQPUri,
}

/// Debug output ends up in logs and panics: never with the password.
impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUrl").field(&self.redacted()).finish()
    }
}

impl BrokerUrl {
    /// The URL as lapin connects with it.
    pub fn uri(&self) -> &AMQPUri {
        &self.uri
    }

    /// The vhost, decoded (`/` for the default one).
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The user that the URL logs in as.
    pub fn user(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// The password of [`BrokerUrl::user`].
    pub fn password(&self) -> &str {
        &self.uri.authority.userinfo.password
    }

    /// Whether the URL asks for TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == lapin::uri::AMQPScheme::AMQPS
    }

    /// The same broker and vhost, logged in as `user` with `password`.
    pub fn with_login(&self, user: &str, password: &str) -> BrokerUrl {
        let mut uri = self.uri.clone();
        uri.authority.userinfo.username = user.to_owned();
        uri.authority.userinfo.password = password.to_owned();
        BrokerUrl { uri }
    }

    /// The host and port to reach.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.uri.authority.host, self.uri.authority.port)
    }

    /// The same broker and credentials on `vhost`.
    pub fn with_vhost(&self, vhost: &str) -> BrokerUrl {
        let mut uri = self.uri.clone();
        uri.vhost = vhost.to_owned();
        BrokerUrl { uri }
    }

    /// The URL to show in messages and logs: the password hidden.
    pub fn redacted(&self) -> String {
        let mut shown = self.clone();
        shown.uri.authority.userinfo.password = PASSWORD_SHOWN_AS.to_owned();
        // The password is percent-encoded where it is printed.
        shown
            .to_string()
            .replacen(&minimally_encoded(PASSWORD_SHOWN_AS), PASSWORD_SHOWN_AS, 1)
    }
}

/// What a password is printed as.
const PASSWORD_SHOWN_AS: &str = "***";

impl FromStr for BrokerUrl {
    type Err = Error;

    fn from_str(url: &str) -> Result<BrokerUrl, Error> {
        url.parse::<AMQPUri>()
            .map(|uri| BrokerUrl { uri })
            .map_err(|reason| Error::BadUrl {
                address: unparsed_redacted(url),
                reason,
            })
    }
}

/// The full URL, password included: for a configuration, never for a message.
/// Only what must be is percent-encoded (`user.alice`, not `user%2Ealice`),
/// so that a URL that a person reads or copies stays legible.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = &self.uri;
        write!(
            f,
            "{}://{}:{}@{}:{}/{}",
            uri.scheme,
            minimally_encoded(&uri.authority.userinfo.username),
            minimally_encoded(&uri.authority.userinfo.password),
            uri.authority.host,
            uri.authority.port,
            minimally_encoded(&uri.vhost),
        )?;
        // The options (`?heartbeat=10`), as lapin writes them.
        if let Some((_, query)) = uri.to_string().split_once('?') {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// `text` with every byte but RFC 3986's unreserved characters
/// (letters, digits, `-`, `.`, `_`, `~`) percent-encoded.
fn minimally_encoded(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The URLs of a list that names several nodes of one cluster, separated by
/// commas: `amqp://guest:guest@10.0.0.1/%2f,amqp://guest:guest@10.0.0.2/%2f`.
/// A comma that no `amqp://` or `amqps://` follows is part of the URL before
/// it (a password may hold one). Every node must be reached with the same
/// login on the same vhost: they are one broker to the programs.
pub fn parse_list(text: &str) -> Result<Vec<BrokerUrl>, Error> {
    if text.trim().is_empty() {
        return Err(Error::BadUrl {
            address: "\"\"".to_owned(),
            reason: "it is empty".to_owned(),
        });
    }
    if split_list(text)
        .into_iter()
        .any(|part| part.is_empty() || part.ends_with(','))
    {
        return Err(Error::BadUrl {
            address: redact(text),
            reason: "an empty URL between commas; separate the URLs of a cluster's nodes with \
                     single commas"
                .to_owned(),
        });
    }
    let urls = split_list(text)
        .into_iter()
        .map(str::parse::<BrokerUrl>)
        .collect::<Result<Vec<_>, _>>()?;
    let first = &urls[0];
    if let Some(other) = urls
        .iter()
        .find(|url| url.vhost() != first.vhost() || url.user() != first.user())
    {
        return Err(Error::BadUrl {
            address: redact(text),
            reason: format!(
                "{} and {} name another vhost or user; the URLs of a list are nodes of one \
                 cluster, each with the same user and vhost",
                first.redacted(),
                other.redacted()
            ),
        });
    }
    Ok(urls)
}

/// `text` cut at each comma that starts another URL.
fn split_list(text: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start();
        rest.starts_with("amqp://") || rest.starts_with("amqps://")
    };
    let mut parts = Vec::new();
    let mut start = 0;
    for (comma, _) in text.match_indices(',') {
        if starts_url(&text[comma + 1..]) {
            parts.push(text[start..comma].trim());
            start = comma + 1;
        }
    }
    parts.push(text[start..].trim());
    parts
}

/// Hides the password of a URL, or of each URL of a list, in a message,
/// whether or not it parses.
pub fn redact(url: &str) -> String {
    split_list(url)
        .into_iter()
        .map(|url| {
            url.parse::<BrokerUrl>()
                .map(|url| url.redacted())
                .unwrap_or_else(|_| unparsed_redacted(url))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A URL that does not parse, as a message may show it: whatever stands
/// before an `@` may be credentials.
fn unparsed_redacted(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) => format!("{PASSWORD_SHOWN_AS}@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        let url: BrokerUrl = "amqp://guest:s3cret@127.0.0.1:5672/%2f".parse().unwrap();
        assert_eq!(url.redacted(), "amqp://guest:***@127.0.0.1:5672/%2F");
        assert_eq!(
            redact("amqp://guest:s3cret@host:1/%2f"),
            "amqp://guest:***@host:1/%2F"
        );
        assert_eq!(redact("amqp//guest:s3cret@host"), "***@host");
        assert_eq!(redact("localhost:5672"), "localhost:5672");
    }

    #[test]
    fn a_url_is_read_once_with_its_parts() {
        let url: BrokerUrl = "amqp://ann:pw@rabbit.example:5673/classroom"
            .parse()
            .unwrap();
        assert_eq!(url.vhost(), "classroom");
        assert_eq!(url.user(), "ann");
        assert_eq!(url.host_port(), ("rabbit.example", 5673));
        let other = url.with_vhost("lab 2");
        assert_eq!(other.vhost(), "lab 2");
        assert_eq!(
            other.to_string(),
            "amqp://ann:pw@rabbit.example:5673/lab%202"
        );
        assert_eq!(other.to_string().parse::<BrokerUrl>().unwrap(), other);
        // An account's URL stays legible, and reads back the same.
        let account = url.with_login("user.alice", "p@ss/word").with_vhost("/");
        assert_eq!(
            account.to_string(),
            "amqp://user.alice:p%40ss%2Fword@rabbit.example:5673/%2F"
        );
        assert_eq!(account.to_string().parse::<BrokerUrl>().unwrap(), account);
        let tuned: BrokerUrl = "amqps://a:b@h/v?heartbeat=5".parse().unwrap();
        assert_eq!(tuned.to_string(), "amqps://a:b@h:5671/v?heartbeat=5");
        // Without a path, the default vhost.
        let bare: BrokerUrl = "amqp://localhost".parse().unwrap();
        assert_eq!(bare.vhost(), "/");
        assert_eq!(bare.host_port(), ("localhost", 5672));
    }

    #[test]
    fn a_list_names_the_nodes_of_one_cluster() {
        let urls = parse_list("amqp://a:p,w@h1:5672/v, amqp://a:p,w@h2:5673/v,amqps://a:p,w@h3/v")
            .unwrap();
        let hosts: Vec<_> = urls.iter().map(BrokerUrl::host_port).collect();
        assert_eq!(hosts, [("h1", 5672), ("h2", 5673), ("h3", 5671)]);
        assert!(urls.iter().all(|url| url.password() == "p,w"));
        assert_eq!(
            redact("amqp://a:secret@h1/v,amqp://a:secret@h2/v"),
            "amqp://a:***@h1:5672/v,amqp://a:***@h2:5672/v"
        );
        assert_eq!(parse_list("amqp://h1").unwrap().len(), 1);
        let err = parse_list("amqp://a:s3cret@h1/v,amqp://a:s3cret@h2/w").unwrap_err();
        assert!(err.to_string().contains("same user and vhost"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = parse_list("amqp://h1,amqp://h2:port").unwrap_err();
        assert!(matches!(err, Error::BadUrl { .. }), "{err}");
        for bad in ["", " ", "amqp://h1,", ",amqp://h1", "amqp://h1,,amqp://h2"] {
            let err = parse_list(bad).unwrap_err();
            assert!(matches!(err, Error::BadUrl { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn what_does_not_parse_is_a_bad_url() {
        let err = "localhost:5672".parse::<BrokerUrl>().unwrap_err();
        assert!(matches!(err, Error::BadUrl { .. }), "{err}");
        let err = "amqp://guest:s3cret@host:notaport/"
            .parse::<BrokerUrl>()
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}
