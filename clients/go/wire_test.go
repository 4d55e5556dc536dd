package durable

// The pure parts: the Durable-Steps codec, step paths, ids, header parsing and the
// bounds checked before any call. No gateway needed.

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestDecodeStepsSpecExamples(t *testing.T) {
	for _, value := range []string{
		"eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ",     // SPEC.md §3, no padding
		"eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ==",   // with padding
		"  eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ\t", // surrounding spaces
	} {
		steps, err := decodeSteps(value)
		if err != nil {
			t.Fatalf("%q: %v", value, err)
		}
		if got := string(steps["quote"]); got != `{"total":42}` {
			t.Fatalf("%q: quote = %s", value, got)
		}
	}
	steps, err := decodeSteps("eyJub3RlIjoiYT4_In0") // the URL-safe alphabet matters here
	if err != nil || string(steps["note"]) != `"a>?"` {
		t.Fatalf("url-safe alphabet: %v %v", steps, err)
	}
	steps, err = decodeSteps("eyJyZXNlcnZlIjp7InNsb3QiOjd9LCJwYWlkIjpudWxsfQ") // a timed-out wait
	if raw, ok := steps["paid"]; err != nil || !ok || !isJSONNull(raw) {
		t.Fatalf("a null output must be present: %v %v", steps, err)
	}
}

func TestDecodeStepsAbsentFetchAndMalformed(t *testing.T) {
	if steps, err := decodeSteps(""); err != nil || steps == nil || len(steps) != 0 {
		t.Fatalf("absent: %v %v", steps, err)
	}
	if steps, err := decodeSteps("fetch"); err != nil || steps != nil {
		t.Fatalf("fetch must mean nil steps: %v %v", steps, err)
	}
	for _, bad := range []string{"%%%", "WzFd" /* [1] */, "bnVsbA" /* null */, "eyJh"} {
		if _, err := decodeSteps(bad); !errors.Is(err, errMalformedSteps) {
			t.Fatalf("%q: want errMalformedSteps, got %v", bad, err)
		}
	}
}

func TestEncodeStepsRoundTrips(t *testing.T) {
	in := map[string]json.RawMessage{"quote": json.RawMessage(`{"total":42}`)}
	value, err := encodeSteps(in)
	if err != nil || value != "eyJxdW90ZSI6eyJ0b3RhbCI6NDJ9fQ" {
		t.Fatalf("encode: %q %v", value, err)
	}
}

func TestStepSegment(t *testing.T) {
	cases := map[string]string{
		"fetch page:1/2 é": "fetch%20page%3A1%2F2%20%C3%A9", // SPEC.md §4
		"item:1":           "item%3A1",
		"a-b.c_d~e":        "a-b.c_d~e",
		"100%":             "100%25",
		"a+b&c=d?e#f":      "a%2Bb%26c%3Dd%3Fe%23f",
	}
	for id, want := range cases {
		if got := stepSegment(id); got != want {
			t.Errorf("stepSegment(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestLoopIDsAreSharedByStepsSleepsAndWaits(t *testing.T) {
	run := &Run{uses: map[string]int{}}
	var got []string
	for _, base := range []string{"item", "item", "other", "item"} {
		id, err := run.nextID(base)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	if want := "item item:1 other item:2"; strings.Join(got, " ") != want {
		t.Fatalf("ids %v, want %s", got, want)
	}
	// A hand-made id that clashes with a numbered one would read another step's output.
	if id, err := run.nextID("item:1"); err == nil {
		t.Fatalf("a clashing id must be refused, got %q", id)
	}
	var local *Run // outside the gateway ids are only checked
	if id, err := local.nextID("x"); err != nil || id != "x" {
		t.Fatalf("nil run: %q %v", id, err)
	}
}

func TestStepIDBounds(t *testing.T) {
	run := &Run{uses: map[string]int{}}
	for _, bad := range []string{"", strings.Repeat("é", MaxStepID+1), "a\x00b", "\xff"} {
		if _, err := run.nextID(bad); err == nil {
			t.Errorf("%.20q: want an error", bad)
		}
	}
	if _, err := run.nextID(strings.Repeat("é", MaxStepID)); err != nil {
		t.Errorf("256 characters are fine: %v", err)
	}
	long := strings.Repeat("x", MaxStepID)
	_, _ = run.nextID(long)
	if _, err := run.nextID(long); err == nil { // numbered, it is 258 characters
		t.Errorf("a numbered id past the bound must be refused")
	}
}

func header(pairs ...string) *http.Request {
	r, _ := http.NewRequest(http.MethodGet, "http://backend/x", nil)
	for i := 0; i < len(pairs); i += 2 {
		r.Header.Set(pairs[i], pairs[i+1])
	}
	return r
}

func TestFromRequest(t *testing.T) {
	run, err := FromRequest(header())
	if err != nil || run.Durable() || run.Attempt() != 1 || run.RunID() != "" {
		t.Fatalf("no headers must give a local run: %+v %v", run, err)
	}
	full := []string{
		"durable-run-id", "r1", "Durable-Sidecar", "http://127.0.0.1:8081/v1/runs/r1/",
		"Durable-Token", "tok", "Durable-Attempt", "3", "Durable-Steps", "fetch",
	}
	run, err = FromRequest(header(full...))
	if err != nil || !run.Durable() || run.Attempt() != 3 || run.RunID() != "r1" {
		t.Fatalf("full headers: %+v %v", run, err)
	}
	if run.sidecar != "http://127.0.0.1:8081/v1/runs/r1" || run.memo != nil {
		t.Fatalf("sidecar %q, memo %v", run.sidecar, run.memo)
	}
	malformed := append(append([]string{}, full[:8]...), "Durable-Steps", "!!")
	if run, err = FromRequest(header(malformed...)); err != nil || run.memo != nil {
		t.Fatalf("a malformed Durable-Steps must mean fetch: %v %v", run.memo, err)
	}
	for name, r := range map[string]*http.Request{
		"partial":     header("Durable-Run-Id", "r1"),
		"bad attempt": header(append(full[:6:6], "Durable-Attempt", "0")...),
		"bad sidecar": header("Durable-Run-Id", "r1", "Durable-Sidecar", "/relative", "Durable-Token", "t"),
	} {
		if _, err := FromRequest(r); !errors.Is(err, ErrHeaders) {
			t.Errorf("%s: want ErrHeaders, got %v", name, err)
		}
	}
}

func TestWaitBody(t *testing.T) {
	body, err := waitBody(Wait{
		Event: "order.paid", Match: map[string]any{"data.order_id": "42"},
		Timeout: time.Hour, Lookback: 1500 * time.Millisecond,
	})
	want := `{"event":"order.paid","lookback":1.5,"match":{"data.order_id":"42"},"timeout":3600}`
	if err != nil || string(body) != want {
		t.Fatalf("got %s %v, want %s", body, err, want)
	}
	if body, _ := waitBody(Wait{Event: "e"}); string(body) != `{"event":"e"}` {
		t.Fatalf("absent options must be left out: %s", body)
	}
	many := map[string]any{}
	for i := 0; i <= MaxMatchKeys; i++ {
		many[strings.Repeat("k", i+1)] = i
	}
	for name, w := range map[string]Wait{
		"no event":      {},
		"long event":    {Event: strings.Repeat("e", MaxEventName+1)},
		"empty segment": {Event: "e", Match: map[string]any{"data..id": 1}},
		"many paths":    {Event: "e", Match: many},
		"big value":     {Event: "e", Match: map[string]any{"data": strings.Repeat("v", MaxMatchValue)}},
		"not JSON":      {Event: "e", Match: map[string]any{"data": func() {}}},
		"negative":      {Event: "e", Timeout: -time.Second},
		"too long":      {Event: "e", Lookback: MaxDuration + time.Second},
	} {
		if _, err := waitBody(w); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
}

func TestSleepBounds(t *testing.T) {
	var local *Run
	if err := local.Sleep(context.Background(), "s", -time.Second); err == nil {
		t.Error("a negative sleep must be refused")
	}
	if err := local.SleepUntil(context.Background(), "s", time.Now().Add(MaxDuration+time.Hour)); err == nil {
		t.Error("a sleep past 10 years must be refused")
	}
	if got := string(seconds(1500 * time.Millisecond)); got != "1.5" {
		t.Errorf("seconds: %s", got)
	}
	if got := string(seconds(MaxDuration)); got != "315360000" {
		t.Errorf("seconds: %s", got)
	}
}

func TestRefusal(t *testing.T) {
	stale := refusal(409, []byte(`{"type":"https://durable-gateway.dev/problems/stale-attempt","title":"A newer attempt","status":409,"detail":"attempt 1 was superseded"}`))
	var sa *StaleAttempt
	var se *SidecarError
	if !errors.As(stale, &sa) || !errors.As(stale, &se) || se.Type != "stale-attempt" || se.Detail != "attempt 1 was superseded" {
		t.Fatalf("stale: %#v", stale)
	}
	other := refusal(413, []byte(`{"type":"https://durable-gateway.dev/problems/too-large","title":"Too large"}`))
	if errors.As(other, &sa) || !errors.As(other, &se) || se.Type != "too-large" || se.Detail != "Too large" {
		t.Fatalf("too large: %#v", other)
	}
	plain := refusal(502, []byte("bad gateway\xff"))
	if !strings.Contains(plain.Error(), "502: bad gateway\uFFFD") {
		t.Fatalf("plain: %v", plain)
	}
}

func TestErrorBody(t *testing.T) {
	watch := startWatch()
	body := errorBody(errors.New(strings.Repeat("é", errorMaxChars+10)), watch.stop())
	var got putBody
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if n := len([]rune(got.Error.Message)); n != errorMaxChars || got.Output != nil {
		t.Fatalf("message of %d characters, output %s", n, got.Output)
	}
	if got.StartedAt < 1e9 || got.DurationMs < 0 {
		t.Fatalf("timing %v %v", got.StartedAt, got.DurationMs)
	}
}
