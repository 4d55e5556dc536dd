package durable

// One attempt of one run: what the gateway said in the Durable-* headers, the step ids
// handed out so far and the completed steps. Made per request; never shared between
// requests.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
)

// ErrHeaders is wrapped by FromRequest's error when the Durable-* headers are
// incomplete or malformed: a handler must not quietly run without durability.
var ErrHeaders = errors.New("durable: bad Durable-* headers")

// Run is one attempt of one durable run, seen from a handler. Its methods are safe for
// concurrent use, and a nil *Run is a run outside the gateway: steps just run.
//
// A step id used again in the same run becomes id:1, id:2, … (steps, sleeps and waits
// share the numbering), so a loop needs no manual numbering as long as the handler
// makes its calls in the same order on every attempt.
type Run struct {
	client  *Client
	runID   string
	attempt int
	sidecar string // base URL, no trailing slash
	token   string

	mu        sync.Mutex          // guards uses, given and suspended
	uses      map[string]int      // base id -> times handed out
	given     map[string]struct{} // every id handed out
	suspended *Suspend

	memoMu sync.Mutex                 // held across the one GET of all steps
	memo   map[string]json.RawMessage // completed steps; nil: GET them first
}

// FromRequest is the Run of this request, using the package's shared Client. Without
// Durable-* headers (the request did not come through a durable route) the Run is
// local: steps just run and nothing is recorded. An incomplete or malformed set of
// headers is an error wrapping ErrHeaders.
func FromRequest(r *http.Request) (*Run, error) {
	return defaultClient.FromRequest(r)
}

// FromRequest is the Run of this request, whose sidecar calls use c.
func (c *Client) FromRequest(r *http.Request) (*Run, error) {
	h := r.Header
	runID, sidecar, token := h.Get(HeaderRunID), h.Get(HeaderSidecar), h.Get(HeaderToken)
	run := &Run{client: c, attempt: 1, uses: map[string]int{}}
	if runID == "" && sidecar == "" && token == "" {
		return run, nil
	}
	if runID == "" || sidecar == "" || token == "" {
		return nil, fmt.Errorf("%w: need %s, %s and %s together", ErrHeaders, HeaderRunID, HeaderSidecar, HeaderToken)
	}
	if text := h.Get(HeaderAttempt); text != "" {
		n, err := strconv.Atoi(strings.TrimSpace(text))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%w: %s %q is not an integer >= 1", ErrHeaders, HeaderAttempt, text)
		}
		run.attempt = n
	}
	base, err := url.Parse(sidecar)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("%w: %s %q is not an absolute http URL", ErrHeaders, HeaderSidecar, sidecar)
	}
	run.runID, run.token, run.sidecar = runID, token, strings.TrimRight(sidecar, "/")
	// A malformed Durable-Steps costs one GET, not the run: the sidecar is the truth.
	run.memo, err = decodeSteps(h.Get(HeaderSteps))
	if err != nil {
		run.memo = nil
	}
	return run, nil
}

// Durable says whether the request came through the gateway; false means steps run
// locally and are not recorded.
func (run *Run) Durable() bool { return run != nil && run.sidecar != "" }

// RunID is the run's id ("" outside the gateway): stable across attempts, so it and a
// step id make a good idempotency key for a third-party call.
func (run *Run) RunID() string {
	if run == nil {
		return ""
	}
	return run.runID
}

// Attempt is 1 for the first attempt (and outside the gateway), then 2, 3, …
func (run *Run) Attempt() int {
	if run == nil {
		return 1
	}
	return run.attempt
}

// nextID is base the first time, then base:1, base:2, …: stable for a deterministic
// handler. Taken before any I/O, so concurrent steps started in order keep their ids.
// An id that comes out twice (a hand-made "item:1" after a repeated "item") is refused.
func (run *Run) nextID(base string) (string, error) {
	if base == "" {
		return "", errors.New("durable: a step id must not be empty")
	}
	if run == nil {
		return base, checkStepID(base)
	}
	run.mu.Lock()
	defer run.mu.Unlock()
	n := run.uses[base]
	run.uses[base] = n + 1
	id := base
	if n > 0 {
		id = base + ":" + strconv.Itoa(n)
	}
	if err := checkStepID(id); err != nil {
		return "", err
	}
	// "item:1" given by hand after a second "item": both would read one step's output.
	if _, taken := run.given[id]; taken {
		return "", fmt.Errorf("durable: step id %q used twice in one run: an id ending in :<number> clashes with a repeated base id", id)
	}
	if run.given == nil {
		run.given = map[string]struct{}{}
	}
	run.given[id] = struct{}{}
	return id, nil
}

// completed looks a step up among the completed ones, reading them from the sidecar
// once (however many ask at once) when the header said "fetch".
func (run *Run) completed(ctx context.Context, id string) (json.RawMessage, bool, error) {
	run.memoMu.Lock()
	defer run.memoMu.Unlock()
	if run.memo == nil {
		a, err := run.call(ctx, http.MethodGet, stepsPath, nil)
		if err != nil {
			return nil, false, err
		}
		var all struct {
			Steps map[string]struct {
				Output json.RawMessage `json:"output"`
			} `json:"steps"`
		}
		if err := a.object(&all); err != nil {
			return nil, false, err
		}
		if all.Steps == nil {
			return nil, false, &SidecarError{Status: a.status, Detail: "GET steps answer has no steps object"}
		}
		memo := make(map[string]json.RawMessage, len(all.Steps))
		for stepID, step := range all.Steps {
			memo[stepID] = step.Output
		}
		run.memo = memo
	}
	raw, ok := run.memo[id]
	return raw, ok, nil
}

// suspend remembers that the run must suspend, for Middleware, and returns s.
func (run *Run) suspend(s *Suspend) *Suspend {
	run.mu.Lock()
	if run.suspended == nil {
		run.suspended = s
	}
	run.mu.Unlock()
	return s
}

// Suspended is the first suspension of this attempt, nil when there was none: once a
// sleep or wait asked to suspend, the handler's response no longer matters.
func (run *Run) Suspended() *Suspend {
	if run == nil {
		return nil
	}
	run.mu.Lock()
	defer run.mu.Unlock()
	return run.suspended
}
