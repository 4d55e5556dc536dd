package durable

// net/http glue: the Run in the request's context, the suspend response at the edge of
// a handler, and the response headers that steer the gateway's retries (SPEC.md §7).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
)

type contextKey struct{}

// NewContext returns ctx carrying run, for FromContext.
func NewContext(ctx context.Context, run *Run) context.Context {
	return context.WithValue(ctx, contextKey{}, run)
}

// FromContext is the Run that Middleware put in the request's context; nil (a run
// outside the gateway, on which steps just run) when there is none.
func FromContext(ctx context.Context) *Run {
	run, _ := ctx.Value(contextKey{}).(*Run)
	return run
}

// Middleware makes each request's Run (FromContext) with the package's shared Client.
// See Client.Middleware.
func Middleware(next http.Handler) http.Handler {
	return defaultClient.Middleware(next)
}

// Middleware makes each request's Run, whose sidecar calls use c, and puts it in the
// request's context. Once a sleep or wait of the run asks to suspend, whatever the
// handler writes is dropped and the request is answered 202 {"suspended": true, "kind",
// "wake_at", "step_id"} (SPEC.md §4.7), unless the handler had already sent its
// headers. Incomplete Durable-* headers are answered 400 problem+json.
func (c *Client) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		run, err := c.FromRequest(r)
		if err != nil {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(map[string]any{
				"title": "Bad Durable-* headers", "status": http.StatusBadRequest, "detail": err.Error(),
			})
			return
		}
		sw := &suspendWriter{ResponseWriter: w, run: run}
		next.ServeHTTP(sw, r.WithContext(NewContext(r.Context(), run)))
		if s := run.Suspended(); s != nil && !sw.sent() {
			WriteSuspend(w, s)
		}
	})
}

// WriteSuspend answers a suspended attempt: 202 {"suspended": true, "kind", "wake_at",
// "step_id"}, what a developer calling the backend directly sees; the gateway ignores it.
func WriteSuspend(w http.ResponseWriter, s *Suspend) {
	var wakeAt *string
	if !s.WakeAt.IsZero() {
		text := formatTime(s.WakeAt)
		wakeAt = &text
	}
	body, _ := json.Marshal(map[string]any{
		"suspended": true, "kind": s.Kind, "wake_at": wakeAt, "step_id": s.StepID,
	})
	w.Header().Set("Content-Type", jsonType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write(body)
}

// NoRetry marks the response as final (Durable-Retry: no): a failure that retrying
// cannot fix. Call it before writing the status.
func NoRetry(w http.ResponseWriter) {
	w.Header().Set(HeaderRetry, "no")
}

// RetryAfter asks the gateway to wait at least seconds (>= 0) before the next attempt
// of a retried response (Retry-After). Call it before writing the status.
func RetryAfter(w http.ResponseWriter, seconds int) {
	if seconds < 0 {
		panic(fmt.Sprintf("durable: RetryAfter needs seconds >= 0, not %d", seconds))
	}
	w.Header().Set("Retry-After", strconv.Itoa(seconds))
}

// suspendWriter passes the handler's response through until the run suspends, and
// drops it from then on, so the suspend response can take its place.
type suspendWriter struct {
	http.ResponseWriter
	run *Run

	mu     sync.Mutex
	header bool // the response's headers went out
}

func (w *suspendWriter) sent() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.header
}

// passes says whether a write may go through, marking the headers sent when it does.
func (w *suspendWriter) passes() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.header && w.run.Suspended() != nil {
		return false
	}
	w.header = true
	return true
}

func (w *suspendWriter) WriteHeader(status int) {
	if w.passes() {
		w.ResponseWriter.WriteHeader(status)
	}
}

func (w *suspendWriter) Write(p []byte) (int, error) {
	if w.passes() {
		return w.ResponseWriter.Write(p)
	}
	return len(p), nil
}

// Flush lets a streaming handler flush through the wrapper.
func (w *suspendWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok && w.passes() {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController (Go 1.20+) reach the connection's writer.
func (w *suspendWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
