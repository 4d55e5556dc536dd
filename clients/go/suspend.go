package durable

// Durable sleep and waiting for an event (SPEC.md §4.5-§4.7): steps too, that suspend
// the run (no process kept waiting) until the gateway invokes the request again.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// What a suspended attempt waits for.
const (
	KindSleep = "sleep"
	KindWait  = "wait"
)

// Suspend is the error of a sleep or wait that is not over: end the handler now (with
// any response: the gateway ignores it) and the gateway invokes the request again once
// the sleep is over, a matching event arrived or the wait timed out. Nothing failed.
// Middleware answers it with 202 {"suspended": true, …}.
type Suspend struct {
	// Kind is KindSleep or KindWait.
	Kind string
	// StepID is the sleep's or wait's step id, numbered like any other.
	StepID string
	// WakeAt is when the gateway invokes the request again at the latest: a sleep's
	// end, a wait's timeout; zero for a wait that only an event ends (or when the
	// sidecar sent no readable time).
	WakeAt time.Time
}

func (s *Suspend) Error() string {
	until := "a matching event"
	if !s.WakeAt.IsZero() {
		until = formatTime(s.WakeAt)
	}
	return fmt.Sprintf("durable: %s %q suspends the run until %s", s.Kind, s.StepID, until)
}

// IsSuspend says whether err is, or wraps, a *Suspend.
func IsSuspend(err error) bool {
	var s *Suspend
	return errors.As(err, &s)
}

// Sleep sleeps durably for d (0 to MaxDuration): it returns nil at once when the sleep
// is over (an earlier attempt saw it end, or its wake time has come), else a *Suspend
// error: end the handler; the gateway calls it again after the wake time. The first
// call for this id in the run fixes the wake time, so calling Sleep with the same d on
// every attempt sleeps once. Outside the gateway it just sleeps here, until ctx ends.
func (run *Run) Sleep(ctx context.Context, id string, d time.Duration) error {
	if err := checkDuration("sleep", d); err != nil {
		return err
	}
	body, _ := json.Marshal(map[string]json.RawMessage{"seconds": seconds(d)})
	return run.sleep(ctx, id, d, body)
}

// SleepUntil is Sleep until a moment (in the past: over at once), at most MaxDuration
// from now.
func (run *Run) SleepUntil(ctx context.Context, id string, until time.Time) error {
	if until.IsZero() {
		return errors.New("durable: SleepUntil needs a time")
	}
	d := time.Until(until)
	if d > MaxDuration {
		return fmt.Errorf("durable: sleep until %s is too far ahead: at most 10 years from now", formatTime(until))
	}
	if d < 0 {
		d = 0
	}
	body, _ := json.Marshal(map[string]string{"until": formatTime(until)})
	return run.sleep(ctx, id, d, body)
}

func (run *Run) sleep(ctx context.Context, id string, local time.Duration, body []byte) error {
	id, err := run.nextID(id)
	if err != nil {
		return err
	}
	if !run.Durable() {
		timer := time.NewTimer(local)
		defer timer.Stop()
		select {
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, done, err := run.completed(ctx, id); err != nil || done {
		return err
	}
	a, err := run.call(ctx, http.MethodPost, stepsPath+"/"+stepSegment(id)+"/sleep", body)
	if err != nil {
		return err
	}
	switch a.status {
	case http.StatusOK:
		return nil
	case http.StatusAccepted:
		return run.suspend(&Suspend{Kind: KindSleep, StepID: id, WakeAt: wakeTime(a.body, "wake_at")})
	default:
		return refusal(a.status, a.body)
	}
}

// Wait says which event a WaitForEvent waits for.
type Wait struct {
	// Event is the event's name (1 to MaxEventName characters), compared exactly.
	Event string
	// Match maps dotted paths into the event ("data.order_id") to the JSON values they
	// must all equal; nil or empty: any event of that name.
	Match map[string]any
	// Timeout is how long to wait, counted from the first call; 0 waits forever.
	Timeout time.Duration
	// Lookback also matches events that arrived this long before the first call; 0
	// matches only later ones.
	Lookback time.Duration
}

// Event is a delivered event: what a wait returns.
type Event struct {
	Name string          `json:"name"`
	ID   string          `json:"id"`
	Data json.RawMessage `json:"data"` // a JSON object; decode it with json.Unmarshal
	TS   time.Time       `json:"ts"`   // when the gateway received it
}

// WaitForEvent returns the first event that fits w, or nil (and no error) when the
// wait timed out. While none has come it returns a *Suspend error: end the handler;
// the gateway calls it again when one arrives or the timeout passes. The first call
// for this id in the run fixes the wait. Outside the gateway it returns ErrNotDurable,
// as nothing could deliver an event.
func (run *Run) WaitForEvent(ctx context.Context, id string, w Wait) (*Event, error) {
	body, err := waitBody(w)
	if err != nil {
		return nil, err
	}
	id, err = run.nextID(id)
	if err != nil {
		return nil, err
	}
	if !run.Durable() {
		return nil, ErrNotDurable
	}
	raw, done, err := run.completed(ctx, id)
	if err != nil {
		return nil, err
	}
	if done {
		return decodeEvent(id, raw)
	}
	a, err := run.call(ctx, http.MethodPost, stepsPath+"/"+stepSegment(id)+"/wait", body)
	if err != nil {
		return nil, err
	}
	switch a.status {
	case http.StatusOK:
		var answer struct {
			Event json.RawMessage `json:"event"`
		}
		if err := a.object(&answer); err != nil {
			return nil, err
		}
		return decodeEvent(id, answer.Event)
	case http.StatusAccepted:
		return nil, run.suspend(&Suspend{Kind: KindWait, StepID: id, WakeAt: wakeTime(a.body, "timeout_at")})
	default:
		return nil, refusal(a.status, a.body)
	}
}

// waitBody checks a Wait against the protocol's bounds and writes its JSON body.
func waitBody(w Wait) ([]byte, error) {
	if err := checkEventName(w.Event); err != nil {
		return nil, err
	}
	body := map[string]json.RawMessage{}
	body["event"], _ = json.Marshal(w.Event)
	if len(w.Match) > 0 {
		match, err := checkMatch(w.Match)
		if err != nil {
			return nil, err
		}
		body["match"] = match
	}
	if w.Timeout != 0 {
		if err := checkDuration("wait timeout", w.Timeout); err != nil {
			return nil, err
		}
		body["timeout"] = seconds(w.Timeout)
	}
	if w.Lookback != 0 {
		if err := checkDuration("wait lookback", w.Lookback); err != nil {
			return nil, err
		}
		body["lookback"] = seconds(w.Lookback)
	}
	return json.Marshal(body)
}

// decodeEvent reads a wait's output: an event object, or null for a timeout.
func decodeEvent(id string, raw json.RawMessage) (*Event, error) {
	if isJSONNull(raw) {
		return nil, nil
	}
	var event Event
	if err := json.Unmarshal(raw, &event); err != nil {
		return nil, &SidecarError{Status: http.StatusOK, Detail: fmt.Sprintf("wait %q: event is neither an object nor null: %v", id, err)}
	}
	return &event, nil
}

// wakeTime is the time under key in a 202 answer; zero when absent or unreadable, as
// the 202 itself is the signal that matters.
func wakeTime(body []byte, key string) time.Time {
	var answer map[string]json.RawMessage
	if json.Unmarshal(body, &answer) != nil {
		return time.Time{}
	}
	var text string
	if json.Unmarshal(answer[key], &text) != nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, text)
	if err != nil {
		return time.Time{}
	}
	return t
}
