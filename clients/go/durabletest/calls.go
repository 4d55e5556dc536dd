package durabletest

// The calls a backend's tests make: JSON over HTTP to the gateway or the backend, polls
// with a deadline instead of sleeps, and the admin API's view of a run. Each fails the
// test on a transport error; an HTTP status is the test's to judge.

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"
)

const (
	// callTimeout bounds one call, long-polls (Prefer: wait=N) included.
	callTimeout = 60 * time.Second
	// maxBody bounds the answer a call reads.
	maxBody = 16 << 20
	// resultWithin bounds Result's wait for a run to finish.
	resultWithin = 30 * time.Second
)

var client = &http.Client{Timeout: callTimeout}

// Reply is an answer read whole: its status, headers and body.
type Reply struct {
	Status int
	Header http.Header
	Body   []byte
}

// JSON decodes the body into v, failing the test when it is not that JSON.
func (r Reply) JSON(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("answer %d is not the JSON expected (%v): %s", r.Status, err, r.Body)
	}
}

// Call sends body (when not nil) as JSON with the given headers and reads the answer.
func Call(t testing.TB, method, target string, body any, header map[string]string) Reply {
	t.Helper()
	var reader io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, target, reader)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for name, value := range header {
		req.Header.Set(name, value)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		t.Fatalf("%s %s: reading: %v", method, target, err)
	}
	return Reply{resp.StatusCode, resp.Header, data}
}

// Eventually calls check every 25 ms until it returns nil, failing the test with
// check's last error once within has passed. Step writes, for one, reach the store
// shortly after they are acknowledged: poll for them rather than sleep.
func Eventually(t testing.TB, within time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", within, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// RunView is the part of the admin API's run (GET /v1/runs/{id}) that tests read.
type RunView struct {
	Status     string          `json:"status"` // running, backoff, suspended, succeeded, ...
	Suspension *SuspensionView `json:"suspension"`
	Steps      []StepView      `json:"steps"`
}

// SuspensionView is what a suspended run waits for; nil when it is not suspended.
type SuspensionView struct {
	Kind   string `json:"kind"` // sleep or wait
	StepID string `json:"step_id"`
}

// StepView is one recorded step of a run.
type StepView struct {
	StepID    string      `json:"step_id"`
	Completed bool        `json:"completed"`
	Attempt   int         `json:"attempt"`    // the attempt that completed it; 0 while not
	StartedAt *float64    `json:"started_at"` // Unix seconds, when the backend reported it
	Timing    *string     `json:"timing"`     // "backend", "gateway" or nil
	Errors    []StepError `json:"errors"`
}

// StepError is a failed try of a step, as its backend reported it.
type StepError struct {
	Attempt int    `json:"attempt"`
	Message string `json:"message"`
}

// AdminRun is the run's view from the admin API, failing the test unless it answers 200.
func (g *Gateway) AdminRun(t testing.TB, runID string) RunView {
	t.Helper()
	r := Call(t, http.MethodGet, g.Admin+"/v1/runs/"+url.PathEscape(runID), nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("admin run %s: %d %s", runID, r.Status, r.Body)
	}
	var view RunView
	r.JSON(t, &view)
	return view
}

// Result long-polls a run's result URL (a Location the gateway gave, relative to the
// ingress or whole) until the run has finished, and is its answer.
func (g *Gateway) Result(t testing.TB, location string) Reply {
	t.Helper()
	base, err := url.Parse(g.Ingress)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := url.Parse(location)
	if err != nil || location == "" {
		t.Fatalf("result URL %q: %v", location, err)
	}
	target := base.ResolveReference(ref).String()
	var last Reply
	Eventually(t, resultWithin, func() error {
		last = Call(t, http.MethodGet, target, nil, map[string]string{"Prefer": "wait=5"})
		if last.Status == http.StatusAccepted {
			return errors.New("the run has not finished")
		}
		return nil
	})
	return last
}
