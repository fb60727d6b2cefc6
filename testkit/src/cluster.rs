//! A real ClickHouse cluster on loopback ports: ZooKeeper (Debian's `zookeeper` package, run as
//! a plain JVM process with its own temporary data directory, no system service) and
//! `shards x replicas` private [`ClickHouse`] servers that know each other as the cluster
//! [`CLUSTER`] (`remote_servers`), with `{shard}` / `{replica}` macros and ZooKeeper for
//! replicated tables and `ON CLUSTER` statements.
//!
//! Everything started here stops when the value drops, and goes with the test process if it
//! dies first (each runs under a wrapper that ends it when our end of its stdin closes).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, ClickHouse, Error};

/// The cluster's name in `remote_servers` (and `[clickhouse] cluster`).
pub const CLUSTER: &str = "waymark";

/// Where Debian's `zookeeper` package puts its jars.
pub const ZOOKEEPER_HOME: &str = "/usr/share/zookeeper";

/// Said whenever ZooKeeper or Java cannot be found.
pub const ZOOKEEPER_HINT: &str = "ZooKeeper was not found (/usr/share/zookeeper and `java` on \
PATH). Install it with `sudo apt-get update && sudo apt-get install -y zookeeper` (or run \
`cargo xtask install`); no system service is needed, the tests start their own.";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A private ZooKeeper server on a free loopback port.
pub struct ZooKeeper {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<(Child, ChildStdin)>,
}

impl ZooKeeper {
    /// Starts one and waits until it answers `ruok`.
    pub fn start() -> Result<Self, Error> {
        if !Path::new(ZOOKEEPER_HOME).is_dir() {
            return Err(Error::Other(ZOOKEEPER_HINT.into()));
        }
        let java = crate::on_path(&["java"])
            .map(|(p, _)| p)
            .ok_or_else(|| Error::Other(ZOOKEEPER_HINT.into()))?;
        let dir = tempfile::Builder::new()
            .prefix("waymark-zookeeper-")
            .tempdir()
            .map_err(|e| Error::Other(format!("creating a temporary directory: {e}")))?;
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| Error::Other(format!("creating {}: {e}", data.display())))?;
        let cfg = dir.path().join("zoo.cfg");
        std::fs::write(
            &cfg,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\nmaxClientCnxns=0\n\
                 4lw.commands.whitelist=ruok\n",
                data.display()
            ),
        )
        .map_err(|e| Error::Other(format!("writing {}: {e}", cfg.display())))?;
        let classpath = format!(
            "{ZOOKEEPER_HOME}/*:{ZOOKEEPER_HOME}/lib/*:/usr/share/java/*:/etc/zookeeper/conf"
        );
        let log = std::fs::File::create(dir.path().join("zookeeper.log"))
            .map_err(|e| Error::Other(format!("creating the ZooKeeper log: {e}")))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("zookeeper-wrapper")
            .arg(&java)
            .args([
                "-Xmx128m",
                "-Xss512k",
                "-XX:+UseSerialGC",
                "-cp",
                &classpath,
            ])
            .arg(format!("-Dzookeeper.log.dir={}", dir.path().display()))
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(&cfg)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                Error::Other(format!("starting ZooKeeper with {}: {e}", java.display()))
            })?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let mut zk = ZooKeeper {
            dir,
            port,
            process: Some((child, stdin)),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !zk.ruok() {
            if let Some((child, _)) = zk.process.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    zk.process = None;
                    return Err(Error::Other(format!(
                        "ZooKeeper exited ({status}) before answering; its log:\n{}",
                        zk.log_tail()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "ZooKeeper did not answer ruok on 127.0.0.1:{port} within {START_TIMEOUT:?}; its log:\n{}",
                    zk.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(zk)
    }

    fn ruok(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = String::new();
        s.write_all(b"ruok").is_ok() && s.read_to_string(&mut answer).is_ok() && answer == "imok"
    }

    /// Its client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.process.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Runs "$@" and ends it when stdin closes (the test dropped us, or died).
const WRAPPER: &str = r#"
"$@" &
pid=$!
cat >/dev/null
kill -TERM "$pid" 2>/dev/null
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
exit 0
"#;

/// ZooKeeper and `shards x replicas` ClickHouse servers forming [`CLUSTER`].
pub struct Cluster {
    /// Shard-major: shard 1's replicas, then shard 2's, ...
    nodes: Vec<ClickHouse>,
    replicas: usize,
    // Dropped last: the servers stop before their coordinator.
    zookeeper: ZooKeeper,
}

impl Cluster {
    /// Starts ZooKeeper and the servers, and waits until every server answers and sees
    /// ZooKeeper.
    pub fn start(shards: usize, replicas: usize) -> Result<Self, Error> {
        let zookeeper = ZooKeeper::start()?;
        let ports: Vec<(u16, u16, u16)> = (0..shards * replicas)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut remote = String::new();
        for s in 0..shards {
            remote.push_str("<shard><internal_replication>true</internal_replication>");
            for r in 0..replicas {
                let (_, tcp, _) = ports[s * replicas + r];
                remote.push_str(&format!(
                    "<replica><host>127.0.0.1</host><port>{tcp}</port></replica>"
                ));
            }
            remote.push_str("</shard>");
        }
        let mut nodes = Vec::new();
        // `replicated_max_ratio_of_wrong_parts = 1`: a replica killed mid-insert keeps a part it
        // wrote but never registered in ZooKeeper; on tables as small as a test's, that one
        // part is above the default ratio (0.5) and the server would refuse to start rather
        // than set it aside (as `detached/unexpected_*`) and fetch from its peer.
        for (i, (http, tcp, interserver)) in ports.iter().enumerate() {
            let (shard, replica) = (i / replicas + 1, i % replicas + 1);
            let extra = format!(
                r#"    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <zookeeper><node><host>127.0.0.1</host><port>{zk}</port></node><session_timeout_ms>10000</session_timeout_ms></zookeeper>
    <macros><shard>{shard}</shard><replica>s{shard}r{replica}</replica></macros>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
    <merge_tree><replicated_max_ratio_of_wrong_parts>1</replicated_max_ratio_of_wrong_parts></merge_tree>
    <remote_servers><{CLUSTER}>{remote}</{CLUSTER}></remote_servers>"#,
                zk = zookeeper.port()
            );
            nodes.push(ClickHouse::start_with(extra, *http, *tcp)?);
        }
        let cluster = Cluster {
            nodes,
            replicas,
            zookeeper,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        for n in &cluster.nodes {
            loop {
                match n.query("SELECT count() FROM system.zookeeper WHERE path = '/'") {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(Error::Other(format!(
                            "ClickHouse on {} does not reach ZooKeeper: {e}\n{}\nZooKeeper:\n{}",
                            n.http_url(),
                            n.log_tail(),
                            cluster.zookeeper.log_tail()
                        )))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        Ok(cluster)
    }

    /// The server of `shard` and `replica` (both from 1, as in the macros).
    pub fn node(&self, shard: usize, replica: usize) -> &ClickHouse {
        &self.nodes[(shard - 1) * self.replicas + replica - 1]
    }

    /// The same, to stop or crash it.
    pub fn node_mut(&mut self, shard: usize, replica: usize) -> &mut ClickHouse {
        &mut self.nodes[(shard - 1) * self.replicas + replica - 1]
    }

    /// Every server, shard-major.
    pub fn nodes(&self) -> &[ClickHouse] {
        &self.nodes
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.nodes.len() / self.replicas
    }

    /// ZooKeeper.
    pub fn zookeeper(&self) -> &ZooKeeper {
        &self.zookeeper
    }

    /// Where each server keeps its files, for failure messages.
    pub fn homes(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.home().to_path_buf()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_by_two_cluster_replicates_and_shards() {
        let cluster = Cluster::start(2, 2).unwrap_or_else(|e| panic!("{e}"));
        let n = cluster.node(1, 1);
        for sql in [
            format!("CREATE DATABASE kit ON CLUSTER {CLUSTER}"),
            format!("CREATE TABLE kit.t_local ON CLUSTER {CLUSTER} (k UInt64) ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/kit/t', '{{replica}}') ORDER BY k"),
            format!("CREATE TABLE kit.t ON CLUSTER {CLUSTER} AS kit.t_local ENGINE = Distributed({CLUSTER}, kit, t_local, k)"),
        ] {
            n.query(&sql).unwrap_or_else(|e| panic!("{e}"));
        }
        ureq::post(format!("{}/?insert_distributed_sync=1", n.http_url()))
            .send("INSERT INTO kit.t SELECT number FROM numbers(100)")
            .unwrap();
        // Each shard holds its half, on both replicas (replication is asynchronous: polled).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let counts: Vec<String> = cluster
                .nodes()
                .iter()
                .map(|n| {
                    n.query("SELECT count() FROM kit.t_local")
                        .unwrap()
                        .trim()
                        .to_string()
                })
                .collect();
            if counts == ["50", "50", "50", "50"] {
                break;
            }
            assert!(Instant::now() < deadline, "rows per server: {counts:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            cluster
                .node(2, 2)
                .query("SELECT count() FROM kit.t")
                .unwrap()
                .trim(),
            "100"
        );
    }
}
