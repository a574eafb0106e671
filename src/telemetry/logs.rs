//! Log lines that point at their trace: while trace export is on, an event emitted inside a span
//! with an OpenTelemetry context (a lifecycle span, which is a `tracing` span, or else the request
//! whose OpenTelemetry context is current) carries that context's `trace_id` and `span_id` in W3C
//! hex — as `trace_id=… span_id=…` at the end of a text line, and
//! as top-level fields of a JSON line. The default formatter writes the line; this one only
//! splices the ids in, so the line format stays tracing-subscriber's.
//!
//! Lifecycle spans are filtered out of the log layer, so their ids are looked up in the whole
//! subscriber (through a weak handle to its `Dispatch`), not in the log layer's view of it.

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The subscriber a [`WithTraceIds`] formatter runs in, known once the subscriber is built.
/// Weak, since that subscriber owns the formatter.
#[derive(Clone, Default)]
pub struct DispatchSlot(Arc<OnceLock<WeakDispatch>>);

impl DispatchSlot {
    /// Tells the formatter which subscriber holds the spans (the first call wins).
    pub fn attach(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }

    fn dispatch(&self) -> Option<Dispatch> {
        self.0.get()?.upgrade()
    }
}

/// How one line format takes the ids.
pub trait Splice {
    /// Adds the ids to `line`, one formatted event ending in a newline.
    fn splice(line: &mut String, ids: &SpanContext);
}

impl Splice for Full {
    fn splice(line: &mut String, ids: &SpanContext) {
        let newline = line.ends_with('\n');
        if newline {
            line.pop();
        }
        let _ = write!(
            line,
            " trace_id={} span_id={}",
            ids.trace_id(),
            ids.span_id()
        );
        if newline {
            line.push('\n');
        }
    }
}

impl Splice for Json {
    fn splice(line: &mut String, ids: &SpanContext) {
        let end = line.trim_end().len();
        let Some(close) = line[..end].strip_suffix('}').map(str::len) else {
            return;
        };
        let comma = if line[..close].trim_end().ends_with('{') {
            ""
        } else {
            ","
        };
        let fields = format!(
            r#"{comma}"trace_id":"{}","span_id":"{}""#,
            ids.trace_id(),
            ids.span_id()
        );
        line.insert_str(close, &fields);
    }
}

/// The default event format (`Format<Full>` or `Format<Json>`) plus the current trace ids.
pub struct WithTraceIds<F> {
    inner: Format<F>,
    /// `inner` with colours on: a line formatted into a buffer cannot ask the terminal.
    colored: Format<F>,
    dispatch: DispatchSlot,
}

impl<F: Clone> WithTraceIds<F> {
    /// Wraps `inner`; the ids are found through `dispatch` once it is attached.
    pub fn new(inner: Format<F>, dispatch: DispatchSlot) -> WithTraceIds<F> {
        WithTraceIds {
            colored: inner.clone().with_ansi(true),
            inner,
            dispatch,
        }
    }
}

impl<F> WithTraceIds<F> {
    /// The OpenTelemetry span context of the event's span, when export is on and it has one: the
    /// `tracing` span's, else (for an event that has no explicit parent) the current request's.
    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> Option<SpanContext>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        if !super::tracing::enabled() {
            return None;
        }
        let span = match event.parent() {
            Some(id) => Some(id.clone()),
            None if event.is_contextual() => ctx.current_span().id().cloned(),
            None => return None,
        };
        let traced = span.and_then(|span| {
            tracing_opentelemetry::get_otel_context(&span, &self.dispatch.dispatch()?)
        });
        let ids = match traced {
            Some(context) => context.span().span_context().clone(),
            None => Context::map_current(|current| current.span().span_context().clone()),
        };
        ids.is_valid().then_some(ids)
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: Splice,
    Format<F>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(ids) = self.ids(ctx, event) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let inner = if writer.has_ansi_escapes() {
            &self.colored
        } else {
            &self.inner
        };
        let mut line = String::new();
        inner.format_event(ctx, Writer::new(&mut line), event)?;
        F::splice(&mut line, &ids);
        writer.write_str(&line)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use opentelemetry::trace::{
        SpanId, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
    };
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::config::LogFormat;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT_ID: &str = "00f067aa0ba902b7";

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl MakeWriter<'_> for Buffer {
        type Writer = Buffer;

        fn make_writer(&self) -> Buffer {
            self.clone()
        }
    }

    /// Logs one event inside a lifecycle span and one inside a request context, both children of a
    /// remote sampled context, and one outside either, through the daemon's log layer; returns
    /// (lifecycle, request, outside) lines.
    fn lines(format: LogFormat) -> (String, String, String) {
        crate::telemetry::tracing::enable_for_tests();
        let buffer = Buffer::default();
        let slot = DispatchSlot::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(super::super::log_layer(
                format,
                buffer.clone(),
                tracing_subscriber::EnvFilter::new("info"),
                slot.clone(),
            ))
            .with(super::super::export_layer(provider.tracer("test")));
        let dispatch = Dispatch::new(subscriber);
        slot.attach(&dispatch);
        let parent = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::from_hex(PARENT_ID).unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        tracing::dispatcher::with_default(&dispatch, || {
            let span =
                tracing::info_span!(target: crate::telemetry::LIFECYCLE_SPAN_TARGET, "model.load");
            let _ = span.set_parent(parent.clone());
            span.in_scope(|| tracing::info!(answer = 42, "inside the lifecycle span"));
            let request = provider
                .tracer("test")
                .start_with_context("ModelInfer", &parent);
            let _attached = parent.with_span(request).attach();
            tracing::info!(answer = 42, "inside the request");
        });
        tracing::dispatcher::with_default(&dispatch, || tracing::info!("outside any span"));
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let find = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle:?} in {text}"))
                .to_string()
        };
        (
            find("inside the lifecycle span"),
            find("inside the request"),
            find("outside any span"),
        )
    }

    #[test]
    fn text_lines_in_a_traced_span_end_with_its_ids() {
        let (lifecycle, request, outside) = lines(LogFormat::Text);
        let mut seen = Vec::new();
        for inside in [lifecycle, request] {
            let (_, ids) = inside.split_once(" trace_id=").expect(&inside);
            let (trace_id, span_id) = ids.split_once(" span_id=").expect(&inside);
            assert_eq!(trace_id, TRACE_ID);
            assert_eq!(span_id.len(), 16, "{inside}");
            assert_ne!(
                span_id, PARENT_ID,
                "the id of the span itself, not its parent"
            );
            seen.push(span_id.to_string());
        }
        assert_ne!(seen[0], seen[1], "each line names its own span");
        assert!(!outside.contains("trace_id"), "{outside}");
    }

    #[test]
    fn json_lines_in_a_traced_span_carry_its_ids_as_top_level_fields() {
        let (lifecycle, request, outside) = lines(LogFormat::Json);
        for inside in [lifecycle, request] {
            let inside: serde_json::Value = serde_json::from_str(&inside).expect(&inside);
            assert_eq!(inside["trace_id"], TRACE_ID);
            let span_id = inside["span_id"].as_str().unwrap();
            assert_eq!(span_id.len(), 16);
            assert_ne!(span_id, PARENT_ID);
            assert_eq!(inside["fields"]["answer"], 42);
        }
        let outside: serde_json::Value = serde_json::from_str(&outside).expect(&outside);
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }

    #[test]
    fn splicing_keeps_json_valid_for_an_empty_object() {
        let ids = SpanContext::new(
            TraceId::from_hex(TRACE_ID).unwrap(),
            SpanId::from_hex(PARENT_ID).unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut line = "{}\n".to_string();
        Json::splice(&mut line, &ids);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["span_id"], PARENT_ID);
    }
}
