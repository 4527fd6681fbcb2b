//! Spans, and W3C trace context carried inside records.
//!
//! The collector starts a span per request and writes its `traceparent`
//! into every envelope's headers; the router and consumers continue it from
//! there, so one event can be followed across processes that share nothing
//! but the stream. Spans are exported with OTLP when an endpoint is set
//! ([`crate::otlp`]); otherwise they cost next to nothing and carry no
//! context.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{global, Context, KeyValue};

static ENABLED: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Release);
}

/// Whether spans are exported (so callers can skip gathering context).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// What a span starts from.
pub enum Kind {
    /// Receives a request (the collector).
    Server,
    /// Reads records someone produced (router, consumers).
    Consumer,
}

/// A running span; ends when dropped.
pub struct Span {
    cx: Context,
}

impl Span {
    /// The `traceparent` value for this span (`00-trace-span-flags`), when
    /// tracing is on and the span is sampled: an unsampled span is exported
    /// nowhere, so nothing downstream could join it, and records do not
    /// carry its 70 bytes.
    pub fn traceparent(&self) -> Option<String> {
        let span = self.cx.span();
        let context = span.span_context();
        (context.is_valid() && context.is_sampled()).then(|| {
            format!(
                "00-{:032x}-{:016x}-{:02x}",
                context.trace_id(),
                context.span_id(),
                context.trace_flags().to_u8()
            )
        })
    }

    pub fn set_attribute(&self, key: &'static str, value: i64) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.cx.span().end();
    }
}

/// Reads a W3C `traceparent` value; `None` when it is not one.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let mut parts = text.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Starts a span, as a child of `parent` (a `traceparent`) when given, with
/// links to the other contexts it handles.
pub fn start(name: &'static str, kind: Kind, parent: Option<&str>, links: &[&str]) -> Span {
    if !enabled() {
        return Span { cx: Context::new() };
    }
    // Looked up once: each global lookup builds a tracer.
    static TRACER: OnceLock<BoxedTracer> = OnceLock::new();
    let tracer = TRACER.get_or_init(|| global::tracer("sluice"));
    let parent = parent
        .and_then(parse_traceparent)
        .map(|context| Context::new().with_remote_span_context(context))
        .unwrap_or_default();
    let links: Vec<Link> = links
        .iter()
        .filter_map(|text| parse_traceparent(text))
        .map(Link::with_context)
        .collect();
    let span = tracer
        .span_builder(name)
        .with_kind(match kind {
            Kind::Server => SpanKind::Server,
            Kind::Consumer => SpanKind::Consumer,
        })
        .with_links(links)
        .start_with_context(tracer, &parent);
    Span {
        cx: parent.with_span(span),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sampled_spans_hand_out_a_traceparent() {
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .build();
        global::set_tracer_provider(provider);
        set_enabled();
        let unsampled = start("test", Kind::Server, None, &[]);
        assert_eq!(unsampled.traceparent(), None);
        // A caller's sampled context is continued, and handed on.
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let continued = start("test", Kind::Server, Some(caller), &[]);
        let traceparent = continued.traceparent().expect("sampled by its parent");
        assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(traceparent.ends_with("-01"));
        assert_ne!(traceparent, caller);
    }

    #[test]
    fn traceparent_values_are_read_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).unwrap();
        assert_eq!(
            format!("{:032x}", context.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_sampled());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
