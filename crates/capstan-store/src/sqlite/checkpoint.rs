//! WAL checkpoints off the write path.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses the threshold and
//! fsyncs the database file there, which shows up as the write tail latency. Instead,
//! the writer never checkpoints and this thread runs a passive checkpoint (which does
//! not block writers or readers) on its own connection at a fixed interval.
//!
//! Under a steady write load a passive checkpoint never catches up with the last frame,
//! and SQLite only rewinds the WAL after a complete one, so the file would grow without
//! bound. When the WAL passes `REWIND_FRAMES`, one more pass runs holding the writer
//! lock: it copies only what arrived since the first pass, completes, and the next
//! write rewinds the WAL. Writers pause for that short pass, once per `REWIND_FRAMES`.

use super::ops::{self, Writer};
use crate::{Result, StoreError};
use rusqlite::Connection;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

const INTERVAL: Duration = Duration::from_millis(500);
/// WAL size (in pages) past which a checkpoint completes under the writer lock.
const REWIND_FRAMES: i64 = 8192;

/// Owns the checkpoint thread; dropping it stops and joins the thread.
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(
        path: &Path,
        writer: Arc<tokio::sync::Mutex<Writer>>,
    ) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        ops::configure(&conn)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run(&conn, &writer, &stopped))
            .map_err(|err| StoreError::Backend(Box::new(err)))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Checkpoints every interval until the sender is dropped.
fn run(conn: &Connection, writer: &tokio::sync::Mutex<Writer>, stopped: &mpsc::Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
        match checkpoint(conn) {
            Ok(frames) if frames > REWIND_FRAMES => {
                let _writes_paused = writer.blocking_lock();
                if let Err(err) = checkpoint(conn) {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "sqlite checkpoint failed"
                    );
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(
                error = &err as &dyn std::error::Error,
                "sqlite checkpoint failed"
            ),
        }
    }
}

/// One passive checkpoint; returns the number of frames in the WAL.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    // The row is (busy, frames in the WAL, frames checkpointed).
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // Waits at most for one checkpoint in progress.
            let _ = thread.join();
        }
    }
}
