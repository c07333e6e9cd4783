//! Puts and gets under way, with their progress, and the last few finished:
//! what the dashboard shows as transfers.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Finished tasks kept for display.
pub const FINISHED_KEPT: usize = 20;

/// How a task stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Still moving data.
    Running,
    /// Finished; a get names what it wrote.
    Done {
        /// The file written (gets of a single file), for a download link.
        file: Option<PathBuf>,
    },
    /// Stopped with this error.
    Failed(String),
}

/// One put or get.
#[derive(Debug)]
pub struct Task {
    /// Its number, unique within the node.
    pub id: u64,
    /// `put` or `get`.
    pub kind: &'static str,
    /// When it began.
    pub started: Instant,
    name: Mutex<String>,
    total: AtomicU64,
    done: AtomicU64,
    state: Mutex<(TaskState, Option<Duration>)>,
}

impl Task {
    /// The file's name, once known.
    pub fn name(&self) -> String {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Names the file and its size (bytes to move in all).
    pub fn begin(&self, name: &str, total: u64) {
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
        self.total.store(total, Ordering::Relaxed);
    }

    /// `bytes` more are done.
    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes to move in all, and done so far.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.done.load(Ordering::Relaxed),
        )
    }

    /// How it stands, and how long it ran (once finished; else so far).
    pub fn state(&self) -> (TaskState, Duration) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.0.clone(), s.1.unwrap_or_else(|| self.started.elapsed()))
    }

    /// Ends the task.
    pub fn finish(&self, state: TaskState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) =
            (state, Some(self.started.elapsed()));
    }

    /// Marks the task failed if it is still running: its caller went away
    /// without finishing it.
    pub fn abandon(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.0 == TaskState::Running {
            *s = (
                TaskState::Failed("stopped before it finished".into()),
                Some(self.started.elapsed()),
            );
        }
    }

    fn running(&self) -> bool {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 == TaskState::Running
    }
}

/// The node's tasks. Cheap to clone; clones share them.
#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    tasks: VecDeque<Arc<Task>>,
}

impl Activity {
    /// Starts tracking a task of `kind`.
    pub fn start(&self, kind: &'static str) -> Arc<Task> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next += 1;
        let task = Arc::new(Task {
            id: inner.next,
            kind,
            started: Instant::now(),
            name: Mutex::new(String::new()),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            state: Mutex::new((TaskState::Running, None)),
        });
        // Forget the oldest finished tasks beyond what is shown.
        let finished = inner.tasks.iter().filter(|t| !t.running()).count();
        if finished >= FINISHED_KEPT {
            if let Some(i) = inner.tasks.iter().position(|t| !t.running()) {
                inner.tasks.remove(i);
            }
        }
        inner.tasks.push_back(task.clone());
        task
    }

    /// Every task kept, oldest first.
    pub fn tasks(&self) -> Vec<Arc<Task>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tasks.iter().cloned().collect()
    }

    /// The task numbered `id`, if still kept.
    pub fn task(&self, id: u64) -> Option<Arc<Task>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tasks.iter().find(|t| t.id == id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_tasks_stay_and_old_finished_ones_go() {
        let a = Activity::default();
        let long = a.start("get");
        for _ in 0..FINISHED_KEPT + 3 {
            a.start("put").finish(TaskState::Failed("no".into()));
        }
        let tasks = a.tasks();
        assert!(
            tasks.iter().any(|t| t.id == long.id),
            "a running task stays"
        );
        assert_eq!(tasks.len(), FINISHED_KEPT + 1);
        long.begin("f", 10);
        long.advance(4);
        assert_eq!(a.task(long.id).map(|t| t.progress()), Some((10, 4)));
    }
}
