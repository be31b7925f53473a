//! A private sshd on 127.0.0.1 for the ssh launcher's tests: throwaway
//! keys, all state in one temporary directory, killed on drop. Logs in as
//! the user running the tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buckshot::{Launcher, Ssh};

pub struct Sshd {
    dir: PathBuf,
    pub port: u16,
    child: Child,
    pub user: String,
}

const SSHD: &str = "/usr/sbin/sshd";

impl Sshd {
    /// Starts one, or says why it cannot and returns `None`.
    pub fn start() -> Option<Sshd> {
        if !std::path::Path::new(SSHD).exists() {
            super::common::skip(
                "sshd",
                &format!("{SSHD} is not installed (apt-get install openssh-server)"),
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "buckshot-sshd-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for key in ["host_key", "id"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .expect("ssh-keygen");
            assert!(status.success());
        }
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n\
             StrictModes no\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        if rustix::process::geteuid().is_root() {
            let _ = std::fs::create_dir("/run/sshd");
        }
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .expect("start sshd");
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let sshd = Sshd {
            dir,
            port,
            child,
            user,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(sshd)
    }

    /// The logins it has accepted: one a connection.
    #[allow(dead_code)]
    pub fn logins(&self) -> usize {
        std::fs::read_to_string(self.dir.join("sshd.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("Accepted publickey"))
            .count()
    }

    /// What [`Sshd::launcher_to`] needs, as one string: for a process of
    /// the test's own (which has no `Sshd`).
    #[allow(dead_code)]
    pub fn address(&self) -> String {
        format!(
            "{}\t{}\t{}",
            self.user,
            self.port,
            self.dir.join("id").display()
        )
    }

    /// A launcher for it, with host keys unchecked (they are throwaway).
    pub fn launcher(&self) -> Ssh {
        Sshd::launcher_to(&self.address())
    }

    /// A launcher for the sshd at `address` ([`Sshd::address`]).
    pub fn launcher_to(address: &str) -> Ssh {
        let mut fields = address.split('\t');
        let (user, port, identity) = (
            fields.next().unwrap(),
            fields.next().unwrap().parse().unwrap(),
            fields.next().unwrap(),
        );
        Launcher::ssh(format!("{user}@127.0.0.1"))
            .port(port)
            .identity_file(identity)
            .ssh_config("/dev/null")
            .ssh_option("IdentitiesOnly", "yes")
            .ssh_option("StrictHostKeyChecking", "no")
            .ssh_option("UserKnownHostsFile", "/dev/null")
            .ssh_option("LogLevel", "ERROR")
            .ssh_option("ConnectTimeout", "10")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
