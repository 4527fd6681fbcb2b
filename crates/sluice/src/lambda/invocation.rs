//! How each invocation's Kinesis event reaches the handler: read once,
//! straight from the request body.
//!
//! `lambda_runtime` would deserialize the body into the handler's payload
//! type with serde_json, tokenising every field of every record (and
//! tracking the path for its error messages). Routing a record costs a few
//! microseconds, and that pass alone cost about as much as routing. So the
//! [`ReadKinesisEvents`] layer, outermost on the runtime, reads the body with
//! an [`EventReader`] (which reuses the last event's memory), keeps the
//! result for the invocation's handler, and hands the runtime `{}` to
//! deserialize instead; the handler takes the payload type [`Unread`] and
//! calls [`take_event`].
//!
//! The batch is kept in a task-local value scoped to the invocation's
//! future, so it belongs to that invocation alone (also should invocations
//! ever run concurrently) and is dropped with it.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::LambdaInvocation;

use super::event::{EventError, EventReader, KinesisBatch};

type Read = Option<Result<KinesisBatch, EventError>>;

tokio::task_local! {
    static EVENT: RefCell<Read>;
}

/// The handler's payload type: the body it stands for was read by
/// [`ReadKinesisEvents`]; get it with [`take_event`].
pub type Unread = serde::de::IgnoredAny;

/// The event of the invocation being handled, read by [`ReadKinesisEvents`].
/// Call it once, at the start of the handler's future (not in a task it
/// spawns).
pub fn take_event() -> Result<KinesisBatch, EventError> {
    EVENT
        .try_with(|event| event.borrow_mut().take())
        .ok()
        .flatten()
        .unwrap_or(Err(EventError::NotRead))
}

/// The runtime layer that reads each invocation's body as a Kinesis event.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadKinesisEvents;

impl<S> Layer<S> for ReadKinesisEvents {
    type Service = ReadKinesisEvent<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadKinesisEvent {
            inner,
            reader: EventReader::default(),
        }
    }
}

/// The service of [`ReadKinesisEvents`].
pub struct ReadKinesisEvent<S> {
    inner: S,
    reader: EventReader,
}

impl<S> Service<LambdaInvocation> for ReadKinesisEvent<S>
where
    S: Service<LambdaInvocation>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: LambdaInvocation) -> Self::Future {
        let event = self.reader.read(&invocation.body);
        invocation.body = Bytes::from_static(b"{}");
        let handled = self.inner.call(invocation);
        Box::pin(EVENT.scope(RefCell::new(Some(event)), handled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_event_is_there_for_the_handler_only() {
        let body =
            br#"{"Records":[{"kinesis":{"partitionKey":"k","sequenceNumber":"1","data":"b2s="}}]}"#;
        let handler =
            lambda_runtime::tower::service_fn(|invocation: LambdaInvocation| async move {
                assert_eq!(&invocation.body[..], b"{}");
                let first = take_event().map(|batch| batch.records.len());
                let second = take_event().map(|batch| batch.records.len());
                Ok::<_, std::convert::Infallible>((first, second))
            });
        let mut service = ReadKinesisEvents.layer(handler);
        let invocation = |body: &'static [u8]| LambdaInvocation {
            parts: axum::http::Response::new(()).into_parts().0,
            body: Bytes::from_static(body),
            context: Default::default(),
        };
        let (first, second) = service.call(invocation(body)).await.unwrap();
        assert_eq!(first, Ok(1));
        assert_eq!(second.unwrap_err(), EventError::NotRead);
        let (first, _) = service.call(invocation(b"[1]")).await.unwrap();
        assert!(first
            .unwrap_err()
            .to_string()
            .contains("not a Kinesis event"));
        assert_eq!(take_event().unwrap_err(), EventError::NotRead);
    }
}
