package durable_test

// The client against a real gateway process (gateway_test.go): resume at the failed
// step, durable sleep, wait for an event, idempotency keys, loop ids, failed tries
// reported as the step's error, and requests that never saw the gateway.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/durable-gateway/durable-gateway/clients/go/durabletest"
)

func TestResumesAtTheFailedStep(t *testing.T) {
	needGateway(t)
	for _, big := range []bool{false, true} {
		big := big
		t.Run(fmt.Sprintf("fetch=%v", big), func(t *testing.T) {
			t.Parallel()
			target := gw.Ingress + "/go/resume"
			size := 16
			if big {
				target += "?big=1" // past 4096 characters of header: Durable-Steps says fetch
				size = 6000
			}
			r := durabletest.Call(t, http.MethodPost, target, map[string]string{"card": "4242"}, nil)
			if r.Status != http.StatusOK {
				t.Fatalf("status %d: %s", r.Status, r.Body)
			}
			var body struct {
				RunID   string         `json:"run_id"`
				Attempt int            `json:"attempt"`
				One     int            `json:"one"`
				Two     map[string]int `json:"two"`
			}
			r.JSON(t, &body)
			if body.Attempt != 2 || body.One != size || body.Two["tries"] != 2 {
				t.Fatalf("answer %s", r.Body)
			}
			if got := backend.countsOf(body.RunID); !reflect.DeepEqual(got, map[string]int{"one": 1, "two": 2}) {
				t.Fatalf("executions %v: step one must run once", got)
			}
			headers := backend.stepsHeadersOf(body.RunID)
			if len(headers) != 2 || headers[0] != "" || (headers[1] == "fetch") != big {
				t.Fatalf("Durable-Steps per attempt: %.40q", headers)
			}
		})
	}
}

func TestFailedTryIsReportedAsTheStepsError(t *testing.T) {
	needGateway(t)
	t.Parallel()
	r := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/resume", nil, nil)
	var body struct {
		RunID string `json:"run_id"`
	}
	r.JSON(t, &body)
	// Step writes are acknowledged once queued for the store: poll until both show.
	durabletest.Eventually(t, 10*time.Second, func() error {
		view := gw.AdminRun(t, body.RunID)
		if len(view.Steps) != 2 {
			return fmt.Errorf("steps %+v", view.Steps)
		}
		for _, step := range view.Steps {
			if !step.Completed || step.StartedAt == nil || step.Timing == nil || *step.Timing != "backend" {
				return fmt.Errorf("step %s: completed %v, started_at %v, timing %v: want the backend's timing",
					step.StepID, step.Completed, step.StartedAt, step.Timing)
			}
			errs := fmt.Sprintf("%+v", step.Errors)
			want := map[string]string{"one": "[]", "two": "[{Attempt:1 Message:card declined: try again}]"}[step.StepID]
			if errs != want {
				return fmt.Errorf("step %s's errors: %s, want %s", step.StepID, errs, want)
			}
		}
		return nil
	})
}

func TestDurableSleep(t *testing.T) {
	needGateway(t)
	t.Parallel()
	r := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/sleep", nil, nil) // held through the sleep
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	var body struct {
		Attempt int `json:"attempt"`
	}
	r.JSON(t, &body)
	runID := r.Header.Get("Durable-Run-Id")
	if body.Attempt != 2 {
		t.Fatalf("answer %s: the sleep must end the first attempt", r.Body)
	}
	if got := backend.countsOf(runID); !reflect.DeepEqual(got, map[string]int{"before": 1, "after": 1}) {
		t.Fatalf("executions %v", got)
	}
	// The handler answered 503 to the Suspend error; the middleware answered 202 instead.
	if got := statusesText(backend.statusesOf(runID)); got != "202,200" {
		t.Fatalf("statuses per attempt %s, want 202,200", got)
	}
}

func TestWaitForAnEventPostedToTheGateway(t *testing.T) {
	needGateway(t)
	t.Parallel()
	placed := durabletest.Call(t, http.MethodPost, gw.Admin+"/v1/events", map[string]any{
		"name": "go.order.placed", "id": "placed-42", "data": map[string]string{"order_id": "42"},
	}, nil)
	if placed.Status != http.StatusAccepted {
		t.Fatalf("posting an event: %d %s", placed.Status, placed.Body)
	}
	accepted := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/wait?order=42", nil, map[string]string{"Prefer": "respond-async"})
	if accepted.Status != http.StatusAccepted {
		t.Fatalf("status %d: %s", accepted.Status, accepted.Body)
	}
	runID, location := accepted.Header.Get("Durable-Run-Id"), accepted.Header.Get("Location")
	durabletest.Eventually(t, 15*time.Second, func() error {
		if status := gw.AdminRun(t, runID).Status; status != "suspended" {
			return fmt.Errorf("run is %s", status)
		}
		return nil
	})
	other := durabletest.Call(t, http.MethodPost, gw.Admin+"/v1/events", map[string]any{
		"name": "go.order.paid", "id": "pay-41", "data": map[string]string{"order_id": "41"},
	}, nil)
	paid := durabletest.Call(t, http.MethodPost, gw.Admin+"/v1/events", map[string]any{
		"name": "go.order.paid", "id": "pay-42", "data": map[string]string{"order_id": "42"},
	}, nil)
	var posted struct {
		Matched int `json:"matched"`
	}
	other.JSON(t, &posted)
	if other.Status != http.StatusAccepted || posted.Matched != 0 {
		t.Fatalf("another order's event: %d %s", other.Status, other.Body)
	}
	paid.JSON(t, &posted)
	if paid.Status != http.StatusAccepted || posted.Matched != 1 {
		t.Fatalf("the order's event: %d %s", paid.Status, paid.Body)
	}
	r := gw.Result(t, location)
	if r.Status != http.StatusOK {
		t.Fatalf("result %d: %s", r.Status, r.Body)
	}
	var body struct {
		Attempt      int             `json:"attempt"`
		EventID      string          `json:"event_id"`
		Data         json.RawMessage `json:"data"`
		LateTimedOut bool            `json:"late_timed_out"`
	}
	r.JSON(t, &body)
	if body.EventID != "pay-42" || string(body.Data) != `{"order_id":"42"}` || !body.LateTimedOut || body.Attempt != 3 {
		t.Fatalf("answer %s", r.Body)
	}
	if got := backend.countsOf(runID); !reflect.DeepEqual(got, map[string]int{"reserve": 1, "early:placed-42": 3, "paid:pay-42": 2, "ship": 1}) {
		t.Fatalf("executions %v", got)
	}
	if got := statusesText(backend.statusesOf(runID)); got != "202,202,200" {
		t.Fatalf("statuses per attempt %s: each wait must suspend once", got)
	}
}

func TestIdempotencyKeyAnswersTheSameResult(t *testing.T) {
	needGateway(t)
	t.Parallel()
	key := map[string]string{"Idempotency-Key": "go-order-7"}
	first := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/once", map[string]int{"order": 7}, key)
	again := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/once", map[string]int{"order": 7}, key)
	other := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/once", map[string]int{"order": 7}, nil)
	if first.Status != http.StatusOK || again.Status != http.StatusOK || other.Status != http.StatusOK {
		t.Fatalf("statuses %d %d %d", first.Status, again.Status, other.Status)
	}
	if string(again.Body) != string(first.Body) || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay %s (%q), first %s", again.Body, again.Header.Get("Idempotent-Replayed"), first.Body)
	}
	if string(other.Body) == string(first.Body) {
		t.Fatalf("a request without the key must be a run of its own: %s", other.Body)
	}
	var body struct {
		RunID string `json:"run_id"`
	}
	first.JSON(t, &body)
	if got := backend.countsOf(body.RunID); got["pick"] != 1 {
		t.Fatalf("executions %v", got)
	}
}

func TestLoopIDs(t *testing.T) {
	needGateway(t)
	t.Parallel()
	r := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/loop", nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	var body struct {
		Attempt int   `json:"attempt"`
		Items   []int `json:"items"`
	}
	r.JSON(t, &body)
	runID := r.Header.Get("Durable-Run-Id")
	if body.Attempt != 2 || !reflect.DeepEqual(body.Items, []int{0, 10, 20}) {
		t.Fatalf("answer %s", r.Body)
	}
	want := map[string]int{"item#0": 1, "item#1": 1, "item#2": 1, "check": 2}
	if got := backend.countsOf(runID); !reflect.DeepEqual(got, want) {
		t.Fatalf("executions %v, want %v", got, want)
	}
	durabletest.Eventually(t, 10*time.Second, func() error { // step writes land in the store shortly
		var ids []string
		for _, step := range gw.AdminRun(t, runID).Steps {
			ids = append(ids, step.StepID)
		}
		if !reflect.DeepEqual(ids, []string{"item", "item:1", "item:2", "item:3", "check"}) {
			return fmt.Errorf("step ids %v", ids)
		}
		return nil
	})
}

func TestFirstWriteWins(t *testing.T) {
	needGateway(t)
	t.Parallel()
	r := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go/conflict", nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	var got []string
	r.JSON(t, &got)
	if !reflect.DeepEqual(got, []string{"written by run #1", "written by run #1"}) {
		t.Fatalf("outputs %q: the refused write must read the stored output back", got)
	}
}

func TestSupersededAttemptGetsStaleAttempt(t *testing.T) {
	needGateway(t)
	t.Parallel()
	r := durabletest.Call(t, http.MethodPost, gw.Ingress+"/go-slow/stale", nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	runID := r.Header.Get("Durable-Run-Id")
	var outcome string
	durabletest.Eventually(t, 15*time.Second, func() error {
		if outcome = backend.staleOutcome(runID); outcome == "" {
			return errors.New("the first attempt has not tried its write yet")
		}
		return nil
	})
	if outcome != "stale: stale-attempt" {
		t.Fatalf("the superseded attempt's write: %s", outcome)
	}
}

func TestOutsideTheGatewayStepsRunLocally(t *testing.T) {
	t.Parallel()
	r := durabletest.Call(t, http.MethodPost, backendURL+"/go/local", nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("status %d: %s", r.Status, r.Body)
	}
	var got map[string]any
	r.JSON(t, &got)
	want := map[string]any{
		"durable": false, "attempt": 1.0, "run_id": "", "nil_run": "ran",
		"step_error": "plain failure", "not_json": true, "slept": true, "wait_not_durable": true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if n := backend.countsOf("")["local"]; n < 2 {
		t.Fatalf("both local steps must run: %d", n)
	}
	// A partial set of Durable-* headers never runs the handler without durability.
	bad := durabletest.Call(t, http.MethodPost, backendURL+"/go/local", nil, map[string]string{"Durable-Run-Id": "r1"})
	if bad.Status != http.StatusBadRequest {
		t.Fatalf("partial headers: %d %s", bad.Status, bad.Body)
	}
}
