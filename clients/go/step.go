package durable

// Step: the output of work whose result must not be produced twice, memoized by the
// gateway across attempts (SPEC.md §4.1-§4.4, §11 item 3).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// StepOption changes how one step is recorded.
type StepOption func(*stepConfig)

type stepConfig struct {
	sync bool
}

// Sync makes the step's write answered only once the gateway has committed it: use it
// before an effect that must not be repeated even if the gateway crashes right after.
func Sync() StepOption { return func(c *stepConfig) { c.sync = true } }

// Step returns the step's output: the stored one when an earlier attempt completed it,
// else fn's, recorded with when fn started and how long it ran.
//
// The output must survive a JSON round trip (a retry gets it back decoded into T), so
// use JSON-friendly types. When fn fails, its error is reported to the sidecar as a
// failed try of the step (best effort) and returned: answer 5xx and the gateway retries.
// A *StaleAttempt or *SidecarError means the step could not be recorded.
func Step[T any](ctx context.Context, run *Run, id string, fn func(context.Context) (T, error), opts ...StepOption) (T, error) {
	var zero T
	if fn == nil {
		return zero, errors.New("durable: Step needs a function")
	}
	id, err := run.nextID(id)
	if err != nil {
		return zero, err
	}
	if !run.Durable() {
		value, err := fn(ctx)
		if err != nil {
			return value, err
		}
		// The same rule with or without the gateway: an output must be JSON.
		if _, err := json.Marshal(value); err != nil {
			return zero, fmt.Errorf("durable: output of step %q is not JSON: %w", id, err)
		}
		return value, nil
	}
	var config stepConfig
	for _, opt := range opts {
		opt(&config)
	}
	raw, done, err := run.completed(ctx, id)
	if err != nil {
		return zero, err
	}
	if done {
		return decodeOutput[T](id, raw)
	}
	path := stepsPath + "/" + stepSegment(id)
	value, t, err := runTimed(ctx, run, path, fn)
	if err != nil {
		return value, err
	}
	output, err := json.Marshal(value)
	if err != nil {
		return zero, fmt.Errorf("durable: output of step %q is not JSON: %w", id, err)
	}
	target := path
	if config.sync {
		target += syncQuery
	}
	a, err := run.call(ctx, http.MethodPut, target, outputBody(output, t))
	if err != nil {
		return zero, err
	}
	switch {
	case a.status == http.StatusOK || a.status == http.StatusCreated:
		return value, nil
	case a.status == http.StatusConflict:
		refused := refusal(a.status, a.body)
		var stale *StaleAttempt
		if errors.As(refused, &stale) {
			return zero, refused
		}
		// First write wins: another try recorded this step already; use its output.
		b, err := run.call(ctx, http.MethodGet, path, nil)
		if err != nil {
			return zero, err
		}
		var stored struct {
			Output json.RawMessage `json:"output"`
		}
		if err := b.object(&stored); err != nil {
			return zero, err
		}
		return decodeOutput[T](id, stored.Output)
	default:
		return zero, refusal(a.status, a.body)
	}
}

// runTimed runs one try of a step's work and times it. A failure, an error or a panic,
// is reported to the sidecar as the step's failed try before it goes on; a suspension
// is not a failure.
func runTimed[T any](ctx context.Context, run *Run, path string, fn func(context.Context) (T, error)) (T, timing, error) {
	watch := startWatch()
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				run.reportFailure(path, fmt.Errorf("panic: %v", p), watch.stop())
			}
			panic(p)
		}
	}()
	value, err := fn(ctx)
	t := watch.stop()
	if err != nil {
		var suspend *Suspend
		if !errors.As(err, &suspend) {
			run.reportFailure(path, err, t)
		}
	}
	return value, t, err
}

// reportFailure records a failed try (SPEC.md §4.4), best effort: a failure to report
// a failure must not mask it. Not bound to the handler's context, which the failure
// may have been the cancelling of.
func (run *Run) reportFailure(path string, cause error, t timing) {
	_, _ = run.call(context.Background(), http.MethodPut, path, errorBody(cause, t))
}

// decodeOutput decodes a stored output into T; a missing one is JSON null.
func decodeOutput[T any](id string, raw json.RawMessage) (T, error) {
	var value T
	if len(raw) == 0 {
		raw = json.RawMessage("null")
	}
	if err := json.Unmarshal(raw, &value); err != nil {
		return value, fmt.Errorf("durable: stored output of step %q does not decode into %T: %w", id, value, err)
	}
	return value, nil
}
