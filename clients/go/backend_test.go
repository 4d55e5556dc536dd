package durable_test

// The backend under test: handlers written the way a user of the client would, behind
// durable.Middleware, counting every execution of a step's work per run, and recording
// what each attempt was sent and answered.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	durable "github.com/durable-gateway/durable-gateway/clients/go"
)

type testBackend struct {
	mu       sync.Mutex
	counts   map[string]map[string]int // run id -> work -> executions
	statuses map[string][]int          // run id -> status answered, per attempt
	steps    map[string][]string       // run id -> Durable-Steps sent, per attempt
	picks    int                       // executions of /go/once's step, all runs
	later    map[string]chan struct{}  // run id -> closed when its second attempt came
	stale    map[string]string         // run id -> what the superseded attempt's write got
}

func newTestBackend() *testBackend {
	return &testBackend{
		counts:   map[string]map[string]int{},
		statuses: map[string][]int{},
		steps:    map[string][]string{},
		later:    map[string]chan struct{}{},
		stale:    map[string]string{},
	}
}

// handler is the backend: the recorder outside the middleware sees what it answered.
func (b *testBackend) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/go/resume", b.resume)
	mux.HandleFunc("/go/sleep", b.sleep)
	mux.HandleFunc("/go/wait", b.wait)
	mux.HandleFunc("/go/once", b.once)
	mux.HandleFunc("/go/loop", b.loop)
	mux.HandleFunc("/go/local", b.local)
	mux.HandleFunc("/go/conflict", b.conflict)
	mux.HandleFunc("/go-slow/stale", b.superseded)
	return b.record(durable.Middleware(mux))
}

// count notes one execution of a step's work in a run; the executions so far.
func (b *testBackend) count(run *durable.Run, work string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.counts[run.RunID()] == nil {
		b.counts[run.RunID()] = map[string]int{}
	}
	b.counts[run.RunID()][work]++
	return b.counts[run.RunID()][work]
}

func (b *testBackend) countsOf(runID string) map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for k, v := range b.counts[runID] {
		out[k] = v
	}
	return out
}

func (b *testBackend) statusesOf(runID string) []int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]int(nil), b.statuses[runID]...)
}

func (b *testBackend) stepsHeadersOf(runID string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.steps[runID]...)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
	r.ResponseWriter.WriteHeader(status)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(p)
}

func (b *testBackend) record(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		runID := r.Header.Get(durable.HeaderRunID)
		b.mu.Lock()
		b.statuses[runID] = append(b.statuses[runID], rec.status)
		b.steps[runID] = append(b.steps[runID], r.Header.Get(durable.HeaderSteps))
		b.mu.Unlock()
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// fail answers any error the way a plain handler would: 503, retried by the gateway.
// After a suspension the middleware drops this and answers 202 instead.
func fail(w http.ResponseWriter, err error) {
	durable.RetryAfter(w, 0)
	http.Error(w, err.Error(), http.StatusServiceUnavailable)
}

// resume: step one, then step two fails on the first attempt; big=1 makes step one's
// output too large for the Durable-Steps header, so the retry reads it from the sidecar.
func (b *testBackend) resume(w http.ResponseWriter, r *http.Request) {
	ctx, run := r.Context(), durable.FromContext(r.Context())
	size := 16
	if r.URL.Query().Get("big") != "" {
		size = 6000
	}
	one, err := durable.Step(ctx, run, "one", func(context.Context) (string, error) {
		b.count(run, "one")
		return strings.Repeat("x", size), nil
	})
	if err != nil {
		fail(w, err)
		return
	}
	two, err := durable.Step(ctx, run, "two", func(context.Context) (map[string]int, error) {
		tries := b.count(run, "two")
		if run.Attempt() == 1 {
			return nil, errors.New("card declined: try again")
		}
		return map[string]int{"tries": tries}, nil
	})
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"run_id": run.RunID(), "attempt": run.Attempt(), "one": len(one), "two": two,
	})
}

// sleep: a step, a durable sleep of one second, a step.
func (b *testBackend) sleep(w http.ResponseWriter, r *http.Request) {
	ctx, run := r.Context(), durable.FromContext(r.Context())
	for _, id := range []string{"before", "after"} {
		if _, err := durable.Step(ctx, run, id, func(context.Context) (bool, error) {
			b.count(run, id)
			return true, nil
		}); err != nil {
			fail(w, err)
			return
		}
		if id == "before" {
			if err := run.Sleep(ctx, "nap", time.Second); err != nil {
				fail(w, err)
				return
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"attempt": run.Attempt()})
}

// wait: reserve, wait for an event that came before (lookback), wait for the order's
// payment, wait for an event that never comes (a short timeout), ship.
func (b *testBackend) wait(w http.ResponseWriter, r *http.Request) {
	ctx, run := r.Context(), durable.FromContext(r.Context())
	order := r.URL.Query().Get("order")
	step := func(id string) error {
		_, err := durable.Step(ctx, run, id, func(context.Context) (string, error) {
			b.count(run, id)
			return id + "d", nil
		})
		return err
	}
	if err := step("reserve"); err != nil {
		fail(w, err)
		return
	}
	// Posted before the request: only the lookback lets the wait see it, at its first call.
	early, err := run.WaitForEvent(ctx, "early", durable.Wait{
		Event: "go.order.placed", Match: map[string]any{"data.order_id": order}, Lookback: time.Hour,
	})
	if err != nil {
		fail(w, err)
		return
	}
	if early != nil {
		b.count(run, "early:"+early.ID)
	}
	paid, err := run.WaitForEvent(ctx, "paid", durable.Wait{
		Event: "go.order.paid", Match: map[string]any{"data.order_id": order}, Timeout: time.Minute,
	})
	if err != nil {
		fail(w, err)
		return
	}
	if paid != nil { // every attempt after the event must see it, called or memoized
		b.count(run, "paid:"+paid.ID)
	}
	late, err := run.WaitForEvent(ctx, "late", durable.Wait{Event: "go.never", Timeout: 300 * time.Millisecond})
	if err != nil {
		fail(w, err)
		return
	}
	if err := step("ship"); err != nil {
		fail(w, err)
		return
	}
	if paid == nil {
		fail(w, errors.New("the payment wait timed out"))
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"attempt": run.Attempt(), "event_id": paid.ID, "data": paid.Data, "late_timed_out": late == nil,
	})
}

// once: one step whose output differs on every execution.
func (b *testBackend) once(w http.ResponseWriter, r *http.Request) {
	ctx, run := r.Context(), durable.FromContext(r.Context())
	pick, err := durable.Step(ctx, run, "pick", func(context.Context) (int, error) {
		b.count(run, "pick")
		b.mu.Lock()
		defer b.mu.Unlock()
		b.picks++
		return b.picks, nil
	})
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"run_id": run.RunID(), "pick": pick})
}

// loop: three steps with one id, a sleep of zero with the same id, then a step that
// fails on the first attempt.
func (b *testBackend) loop(w http.ResponseWriter, r *http.Request) {
	ctx, run := r.Context(), durable.FromContext(r.Context())
	var items []int
	for i := 0; i < 3; i++ {
		i := i
		item, err := durable.Step(ctx, run, "item", func(context.Context) (int, error) {
			b.count(run, fmt.Sprintf("item#%d", i))
			return i * 10, nil
		})
		if err != nil {
			fail(w, err)
			return
		}
		items = append(items, item)
	}
	if err := run.Sleep(ctx, "item", 0); err != nil {
		fail(w, err)
		return
	}
	if _, err := durable.Step(ctx, run, "check", func(context.Context) (bool, error) {
		b.count(run, "check")
		if run.Attempt() == 1 {
			return false, errors.New("not yet")
		}
		return true, nil
	}); err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"attempt": run.Attempt(), "items": items})
}

// local: what a handler gets when the request did not come through the gateway.
func (b *testBackend) local(w http.ResponseWriter, r *http.Request) {
	ctx, run := r.Context(), durable.FromContext(r.Context())
	got := map[string]any{"durable": run.Durable(), "attempt": run.Attempt(), "run_id": run.RunID()}
	var err error
	for i := 0; i < 2 && err == nil; i++ {
		_, err = durable.Step(ctx, run, "item", func(context.Context) (int, error) {
			return b.count(run, "local"), nil
		})
	}
	if err != nil {
		fail(w, err)
		return
	}
	var nilRun *durable.Run
	got["nil_run"], err = durable.Step(ctx, nilRun, "x", func(context.Context) (string, error) { return "ran", nil })
	if err != nil {
		fail(w, err)
		return
	}
	_, err = durable.Step(ctx, run, "bad", func(context.Context) (int, error) { return 0, errors.New("plain failure") })
	got["step_error"] = fmt.Sprint(err)
	_, err = durable.Step(ctx, run, "chan", func(context.Context) (chan int, error) { return make(chan int), nil })
	got["not_json"] = err != nil
	started := time.Now()
	if err := run.Sleep(ctx, "nap", 20*time.Millisecond); err != nil {
		fail(w, err)
		return
	}
	got["slept"] = time.Since(started) >= 20*time.Millisecond
	_, err = run.WaitForEvent(ctx, "wait", durable.Wait{Event: "e"})
	got["wait_not_durable"] = errors.Is(err, durable.ErrNotDurable)
	writeJSON(w, http.StatusOK, got)
}

// conflict: two runs made from one request record one step with different outputs;
// the second write is refused (step-conflict) and gets the first one's output.
func (b *testBackend) conflict(w http.ResponseWriter, r *http.Request) {
	ctx, first := r.Context(), durable.FromContext(r.Context())
	second, err := durable.FromRequest(r)
	if err != nil {
		fail(w, err)
		return
	}
	var got []string
	for _, run := range []*durable.Run{first, second} {
		run := run
		value, err := durable.Step(ctx, run, "pick", func(context.Context) (string, error) {
			return fmt.Sprintf("written by run #%d", len(got)+1), nil
		})
		if err != nil {
			fail(w, err)
			return
		}
		got = append(got, value)
	}
	writeJSON(w, http.StatusOK, got)
}

// superseded: the first attempt outlives the route's attempt timeout, waits for the
// second attempt to start, then tries to record a step; the second answers at once.
func (b *testBackend) superseded(w http.ResponseWriter, r *http.Request) {
	// The gateway drops this attempt's connection at its timeout, cancelling the
	// request's context: the zombie goes on regardless, as real ones do.
	run := durable.FromContext(r.Context())
	b.mu.Lock()
	later := b.later[run.RunID()]
	if later == nil {
		later = make(chan struct{})
		b.later[run.RunID()] = later
	}
	b.mu.Unlock()
	if run.Attempt() > 1 {
		close(later)
		writeJSON(w, http.StatusOK, map[string]any{"run_id": run.RunID(), "attempt": run.Attempt()})
		return
	}
	outcome := "the second attempt never came"
	select {
	case <-later:
		_, err := durable.Step(context.Background(), run, "late", func(context.Context) (int, error) { return 1, nil })
		var stale *durable.StaleAttempt
		var refused *durable.SidecarError
		if errors.As(err, &stale) && errors.As(err, &refused) {
			outcome = "stale: " + refused.Type
		} else {
			outcome = fmt.Sprintf("not a StaleAttempt: %v", err)
		}
	case <-time.After(10 * time.Second):
	}
	b.mu.Lock()
	b.stale[run.RunID()] = outcome
	b.mu.Unlock()
}

func (b *testBackend) staleOutcome(runID string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stale[runID]
}
