//! The file where a client finds its account: `youtube_server account add
//! --save` writes it, and `user alice` or `youtuber TomScott` reads it when
//! no broker URL is given. One file per account, readable by its owner only
//! (it holds a password): `~/.config/ytnotify/user.alice.toml`.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::Account;
use crate::error::{Error, Result};

/// What a client needs to log in as its account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedAccount {
    /// The broker's URL, with the account's login and password.
    pub amqp_url: String,
    /// The private CA that signed the broker's certificate, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

/// Where `account`'s file is: in the user's configuration directory
/// (`$XDG_CONFIG_HOME`, else `~/.config`), or `None` without one.
pub fn path(account: &Account) -> Option<PathBuf> {
    Some(
        dirs::config_dir()?
            .join("ytnotify")
            .join(format!("{}.toml", account.login())),
    )
}

/// Writes `account`'s file, readable and writable by its owner only, and
/// returns where.
pub fn save(account: &Account, saved: &SavedAccount) -> Result<PathBuf> {
    let path = path(account).ok_or_else(|| Error::SavedAccount {
        path: format!("{}.toml", account.login()),
        reason: "this system has no configuration directory (set XDG_CONFIG_HOME)".to_owned(),
    })?;
    let failed = |err: std::io::Error| Error::SavedAccount {
        path: path.display().to_string(),
        reason: err.to_string(),
    };
    let text = format!(
        "# The ytnotify account {account}: `{} {}` logs in with it.\n{}",
        account.role,
        account.name,
        toml::to_string(saved).map_err(|err| Error::SavedAccount {
            path: path.display().to_string(),
            reason: err.to_string(),
        })?
    );
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(failed)?;
    }
    write_private(&path, text.as_bytes()).map_err(failed)?;
    Ok(path)
}

/// Reads `account`'s file; `None` if there is none.
pub fn load(account: &Account) -> Result<Option<SavedAccount>> {
    let Some(path) = path(account) else {
        return Ok(None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(Error::SavedAccount {
                path: path.display().to_string(),
                reason: err.to_string(),
            });
        }
    };
    warn_if_others_can_read(&path);
    toml::from_str(&text)
        .map(Some)
        .map_err(|err| Error::SavedAccount {
            path: path.display().to_string(),
            // toml's message spans several lines, with the offending one.
            reason: format!(
                "{}; write it again with youtube_server account add --save",
                err.message()
            ),
        })
}

/// An account file holds a password: one that others can read is said so,
/// as ssh does for a private key (it is still used).
fn warn_if_others_can_read(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                "{} holds a password and others can read it: run chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Writes `bytes` to a new file beside `path`, readable by its owner only,
/// then moves it over `path`: a reader never sees half a file, and an
/// older file with wider permissions is replaced, not reused.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temporary, path)) {
        Ok(()) => Ok(()),
        Err(err) => {
            let _ = std::fs::remove_file(&temporary);
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_account_reads_back_and_only_its_owner_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ytnotify").join("user.alice.toml");
        create_private_dir(path.parent().unwrap()).unwrap();
        let saved = SavedAccount {
            amqp_url: "amqp://user.alice:pw@host:5672/%2F".to_owned(),
            ca_cert: Some(PathBuf::from("/etc/ca.pem")),
        };
        write_private(&path, toml::to_string(&saved).unwrap().as_bytes()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(toml::from_str::<SavedAccount>(&text).unwrap(), saved);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        // A second save replaces the first.
        write_private(&path, b"amqp_url = \"amqp://x\"\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            toml::from_str::<SavedAccount>(&text)
                .unwrap()
                .ca_cert
                .is_none()
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
