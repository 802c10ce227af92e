//! A connection's outbound queue: bounded, filled without waiting, drained by the connection's
//! own task.
//!
//! Pushes are handed to a connection by [`Outbox::push`], which never awaits the socket: a
//! client that stops reading fills only its own queue, and the hub closes it when the queue is
//! full. The connection task takes everything queued at once ([`Outbox::take`]) and writes it
//! with one flush, so a burst costs one syscall rather than one per frame.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use gateway_core::CloseCode;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// The queue is full (or closing): the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Debug)]
struct State {
    frames: VecDeque<Message>,
    /// The payload bytes of `frames`.
    bytes: usize,
    /// Set once: after this frame nothing more is queued and the task closes the socket.
    close: Option<CloseCode>,
    /// When the oldest push among `frames` was at the node (a copy of the node's one clock
    /// read per publication): the start of the push-to-write latency of the next batch.
    oldest_push: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    capacity: usize,
    max_bytes: usize,
    /// Wakes the connection task; `notify_one` keeps a permit if the task is busy writing, so
    /// no wake-up is ever lost.
    wake: Notify,
}

/// What the connection task should write next.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub frames: VecDeque<Message>,
    pub close: Option<CloseCode>,
    /// When the oldest push among `frames` was at the node, if there is one.
    pub oldest_push: Option<Instant>,
}

impl Outbox {
    /// At most `capacity` frames and `max_bytes` bytes (one frame of any size is always
    /// accepted into an empty queue, so a large push never closes every subscriber).
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                close: None,
                oldest_push: None,
            }),
            capacity,
            max_bytes,
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a queue and a flag, consistent after every statement: a panic elsewhere
        // while holding the lock cannot leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame without waiting. `Err(Full)` if the queue is at one of its bounds or the
    /// connection is closing.
    pub(crate) fn push(&self, frame: Message) -> Result<(), Full> {
        self.enqueue(frame, None)
    }

    /// Queues a push that was at the node at `at`, like [`Outbox::push`].
    pub(crate) fn push_delivery(&self, frame: Message, at: Instant) -> Result<(), Full> {
        self.enqueue(frame, Some(at))
    }

    fn enqueue(&self, frame: Message, pushed_at: Option<Instant>) -> Result<(), Full> {
        let len = frame.len();
        let mut state = self.lock();
        let was_empty = state.frames.is_empty();
        if state.close.is_some()
            || state.frames.len() >= self.capacity
            || (!was_empty && state.bytes + len > self.max_bytes)
        {
            return Err(Full);
        }
        state.bytes += len;
        state.frames.push_back(frame);
        if state.oldest_push.is_none() {
            state.oldest_push = pushed_at;
        }
        drop(state);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Asks the connection task to close with `code` after the frames already queued.
    pub(crate) fn close(&self, code: CloseCode) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(code);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Takes everything queued. The queue's memory goes with it, so an idle connection holds
    /// no buffer.
    pub(crate) fn take(&self) -> Batch {
        let mut state = self.lock();
        state.bytes = 0;
        Batch {
            frames: std::mem::take(&mut state.frames),
            close: state.close,
            oldest_push: state.oldest_push.take(),
        }
    }

    /// The close code, once a close has been requested.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        self.lock().close
    }

    /// Resolves after the next `push` to an empty queue or `close` (or at once if one happened
    /// since the last wait).
    pub(crate) async fn wait(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    #[test]
    fn refuses_beyond_capacity_and_after_close() {
        let outbox = Outbox::new(2, 1024);
        assert_eq!(outbox.push(text("a")), Ok(()));
        assert_eq!(outbox.push(text("b")), Ok(()));
        assert_eq!(outbox.push(text("c")), Err(Full));
        let batch = outbox.take();
        assert_eq!(batch.frames, [text("a"), text("b")]);
        assert_eq!(batch.close, None);
        assert_eq!(outbox.push(text("d")), Ok(()));
        outbox.close(CloseCode::SlowConsumer);
        assert_eq!(outbox.push(text("e")), Err(Full));
        let batch = outbox.take();
        assert_eq!(batch.frames, [text("d")]);
        assert_eq!(batch.close, Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn the_byte_bound_holds_but_one_frame_always_fits() {
        let outbox = Outbox::new(100, 10);
        assert_eq!(
            outbox.push(text("0123456789abcdef")),
            Ok(()),
            "alone in the queue"
        );
        assert_eq!(outbox.push(text("x")), Err(Full));
        outbox.take();
        assert_eq!(outbox.push(text("01234")), Ok(()));
        assert_eq!(outbox.push(text("56789")), Ok(()));
        assert_eq!(outbox.push(text("a")), Err(Full));
    }

    #[test]
    fn the_first_close_code_wins() {
        let outbox = Outbox::new(1, 1024);
        outbox.close(CloseCode::SlowConsumer);
        outbox.close(CloseCode::GoingAway);
        assert_eq!(outbox.take().close, Some(CloseCode::SlowConsumer));
    }

    #[test]
    fn a_batch_carries_the_instant_of_its_oldest_push() {
        let outbox = Outbox::new(8, 1024);
        let first = Instant::now();
        let later = first + std::time::Duration::from_millis(5);
        outbox.push(text("reply")).unwrap();
        outbox.push_delivery(text("a"), first).unwrap();
        outbox.push_delivery(text("b"), later).unwrap();
        assert_eq!(outbox.take().oldest_push, Some(first));
        outbox.push(text("reply")).unwrap();
        assert_eq!(outbox.take().oldest_push, None, "taken with its batch");
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let outbox = Outbox::new(4, 1024);
        outbox.push(text("a")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.wait())
            .await
            .expect("the permit was kept");
    }
}
