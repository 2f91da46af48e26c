//! The server's side: a few long-lived workers, each used by one object at a time. A
//! worker that crashed, hit a limit or ran past its deadline is killed and dropped; the
//! next object gets a fresh one.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::frame::{HANDSHAKE, read_frame_async, write_request};
use super::limits::apply_in_child;
use crate::ingest::extract::{ExtractError, Extraction};

/// How long a new worker has to greet before it is given up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of a worker's stderr is kept for its crash report.
const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// How long a dead worker's exit status and last stderr are waited for.
const DEATH_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one object may cost a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Address space of the worker process (RLIMIT_AS).
    pub memory_bytes: u64,
    /// CPU time per object (RLIMIT_CPU, moved forward before each object).
    pub cpu_seconds: u64,
    /// Wall-clock time per object; the worker is killed past it.
    pub wall: Duration,
}

/// The workers: at most `size` at once, started on demand, kept while healthy.
pub struct WorkerPool {
    program: PathBuf,
    limits: WorkerLimits,
    idle: Mutex<Vec<Worker>>,
    slots: Semaphore,
    size: usize,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WorkerPool")
            .field("program", &self.program)
            .field("limits", &self.limits)
            .field("size", &self.size)
            .finish()
    }
}

/// The `skyfuse` binary to run as a worker: this executable, or, when this is a cargo test
/// harness (`target/<profile>/deps/<test>-<hash>`), the `skyfuse` cargo built beside it.
pub fn default_worker_program() -> std::io::Result<PathBuf> {
    let current = std::env::current_exe()?;
    let parent = current.parent().unwrap_or(Path::new("/"));
    if parent.file_name().is_some_and(|name| name == "deps") {
        let beside = parent.with_file_name("skyfuse");
        if beside.is_file() {
            return Ok(beside);
        }
    }
    Ok(current)
}

impl WorkerPool {
    pub fn new(program: PathBuf, size: usize, limits: WorkerLimits) -> Self {
        let size = size.max(1);
        Self {
            program,
            limits,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size),
            size,
        }
    }

    /// Extracts one object in a worker. A crash, a limit or the deadline is this object's
    /// [`ExtractError::Isolated`]; a worker that cannot start is
    /// [`ExtractError::WorkerUnavailable`].
    pub async fn extract(
        &self,
        object_key: &str,
        bytes: &[u8],
    ) -> Result<Extraction, ExtractError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| unavailable("the worker pool is closed".to_owned()))?;
        let mut worker = match self.take_idle() {
            Some(worker) => worker,
            None => self.start_worker().await?,
        };
        match worker.extract(object_key, bytes, &self.limits).await {
            Ok(reply) => {
                self.lock_idle().push(worker);
                reply
            }
            Err(reason) => {
                tracing::warn!(object_key, %reason, stderr = %worker.stderr_tail(), "extraction worker lost");
                Err(ExtractError::Isolated { reason })
            }
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle worker that is still alive (one that died idle is not this object's fault).
    fn take_idle(&self) -> Option<Worker> {
        let mut idle = self.lock_idle();
        while let Some(mut worker) = idle.pop() {
            if matches!(worker.child.try_wait(), Ok(None)) {
                return Some(worker);
            }
        }
        None
    }

    async fn start_worker(&self) -> Result<Worker, ExtractError> {
        let mut command = Command::new(&self.program);
        command
            .arg("extract-worker")
            .arg("--cpu-seconds")
            .arg(self.limits.cpu_seconds.to_string())
            // The worker needs no credentials, so it gets no environment at all.
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let memory_bytes = self.limits.memory_bytes;
        // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || apply_in_child(memory_bytes));
        }
        let program = self.program.display();
        let mut child = command
            .spawn()
            .map_err(|error| unavailable(format!("cannot start {program}: {error}")))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(unavailable("the worker's pipes are missing".to_owned()));
        };
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = tokio::spawn(keep_tail(stderr, Arc::clone(&stderr_tail)));
        let mut worker = Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr_tail,
            stderr_reader,
        };
        let greeting =
            tokio::time::timeout(STARTUP_TIMEOUT, read_frame_async(&mut worker.stdout, 64)).await;
        match greeting {
            Ok(Ok(greeting)) if greeting == HANDSHAKE => Ok(worker),
            _ => Err(unavailable(format!(
                "{program} did not start as a skyfuse extraction worker ({})",
                worker.stderr_tail().trim()
            ))),
        }
    }
}

fn unavailable(reason: String) -> ExtractError {
    ExtractError::WorkerUnavailable { reason }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    stderr_reader: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// The worker's reply, or why the worker is lost (it is then killed).
    async fn extract(
        &mut self,
        object_key: &str,
        bytes: &[u8],
        limits: &WorkerLimits,
    ) -> Result<Result<Extraction, ExtractError>, String> {
        self.stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let exchange = async {
            write_request(&mut self.stdin, object_key, bytes).await?;
            // A reply cannot be larger than what the worker could hold.
            read_frame_async(&mut self.stdout, limits.memory_bytes).await
        };
        match tokio::time::timeout(limits.wall, exchange).await {
            Ok(Ok(reply)) => serde_json::from_slice(&reply)
                .map_err(|error| format!("extraction worker sent a bad reply: {error}")),
            Ok(Err(_)) => Err(self.why_it_died(limits).await),
            Err(_elapsed) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Err(format!(
                    "extraction exceeded {} s",
                    limits.wall.as_secs_f64().round()
                ))
            }
        }
    }

    async fn why_it_died(&mut self, limits: &WorkerLimits) -> String {
        let status = match tokio::time::timeout(DEATH_REPORT_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => {
                let _ = self.child.start_kill();
                None
            }
        };
        // The pipe reaches its end once the worker is gone: the tail is then complete.
        let _ = tokio::time::timeout(DEATH_REPORT_TIMEOUT, &mut self.stderr_reader).await;
        describe_death(status, &self.stderr_tail(), limits)
    }

    fn stderr_tail(&self) -> String {
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&tail).into_owned()
    }
}

/// Keeps the last [`STDERR_TAIL_BYTES`] of the worker's stderr.
async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<Mutex<Vec<u8>>>) {
    let mut buffer = [0u8; 4096];
    while let Ok(read) = stderr.read(&mut buffer).await {
        if read == 0 {
            break;
        }
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        tail.extend_from_slice(&buffer[..read]);
        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..excess);
    }
}

/// Why a worker died, in the words a report shows.
fn describe_death(status: Option<ExitStatus>, stderr: &str, limits: &WorkerLimits) -> String {
    // Rust prints this before aborting on a failed allocation: the address-space limit.
    if stderr.contains("memory allocation of") {
        return format!(
            "extraction exceeded {} MiB",
            limits.memory_bytes / (1024 * 1024)
        );
    }
    let Some(status) = status else {
        return "extraction worker stopped answering".to_owned();
    };
    match status.signal() {
        Some(libc::SIGXCPU) => {
            format!("extraction exceeded {} s of CPU time", limits.cpu_seconds)
        }
        Some(signal) if stderr.contains("has overflowed its stack") => {
            format!("extraction crashed (stack overflow, signal {signal})")
        }
        Some(signal) => format!("extraction crashed (signal {signal})"),
        None => format!(
            "extraction worker exited with status {}",
            status.code().unwrap_or(-1)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WorkerLimits = WorkerLimits {
        memory_bytes: 512 << 20,
        cpu_seconds: 30,
        wall: Duration::from_secs(60),
    };

    #[test]
    fn deaths_are_described_by_their_cause() {
        let signal = |number| Some(ExitStatus::from_raw(number));
        assert_eq!(
            describe_death(
                signal(6),
                "memory allocation of 4294967296 bytes failed",
                &LIMITS
            ),
            "extraction exceeded 512 MiB"
        );
        assert_eq!(
            describe_death(signal(libc::SIGXCPU), "", &LIMITS),
            "extraction exceeded 30 s of CPU time"
        );
        assert_eq!(
            describe_death(signal(6), "thread 'main' has overflowed its stack", &LIMITS),
            "extraction crashed (stack overflow, signal 6)"
        );
        assert_eq!(
            describe_death(signal(11), "", &LIMITS),
            "extraction crashed (signal 11)"
        );
        assert_eq!(
            describe_death(Some(ExitStatus::from_raw(3 << 8)), "", &LIMITS),
            "extraction worker exited with status 3"
        );
    }

    #[tokio::test]
    async fn a_program_that_is_not_a_worker_is_unavailable_not_a_bad_object() {
        let pool = WorkerPool::new(PathBuf::from("/bin/true"), 1, LIMITS);
        let error = pool.extract("a.pdf", b"%PDF").await.unwrap_err();
        assert!(
            matches!(error, ExtractError::WorkerUnavailable { .. }),
            "{error:?}"
        );
        assert!(!error.blames_content());
    }
}
