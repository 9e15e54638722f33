//! Starting a real Triton server on a model repository, bound to 127.0.0.1, and waiting until
//! it is ready. The server comes from the pinned PyPI wheel `nvidia-pytriton==0.7.0` (tritonserver
//! 2.51 with the Python backend) in the venv `scripts/triton-venv.sh` creates, or from a
//! `tritonserver` on PATH (the NVIDIA container, `/opt/tritonserver/backends`).

use crate::client::Client;
use crate::deploy::pbtxt::Message;
use crate::generate::request::{FluxParameters, Limits as RequestLimits};
use crate::server_process::{kill_orphaned_stubs, stop_server_process, SHUTDOWN_GRACE};
use anyhow::{bail, Context, Result};
use fluxbuild_contract::interrupted;
use fluxbuild_contract::parameters::Parameters;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where a tritonserver binary, its backends and its environment are.
#[derive(Clone, Debug)]
pub struct Installation {
    pub server: PathBuf,
    pub backends: PathBuf,
    /// Prepended to PATH (the Python backend stub finds the venv's python3 there).
    pub path: Vec<PathBuf>,
    pub ld_library_path: Vec<PathBuf>,
    /// Extra import folders for the Python models (e.g. a torch install), passed as
    /// FLUXBUILD_PYTHON_PATH: the backend stub's interpreter is isolated and ignores PYTHONPATH.
    pub python_path: Vec<PathBuf>,
}

/// The default venv: `$FLUXBUILD_TRITON_VENV`, else `.cache/triton-venv` here or in the source tree.
pub fn default_venv() -> PathBuf {
    if let Some(v) = std::env::var_os("FLUXBUILD_TRITON_VENV") {
        return PathBuf::from(v);
    }
    let local = PathBuf::from(".cache/triton-venv");
    if local.is_dir() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/triton-venv")
}

impl Installation {
    pub fn find(venv: Option<&Path>) -> Result<Installation> {
        let venv = venv.map(Path::to_path_buf).unwrap_or_else(default_venv);
        if venv.is_dir() {
            return Installation::from_venv(&venv);
        }
        let system = Path::new("/opt/tritonserver");
        if system.join("bin/tritonserver").is_file() {
            return Ok(Installation {
                server: system.join("bin/tritonserver"),
                backends: system.join("backends"),
                path: vec![],
                ld_library_path: vec![],
                python_path: vec![],
            });
        }
        bail!(
            "no Triton server found: {} does not exist (create it with `make triton-venv`, i.e. \
             scripts/triton-venv.sh) and there is no /opt/tritonserver",
            venv.display()
        )
    }

    fn from_venv(venv: &Path) -> Result<Installation> {
        let venv = venv
            .canonicalize()
            .with_context(|| format!("{}: cannot resolve", venv.display()))?;
        if !venv.join(".complete").is_file() {
            bail!(
                "{}: the Triton venv is incomplete (rerun `make triton-venv`)",
                venv.display()
            );
        }
        let python = venv.join("bin/python3");
        let query =
            "import sysconfig; print(sysconfig.get_paths()['purelib']); print(sysconfig.get_config_var('LIBDIR'))";
        let output = Command::new(&python)
            .args(["-c", query])
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        let (Some(site), Some(libdir)) = (lines.next(), lines.next()) else {
            bail!(
                "{}: cannot query its paths: {}",
                python.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let triton = Path::new(site).join("pytriton/tritonserver");
        let server = triton.join("bin/tritonserver");
        if !server.is_file() {
            bail!(
                "{}: missing (is nvidia-pytriton==0.7.0 installed in {}?)",
                server.display(),
                venv.display()
            );
        }
        Ok(Installation {
            server,
            backends: triton.join("backends"),
            path: vec![venv.join("bin")],
            ld_library_path: vec![Path::new(site).join("nvidia_pytriton.libs"), PathBuf::from(libdir)],
            python_path: vec![],
        })
    }
}

impl Installation {
    /// Whether this tritonserver accepts `flag` (its `--help` lists it): 2.51 (the PyPI build)
    /// has no `--http-max-input-size`; the NVIDIA containers of 24.12 and later have it.
    pub fn supports(&self, flag: &str) -> bool {
        Command::new(&self.server)
            .arg("--help")
            .env(
                "LD_LIBRARY_PATH",
                prepend_paths(&self.ld_library_path, "LD_LIBRARY_PATH"),
            )
            .output()
            .map(|o| {
                let text = [o.stdout, o.stderr].concat();
                String::from_utf8_lossy(&text).contains(&format!("{flag} "))
            })
            .unwrap_or(false)
    }
}

/// `extra` before the current value of the environment variable `var` (a PATH-like list).
fn prepend_paths(extra: &[PathBuf], var: &str) -> std::ffi::OsString {
    let mut parts: Vec<PathBuf> = extra.to_vec();
    parts.extend(std::env::var_os(var).iter().flat_map(std::env::split_paths));
    std::env::join_paths(parts).expect("valid paths")
}

/// Bytes of JSON per value of a plain-JSON tensor at most: a float32 printed as the shortest
/// float64 that reads back (`-1.1754943508222875e-38`) plus its comma.
const JSON_BYTES_PER_FLOAT: u64 = 24;
/// Bytes of JSON per prompt byte at most (a control or non-ASCII byte escaped as `\u00XX`).
const JSON_BYTES_PER_PROMPT_BYTE: u64 = 6;
/// The request header and the small inputs (steps, seed, ...) with room to spare.
const REQUEST_OVERHEAD_BYTES: u64 = 64 << 10;

/// The largest HTTP body a legitimate request may need: `prompts` prompts of the longest allowed
/// length and the optional noise tensor of the largest allowed image, written as plain JSON (the
/// larger encoding; binary tensors take less). The server's front end refuses anything larger
/// before reading it (`--http-max-input-size`), so a 10 MB prompt never reaches `flux`.
pub fn max_request_bytes(limits: &RequestLimits, prompts: usize) -> u64 {
    let pixels = limits.max_image_pixels.min(limits.max_height * limits.max_width) as u64;
    let noise_values = 16 * pixels / 64; // [16, height/8, width/8] per prompt
    let per_prompt = limits.max_prompt_bytes as u64 * JSON_BYTES_PER_PROMPT_BYTE + noise_values * JSON_BYTES_PER_FLOAT;
    prompts as u64 * per_prompt + REQUEST_OVERHEAD_BYTES
}

/// `max_request_bytes` of a repository's `flux` model, from its config.pbtxt (`max_batch_size`
/// prompts per request, the rules table `request_rules`).
pub fn repository_max_request_bytes(repo: &Path) -> Result<u64> {
    let (rules, prompts) = repository_request_rules(repo)?;
    Ok(max_request_bytes(&rules, prompts.max(1)))
}

/// The rules every request to a repository's `flux` meets (its config's `request_rules`), and
/// the prompts one request may carry (`max_batch_size`).
pub fn repository_request_rules(repo: &Path) -> Result<(RequestLimits, usize)> {
    let path = repo.join("flux/config.pbtxt");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let config = Message::parse(&text).with_context(|| format!("{}: not protobuf text format", path.display()))?;
    let prompts: usize = config
        .scalar("max_batch_size")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{}: no max_batch_size", path.display()))?;
    let parameters = FluxParameters::from_strings(config.string_parameters())
        .with_context(|| format!("{}: not the parameters `fluxbuild package` writes", path.display()))?;
    Ok((parameters.request_rules, prompts))
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub repository: PathBuf,
    pub http_port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    /// `--model-control-mode=explicit`: models can be unloaded and loaded at run time.
    pub explicit_model_control: bool,
    /// With explicit control: the models loaded at start (`*`: all).
    pub load_models: Vec<String>,
    /// The model whose readiness means "ready" (None: the server being live is enough).
    pub ready_model: Option<String>,
    /// How long to wait for the server (and the `flux` model) to be ready.
    pub ready_timeout: Duration,
    /// Extra tritonserver arguments.
    pub extra_args: Vec<String>,
    /// Where the server's log goes (None: a temporary folder removed with the server).
    pub log: Option<PathBuf>,
    /// The server outlives this process (its own session) instead of stopping with it.
    pub detached: bool,
}

impl ServerOptions {
    /// Options on free loopback ports.
    pub fn new(repository: &Path) -> Result<ServerOptions> {
        Ok(ServerOptions {
            repository: repository.to_path_buf(),
            http_port: free_port()?,
            grpc_port: free_port()?,
            metrics_port: free_port()?,
            explicit_model_control: false,
            load_models: vec!["*".into()],
            ready_model: Some("flux".into()),
            ready_timeout: Duration::from_secs(120),
            extra_args: vec![],
            log: None,
            detached: false,
        })
    }
}

/// Where `free_port` looks: below the kernel's ephemeral range (32768 and up by default), so that
/// no outgoing connection (a client's, a server's) holds the port by the time a server binds it.
const FREE_PORTS: std::ops::Range<u32> = 20_000..32_768;

/// A loopback port free now (free unless someone takes it before the server binds it). Each call
/// moves on from the last, from a start that differs per process, so that tests running side by
/// side do not hand out the same ports.
pub fn free_port() -> Result<u16> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let span = FREE_PORTS.end - FREE_PORTS.start;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (FREE_PORTS.start + (start + step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {FREE_PORTS:?}")
}

/// A running tritonserver; dropped, it is stopped (SIGTERM, then SIGKILL after 10 s).
pub struct Server {
    child: Option<Child>,
    pub http_port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
    _log_dir: Option<tempfile_dir::TempDir>,
    /// Why the first start attempt was repeated (see START_ATTEMPTS).
    pub restarted: Option<String>,
    /// Stops the server on Ctrl-C or SIGTERM, for as long as it is ours.
    on_interrupt: Option<interrupted::Registered>,
}

mod tempfile_dir {
    /// A folder removed on drop (the server log lives there unless the caller keeps it).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Triton's Python backend now and then aborts the whole server while it starts the stubs
/// (`boost::interprocess::lock_exception`, triton-inference-server/server#8882): a server killed
/// by a signal before it was ready is started once more, on the same log.
const START_ATTEMPTS: u32 = 2;

impl Server {
    /// Starts tritonserver and waits until it is ready (see START_ATTEMPTS; `restarted` says why
    /// when the first attempt died).
    pub fn start(install: &Installation, options: &ServerOptions) -> Result<Server> {
        check_ports_free(options)?;
        let repo = options
            .repository
            .canonicalize()
            .with_context(|| format!("--repo {}: not found", options.repository.display()))?;
        let (log, log_dir) = match &options.log {
            Some(log) => (std::path::absolute(log)?, None),
            None => {
                let dir =
                    std::env::temp_dir().join(format!("fluxbuild-triton-{}-{}", std::process::id(), options.http_port));
                std::fs::create_dir_all(&dir)?;
                (dir.join("tritonserver.log"), Some(tempfile_dir::TempDir(dir)))
            }
        };
        let mut server = Server {
            child: None,
            http_port: options.http_port,
            metrics_port: options.metrics_port,
            log,
            _log_dir: log_dir,
            restarted: None,
            on_interrupt: None,
        };
        std::fs::File::create(&server.log)
            .with_context(|| format!("{}: cannot create the server log", server.log.display()))?;
        for attempt in 1.. {
            // Appending: a dead attempt's stubs still write their last lines.
            let log_file = std::fs::OpenOptions::new().append(true).open(&server.log)?;
            // Registered before the spawn (an interrupt then either comes first, and there is
            // no server, or stops it); the pid is known once the spawn returns.
            let pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(SPAWNING));
            let spawned = pid.clone();
            server.on_interrupt = Some(interrupted::on_interrupt(move || stop_spawned(&spawned)));
            let child = spawn(install, options, &repo, log_file);
            let started = child.as_ref().map_or(SPAWN_FAILED, |c| c.id() as i32);
            pid.store(started, std::sync::atomic::Ordering::SeqCst);
            server.child = Some(child?);
            let Some(status) = server.wait_ready(options.ready_model.as_deref(), options.ready_timeout)? else {
                break;
            };
            if status.signal().is_none() || attempt == START_ATTEMPTS {
                bail!(
                    "tritonserver exited ({status}) before it was ready; its log:\n{}",
                    server.tail(40)
                );
            }
            let why = format!(
                "tritonserver was killed ({status}) before it was ready; started it once more (the first \
                 attempt's log is at the top of {})",
                server.log.display()
            );
            std::fs::OpenOptions::new()
                .append(true)
                .open(&server.log)?
                .write_all(format!("\nfluxbuild: {why}\n\n").as_bytes())?;
            server.restarted = Some(why);
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The tritonserver process id (None once stopped or detached).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server process has exited (with its status).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            kill_orphaned_stubs(child.id());
        }
        Ok(status)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url()).expect("valid url")
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until the server is live and `model` (the orchestrator `flux`) is ready (fallback
    /// networks may have failed to load: the server still serves with them); returns the exit
    /// status of a server that ended before.
    fn wait_ready(&mut self, model: Option<&str>, timeout: Duration) -> Result<Option<ExitStatus>> {
        let client = self.client();
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait()? {
                kill_orphaned_stubs(child.id());
                self.child = None;
                return Ok(Some(status));
            }
            let ready = match model {
                Some(m) => client.model_ready(m).unwrap_or(false),
                None => client.live().unwrap_or(false),
            };
            if ready {
                return Ok(None);
            }
            if start.elapsed() > timeout {
                let _ = self.stop();
                bail!(
                    "tritonserver was not ready after {} s; its log:\n{}",
                    timeout.as_secs(),
                    self.tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the server to exit by itself (e.g. a signal to `fluxbuild serve`).
    pub fn wait(&mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.take().expect("running").wait()?)
    }

    /// Stops the server (see `stop_server_process`).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(child) = self.child.take() {
            self.on_interrupt = None;
            stop_server_process(child.id() as i32, SHUTDOWN_GRACE);
        }
        Ok(())
    }

    /// Keeps the log file after the server is dropped (for `fluxbuild serve`).
    pub fn keep_log(&mut self) {
        if let Some(dir) = self._log_dir.take() {
            std::mem::forget(dir);
        }
    }

    /// Leaves the server running on its own (started `detached`); returns its process id.
    pub fn detach(mut self) -> u32 {
        self.keep_log();
        self.on_interrupt = None;
        self.child.take().expect("running").id()
    }
}

/// Triton exits at once when a port is taken, but a server already there would answer the
/// readiness check first (and be "supervised"): refused before starting, naming the port.
fn check_ports_free(options: &ServerOptions) -> Result<()> {
    let ports = [
        ("--http-port", options.http_port),
        ("--grpc-port", options.grpc_port),
        ("--metrics-port", options.metrics_port),
    ];
    for (flag, port) in ports {
        if let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
            bail!("{flag} {port}: 127.0.0.1:{port} is taken ({e}): another server there? choose another port");
        }
    }
    Ok(())
}

/// The pid cell of a server being spawned, and of one whose spawn failed.
const SPAWNING: i32 = 0;
const SPAWN_FAILED: i32 = -1;

/// The interrupt cleanup of a server: waits for a spawn in flight to return, then stops it.
fn stop_spawned(pid: &std::sync::atomic::AtomicI32) {
    let start = Instant::now();
    while pid.load(std::sync::atomic::Ordering::SeqCst) == SPAWNING && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = pid.load(std::sync::atomic::Ordering::SeqCst);
    if pid > 0 {
        stop_server_process(pid, SHUTDOWN_GRACE);
    }
}

/// One tritonserver process on `repo`, its output into `log`.
fn spawn(install: &Installation, options: &ServerOptions, repo: &Path, log: std::fs::File) -> Result<Child> {
    let mut cmd = Command::new(&install.server);
    cmd.arg(format!("--model-repository={}", repo.display()))
        .arg(format!("--backend-directory={}", install.backends.display()))
        .args([
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
        ])
        .arg(format!("--http-port={}", options.http_port))
        .arg(format!("--grpc-port={}", options.grpc_port))
        .arg(format!("--metrics-port={}", options.metrics_port))
        // A network that fails to load must not take the others down (fallbacks, clear errors).
        .arg("--exit-on-error=false")
        .arg("--strict-readiness=true");
    if options.explicit_model_control {
        cmd.arg("--model-control-mode=explicit");
        cmd.args(options.load_models.iter().map(|m| format!("--load-model={m}")));
    }
    cmd.args(&options.extra_args);
    cmd.env("PATH", prepend_paths(&install.path, "PATH")).env(
        "LD_LIBRARY_PATH",
        prepend_paths(&install.ld_library_path, "LD_LIBRARY_PATH"),
    );
    if !install.python_path.is_empty() {
        cmd.env(
            "FLUXBUILD_PYTHON_PATH",
            prepend_paths(&install.python_path, "FLUXBUILD_PYTHON_PATH"),
        );
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    if options.detached {
        own_session(&mut cmd);
    } else {
        stop_with_parent(&mut cmd);
    }
    cmd.spawn()
        .with_context(|| format!("cannot start {}", install.server.display()))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A detached server leads its own session: the terminal's signals and our exit leave it running.
fn own_session(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// The server gets SIGTERM when the process that started it dies (no orphaned servers).
fn stop_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest request the limits allow, as plain JSON with every value at its longest.
    fn largest_plain_json(limits: &RequestLimits, prompts: usize) -> usize {
        let side = (limits.max_image_pixels as f64).sqrt() as usize / 16 * 16;
        let (height, width) = (limits.max_height.min(side), limits.max_width.min(side));
        let noise = vec!["-1.1754943508222875e-38"; 16 * (height / 8) * (width / 8)].join(",");
        let prompt = "\\u0001".repeat(limits.max_prompt_bytes);
        let tensor = |name: &str, datatype: &str, shape: &str, data: &str| {
            format!(r#"{{"name":"{name}","shape":{shape},"datatype":"{datatype}","data":[{data}]}}"#)
        };
        let each = |value: &str| vec![value; prompts].join(",");
        let inputs = [
            tensor(
                "prompt",
                "BYTES",
                &format!("[{prompts},1]"),
                &each(&format!("\"{prompt}\"")),
            ),
            tensor("height", "INT32", &format!("[{prompts},1]"), &each(&height.to_string())),
            tensor("width", "INT32", &format!("[{prompts},1]"), &each(&width.to_string())),
            tensor(
                "steps",
                "INT32",
                &format!("[{prompts},1]"),
                &each(&limits.max_steps.to_string()),
            ),
            tensor(
                "guidance",
                "FP32",
                &format!("[{prompts},1]"),
                &each("-1.1754943508222875e-38"),
            ),
            tensor("max_sequence_length", "INT32", &format!("[{prompts},1]"), &each("512")),
            tensor(
                "noise",
                "FP32",
                &format!("[{prompts},16,{},{}]", height / 8, width / 8),
                &each(&noise),
            ),
        ];
        format!(
            r#"{{"id":"a-request-id-of-some-length","inputs":[{}]}}"#,
            inputs.join(",")
        )
        .len()
    }

    #[test]
    fn the_largest_legitimate_request_fits_and_a_10_mb_prompt_does_not() {
        let deployed = RequestLimits::pipeline(); // 1024x1024 and more: bounded by the memory budget
        let test_repo = RequestLimits {
            max_height: 128,
            max_width: 128,
            ..RequestLimits::pipeline()
        };
        for (limits, prompts) in [(&deployed, 4), (&test_repo, 4), (&test_repo, 1)] {
            let bound = max_request_bytes(limits, prompts);
            let largest = largest_plain_json(limits, prompts) as u64;
            assert!(largest <= bound, "{largest} > {bound} for {prompts} prompts");
            assert!(
                bound < largest + largest / 4 + (64 << 10),
                "{bound} is far above {largest}"
            );
        }
        assert!(max_request_bytes(&test_repo, 4) < 10 << 20);
    }
}
