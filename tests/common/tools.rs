//! The one rule for a tool a test needs but the machine lacks (Docker Engine, Chromium and
//! chromedriver, kubectl, `git daemon`): under `CI=true` the test fails (the CI script
//! installs every tool, so a missing one is a broken CI machine); elsewhere the test prints
//! `SKIPPED` with what is missing and how to get it, and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The tools integration tests may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// A Docker Engine that answers `docker info`.
    Docker,
    /// `chromium` (or `chromium-browser`) and `chromedriver`.
    Chromium,
    Kubectl,
    /// git's `git-daemon` program.
    GitDaemon,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Docker => "a Docker Engine",
            Tool::Chromium => "chromium/chromedriver",
            Tool::Kubectl => "`kubectl`",
            Tool::GitDaemon => "`git daemon`",
        }
    }

    fn install(self) -> &'static str {
        match self {
            Tool::Docker => "run scripts/dev-env.sh up",
            Tool::Chromium => "run scripts/install-browser.sh",
            Tool::Kubectl => "apt-get install kubectl",
            Tool::GitDaemon => "install git's daemon (Debian: git-daemon-sysvinit or git)",
        }
    }
}

/// Whether this run is CI: `CI=true` (or `CI=1`), as CI services set it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `tool` is there. When it is not: panics under CI, else prints SKIPPED and why,
/// and the caller returns.
pub fn have(tool: Tool) -> bool {
    match probe(tool) {
        Ok(()) => true,
        Err(why) => {
            missing(tool.name(), &why, tool.install());
            false
        }
    }
}

/// The decision itself, for a requirement that is not one of [`Tool`]'s.
pub fn missing(what: &str, why: &str, install: &str) {
    assert!(!in_ci(), "CI=true but {what} is missing ({why}): {install}");
    // Straight to fd 2: the harness captures `eprintln!` of passing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {what} is missing ({why}); {install} ***\n"
    );
}

/// The python of a test venv (`$HOME/.cache/kiln/<dir>`, or the directory in `env_var`)
/// when it can `import_line`; otherwise [`missing`] (fails under CI) and `None`.
/// `scripts/test-all.sh` makes these venvs.
pub fn venv_python(env_var: &str, dir: &str, import_line: &str) -> Option<PathBuf> {
    let venv = std::env::var_os(env_var).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln").join(dir))
    })?;
    let python = venv.join("bin/python");
    let why = match Command::new(&python).args(["-c", import_line]).output() {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => format!("{}: {e}", python.display()),
    };
    missing(
        &format!("the {dir} venv"),
        &why,
        &format!("run scripts/test-all.sh (or set {env_var})"),
    );
    None
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Where `git-daemon` is (`git --exec-path`), if it is there.
pub fn git_daemon() -> Option<PathBuf> {
    let out = Command::new("git").arg("--exec-path").output().ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let daemon = Path::new(&dir).join("git-daemon");
    daemon.exists().then_some(daemon)
}

fn probe(tool: Tool) -> Result<(), String> {
    match tool {
        Tool::Docker => match Command::new("docker").arg("info").output() {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`docker info` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run `docker`: {e}")),
        },
        Tool::Chromium => {
            let browser = which("chromium").or_else(|| which("chromium-browser"));
            match (browser, which("chromedriver")) {
                (Some(_), Some(_)) => Ok(()),
                (None, _) => Err("no chromium on PATH".into()),
                (_, None) => Err("no chromedriver on PATH".into()),
            }
        }
        Tool::Kubectl => Command::new("kubectl")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|_| ())
            .map_err(|e| format!("cannot run `kubectl`: {e}")),
        Tool::GitDaemon => git_daemon()
            .map(|_| ())
            .ok_or_else(|| "no git-daemon in `git --exec-path`".into()),
    }
}
