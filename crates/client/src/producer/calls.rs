//! Sending calls and settling their results: stored records told once per
//! completion, failed entries retried on their lane or given up at their
//! deadline.

use std::task::Poll;

use super::*;

pub(super) async fn dispatch(inner: Arc<Inner>) {
    loop {
        // Others first: the tasks already woken, and those the runtime's
        // next look at its sockets wakes, put their records in the lanes
        // before the call is made. Under load one call then carries what
        // came in while the last was out (on the collector: 30 single-event
        // requests per call instead of 10, a fifth less CPU per request);
        // when idle it costs one turn of the scheduler.
        tokio::task::yield_now().await;
        let notified = inner.wake.notified();
        let next = {
            let mut state = inner.lanes.lock().expect("lanes lock");
            next_call(&inner, &mut state, Instant::now())
        };
        match next {
            Next::Call(batch) => {
                tokio::spawn(call(inner.clone(), batch));
            }
            Next::WaitUntil(at) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            Next::Wait => notified.await,
            Next::Done => return,
        }
    }
}

/// PutRecords calls, one after another: when a call ends, the records that
/// waited meanwhile go out in the next one, and the senders of the records
/// it stored are told once that next call is on its way (on the embedded
/// log: handed to the writer). They are many (30 requests a call on a busy
/// collector), and telling them first left the stream idle meanwhile.
/// Failed entries go back to the front of their lanes.
pub(super) async fn call(inner: Arc<Inner>, mut entries: Vec<Entry>) {
    let mut stored_before = Vec::new();
    loop {
        let records: Vec<PutRecord> = entries.iter().map(|e| e.record().clone()).collect();
        tracing::trace!(stream = %inner.stream, entries = records.len(), "PutRecords");
        inner.calls.inc();
        let started = Instant::now();
        let mut put = inner.backend.put_records(&inner.stream, records);
        let first = std::future::poll_fn(|cx| Poll::Ready(put.as_mut().poll(cx))).await;
        tell_stored(std::mem::take(&mut stored_before));
        let outcome = match first {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => put.await,
        };
        inner.call_duration.observe(started.elapsed());
        let (stored, next) = settle(&inner, entries, outcome);
        match next {
            Next::Call(batch) => {
                inner.wake.notify_one();
                entries = batch;
                stored_before = stored;
            }
            _ => {
                // Told before the dispatcher can see the producer idle, so
                // `close` returns after every sender was told.
                tell_stored(stored);
                inner.wake.notify_one();
                return;
            }
        }
    }
}

fn tell_stored(stored: Vec<Pending>) {
    let mut told = Stored::default();
    for pending in stored {
        told.add(pending);
    }
    told.flush();
}

/// A call's outcome: its stored records (not yet told), failed ones back in
/// their lanes or given up, its lanes free, and the next call.
fn settle(
    inner: &Arc<Inner>,
    entries: Vec<Entry>,
    outcome: Result<Vec<PutResult>, StreamError>,
) -> (Vec<Pending>, Next) {
    let mut retry = Vec::new();
    let mut stored = Vec::new();
    let mut lanes_in_call = Vec::new();
    let mut progressed = Vec::new();
    for entry in &entries {
        let lane = entry.members[0].lane;
        if !lanes_in_call.contains(&lane) {
            lanes_in_call.push(lane);
        }
    }
    match outcome {
        Ok(results) if results.len() == entries.len() => {
            let (mut records, mut user_records) = (0, 0);
            for (entry, result) in entries.into_iter().zip(results) {
                match result {
                    PutResult::Ok { .. } => {
                        let lane = entry.members[0].lane;
                        if !progressed.contains(&lane) {
                            progressed.push(lane);
                        }
                        records += 1;
                        user_records += entry.members.len() as u64;
                        stored.extend(entry.members);
                    }
                    PutResult::Failed(failure) => {
                        inner.failed_entries.inc();
                        let retryable = failure.is_retryable();
                        let failure = SendFailure::Entry(failure);
                        for pending in entry.members {
                            retry_or_fail(inner, pending, &failure, retryable, &mut retry);
                        }
                    }
                }
            }
            inner.records.add(records);
            inner.user_records.add(user_records);
        }
        Ok(results) => {
            let error = StreamError::Storage(format!(
                "{} results for {} records",
                results.len(),
                entries.len()
            ));
            let failure = SendFailure::Call(error);
            for pending in entries.into_iter().flat_map(|e| e.members) {
                retry_or_fail(inner, pending, &failure, true, &mut retry);
            }
        }
        Err(error) => {
            let retryable = error.is_retryable();
            if !retryable {
                tracing::error!(stream = %inner.stream, error = %error, "PutRecords failed");
            }
            let failure = SendFailure::Call(error);
            for pending in entries.into_iter().flat_map(|e| e.members) {
                retry_or_fail(inner, pending, &failure, retryable, &mut retry);
            }
        }
    }
    let next = {
        let mut state = inner.lanes.lock().expect("lanes lock");
        let now = Instant::now();
        for &index in &lanes_in_call {
            let lane = &mut state.lanes[index];
            lane.busy = false;
            let failed = retry.iter().any(|p| p.lane == index);
            if !failed {
                lane.attempt = 0;
                lane.ready_at = None;
                continue;
            }
            // Back off harder only while a lane makes no progress at all (the
            // shard is throttled or the service is unavailable); a lane that
            // stored some records retries the rest after a short pause.
            if progressed.contains(&index) {
                lane.attempt = 0;
            }
            // Not past the earliest deadline of what waits, so it is given
            // up on time.
            let deadline = retry
                .iter()
                .filter(|p| p.lane == index)
                .map(|p| p.completion.deadline)
                .min()
                .unwrap_or(now);
            lane.ready_at = Some((now + inner.config.backoff.delay(lane.attempt)).min(deadline));
            lane.attempt = lane.attempt.saturating_add(1);
        }
        for pending in retry.into_iter().rev() {
            state.lanes[pending.lane].queue.push_front(pending);
        }
        state.in_flight -= 1;
        next_call(inner, &mut state, now)
    };
    (stored, next)
}

pub(super) fn retry_or_fail(
    inner: &Inner,
    pending: Pending,
    reason: &SendFailure,
    retryable: bool,
    retry: &mut Vec<Pending>,
) {
    if retryable && Instant::now() < pending.completion.deadline {
        retry.push(pending);
    } else if retryable {
        give_up(inner, pending, reason.clone());
    } else {
        let error = ProduceError::Rejected {
            stream: inner.stream.clone(),
            reason: reason.clone(),
        };
        pending.fail(error);
    }
}

pub(super) fn give_up(inner: &Inner, pending: Pending, reason: SendFailure) {
    inner.given_up.inc();
    let error = ProduceError::GaveUp {
        stream: inner.stream.clone(),
        waited_ms: pending.completion.since.elapsed().as_millis() as u64,
        last: reason,
    };
    pending.fail(error);
}

/// Stored records, counted per completion: a call's records mostly share
/// one, which is then told once rather than record by record.
#[derive(Default)]
pub(super) struct Stored {
    pub(super) run: Option<(Arc<Completion>, usize)>,
}

impl Stored {
    pub(super) fn add(&mut self, pending: Pending) {
        let Pending { completion, .. } = pending;
        match &mut self.run {
            Some((current, count)) if Arc::ptr_eq(current, &completion) => *count += 1,
            _ => {
                self.flush();
                self.run = Some((completion, 1));
            }
        }
    }

    pub(super) fn flush(&mut self) {
        if let Some((completion, count)) = self.run.take() {
            completion.resolved(count);
        }
    }
}
