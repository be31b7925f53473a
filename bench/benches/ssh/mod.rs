//! A pool of 4 workers over ssh to this machine: `build()` to the first 4
//! results, against one ssh login that runs `true` (the least any remote
//! worker costs), measured alternately in the same run. A private sshd on
//! 127.0.0.1 with throwaway keys, all its state in one temporary
//! directory; the section says so and is skipped where openssh-server is
//! not installed.
//!
//! Twice: with the remote shell as the account has it (bash reads
//! `~/.bashrc` for a command run by sshd, which can cost more than the
//! login: 0.3 s a session on a loaded 2-core machine whose `.bashrc` runs
//! `pyenv init`), and with a shell that skips it (the sshd sets
//! `SHLVL=1`, so bash takes itself for a nested shell).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buckshot::{Launcher, Pool, Ssh};

use super::{identity, median, row};

const SSHD: &str = "/usr/sbin/sshd";
const WORKERS: usize = 4;
const RUNS: usize = 7;

struct Sshd {
    dir: PathBuf,
    port: u16,
    child: Child,
    user: String,
}

impl Sshd {
    fn start(plain_shell: bool) -> Result<Sshd, String> {
        if !std::path::Path::new(SSHD).exists() {
            return Err(format!("{SSHD} is not installed"));
        }
        let dir = std::env::temp_dir().join(format!(
            "buckshot-bench-sshd-{}-{plain_shell}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for key in ["host_key", "id"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .map_err(|e| format!("ssh-keygen: {e}"))?;
            if !status.success() {
                return Err(format!("ssh-keygen: {status}"));
            }
        }
        std::fs::copy(dir.join("id.pub"), dir.join("authorized_keys")).unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n\
             StrictModes no\n",
            d = dir.display()
        );
        if plain_shell {
            config.push_str("SetEnv SHLVL=1\n");
        }
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        // sshd wants its privilege separation directory when run as root.
        let _ = std::fs::create_dir("/run/sshd");
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("sshd: {e}"))?;
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
            if Instant::now() > deadline {
                return Err("sshd did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(sshd)
    }

    /// `ssh`'s options to reach it, host keys unchecked (they are throwaway).
    fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("IdentitiesOnly", "yes".into()),
            ("StrictHostKeyChecking", "no".into()),
            ("UserKnownHostsFile", "/dev/null".into()),
            ("LogLevel", "ERROR".into()),
        ]
    }

    fn destination(&self) -> String {
        format!("{}@127.0.0.1", self.user)
    }

    fn launcher(&self) -> Ssh {
        let mut ssh = Launcher::ssh(self.destination())
            .port(self.port)
            .identity_file(self.dir.join("id"))
            .ssh_config("/dev/null");
        for (key, value) in self.options() {
            ssh = ssh.ssh_option(key, value);
        }
        ssh
    }

    /// One login that runs `true`: how long it took.
    fn login(&self) -> Duration {
        let mut command = Command::new("ssh");
        command
            .args(["-F", "/dev/null", "-T", "-o", "BatchMode=yes", "-p"])
            .arg(self.port.to_string())
            .arg("-i")
            .arg(self.dir.join("id"));
        for (key, value) in self.options() {
            command.arg("-o").arg(format!("{key}={value}"));
        }
        command
            .arg("--")
            .arg(self.destination())
            .arg("true")
            .stdin(Stdio::null());
        let start = Instant::now();
        let status = command.status().expect("ssh");
        let took = start.elapsed();
        assert!(status.success(), "ssh true: {status}");
        took
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `build()` to the first 4 results of a pool of 4 workers over ssh.
fn pool_to_first_results(sshd: &Sshd) -> Duration {
    let start = Instant::now();
    let pool = Pool::builder()
        .workers(sshd.launcher(), WORKERS)
        .build()
        .unwrap();
    let outputs: Vec<u64> = pool
        .map(identity, 0..WORKERS as u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let took = start.elapsed();
    assert_eq!(outputs, (0..WORKERS as u64).collect::<Vec<_>>());
    drop(pool);
    took
}

fn spread(mut times: Vec<Duration>) -> String {
    times.sort();
    format!("{:.2?}-{:.2?}", times[0], times[times.len() - 1])
}

pub fn ssh() {
    for (plain_shell, what) in [(false, "shell rc"), (true, "no shell rc")] {
        let sshd = match Sshd::start(plain_shell) {
            Ok(sshd) => sshd,
            Err(why) => {
                println!("{:<48} {:>14} {:>10}  {why}", "ssh pool", "-", "-");
                return;
            }
        };
        // Ships the binary: the runs below find it on the host.
        let _ = pool_to_first_results(&sshd);
        let (mut ours, mut login) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            login.push(sshd.login());
            ours.push(pool_to_first_results(&sshd));
        }
        let label = "one ssh login running true";
        let floor = median(login.clone());
        row(
            &format!("ssh, {what}: one login (median of {RUNS})"),
            format!("{floor:.1?}"),
            1.0,
            label,
        );
        println!("{:<48} {:>14}", "  spread", spread(login));
        let ours_median = median(ours.clone());
        row(
            &format!("ssh, {what}: build() to {WORKERS} results"),
            format!("{ours_median:.1?}"),
            ours_median.as_secs_f64() / floor.as_secs_f64(),
            label,
        );
        println!("{:<48} {:>14}", "  spread", spread(ours));
    }
}
