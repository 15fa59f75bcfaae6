//! A private RabbitMQ node on spare ports, for tests that crash or restart the
//! broker without touching the machine's shared one.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long a node may take to boot (about 7 s on a 2-core machine).
const BOOT: Duration = Duration::from_secs(90);

pub struct BrokerNode {
    pub url: String,
    /// `amqps://` on a second listener, for a node started with TLS.
    pub tls_url: Option<String>,
    name: String,
    port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port on loopback")
        .port()
}

/// A RabbitMQ program: as root, the one under /usr/lib, since the /usr/sbin
/// wrappers switch to the rabbitmq user, who cannot write our temp dir and
/// whose Erlang cookie is not our nodes'.
fn tool(name: &str) -> PathBuf {
    let direct = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if direct.exists() {
        direct
    } else {
        PathBuf::from(name)
    }
}

fn server_script() -> PathBuf {
    tool("rabbitmq-server")
}

/// Runs the CLI program `name` (rabbitmqctl, rabbitmq-queues…) quietly
/// against `node` for at most `bound`: its stdout, or what went wrong.
pub(crate) fn run_cli(
    name: &str,
    node: &str,
    args: &[&str],
    bound: Duration,
) -> Result<String, String> {
    let command = format!("{name} -n {node} {}", args.join(" "));
    let child = Command::new(tool(name))
        .args(["-q", "-n", node])
        .args(args)
        // Its own process group, so that a timeout kills the CLI's Erlang VM
        // too, not only the shell wrapper.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("cannot run {command}: {err} (is rabbitmq-server installed?)"))?;
    let group = child.id();
    // Read on another thread, so that a long output cannot block the child.
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(bound) {
        Ok(Ok(output)) if output.status.success() => {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Ok(Ok(output)) => Err(format!(
            "{command} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(Err(err)) => Err(format!("{command}: {err}")),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{group}")])
                .status();
            Err(format!("{command} did not finish within {bound:?}"))
        }
    }
}

impl BrokerNode {
    /// Starts a fresh node and waits until it accepts AMQP connections.
    pub async fn start() -> BrokerNode {
        BrokerNode::start_with(None).await
    }

    /// Starts a fresh node with a TLS listener too, whose certificate `ca`
    /// signed ([`BrokerNode::tls_url`]).
    pub async fn start_with_tls(ca: &crate::tls::TestCa) -> BrokerNode {
        BrokerNode::start_with(Some(ca)).await
    }

    async fn start_with(tls: Option<&crate::tls::TestCa>) -> BrokerNode {
        let node = BrokerNode::create(
            format!(
                "ytnotify-test-{}@localhost",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            tls,
        );
        node.boot().await;
        node
    }

    /// A node called `name` on spare ports, with its directory and
    /// configuration written, not started yet ([`BrokerNode::boot`]).
    pub(crate) fn create(name: String, tls: Option<&crate::tls::TestCa>) -> BrokerNode {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let mut node = BrokerNode {
            tls_url: None,
            name,
            port,
            dist_port: free_port(),
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            dir,
        };
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(node.dir.path().join(sub)).unwrap();
        }
        let mut config = format!("listeners.tcp.1 = 127.0.0.1:{}\n", node.port);
        if let Some(ca) = tls {
            let tls_port = free_port();
            config.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca.ca_cert.display(),
                ca.broker_cert.display(),
                ca.broker_key.display()
            ));
            node.tls_url = Some(format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f"));
        }
        std::fs::write(node.dir.path().join("rabbitmq.conf"), config).unwrap();
        std::fs::write(node.dir.path().join("enabled_plugins"), "[].\n").unwrap();
        node
    }

    /// The node's Erlang name, as `rabbitmqctl -n` takes it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn dist_port(&self) -> u16 {
        self.dist_port
    }

    /// Where its logs are.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// Whether its Erlang VM runs: the process in its pid file, if that
    /// process was started as this node (not one that got the pid since).
    pub fn is_running(&self) -> bool {
        let Ok(pid) = std::fs::read_to_string(self.pid_file()) else {
            return false;
        };
        let marker = format!("RABBITMQ_NODENAME={}", self.name);
        std::fs::read(format!("/proc/{}/environ", pid.trim())).is_ok_and(|environ| {
            environ
                .split(|&b| b == 0)
                .any(|var| var == marker.as_bytes())
        })
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    /// Boots the node on its data directory (fresh or after a crash).
    pub async fn boot(&self) {
        let dir = self.dir.path();
        let _ = std::fs::remove_file(self.pid_file());
        let status = Command::new(server_script())
            .arg("-detached")
            .current_dir(dir)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .status()
            .expect("rabbitmq-server is installed (scripts/test.sh installs it)");
        assert!(
            status.success(),
            "rabbitmq-server -detached failed: {status}"
        );
        let started = Instant::now();
        loop {
            if ytnotify::broker::connect(&ytnotify::broker::Endpoint::new(&self.url), "boot probe")
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < BOOT,
                "the private RabbitMQ node did not accept connections within {BOOT:?}; see {}",
                dir.join("log").display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Crashes the node: kill -9 of its Erlang VM, no shutdown of any kind.
    pub async fn kill9(&self) {
        self.send_kill9();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(started.elapsed() < BOOT, "the node did not die");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// [`BrokerNode::kill9`] without an await: its port closes within
    /// milliseconds of the kill, a wait too short to yield for.
    pub fn kill9_blocking(&self) {
        self.send_kill9();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(started.elapsed() < BOOT, "the node did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send_kill9(&self) {
        let pid = std::fs::read_to_string(self.pid_file()).expect("the node wrote its pid");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl BrokerNode {
    fn pid(&self) -> String {
        std::fs::read_to_string(self.pid_file())
            .expect("the node wrote its pid")
            .trim()
            .to_owned()
    }

    /// Freezes the node (SIGSTOP): it keeps its sockets but answers nothing,
    /// as a stalled broker or a dead network would.
    pub fn freeze(&self) {
        assert!(
            Command::new("kill")
                .args(["-STOP", &self.pid()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Lets a frozen node run again (SIGCONT).
    pub fn thaw(&self) {
        assert!(
            Command::new("kill")
                .args(["-CONT", &self.pid()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Runs `rabbitmqctl` against this node, as the user that started it
    /// (the /usr/sbin wrapper would switch to the rabbitmq user, whose Erlang
    /// cookie is not this node's).
    pub fn ctl(&self, args: &[&str]) {
        let output = Command::new(tool("rabbitmqctl"))
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("rabbitmqctl is installed");
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill").args(["-CONT", pid.trim()]).status();
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}
